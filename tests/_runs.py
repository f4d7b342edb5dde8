"""A finished tiny run to copy, and byte snapshots of run directories: what the CLI-fault and
run-directory tests compare to prove that nothing was lost."""

from __future__ import annotations

from pathlib import Path

from fastvae.cli import main
from fastvae.run_dir import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
#: A 20-step CPU run on the embedded digits that checkpoints every 5 steps.
TINY = ["--latent", "2", "--hidden", "16", "--samples", "1000", "--batch-size", "50", "--device", "cpu",
        "--log-every", "5", "--eval-every", "10", "--checkpoint-every", "5"]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory`` (recursively) and its bytes; not the lock file, which a killed
    trainer leaves behind (it is not part of the run, and the next trainer reuses it)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def train_tiny_run(out: Path) -> Path:
    """Train :data:`TINY` into ``out`` through the CLI."""
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def copy_run(source: Path, target: Path) -> Path:
    """A byte copy of the run in ``source`` at ``target`` (created)."""
    target.mkdir(parents=True)
    for name, data in snapshot(source).items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
    return target
