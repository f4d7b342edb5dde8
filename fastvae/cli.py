"""The ``fastvae`` command: train, eval, plot, paper.

    fastvae train                              # the paper's AEVB on the embedded digits, ~1 min on a CPU
    fastvae train --data fashion-mnist --latent 2 --device cuda --out runs/fm2
    fastvae train --data fashion-mnist --arch conv --out runs/fm-conv
    fastvae train --model my_package.models:MyVAE --model-args '{"width": 64}' --out runs/mine
    fastvae eval runs/fm2                      # one JSON object: test_elbo, log_px (K = 5,000) and its errors, ...
    fastvae plot runs/fm2                      # PNGs: ELBO curves, reconstructions, samples, manifold, KL per latent dim
    torchrun --nproc-per-node 4 -m fastvae train --device cuda ...

Every failure ends in one line on stderr and a non-zero exit (FASTVAE_DEBUG=1 shows the
traceback instead): 2 for a bad flag or flag value (its message is the one the Python API
gives for that setting), 1 for missing or bad files and data, settings that do not fit
together or a run that cannot go on, 130 when stopped by SIGINT/SIGTERM (after a checkpoint).
What the commands print on stdout is strict JSON (non-finite numbers as ``null``).
"""

from __future__ import annotations

import argparse
import dataclasses
import decimal
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .evaluation import LOG_PX_EXAMPLES, LOG_PX_SAMPLES
from .json_output import to_json
from .models.config import ARCHS
from .settings import check_value, flag_of, label, settings_fields, value_type
from .train_config import DEVICES, TrainConfig

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: 'fastvae: error: ...'."""

    def error(self, message: str):
        # argparse says "argument --x: MESSAGE"; a setting's own message already starts with its flag
        named = re.match(r"argument (\S+): (.*)", message, re.S)
        if named and named.group(2).startswith(named.group(1) + " "):
            message = named.group(2)
        message = " ".join(message.split())
        sys.stderr.write(f"fastvae: error: {message} (see: {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _parse_int(text: str) -> int:
    """An integer as people type it: ``1000000``, ``1_000_000`` or ``1e6`` (exactly an integer)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        raise ValueError from None
    if not value.is_finite() or value.adjusted() > 40:  # more digits than any setting holds: not worth int()
        raise ValueError("too large" if value.is_finite() else "")
    if value != value.to_integral_value():
        raise ValueError
    return int(value)


def _positive_int(text: str) -> int:
    """An argparse ``type=`` for a count of the eval/plot commands."""
    try:
        value = _parse_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _json_object(text: str) -> dict:
    """``--model-args``: a JSON object (ValueError saying what the text is instead)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise ValueError(f"that is a JSON {type(value).__name__.replace('dict', 'object')}, not an object "
                         "such as '{\"width\": 64}'")
    return value


def _value_parser(f: dataclasses.Field, owner: type, prefix: str = ""):
    """The argparse ``type=`` of a setting: the text as the setting's kind, then the setting's
    own check (:func:`fastvae.settings.check_value`), so a bad value gets the message the
    Python API gives."""
    kind, _ = value_type(f, owner)
    name = label(f, prefix)
    read = {dict: _json_object, int: _parse_int, float: float}.get(kind, str)
    noun = {dict: "a JSON object", int: "an integer", float: "a number"}.get(kind, "a string")

    def parse(text: str):
        try:
            value = read(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name} must be {noun}, got {text!r}"
                                             + (f": {exc}" if str(exc) else "")) from None
        try:
            return check_value(name, value, f, owner)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _add_setting(target, f: dataclasses.Field, owner: type, default, help_default: str | None = None,
                 prefix: str = "") -> None:
    """One flag for setting ``f`` of ``owner``, from its declaration."""
    kind, _ = value_type(f, owner)
    meta = f.metadata
    shown = help_default if help_default is not None else (None if default is None or default is False else f"{default}")
    help_text = meta["help"] + (f" (default: {shown})" if shown else "")
    if kind is bool:
        target.add_argument(flag_of(f), dest=f.name, action="store_true", default=default, help=help_text)
        return
    metavar = None if meta.get("choices") else flag_of(f).lstrip("-").upper().replace("-", "_")
    target.add_argument(flag_of(f), dest=f.name, type=_value_parser(f, owner, prefix), choices=meta.get("choices"),
                        default=default, metavar=metavar, help=help_text.replace("%", "%%"))


#: Settings that exclude each other on the command line (argparse says so in one line).
_EXCLUSIVE = (("epochs", "samples"), ("resume", "overwrite"))


def _arch_fields() -> dict[str, tuple[dataclasses.Field, type]]:
    """The union of the architectures' settings: name -> (field, a class that has it)."""
    fields: dict[str, tuple[dataclasses.Field, type]] = {}
    for cls in ARCHS.values():
        for f in settings_fields(cls):
            fields.setdefault(f.name, (f, cls))
    return fields


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a VAE with AEVB",
                       description="Train a VAE with AEVB (minibatch; the ELBO with L draws, or the IWAE bound): fastvae's --arch mlp/conv or your "
                                   "own --model. Every flag is a TrainConfig setting.")
    defaults = TrainConfig()
    groups = {}
    for pair in _EXCLUSIVE:
        group = p.add_mutually_exclusive_group()
        groups.update({name: group for name in pair})
    which_model = p.add_mutually_exclusive_group()
    for f in settings_fields(TrainConfig):
        if not f.metadata.get("cli", True):
            continue
        if f.name == "model_class":
            which_model.add_argument("--arch", choices=tuple(ARCHS), default=None,
                                     help="fastvae's architecture: mlp (the paper's MLPs) or conv (strided "
                                          "convolutions, for images of any H x W x C) (default: mlp)")
            _add_setting(which_model, f, TrainConfig, None)
            continue
        _add_setting(groups.get(f.name, p), f, TrainConfig, getattr(defaults, f.name))
    arch = p.add_argument_group("architecture (--arch) settings")
    for name, (f, owner) in _arch_fields().items():
        per_arch = ", ".join(f"{a} {getattr(cls(), name)}" for a, cls in ARCHS.items() if hasattr(cls(), name))
        _add_setting(arch, f, owner, None, per_arch, prefix="model.")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test ELBO, importance-sampled log p(x) with standard errors, KL per latent "
                       "dimension and active units of a trained run")
    p.add_argument("run_dir", type=Path, help="a train --out directory")
    p.add_argument("--samples", type=_positive_int, default=LOG_PX_SAMPLES,
                   help="importance samples K per example: Burda et al.'s protocol (default: %(default)s)")
    p.add_argument("--examples", type=_positive_int, default=LOG_PX_EXAMPLES,
                   help="test examples for log p(x) (the test ELBO uses the whole test set) (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="(default: %(default)s)")


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="PNG figures of a trained run")
    p.add_argument("run_dir", type=Path, help="a train --out directory")
    p.add_argument("--device", choices=DEVICES, default="auto", help="(default: %(default)s)")


def _add_paper(sub) -> None:
    from .paper.__main__ import DESCRIPTION, add_arguments

    add_arguments(sub.add_parser("paper", help="reproduce the AEVB paper's experiments into OUT/report.md",
                                 description=DESCRIPTION))


def build_parser() -> argparse.ArgumentParser:
    """The ``fastvae`` command's parser: subcommands train, eval, plot and paper."""
    parser = _OneLineErrorParser(prog="fastvae", description="Fast variational autoencoders (AEVB).")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,plot,paper}", parser_class=_OneLineErrorParser)
    sub.required = True
    _add_train(sub)
    _add_eval(sub)
    _add_plot(sub)
    _add_paper(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed ``train`` flags describe (ValueError for flags that do not fit)."""
    values = {f.name: getattr(args, f.name) for f in settings_fields(TrainConfig) if f.metadata.get("cli", True)}
    given = {name: getattr(args, name) for name in _arch_fields() if getattr(args, name) is not None}
    if values["model_class"] is not None:
        if given:
            flags = ", ".join(flag_of(_arch_fields()[n][0]) for n in given)
            raise ValueError(f"{flags} set fastvae's architectures (--arch); your --model takes --model-args")
        return TrainConfig(**values, model=None)
    cls = ARCHS[args.arch or "mlp"]
    own = {f.name for f in settings_fields(cls)}
    foreign = [flag_of(_arch_fields()[n][0]) for n in given if n not in own]
    if foreign:
        raise ValueError(f"{', '.join(foreign)} does not apply to --arch {cls.arch}")
    return TrainConfig(**values, model=cls(**given))


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from .trainer import train

        result = train(config_from_args(args))
        summary = {"out": str(result.out_dir), "steps": result.steps, "samples_seen": result.samples_seen,
                   "train_elbo": result.train_elbo, "test_elbo": result.test_elbo,
                   "samples_per_s": result.samples_per_s, "wall_time_s": result.wall_time_s,
                   "threads": result.threads}
        print(to_json(summary))
    elif args.command == "eval":
        from .runs import evaluate_run

        print(to_json(evaluate_run(args.run_dir, n_samples=args.samples, n_examples=args.examples,
                                   device=args.device)))
    elif args.command == "plot":
        from .plots import plot_run

        for path in plot_run(args.run_dir, device=args.device):
            print(path)
    elif args.command == "paper":
        from .paper.__main__ import run_from_args

        print(run_from_args(args))
    return 0


#: Errors that are about the user's input, files or machine: their message is the one line shown.
_EXPECTED = (ValueError, TypeError, RuntimeError, OSError, ImportError, ArithmeticError, MemoryError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n", 1)[0].split())
    return text or type(exc).__name__


_PACKAGE = Path(__file__).resolve().parent


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning) -> None:
    """fastvae's own warnings as one line, ``fastvae: warning: ...``; others as Python shows them."""
    if not Path(filename).resolve().is_relative_to(_PACKAGE):
        return _default(message, category, filename, lineno, file, line)
    (file or sys.stderr).write(f"fastvae: warning: {_one_line(message)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastvae`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("default", UserWarning)  # each shown once per command
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt as exc:
        sys.stderr.write(f"fastvae: {_one_line(exc) if str(exc) else 'interrupted'}\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout's reader is gone (`fastvae eval run | head -c 20`): nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        os.close(devnull)
        return EXIT_ERROR
    except Exception as exc:  # one line, whatever it is; FASTVAE_DEBUG=1 for the traceback
        if os.environ.get("FASTVAE_DEBUG") == "1":
            raise
        if isinstance(exc, _EXPECTED):
            sys.stderr.write(f"fastvae: error: {_one_line(exc)}\n")
        else:  # a bug: say so, still in one line
            sys.stderr.write(f"fastvae: internal error: {type(exc).__name__}: {_one_line(exc)} (FASTVAE_DEBUG=1 "
                             "shows the traceback; please report it)\n")
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
