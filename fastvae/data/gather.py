"""Gathering a batch of rows from a large array: the streaming source's readers.

Two ways to read rows of a memory-mapped file, with different costs:

* ``"pread"`` — ``os.preadv`` straight from the file into a buffer, one call per run of
  consecutive rows. The page cache is not mapped into the process, so the resident set
  does not grow at all, and a row costs one page of I/O (no read-around): the right choice for
  files larger than memory. Python-level cost: a few microseconds per row (about 3e5
  784-byte rows/s per thread from the page cache on a 2-core CPU).
* ``"mmap"`` — ``np.take`` on the mapping (vectorised, the GIL released). Several times
  faster when the file is in the page cache, but every touched row maps its page-cache folio
  into the process — up to 2 MiB (a PMD) per row on kernels with large folios — and a cold
  read fetches the whole folio. The pages are released (``MADV_DONTNEED``) after every
  ``max_mapped_bytes`` worth of rows (counted at that worst case), which bounds the resident
  set by about ``max_mapped_bytes`` + one row's folio, not by the file size.

Arrays in ordinary memory are gathered with ``np.take``.

>>> import numpy as np, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
>>> np.save(p, np.arange(12, dtype=np.int16).reshape(6, 2))
>>> a = np.load(p, mmap_mode="r")
>>> g = make_gatherer(a, batch_size=3, reader="pread")
>>> g.gather(np.array([1, 4, 5])).tolist()
[[2, 3], [8, 9], [10, 11]]
>>> g.close()
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from .memory import find_mmap, release_pages

Reader = Literal["auto", "pread", "mmap"]
READERS: tuple[str, ...] = ("auto", "pread", "mmap")

#: The most a single page fault may map of a file: a PMD (2 MiB with 4 KiB pages), the largest
#: page-cache folio the kernel maps at once.
MAX_FAULT_MAP_BYTES = 2 << 20


def mapped_bytes_per_row(row_bytes: int) -> int:
    """Upper bound on what reading one row of ``row_bytes`` through a mapping adds to the resident set."""
    return (-(-row_bytes // MAX_FAULT_MAP_BYTES) + 1) * MAX_FAULT_MAP_BYTES


@dataclass(frozen=True)
class FileRows:
    """Where the rows of a memory-mapped (N, D) array lie in its file."""

    path: str
    offset: int  # file position of row 0
    row_stride: int  # bytes from one row to the next
    dtype: np.dtype  # element dtype as stored (maybe big-endian)
    shape: tuple[int, int]

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * self.dtype.itemsize


def locate_file_rows(array: np.ndarray) -> FileRows | None:
    """The file position of an (N, D) ``np.memmap`` (or a view of one) with contiguous rows; None when
    it cannot be located, or when reading its first and last rows from the file does not give
    back exactly what the mapping holds."""
    mm = find_mmap(array)
    filename = getattr(array, "filename", None)
    base_offset = getattr(array, "offset", None)
    if mm is None or filename is None or base_offset is None or array.ndim != 2 or array.shape[0] == 0:
        return None
    if array.strides[1] != array.dtype.itemsize or array.strides[0] <= 0:
        return None
    try:
        mm_address = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    except (ValueError, TypeError, BufferError):
        return None
    mapping_start = base_offset - base_offset % mmap.ALLOCATIONGRANULARITY  # as np.memmap maps it
    position = mapping_start + array.__array_interface__["data"][0] - mm_address
    rows = FileRows(str(filename), int(position), int(array.strides[0]), array.dtype, (int(array.shape[0]), int(array.shape[1])))
    try:
        reader = PreadGatherer(rows, batch_size=1)
        try:
            for i in (0, rows.shape[0] - 1):
                if reader.gather(np.array([i])).tobytes() != np.ascontiguousarray(array[i : i + 1]).tobytes():
                    return None
        finally:
            reader.close()
            release_pages(mm)
    except (OSError, ValueError):
        return None
    return rows


class Gatherer(Protocol):
    def gather(self, sorted_index: np.ndarray) -> np.ndarray:
        """The rows at ``sorted_index`` (ascending), as an (m, D) array valid until the next call."""

    def close(self) -> None: ...


class PreadGatherer:
    """Rows read with ``os.preadv`` into a reused buffer (see the module docs)."""

    def __init__(self, rows: FileRows, batch_size: int) -> None:
        self.rows = rows
        self.fd = os.open(rows.path, os.O_RDONLY)
        self.buffer = np.empty((batch_size, rows.shape[1]), dtype=rows.dtype)
        self.view = memoryview(self.buffer.reshape(-1).view(np.uint8))

    def _read(self, start: int, stop: int, position: int) -> None:
        done = start
        while done < stop:
            n = os.preadv(self.fd, [self.view[done:stop]], position + (done - start))
            if n <= 0:
                raise ValueError(
                    f"{self.rows.path}: short read at byte {position + done - start}: the file is shorter than "
                    f"its {self.rows.shape[0]} rows (truncated since it was opened?)"
                )
            done += n

    def gather(self, sorted_index: np.ndarray) -> np.ndarray:
        m = len(sorted_index)
        rb, stride = self.rows.row_bytes, self.rows.row_stride
        if stride == rb:  # rows back to back: one read per run of consecutive rows
            first = np.flatnonzero(np.diff(sorted_index, prepend=-2) != 1)
            starts = (first * rb).tolist()
            stops = (np.append(first[1:], m) * rb).tolist()
            positions = (sorted_index[first] * stride + self.rows.offset).tolist()
        else:
            starts = (np.arange(m) * rb).tolist()
            stops = (np.arange(1, m + 1) * rb).tolist()
            positions = (sorted_index * stride + self.rows.offset).tolist()
        fd, view, preadv = self.fd, self.view, os.preadv
        for start, stop, position in zip(starts, stops, positions):
            n = preadv(fd, [view[start:stop]], position)
            if n != stop - start:  # a short read: finish it, or fail naming the file
                self._read(start + max(n, 0), stop, position + max(n, 0))
        return self.buffer[:m]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TakeGatherer:
    """Rows gathered with ``np.take``; for a mapping, its pages are released every ``max_mapped_bytes``."""

    def __init__(self, array: np.ndarray, max_mapped_bytes: int) -> None:
        self.array = array
        self.mm = find_mmap(array)
        per_row = mapped_bytes_per_row(array.shape[1] * array.dtype.itemsize)
        self.rows_per_release = max(1, max_mapped_bytes // per_row)
        self.pending = 0

    def gather(self, sorted_index: np.ndarray) -> np.ndarray:
        if self.mm is None:
            return np.take(self.array, sorted_index, axis=0)
        out = np.empty((len(sorted_index), self.array.shape[1]), dtype=self.array.dtype)
        done = 0
        while done < len(sorted_index):
            k = min(len(sorted_index) - done, self.rows_per_release - self.pending)
            np.take(self.array, sorted_index[done : done + k], axis=0, out=out[done : done + k], mode="clip")
            done += k
            self.pending += k
            if self.pending >= self.rows_per_release:
                release_pages(self.mm)
                self.pending = 0
        return out

    def close(self) -> None:
        if self.mm is not None:
            release_pages(self.mm)


def resolve_reader(array: np.ndarray, reader: Reader | str) -> tuple[str, FileRows | None]:
    """The reader ``"auto"`` means for ``array`` (pread for a locatable file, else mmap/take)."""
    if reader not in READERS:
        raise ValueError(f"reader must be one of {', '.join(READERS)}, got {reader!r}")
    if reader == "mmap" or find_mmap(array) is None:
        return "mmap", None
    if not hasattr(os, "preadv"):  # not on Windows
        if reader == "pread":
            raise ValueError("reader='pread' needs os.preadv, which this platform lacks")
        return "mmap", None
    rows = locate_file_rows(array)
    if rows is None:
        if reader == "pread":
            raise ValueError("reader='pread' needs an np.memmap of a file with contiguous rows")
        return "mmap", None
    return "pread", rows


def make_gatherer(
    array: np.ndarray,
    batch_size: int,
    reader: Reader | str = "auto",
    *,
    max_mapped_bytes: int = 64 << 20,
    rows: FileRows | None = None,
) -> Gatherer:
    """A gatherer for ``array`` (see the module docs); ``rows`` skips locating the file again."""
    if rows is None:
        kind, rows = resolve_reader(array, reader)
    else:
        kind = "pread"
    if kind == "pread":
        assert rows is not None
        return PreadGatherer(rows, batch_size)
    return TakeGatherer(array, max_mapped_bytes)
