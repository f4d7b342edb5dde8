"""Every row of a data file checked before training: NaN/inf refused, the value range known exactly.

A sample of rows would miss the one NaN (binarised silently to 0) or the one 1.5 in "unit" data
(Bernoulli with x outside [0, 1]), so the whole file is scanned: in chunks of about
``CHUNK_BYTES``, dropping a memory map's pages after each (resident memory stays bounded for a
file larger than RAM), two numpy reductions (min, max) per chunk, the offending row located
only in a chunk that has one; the same pass hashes the rows (SHA-256 of their dtype, shape and
bytes: the data's identity, which ``--resume`` compares). The summary is cached per file, keyed by its identity (real
path, device, inode, size, mtime) and the rows' dtype and shape, in ``$FASTVAE_CACHE_DIR`` (by
default ``$XDG_CACHE_HOME/fastvae/data-checks``, i.e. ``~/.cache/fastvae/data-checks``), one
small JSON file per data file, written atomically; an unwritable cache only costs the rescan.

>>> summary = summarize_rows(rows, "train.npy")
>>> summary.require_finite("train.npy")            # ValueError naming the row and the value
>>> summary.outside_unit("train.npy")              # None, or "row 17 of train.npy holds 1.5"
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .memory import release_pages

#: Bytes of rows reduced at a time (a chunk is at least one row).
CHUNK_BYTES = 64 << 20
#: Bump when the summary's meaning changes: older cache files are then ignored.
SUMMARY_VERSION = 2


@dataclass(frozen=True)
class ValueSummary:
    """What a scan of every row found. Each ``(row, value)`` is the first such row's index in
    the array (the file's example index) and one offending value of it."""

    rows: int
    low: float  # over the finite values; +inf for no rows
    high: float
    nonfinite: tuple[int, float] | None = None
    below_zero: tuple[int, float] | None = None
    above_one: tuple[int, float] | None = None
    digest: str | None = None  # "sha256:<hex>" of every row (None when the scan stopped at a non-finite value)

    def require_finite(self, where: str) -> None:
        """``ValueError`` naming ``where``, the row and the value if any value is NaN or infinite."""
        if self.nonfinite is not None:
            row, value = self.nonfinite
            raise ValueError(f"{where}: data contains NaN or infinite values: row {row} holds {value} (fix or drop that row)")

    @property
    def unit(self) -> bool:
        """All values in [0, 1]."""
        return self.below_zero is None and self.above_one is None

    def outside_unit(self, where: str) -> str | None:
        """Where the values first leave [0, 1] ("row 17 of FILE holds 1.5"), or None."""
        found = [f for f in (self.below_zero, self.above_one) if f is not None]
        if not found:
            return None
        row, value = min(found)
        return f"row {row} of {where} holds {value:g}"


def summarize_rows(rows: np.ndarray, path: str | os.PathLike | None = None) -> ValueSummary:
    """The :class:`ValueSummary` of every row of ``rows`` (N, D), cached for ``path``'s file."""
    key = _cache_key(rows, path) if path is not None else None
    if key is not None:
        cached = _read_cache(key)
        if cached is not None:
            return cached
    summary = scan_rows(rows)
    if key is not None:
        _write_cache(key, summary)
    return summary


def scan_rows(rows: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> ValueSummary:
    """Scan every row (see the module docs); stops at the first non-finite value."""
    n = int(rows.shape[0])
    if n == 0 or rows.size == 0:
        return ValueSummary(n, math.inf, -math.inf)
    step = max(1, chunk_bytes // max(1, rows[:1].nbytes))
    low, high = math.inf, -math.inf
    below = above = None
    digest = rows_digest_start(rows)
    for start in range(0, n, step):
        chunk = np.asarray(rows[start:start + step]).reshape(min(step, n - start), -1)
        digest.update(np.ascontiguousarray(chunk).view(np.uint8).reshape(-1).data)
        if chunk.dtype == np.bool_:
            chunk = chunk.view(np.uint8)
        c_low, c_high = float(chunk.min()), float(chunk.max())  # NaN if any NaN
        if not (math.isfinite(c_low) and math.isfinite(c_high)):
            row, value = _first(chunk, ~np.isfinite(chunk))
            release_pages(rows)
            return ValueSummary(n, low, high, (start + row, value), below, above)
        if below is None and c_low < 0:
            row, value = _first(chunk, chunk < 0)
            below = (start + row, value)
        if above is None and c_high > 1:
            row, value = _first(chunk, chunk > 1)
            above = (start + row, value)
        low, high = min(low, c_low), max(high, c_high)
        release_pages(rows)  # a memory map's pages: dropped after each chunk, resident memory stays flat
    return ValueSummary(n, low, high, None, below, above, "sha256:" + digest.hexdigest())


#: The largest finite float32: fastvae's features are float32 (:func:`~fastvae.data.arrays.to_unit_float`).
FLOAT32_MAX = float(np.finfo(np.float32).max)


def require_float32_range(rows: np.ndarray, summary: ValueSummary, where: str, chunk_bytes: int = CHUNK_BYTES) -> None:
    """``ValueError`` naming ``where``, the row and the value if a (finite) stored value is beyond
    float32's range: float64 data holding 1e300 would become inf when converted to features
    (a non-finite loss naming no row in training, a test ELBO of -inf). The rows are scanned
    again only when ``summary`` says there is such a value."""
    if max(-summary.low, summary.high) <= FLOAT32_MAX:
        return
    n = int(rows.shape[0])
    step = max(1, chunk_bytes // max(1, rows[:1].nbytes))
    for start in range(0, n, step):
        chunk = np.asarray(rows[start:start + step]).reshape(min(step, n - start), -1)
        beyond = np.abs(chunk) > FLOAT32_MAX
        release_pages(rows)
        if beyond.any():
            row, value = _first(chunk, beyond)
            raise ValueError(f"{where}: row {start + row} holds {value:g}, beyond the range of float32 "
                             f"(+-{FLOAT32_MAX:.4g}), the precision fastvae trains in; rescale the data")


def rows_digest_start(rows: np.ndarray):
    """A SHA-256 fed with the rows' dtype and shape: feed it their bytes, in order, to identify them."""
    digest = hashlib.sha256(f"{np.dtype(rows.dtype).str}{tuple(int(s) for s in rows.shape)};".encode())
    return digest


def rows_digest(rows: np.ndarray) -> str:
    """``"sha256:<hex>"`` of small in-memory rows, as :func:`scan_rows` computes it for a file."""
    digest = rows_digest_start(rows)
    digest.update(np.ascontiguousarray(rows).view(np.uint8).reshape(-1).data)
    return "sha256:" + digest.hexdigest()


def _first(chunk: np.ndarray, mask: np.ndarray) -> tuple[int, float]:
    """The first row of ``chunk`` where ``mask`` holds, and its first such value."""
    row = int(mask.any(axis=1).argmax())
    return row, float(chunk[row][mask[row]][0])


# ---- the cache ----------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where summaries are cached: ``$FASTVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)/fastvae/data-checks."""
    if os.environ.get("FASTVAE_CACHE_DIR"):
        return Path(os.environ["FASTVAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastvae" / "data-checks"


def _cache_key(rows: np.ndarray, path: str | os.PathLike) -> dict | None:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return {"version": SUMMARY_VERSION, "path": real, "device": st.st_dev, "inode": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "dtype": str(rows.dtype), "shape": [int(s) for s in rows.shape]}


def _cache_file(key: dict) -> Path:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / f"{name}.json"


def _read_cache(key: dict) -> ValueSummary | None:
    try:
        entry = json.loads(_cache_file(key).read_text())
        if entry.get("key") != key:
            return None
        fields = entry["summary"]
        for name in ("nonfinite", "below_zero", "above_one"):
            if fields[name] is not None:
                fields[name] = (int(fields[name][0]), float(fields[name][1]))
        return ValueSummary(**fields)
    except (OSError, ValueError, KeyError, TypeError):  # absent, unreadable, or from another version
        return None


def _write_cache(key: dict, summary: ValueSummary) -> None:
    from ..checkpoint import atomic_write

    text = json.dumps({"key": key, "summary": asdict(summary)}, allow_nan=True)
    try:
        atomic_write(_cache_file(key), lambda f: f.write(text), mode="w")
    except OSError:  # a read-only or full cache costs a rescan next time, nothing else
        pass
