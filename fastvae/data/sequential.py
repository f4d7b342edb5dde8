"""In-order batches over a whole split, for evaluation: contiguous reads, bounded memory.

Each data-parallel rank takes a contiguous block of rows (``N // world_size`` or one more), so
ranks see disjoint parts whose union is the split; sum per-rank totals to combine them.

>>> import numpy as np
>>> data = np.arange(20, dtype=np.uint8).reshape(10, 2)
>>> [tuple(x.shape) for x in sequential_batches(data, 4, "cpu", divisor=255.0)]
[(4, 2), (4, 2), (2, 2)]
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .arrays import flatten_rows, storage_dtype, to_unit_float
from .memory import find_mmap, release_pages

#: Pages of a memory-mapped split are released after this many bytes have been read.
RELEASE_EVERY_BYTES = 64 << 20


def shard_range(num_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``'s contiguous, near-equal block."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    return rank * num_rows // world_size, (rank + 1) * num_rows // world_size


def sequential_batches(
    array: np.ndarray,
    batch_size: int,
    device: torch.device | str,
    *,
    divisor: float | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[torch.Tensor]:
    """Float32 batches of up to ``batch_size`` rows of this rank's block, in file order (last one shorter)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    rows = flatten_rows(array)
    device = torch.device(device)
    dtype = storage_dtype(rows.dtype)
    mm = find_mmap(rows)
    read = 0
    start, stop = shard_range(int(rows.shape[0]), rank, world_size)
    for lo in range(start, stop, batch_size):
        hi = min(stop, lo + batch_size)
        chunk = torch.from_numpy(np.array(rows[lo:hi], dtype=dtype, order="C", copy=True))
        yield to_unit_float(chunk.to(device), divisor)
        read += chunk.numel() * dtype.itemsize
        if mm is not None and read >= RELEASE_EVERY_BYTES:
            release_pages(mm)
            read = 0
