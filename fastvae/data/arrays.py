"""``.npy`` arrays, memory-mapped and validated, and helpers shared by every array source.

:func:`load_npy` parses the header itself so that a truncated or corrupt file raises a
``ValueError`` naming the file and the problem (not numpy's ``mmap length is greater than
file size``), then maps the data read-only: a file larger than RAM costs nothing until rows
are read.

>>> import numpy as np, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
>>> np.save(p, np.zeros((10, 4, 4), dtype=np.uint8))
>>> rows = flatten_rows(load_npy(p), p)
>>> rows.shape
(10, 16)
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

_NPY_MAGIC = b"\x93NUMPY"

#: numpy storage dtypes torch cannot hold natively, and what they are widened to.
_WIDEN = {
    np.dtype(np.uint16): np.dtype(np.int32),
    np.dtype(np.uint32): np.dtype(np.int64),
    np.dtype(np.uint64): np.dtype(np.float64),
}


def is_npy(path: str | os.PathLike) -> bool:
    """True when the file starts with the ``.npy`` magic string."""
    with open(path, "rb") as f:
        return f.read(len(_NPY_MAGIC)) == _NPY_MAGIC


def require_numeric(dtype: np.dtype, where: str) -> None:
    """``dtype`` must be bool, integer or real floating point that torch can hold (not numpy's
    extended-precision ``longdouble``); else ``ValueError`` naming ``where``."""
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise ValueError(f"{where}: dtype {dtype} is not a real numeric dtype (need bool, integer or floating point)")
    if dtype.kind == "f" and dtype.itemsize > 8:
        raise ValueError(f"{where}: dtype {dtype} ({dtype.itemsize}-byte extended precision) has no torch equivalent; "
                         "store the data as float64 or float32: np.save(path, a.astype(np.float64))")


def load_npy(path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray:
    """Load a ``.npy`` array, memory-mapped read-only (``np.memmap``) unless ``mmap=False``.

    Validates: the magic string and header, a real numeric dtype, C order, at least 2
    dimensions (examples along the first), at least one example, and the file length against
    the declared shape.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a .npy file, corrupt header, object/complex/structured dtype, Fortran
            order, fewer than 2 dimensions, no examples, truncated or oversized file — the
            message names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such .npy file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:  # 2.0 and 3.0 share the layout (3.0 only allows utf8 field names, irrelevant here)
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except Exception as exc:  # numpy raises ValueError/SyntaxError/... for garbage headers
            raise ValueError(f"{path}: not a valid .npy file: {exc}") from exc
        offset = f.tell()
    require_numeric(dtype, path)
    if len(shape) < 2:
        raise ValueError(f"{path}: array of shape {shape} has {len(shape)} dimension(s); need at least 2 (examples, features...)")
    if fortran and len(shape) > 1 and math.prod(shape[1:]) > 1:
        raise ValueError(
            f"{path}: array is stored in Fortran order, so its rows are not contiguous; "
            "re-save it in C order: np.save(path, np.ascontiguousarray(a))"
        )
    if shape[0] == 0 or math.prod(shape[1:]) == 0:
        raise ValueError(f"{path}: array of shape {shape} holds no examples")
    expected = math.prod(shape) * dtype.itemsize
    present = size - offset
    if present != expected:
        what = "truncated" if present < expected else "size mismatch"
        raise ValueError(
            f"{path}: {what}: the header declares shape {shape} of {dtype} = {expected} data bytes after the "
            f"{offset}-byte header, but the file holds {present}"
        )
    if mmap:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return np.fromfile(path, dtype=dtype, offset=offset).reshape(shape)


def flatten_rows(array: np.ndarray, where: str = "array") -> np.ndarray:
    """View an (N, d1, d2, ...) array as (N, D) rows, D = d1*d2*... (no copy for C-ordered data)."""
    if array.ndim < 2:
        raise ValueError(f"{where}: shape {array.shape} has {array.ndim} dimension(s); need at least 2 (examples, features...)")
    require_numeric(array.dtype, where)
    if array.ndim == 2:
        return array
    return array.reshape(array.shape[0], -1)


def storage_dtype(dtype: np.dtype) -> np.dtype:
    """The native-byte-order numpy dtype a batch of ``dtype`` rows is held in (one torch supports)."""
    native = np.dtype(dtype).newbyteorder("=")
    return _WIDEN.get(native, native)


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype matching :func:`storage_dtype` of ``dtype``."""
    return torch.from_numpy(np.empty(0, dtype=storage_dtype(dtype))).dtype


def to_unit_float(x: torch.Tensor, divisor: float | None) -> torch.Tensor:
    """Stored values -> float32 features: ``x.float() / divisor`` (``divisor`` 255 for uint8 pixels).

    Both batch sources call this on identically shaped batches, so they agree bit for bit.
    ``x`` may be returned converted in place when it is already float32 (callers pass fresh tensors).
    """
    x = x.to(torch.float32)
    if divisor is not None and divisor != 1:
        x = x.div_(divisor)
    return x
