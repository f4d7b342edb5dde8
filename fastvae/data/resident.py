"""Batches from a dataset held whole on the device: each batch is one ``index_select`` there.

The dataset is copied once, in its storage dtype (uint8 pixels stay 1 byte each), in 64 MiB
chunks whose mapped pages are released as it goes, so uploading a memory-mapped file to a GPU
never holds it in host memory. Once per epoch the epoch's permutation (CPU, see
:mod:`fastvae.data.schedule`) is copied to the device, asynchronously; after that a
batch costs a slice of that tensor, an ``index_select``, the float conversion and (if asked)
the binarisation — a few kernel launches, no host work, no DataLoader, no host-device sync.

On the CPU an array already in ordinary memory is used in place (no copy).

>>> import numpy as np, torch
>>> data = np.arange(40, dtype=np.float32).reshape(10, 4)
>>> batches = DeviceResidentBatches(data, "cpu", batch_size=5, seed=0)
>>> [tuple(x.shape) for x in batches]
[(5, 4), (5, 4)]
"""

from __future__ import annotations

import numpy as np
import torch

from .arrays import storage_dtype, torch_dtype
from .binarize import BinarizeMode
from .memory import find_mmap, release_pages
from .schedule import epoch_permutation
from .source import BatchSource

#: Bytes per chunk when copying a dataset to its device.
UPLOAD_CHUNK_BYTES = 64 << 20


def rows_to_device(array: np.ndarray, device: torch.device | str, *, chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> torch.Tensor:
    """Copy an (N, D) array to ``device`` in its storage dtype, chunk by chunk.

    Host memory stays at one chunk beyond the result: the pages of a memory-mapped source are
    released after each chunk. On the CPU an ordinary, C-contiguous, native, writable array of a
    dtype torch holds is returned as a tensor sharing its memory.
    """
    device = torch.device(device)
    if array.ndim != 2:
        raise ValueError(f"rows_to_device expects (N, D) rows, got shape {array.shape}")
    np_dtype = storage_dtype(array.dtype)
    mm = find_mmap(array)
    if (
        device.type == "cpu"
        and mm is None
        and array.dtype == np_dtype
        and array.flags.c_contiguous
        and array.flags.writeable
    ):
        return torch.from_numpy(array)
    n, d = array.shape
    out = torch.empty((n, d), dtype=torch_dtype(array.dtype), device=device)
    rows_per_chunk = max(1, chunk_bytes // max(1, d * np_dtype.itemsize))
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        chunk = np.array(array[start:stop], dtype=np_dtype, order="C", copy=True)
        out[start:stop].copy_(torch.from_numpy(chunk))
        if mm is not None:
            release_pages(mm)
    return out


class DeviceResidentBatches(BatchSource):
    """Batches index-selected from a device-resident copy of the dataset.

    Same arguments as :class:`~fastvae.data.source.BatchSource`, plus ``data`` to pass an
    already uploaded (N, D) tensor (e.g. shared by several sources) instead of copying ``array``.
    """

    def __init__(
        self,
        array: np.ndarray,
        device: torch.device | str,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        divisor: float | None = None,
        binarize: BinarizeMode | str = "none",
        drop_last: bool = True,
        example_shape: tuple[int, ...] | None = None,
        data: torch.Tensor | None = None,
    ) -> None:
        super().__init__(
            array, device, batch_size, seed, rank, world_size, divisor=divisor, binarize=binarize, drop_last=drop_last,
            example_shape=example_shape,
        )
        if data is None:
            data = rows_to_device(self.array, self.device)
        elif tuple(data.shape) != tuple(self.array.shape) or data.device != self.device:
            raise ValueError(
                f"data has shape {tuple(data.shape)} on {data.device}, expected {tuple(self.array.shape)} on {self.device}"
            )
        self.data = data
        self._perm: torch.Tensor | None = None
        self._perm_epoch: int | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            perm = epoch_permutation(self.schedule.num_examples, self.seed, epoch)
            if self.device.type == "cuda":
                # From pinned memory, asynchronously: no host-device sync at epoch boundaries (the
                # caching host allocator keeps the pinned block until the copy has completed).
                perm = perm.pin_memory()
            self._perm = perm.to(self.device, non_blocking=True)  # once per epoch
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def _fetch(self, epoch: int, step: int) -> torch.Tensor:
        start, stop = self.schedule.rows(step)
        return self.data.index_select(0, self._permutation(epoch)[start:stop])
