""".npy loading: memory-mapped, validated, corrupt files named in the error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvae.data.arrays import flatten_rows, load_npy, storage_dtype, to_unit_float
from fastvae.data.memory import find_mmap, release_pages


def test_npy_is_memory_mapped_and_exact(tmp_path):
    a = np.random.default_rng(0).random((20, 3, 5)).astype(np.float32)
    path = tmp_path / "a.npy"
    np.save(path, a)
    b = load_npy(path)
    assert isinstance(b, np.memmap) and not b.flags.writeable
    assert np.array_equal(b, a)
    rows = flatten_rows(b, str(path))
    assert rows.shape == (20, 15) and np.shares_memory(rows, b) and find_mmap(rows) is not None
    assert release_pages(rows) is True and np.array_equal(rows, a.reshape(20, 15))  # pages come back
    c = load_npy(path, mmap=False)
    assert not isinstance(c, np.memmap) and np.array_equal(c, a)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float64, np.bool_, ">f4", ">i8"])
def test_numeric_dtypes(tmp_path, dtype):
    a = (np.arange(24).reshape(6, 4) % 2).astype(dtype)
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(load_npy(tmp_path / "a.npy"), a)


def test_version_2_header(tmp_path):
    a = np.zeros((3, 2), np.float32)
    with open(tmp_path / "v2.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=(2, 0))
    assert load_npy(tmp_path / "v2.npy").shape == (3, 2)


INVALID = {  # file name: (array or raw bytes, message)
    "one_dim.npy": (np.zeros(5), "has 1 dimension"),
    "scalar.npy": (np.zeros(()), "has 0 dimension"),
    "object.npy": (np.array([[1, None]], dtype=object), "not a real numeric dtype"),
    "complex.npy": (np.zeros((2, 2), np.complex64), "not a real numeric dtype"),
    "strings.npy": (np.array([["a", "b"]]), "not a real numeric dtype"),
    # numpy's extended precision: accepted, then a torch TypeError naming no file when batched
    "longdouble.npy": (np.zeros((2, 2), np.longdouble), "no torch equivalent"),
    "fortran.npy": (np.asfortranarray(np.zeros((3, 4))), "Fortran order"),
    "no_rows.npy": (np.zeros((0, 4)), "holds no examples"),
    "no_cols.npy": (np.zeros((4, 0)), "holds no examples"),
    "garbage.npy": (b"hello world, not numpy", "not a valid .npy file"),
    "empty.npy": (b"", "not a valid .npy file"),
    "bad_header.npy": (b"\x93NUMPY\x01\x00\x10\x00{'descr': oops }\n", "not a valid .npy file"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_npy(tmp_path, name):
    content, message = INVALID[name]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content, allow_pickle=True)
    with pytest.raises(ValueError, match=message) as info:
        load_npy(path)
    assert str(path) in str(info.value)


def test_truncated_and_oversized(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((100, 10), np.float32))
    blob = path.read_bytes()
    path.write_bytes(blob[:-7])
    with pytest.raises(ValueError, match=r"truncated: the header declares shape \(100, 10\)") as info:
        load_npy(path)
    assert str(path) in str(info.value)
    path.write_bytes(blob + b"xx")
    with pytest.raises(ValueError, match="size mismatch") as info:
        load_npy(path)
    assert str(path) in str(info.value)


def test_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.npy"):
        load_npy(tmp_path / "none.npy")


def test_storage_dtype_and_conversion():
    assert storage_dtype(np.dtype(">i2")) == np.int16
    assert storage_dtype(np.dtype(np.uint16)) == np.int32
    x = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    y = to_unit_float(x, 255.0)
    assert y.dtype == torch.float32 and y.min() == 0 and y.max() == 1
    assert torch.equal(to_unit_float(torch.tensor([[0, 16]], dtype=torch.uint8), 16.0), torch.tensor([[0.0, 1.0]]))
