"""Choosing the batch source: device-resident when the dataset fits, streamed otherwise.

>>> import numpy as np
>>> data = np.random.rand(1000, 64).astype(np.float32)
>>> batches = make_batches(data, "cpu", batch_size=100, seed=0)
>>> type(batches).__name__, batches.num_batches
('DeviceResidentBatches', 10)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .arrays import flatten_rows, storage_dtype
from .binarize import BinarizeMode
from .gather import Reader
from .memory import (
    DEFAULT_DEVICE_MEMORY_FRACTION,
    DEFAULT_HOST_MEMORY_FRACTION,
    default_memory_budget,
    is_file_backed,
)
from .resident import DeviceResidentBatches
from .source import BatchSource
from .streaming import DEFAULT_MAX_MAPPED_BYTES, StreamingBatches

SourceKind = Literal["auto", "resident", "streaming"]


def resident_bytes(array: np.ndarray) -> int:
    """Device bytes a resident copy takes: the rows in storage dtype plus one epoch permutation (int64)."""
    rows = flatten_rows(array)
    return int(rows.shape[0]) * int(rows.shape[1]) * storage_dtype(rows.dtype).itemsize + int(rows.shape[0]) * 8


def choose_source(
    array: np.ndarray,
    device: torch.device | str,
    memory_budget_bytes: int | None = None,
    *,
    device_memory_fraction: float = DEFAULT_DEVICE_MEMORY_FRACTION,
    host_memory_fraction: float = DEFAULT_HOST_MEMORY_FRACTION,
) -> Literal["resident", "streaming"]:
    """``"resident"`` when the dataset fits the budget on ``device``, else ``"streaming"``.

    Budget: ``memory_budget_bytes`` if given; else on CUDA ``device_memory_fraction`` of the free
    device memory, on CPU ``host_memory_fraction`` of ``MemAvailable``. On the CPU an array that is
    already in ordinary memory is always resident (it is used in place, costing nothing more).
    """
    device = torch.device(device)
    if device.type == "cpu" and not is_file_backed(array):
        return "resident"
    if memory_budget_bytes is None:
        memory_budget_bytes = default_memory_budget(
            device, device_fraction=device_memory_fraction, host_fraction=host_memory_fraction
        )
    return "resident" if resident_bytes(array) <= memory_budget_bytes else "streaming"


def make_batches(
    array: np.ndarray,
    device: torch.device | str,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    memory_budget_bytes: int | None = None,
    *,
    divisor: float | None = None,
    binarize: BinarizeMode | str = "none",
    drop_last: bool = True,
    example_shape: tuple[int, ...] | None = None,
    source: SourceKind = "auto",
    prefetch: int = 3,
    reader: Reader | str = "auto",
    device_memory_fraction: float = DEFAULT_DEVICE_MEMORY_FRACTION,
    host_memory_fraction: float = DEFAULT_HOST_MEMORY_FRACTION,
) -> BatchSource:
    """A batch source over ``array``: :class:`DeviceResidentBatches` when it fits, else :class:`StreamingBatches`.

    Both give the same batches for the same arguments, so the choice changes speed and memory, never
    results. ``example_shape`` shapes each batch (M, *example_shape) instead of (M, D) rows.
    ``source`` forces one (``"resident"``/``"streaming"``); see :func:`choose_source` for the
    budget. ``prefetch`` and ``reader`` configure the streaming source (see
    :class:`~fastvae.data.streaming.StreamingBatches`); with ``reader="mmap"`` it keeps the file's
    mapped pages under a quarter of the budget (at most 64 MiB).
    """
    if source not in ("auto", "resident", "streaming"):
        raise ValueError(f"source must be 'auto', 'resident' or 'streaming', got {source!r}")
    device = torch.device(device)
    if source == "auto":
        source = choose_source(
            array,
            device,
            memory_budget_bytes,
            device_memory_fraction=device_memory_fraction,
            host_memory_fraction=host_memory_fraction,
        )
    common = dict(divisor=divisor, binarize=binarize, drop_last=drop_last, example_shape=example_shape)
    if source == "resident":
        return DeviceResidentBatches(array, device, batch_size, seed, rank, world_size, **common)
    max_mapped = DEFAULT_MAX_MAPPED_BYTES
    if memory_budget_bytes is not None:
        max_mapped = max(1, min(max_mapped, memory_budget_bytes // 4))
    return StreamingBatches(
        array,
        device,
        batch_size,
        seed,
        rank,
        world_size,
        prefetch=prefetch,
        reader=reader,
        max_mapped_bytes=max_mapped,
        **common,
    )
