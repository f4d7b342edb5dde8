"""``OUT/metrics.csv``: one row per logging step, appended as training goes.

Columns: step, samples_seen, train_elbo, test_elbo (empty where not evaluated),
samples_per_s, wall_time_s. A resumed run first drops the rows past its checkpoint's step,
so the file never holds two rows for one step.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .checkpoint import atomic_write

COLUMNS = ("step", "samples_seen", "train_elbo", "test_elbo", "samples_per_s", "wall_time_s")


class MetricsLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def start(self, resume_step: int | None) -> None:
        """A fresh file (``resume_step`` None) or the existing one cut back to ``resume_step``."""
        if resume_step is None or not self.path.exists():
            atomic_write(self.path, lambda f: f.write(",".join(COLUMNS) + "\n"), mode="w")
            return
        kept = [row for row in read_metrics(self.path) if int(row["step"]) <= resume_step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(self.path, lambda f: f.write(buffer.getvalue()), mode="w")

    def append(self, **row: float | int | None) -> None:
        values = ["" if row.get(c) is None else _format(row[c]) for c in COLUMNS]
        with open(self.path, "a", newline="") as f:
            f.write(",".join(values) + "\n")


def _format(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv as dicts of strings."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or list(reader.fieldnames) != list(COLUMNS):
            raise ValueError(f"{path} is not a fastvae metrics file (columns {reader.fieldnames})")
        return list(reader)
