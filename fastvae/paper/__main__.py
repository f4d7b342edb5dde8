"""``python -m fastvae.paper --budget quick --out DIR``: reproduce the AEVB paper's experiments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .budgets import BUDGETS


DESCRIPTION = ("Reproduce Kingma & Welling (2014): AEVB vs wake-sleep vs Monte Carlo EM, the latent-size sweep, "
               "2-D manifolds, and an exact PPCA check. Writes DIR/report.md with PNG figures.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The paper command's flags (shared by ``python -m fastvae.paper`` and ``fastvae paper``)."""
    p.add_argument("--budget", choices=tuple(BUDGETS), default="quick",
                   help="tiny: seconds (CI); quick: ~10 min on 2 CPU cores; full: paper-sized, for a GPU (default: quick)")
    p.add_argument("--out", type=Path, required=True, help="output directory for report.md, figures and results.json")
    p.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--data", default=None,
                   help="binary dataset: fashion-mnist, digits, a directory of MNIST-format IDX files (e.g. real MNIST), "
                        "or an array file (default: fashion-mnist if installed, else digits)")
    p.add_argument("--real-data", default=None,
                   help="real-valued dataset, e.g. a Frey Face .npy in [0, 1] (default: the embedded digits, dequantised)")
    p.add_argument("--experiments", default="1,2,3,4", help="comma-separated subset of 1,2,3,4 (default: all)")
    p.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (default: torch's choice)")


def _threads(text: str) -> int:
    """``--threads``: an integer from 1 to ``MAX_THREADS``."""
    from ..train_config import MAX_THREADS

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"--threads must be an integer from 1 to {MAX_THREADS}, got {text!r}")
    return value


def _device(text: str) -> str:
    """``--device``: a torch device string for a device this machine has."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"--device must be a torch device such as cpu or cuda, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        # meta, mps, xpu...: the experiments only run on cpu and cuda; the others failed deep inside
        # (e.g. "Tensor.item() cannot be called on meta tensors") after the first experiment started
        raise argparse.ArgumentTypeError(f"--device must be cpu or cuda (cuda:N), got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"--device {text}: no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastvae.paper", description=DESCRIPTION)
    add_arguments(p)
    return p


def run_from_args(args: argparse.Namespace) -> Path:
    """Run the experiments the parsed flags ask for; ValueError for a bad --experiments list."""
    try:
        experiments = tuple(int(e) for e in args.experiments.split(",") if e.strip())
    except ValueError:
        raise ValueError(f"--experiments must be comma-separated integers, got {args.experiments!r}") from None
    from .run import run_paper

    return run_paper(args.budget, args.out, device=args.device, data=args.data, real=args.real_data,
                     experiments=experiments, threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = run_from_args(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
