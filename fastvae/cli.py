"""The ``fastvae`` command: train, eval, plot, paper.

    fastvae train                              # the paper's AEVB on the embedded digits, ~1 min on a CPU
    fastvae train --data fashion-mnist --latent 2 --device cuda --out runs/fm2
    fastvae train --data fashion-mnist --arch conv --out runs/fm-conv
    fastvae train --model my_package.models:MyVAE --model-args '{"width": 64}' --out runs/mine
    fastvae eval runs/fm2                      # one JSON object: test_elbo, log_px (K = 5,000) and its errors, ...
    fastvae plot runs/fm2                      # PNGs: ELBO curves, reconstructions, samples, manifold
    torchrun --nproc-per-node 4 -m fastvae train --device cuda ...

Bad flags, missing files and bad data end in one line on stderr and a non-zero exit
(FASTVAE_DEBUG=1 shows the traceback instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from .models.config import ARCHS
from .settings import flag_of, settings_fields, value_type
from .train_config import TrainConfig

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: 'fastvae: error: ...'."""

    def error(self, message: str):
        sys.stderr.write(f"fastvae: error: {message} (see: {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _number_parser(kind: type, lowest: float, inclusive: bool, what: str):
    """An argparse ``type=`` that parses ``kind`` and requires a finite value above ``lowest``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        in_range = value >= lowest if inclusive else value > lowest
        if not in_range or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _number_parser(int, 1, True, "a positive integer")


def _json_object(text: str) -> dict:
    """An argparse ``type=`` for ``--model-args``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"hidden\": 64}}', got {text!r}")
    return value


def _value_parser(f: dataclasses.Field, owner: type):
    """The argparse ``type=`` of a setting: its kind, and its lower bound if it has one."""
    kind, _ = value_type(f, owner)
    if kind is dict:
        return _json_object
    if kind not in (int, float):
        return str
    lowest, inclusive = (f.metadata["minimum"], True) if f.metadata.get("minimum") is not None else \
        (f.metadata.get("above"), False)
    if lowest is None:
        return _number_parser(kind, -math.inf, False, "an integer" if kind is int else "a finite number")
    if kind is int:
        what = "a positive integer" if lowest == 1 else f"an integer >= {lowest:g}"
        if lowest == 0:
            what = "a non-negative integer"
        return _number_parser(int, lowest, inclusive, what)
    what = "a positive finite number" if lowest == 0 and not inclusive else "a non-negative finite number"
    return _number_parser(float, lowest, inclusive, what)


def _add_setting(target, f: dataclasses.Field, owner: type, default, help_default: str | None = None) -> None:
    """One flag for setting ``f`` of ``owner``, from its declaration."""
    kind, _ = value_type(f, owner)
    meta = f.metadata
    shown = help_default if help_default is not None else (None if default is None or default is False else f"{default}")
    help_text = meta["help"] + (f" (default: {shown})" if shown else "")
    if kind is bool:
        target.add_argument(flag_of(f), dest=f.name, action="store_true", default=default, help=help_text)
        return
    metavar = None if meta.get("choices") else flag_of(f).lstrip("-").upper().replace("-", "_")
    target.add_argument(flag_of(f), dest=f.name, type=_value_parser(f, owner), choices=meta.get("choices"),
                        default=default, metavar=metavar, help=help_text.replace("%", "%%"))


#: Settings that exclude each other on the command line (argparse says so in one line).
_EXCLUSIVE = (("epochs", "samples"),)


def _arch_fields() -> dict[str, tuple[dataclasses.Field, type]]:
    """The union of the architectures' settings: name -> (field, a class that has it)."""
    fields: dict[str, tuple[dataclasses.Field, type]] = {}
    for cls in ARCHS.values():
        for f in settings_fields(cls):
            fields.setdefault(f.name, (f, cls))
    return fields


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a VAE with AEVB",
                       description="Train a VAE with AEVB (minibatch, L=1): fastvae's --arch mlp/conv or your "
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
        _add_setting(arch, f, owner, None, per_arch)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test ELBO, importance-sampled log p(x) with standard errors, KL per latent "
                       "dimension and active units of a trained run")
    p.add_argument("run_dir", type=Path, help="a train --out directory")
    p.add_argument("--samples", type=_positive_int, default=5000,
                   help="importance samples K per example: Burda et al.'s protocol (default: %(default)s)")
    p.add_argument("--examples", type=_positive_int, default=1000,
                   help="test examples for log p(x) (the test ELBO uses the whole test set) (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="PNG figures of a trained run")
    p.add_argument("run_dir", type=Path, help="a train --out directory")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")


def _add_paper(sub) -> None:
    from .paper.__main__ import DESCRIPTION, add_arguments

    add_arguments(sub.add_parser("paper", help="reproduce the AEVB paper's experiments into OUT/report.md",
                                 description=DESCRIPTION))


def build_parser() -> argparse.ArgumentParser:
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
        print(json.dumps(summary))
    elif args.command == "eval":
        from .runs import evaluate_run

        print(json.dumps(evaluate_run(args.run_dir, n_samples=args.samples, n_examples=args.examples, device=args.device)))
    elif args.command == "plot":
        from .plots import plot_run

        for path in plot_run(args.run_dir, device=args.device):
            print(path)
    elif args.command == "paper":
        from .paper.__main__ import run_from_args

        print(run_from_args(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastvae`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt as exc:
        sys.stderr.write(f"fastvae: {exc or 'interrupted'}\n")
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        if os.environ.get("FASTVAE_DEBUG") == "1":
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"fastvae: error: {message}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
