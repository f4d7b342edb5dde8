"""The ``fastvae`` command: train, eval, plot, paper.

    fastvae train                              # the paper's AEVB on the embedded digits, ~1 min on a CPU
    fastvae train --data fashion-mnist --latent 2 --device cuda --out runs/fm2
    fastvae eval runs/fm2 --samples 1000       # one JSON object: test_elbo, log_px, ...
    fastvae plot runs/fm2                      # PNGs: ELBO curves, reconstructions, samples, manifold
    torchrun --nproc-per-node 4 -m fastvae train --device cuda ...

Bad flags, missing files and bad data end in one line on stderr and a non-zero exit
(FASTVAE_DEBUG=1 shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from .train_config import BINARIZATIONS, COMPILE_MODES, OPTIMIZERS, TrainConfig

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
_non_negative_int = _number_parser(int, 0, True, "a non-negative integer")
_positive_float = _number_parser(float, 0.0, False, "a positive finite number")
_non_negative_float = _number_parser(float, 0.0, True, "a non-negative finite number")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a VAE with AEVB", description="Train a VAE with AEVB (minibatch, L=1).")
    d = TrainConfig()
    p.add_argument("--data", default=d.data,
                   help="digits (embedded 8x8 UCI digits), fashion-mnist (Debian package dataset-fashion-mnist), "
                        "a directory of MNIST-format IDX files, or a .npy / IDX file (default: %(default)s)")
    p.add_argument("--test-data", default=None, help="held-out data file for a PATH --data (default: split off)")
    p.add_argument("--likelihood", choices=("bernoulli", "gaussian", "continuous_bernoulli"), default=d.likelihood,
                   help="decoder distribution (default: %(default)s)")
    p.add_argument("--binarize", choices=BINARIZATIONS, default=d.binarize,
                   help="bernoulli data: dynamic (fresh draw per epoch), threshold (x > 0.5), none; "
                        "auto = dynamic for bernoulli (default: %(default)s)")
    p.add_argument("--latent", type=_positive_int, default=d.latent_dim, help="latent size Nz (default: %(default)s)")
    p.add_argument("--hidden", type=_positive_int, default=d.hidden_dim, help="hidden units per layer (default: %(default)s)")
    p.add_argument("--depth", type=_positive_int, default=d.depth, help="hidden layers in encoder and decoder (default: %(default)s)")
    p.add_argument("--activation", choices=("tanh", "relu", "softplus", "elu", "gelu"), default=d.activation,
                   help="hidden activation (default: %(default)s)")
    p.add_argument("--decoder-variance", choices=("per_example", "per_feature"), default=d.decoder_variance,
                   help="gaussian decoder: a logvar per pixel and example, or one learned per pixel (default: %(default)s)")
    p.add_argument("--squash-mean", action="store_true", help="gaussian decoder: sigmoid on the mean (the paper's Frey Face model)")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="minibatch size M per process (default: %(default)s)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_float, default=None, help="passes over the training set")
    length.add_argument("--samples", type=_positive_int, default=None, help="training examples to process in total (default: 2,000,000 when neither is given)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="(default: %(default)s, as the paper)")
    p.add_argument("--lr", type=_positive_float, default=None, help="step size (default: 0.02 Adagrad, 1e-3 Adam)")
    p.add_argument("--weight-decay", type=_non_negative_float, default=None,
                   help="L2 weight decay (default: 1/N_train, the paper's N(0, I) prior on the weights)")
    p.add_argument("--beta", type=_non_negative_float, default=d.beta, help="KL weight (default: %(default)s)")
    p.add_argument("--kl-warmup", type=_non_negative_int, default=d.kl_warmup,
                   help="steps over which the KL weight rises linearly from 0 to beta (default: %(default)s)")
    p.add_argument("--seed", type=_non_negative_int, default=d.seed, help="(default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="(default: %(default)s)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (the loss still accumulates in fp32)")
    p.add_argument("--compile", choices=COMPILE_MODES, default=d.compile,
                   help="torch.compile the training step; reduce-overhead captures it in CUDA graphs (default: %(default)s)")
    p.add_argument("--memory-budget-mb", type=_positive_float, default=None,
                   help="stream the data from a memory map when it is larger than this (default: fits in device memory)")
    p.add_argument("--out", default=d.out, help="output directory (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt")
    p.add_argument("--log-every", type=_positive_int, default=d.log_every, help="steps between metrics rows (default: %(default)s)")
    p.add_argument("--eval-every", type=_positive_int, default=d.eval_every, help="steps between test-ELBO evaluations (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=d.checkpoint_every,
                   help="steps between checkpoints (default: %(default)s)")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test ELBO and importance-sampled log p(x) of a trained run")
    p.add_argument("run_dir", type=Path, help="a train --out directory")
    p.add_argument("--samples", type=_positive_int, default=1000, help="importance samples K per example (default: %(default)s)")
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
    return TrainConfig(
        data=args.data, test_data=args.test_data, binarize=args.binarize, memory_budget_mb=args.memory_budget_mb,
        likelihood=args.likelihood, latent_dim=args.latent, hidden_dim=args.hidden, depth=args.depth,
        activation=args.activation, decoder_variance=args.decoder_variance, squash_mean=args.squash_mean,
        batch_size=args.batch_size, epochs=args.epochs, samples=args.samples, optimizer=args.optimizer,
        lr=args.lr, weight_decay=args.weight_decay, beta=args.beta, kl_warmup=args.kl_warmup, seed=args.seed,
        device=args.device, amp=args.amp, compile=args.compile, out=args.out, resume=args.resume,
        log_every=args.log_every, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
    )


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from .trainer import train

        result = train(config_from_args(args))
        summary = {"out": str(result.out_dir), "steps": result.steps, "samples_seen": result.samples_seen,
                   "train_elbo": result.train_elbo, "test_elbo": result.test_elbo,
                   "samples_per_s": result.samples_per_s, "wall_time_s": result.wall_time_s}
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
