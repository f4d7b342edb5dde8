"""``OUT/metrics.csv``: one row per logging step, appended as training goes.

Columns: step, samples_seen, train_elbo, test_elbo (empty where not evaluated),
samples_per_s, wall_time_s, and at evaluation steps the posterior diagnostics: active_units
(Burda et al.: Var_x E_q[z_j] > 0.01) and kl_per_dim (the mean KL of each latent dimension,
space-separated). A resumed run first drops the rows past its checkpoint's step, so the file
never holds two rows for one step. Files written before the diagnostics columns read as before.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .checkpoint import atomic_write

COLUMNS = ("step", "samples_seen", "train_elbo", "test_elbo", "samples_per_s", "wall_time_s", "active_units",
           "kl_per_dim")
#: The columns of metrics files written before the diagnostics (their rows read with those empty).
LEGACY_COLUMNS = COLUMNS[:6]


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
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(self.path, lambda f: f.write(buffer.getvalue()), mode="w")

    def append(self, **row: float | int | None) -> None:
        values = ["" if row.get(c) is None else _format(row[c]) for c in COLUMNS]
        with open(self.path, "a", newline="") as f:
            f.write(",".join(values) + "\n")


def _format(value: float | int | list[float]) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(f"{v:.4g}" for v in value)
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv as dicts of strings."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or list(reader.fieldnames) not in (list(COLUMNS), list(LEGACY_COLUMNS)):
            raise ValueError(f"{path} is not a fastvae metrics file (columns {reader.fieldnames})")
        return [{c: row.get(c) or "" for c in COLUMNS} for row in reader]
