"""Reader and writer for IDX files, the format of MNIST and Fashion-MNIST (raw or gzip-compressed).

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, ``NN`` the number
of dimensions), ``NN`` big-endian uint32 sizes, then the elements, big-endian, row-major.
Everything is validated against the file's length: a truncated or corrupt file raises
``ValueError`` naming the file and what is wrong, never a crash or a silently short array.

Raw (uncompressed) files are memory-mapped, so a file larger than RAM costs no memory until
rows are read; ``.gz`` files are decompressed into RAM (gunzip a large file to stream it).
Compression is detected from the content (gzip magic), not the file name.

>>> images = read_idx("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")  # doctest: +SKIP
>>> images.shape, images.dtype                                                         # doctest: +SKIP
((60000, 28, 28), dtype('uint8'))
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

#: IDX element-type codes -> big-endian numpy dtypes.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
_MAX_DIMS = 16
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX header declares: element dtype (big-endian), shape, and where the data starts."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    return data if data is not None else b""


def _parse_header(f: BinaryIO, path: str) -> IdxHeader:
    magic = _read_exactly(f, 4)
    if len(magic) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(magic)} bytes, too short for the 4-byte magic number")
    if magic[0] != 0 or magic[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file: bad magic number 0x{magic.hex()} (an IDX file starts with two zero bytes, "
            "e.g. 0x00000803 for MNIST images)"
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x} in magic number 0x{magic.hex()} (known: {known})")
    if not 1 <= ndim <= _MAX_DIMS:
        raise ValueError(f"{path}: bad IDX dimension count {ndim} in magic number 0x{magic.hex()} (must be 1..{_MAX_DIMS})")
    sizes = _read_exactly(f, 4 * ndim)
    if len(sizes) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions declared, {len(sizes)} of {4 * ndim} size bytes present")
    shape = struct.unpack(f">{ndim}I", sizes)
    return IdxHeader(dtype=IDX_DTYPES[code], shape=tuple(int(s) for s in shape), offset=4 + 4 * ndim)


def _size_error(path: str, header: IdxHeader, present: int) -> ValueError:
    what = "truncated" if present < header.data_bytes else "size mismatch"
    return ValueError(
        f"{path}: {what}: the header declares shape {header.shape} of {header.dtype.newbyteorder('=').name} = "
        f"{header.data_bytes} data bytes after the {header.offset}-byte header, but the file holds {present}"
    )


def read_idx_header(path: str | os.PathLike) -> IdxHeader:
    """Parse and validate the header of an IDX file (raw or gzip), without reading the data."""
    path = os.fspath(path)
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as f:
                return _parse_header(f, path)
        with open(path, "rb") as f:
            return _parse_header(f, path)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: corrupt gzip stream: {exc}") from exc


def read_idx(path: str | os.PathLike, *, ndim: int | tuple[int, ...] | None = None, mmap: bool = True) -> np.ndarray:
    """Read an IDX file into an array shaped as its header declares.

    Args:
        path: the file, raw or gzip-compressed (detected from its first bytes).
        ndim: the dimension count(s) the caller accepts (e.g. 3 for images, 1 for labels);
            anything else raises ``ValueError``. ``None`` accepts any.
        mmap: for a raw file, return a read-only ``np.memmap`` (big-endian dtype for multi-byte
            elements) instead of reading it; gzip files are always read into RAM (native byte order).

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad magic number, unknown dtype code, bad or unexpected dimension count,
            truncated file, trailing bytes, corrupt gzip stream — the message names the file.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x-idx2-ubyte")
    >>> write_idx(p, np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> read_idx(p).tolist()
    [[0, 1, 2], [3, 4, 5]]
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such IDX file")
    if is_gzip(path):
        array = _read_gzip(path)
    else:
        with open(path, "rb") as f:
            header = _parse_header(f, path)
        present = os.path.getsize(path) - header.offset
        if present != header.data_bytes:
            raise _size_error(path, header, present)
        if mmap and header.data_bytes > 0:
            array = np.memmap(path, dtype=header.dtype, mode="r", offset=header.offset, shape=header.shape)
        else:
            array = np.fromfile(path, dtype=header.dtype, offset=header.offset).reshape(header.shape)
            array = _to_native(array)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if array.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(
                f"{path}: wrong dimension count: the IDX header declares {array.ndim} dimensions {array.shape}, "
                f"expected {want}"
            )
    return array


def _to_native(array: np.ndarray) -> np.ndarray:
    if array.dtype.isnative:
        return array
    return array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))


def _read_gzip(path: str) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            header = _parse_header(f, path)
            try:  # the header's sizes, before any data backs them: a corrupt one may ask for exabytes
                array = np.empty(header.shape, dtype=header.dtype)
            except (MemoryError, ValueError) as exc:
                raise ValueError(
                    f"{path}: the header declares shape {header.shape} of {header.dtype.newbyteorder('=').name} = "
                    f"{header.data_bytes} data bytes, more than this machine can allocate ({exc}); a corrupt header? "
                    "(a genuine file that large: gunzip it, and it is memory-mapped instead)") from None
            view = memoryview(array.reshape(-1).view(np.uint8))
            filled = 0
            while filled < header.data_bytes:
                n = f.readinto(view[filled:])
                if not n:
                    break
                filled += n
            if filled < header.data_bytes:
                raise _size_error(path, header, filled)
            extra = len(f.read(1 << 16))
            if extra:
                while chunk := f.read(1 << 20):
                    extra += len(chunk)
                raise _size_error(path, header, filled + extra)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip stream: {exc}") from exc
    return _to_native(array)


def read_idx_images(path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray:
    """An IDX image file: shape (N, H, W) (or (N, D)); see :func:`read_idx`."""
    return read_idx(path, ndim=(2, 3), mmap=mmap)


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """An IDX label file: shape (N,), read into RAM; see :func:`read_idx`."""
    return np.asarray(read_idx(path, ndim=1, mmap=False))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in ``.gz``.

    The dtype must be one IDX can hold (uint8, int8, int16, int32, float32, float64).
    """
    path = os.fspath(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"{path}: IDX cannot hold dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64")
    if not 1 <= array.ndim <= _MAX_DIMS:
        raise ValueError(f"{path}: IDX holds 1 to {_MAX_DIMS} dimensions, got {array.ndim}")
    if any(s >= 1 << 32 for s in array.shape):
        raise ValueError(f"{path}: dimension sizes must fit in 32 bits, got {array.shape}")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = np.ascontiguousarray(array, dtype=IDX_DTYPES[code])
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header)
        f.write(memoryview(data.reshape(-1).view(np.uint8)))
