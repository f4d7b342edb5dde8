"""``OUT/metrics.csv``: one row per logging step, appended as training goes.

Columns: step, samples_seen, train_elbo, test_elbo (empty where not evaluated),
samples_per_s, wall_time_s, and at evaluation steps the posterior diagnostics: active_units
(Burda et al.: Var_x E_q[z_j] > 0.01) and kl_per_dim (the mean KL of each latent dimension,
space-separated). A resumed run first drops the rows past its checkpoint's step, so the file
never holds two rows for one step. Files written before the diagnostics columns read as before.
Reading checks every row: a last row cut short by a kill (or a full disk) is dropped with a
warning, any other bad row is an error naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

from .checkpoint import atomic_write, storage_exhausted

COLUMNS = ("step", "samples_seen", "train_elbo", "test_elbo", "samples_per_s", "wall_time_s", "active_units",
           "kl_per_dim")
#: The columns of metrics files written before the diagnostics (their rows read with those empty).
LEGACY_COLUMNS = COLUMNS[:6]


class MetricsLog:
    """A run's ``metrics.csv`` (the module docs): :meth:`start` it once, then :meth:`append` a row per logging step."""

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
        """Append one row of ``COLUMNS`` values given by name (absent or None: an empty cell)."""
        values = ["" if row.get(c) is None else _format(row[c]) for c in COLUMNS]
        try:
            with open(self.path, "a", newline="") as f:
                f.write(",".join(values) + "\n")
        except OSError as exc:  # a row cut short by a full disk is dropped when the file is next read
            full = storage_exhausted(exc, f"appending to {self.path}")
            if full is not None:
                raise full from None
            raise


def _format(value: float | int | list[float]) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(f"{v:.4g}" for v in value)
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv as dicts of strings, each checked.

    A last row that is cut short or unreadable (a run killed while appending it, a disk that
    filled up) is dropped with a warning; any other bad row is a ``ValueError`` naming the file,
    the line and what is wrong.
    """
    path = Path(path)
    with open(path, newline="", errors="replace") as f:
        lines = f.read().splitlines(keepends=True)
    reader = csv.DictReader(lines[:1])
    if reader.fieldnames is None or list(reader.fieldnames) not in (list(COLUMNS), list(LEGACY_COLUMNS)):
        raise ValueError(f"{path} is not a fastvae metrics file (columns {reader.fieldnames})")
    columns = list(reader.fieldnames)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        last = number == len(lines)
        problem = None if line.endswith("\n") else "it is cut short (no line end)"
        if problem is None:
            values = next(csv.reader([line]), [])
            problem = _row_problem(columns, values)
        if problem is not None:
            if last:
                warnings.warn(f"{path}, line {number}: dropped the last row ({problem}), as a run killed while "
                              f"appending it leaves: {line.rstrip()[:80]!r}", stacklevel=2)
                break
            raise ValueError(f"{path}, line {number}: {problem}: {line.rstrip()[:80]!r}")
        row = dict(zip(columns, values))
        rows.append({c: row.get(c) or "" for c in COLUMNS})
    return rows


def _row_problem(columns: list[str], values: list[str]) -> str | None:
    """What is wrong with one row of values, or None."""
    if len(values) != len(columns):
        return f"{len(values)} fields, expected {len(columns)}"
    for column, value in zip(columns, values):
        parse = _PARSERS[column]
        if value == "" and column not in _REQUIRED:
            continue
        try:
            parse(value)
        except ValueError:
            return f"{column} is {value!r}, not a number" if value else f"{column} is empty"
    return None


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.split()]


# How each column parses (a ValueError if it does not), and which may not be empty.
_PARSERS = {"step": int, "samples_seen": int, "train_elbo": float, "test_elbo": float, "samples_per_s": float,
            "wall_time_s": float, "active_units": int, "kl_per_dim": _floats}
_REQUIRED = frozenset({"step", "samples_seen", "wall_time_s"})
