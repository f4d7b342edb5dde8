"""Host and device memory: budgets, the resident-set size, and giving back pages of mapped files.

A memory-mapped file's pages count in the process's resident set (``VmRSS``) once touched, and
stay there until the kernel reclaims them. Streaming a file larger than RAM through a mapping
therefore calls :func:`release_pages` regularly: ``madvise(MADV_DONTNEED)`` drops the
mapping's page-table entries (the data stays in the page cache, re-read on demand with a minor
fault), so the resident set stays flat whatever the file size.

>>> import numpy as np
>>> budget = default_memory_budget("cpu")   # half of MemAvailable
>>> budget > 0
True
"""

from __future__ import annotations

import mmap

import numpy as np
import torch

#: Fraction of the free device memory a device-resident dataset may take by default.
DEFAULT_DEVICE_MEMORY_FRACTION = 0.5

#: Fraction of ``MemAvailable`` a host-resident copy of a memory-mapped dataset may take by default.
DEFAULT_HOST_MEMORY_FRACTION = 0.5

_FALLBACK_HOST_BUDGET = 2 << 30


def find_mmap(array: np.ndarray) -> mmap.mmap | None:
    """The ``mmap.mmap`` behind a memory-mapped array (an ``np.memmap``, a view of one, or an
    array over a mapping), or ``None`` for an array in ordinary memory."""
    obj: object = array
    for _ in range(64):
        if obj is None:
            return None
        if isinstance(obj, mmap.mmap):
            return obj
        mm = getattr(obj, "_mmap", None)  # np.memmap (and its views) keep their mapping here
        if isinstance(mm, mmap.mmap):
            return mm
        obj = getattr(obj, "base", None)
    return None


def release_pages(array_or_mmap: np.ndarray | mmap.mmap | None) -> bool:
    """Drop the resident pages of a read-only file mapping from this process (``MADV_DONTNEED``).

    Safe for read-only mappings: later reads fault the data back in from the page cache or the
    file. Returns False (and does nothing) for an array that is not memory-mapped, or where
    ``madvise`` is unavailable.
    """
    mm = array_or_mmap if isinstance(array_or_mmap, mmap.mmap) else find_mmap(array_or_mmap)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # closed mapping, or a kernel that refuses: nothing to release
        return False
    return True


def rss_bytes(pid: int | str = "self") -> int:
    """A process's resident-set size (``VmRSS`` from /proc/PID/status; this process by default),
    in bytes; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def available_host_memory() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes, or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_memory_budget(
    device: torch.device | str,
    *,
    device_fraction: float = DEFAULT_DEVICE_MEMORY_FRACTION,
    host_fraction: float = DEFAULT_HOST_MEMORY_FRACTION,
) -> int:
    """How many bytes a resident dataset may take on ``device``.

    CUDA: ``device_fraction`` of the device's free memory (``torch.cuda.mem_get_info``). CPU:
    ``host_fraction`` of ``MemAvailable`` (2 GiB where that is unknown).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * device_fraction)
    avail = available_host_memory()
    return int(avail * host_fraction) if avail is not None else _FALLBACK_HOST_BUDGET


def is_file_backed(array: np.ndarray) -> bool:
    """True when ``array`` reads from a memory-mapped file rather than ordinary memory."""
    return find_mmap(array) is not None

