"""IDX reader/writer: round trips (raw and gzip) and every kind of corrupt file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fastvae.data.idx import IDX_DTYPES, read_idx, read_idx_header, read_idx_images, read_idx_labels, write_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")
DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 50).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 3, 2)])
def test_round_trip(tmp_path, dtype, suffix, shape):
    a = _sample(dtype, shape)
    path = tmp_path / f"a-idx{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.shape == a.shape
    assert np.array_equal(np.asarray(b, dtype=a.dtype), a)
    assert isinstance(b, np.memmap) == (suffix == "")  # raw files are mapped, gzip read into RAM
    if suffix:
        assert b.dtype.isnative and b.flags.writeable
    header = read_idx_header(path)
    assert header.shape == shape and header.dtype.newbyteorder("=") == np.dtype(dtype)


def test_layout_is_mnist(tmp_path):
    """Bytes on disk are exactly the MNIST layout: magic 0x00000803, big-endian sizes, then pixels."""
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, a)
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and struct.unpack(">3I", raw[4:16]) == (2, 3, 4)
    assert raw[16:] == a.tobytes()
    b = read_idx(path, mmap=False)
    assert not isinstance(b, np.memmap) and np.array_equal(b, a)


def test_gzip_detected_from_content_not_name(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "images.gz"
    write_idx(path, a)
    renamed = path.rename(tmp_path / "images-idx2-ubyte")
    assert np.array_equal(read_idx(renamed), a)


def test_multibyte_raw_is_big_endian_memmap(tmp_path):
    a = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    path = tmp_path / "s-idx2-short"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.dtype(">i2") and np.array_equal(b, a)


def test_images_and_labels_helpers(tmp_path):
    images, labels = tmp_path / "i-idx3-ubyte", tmp_path / "l-idx1-ubyte.gz"
    write_idx(images, np.zeros((3, 2, 2), np.uint8))
    write_idx(labels, np.array([1, 2, 3], np.uint8))
    assert read_idx_images(images).shape == (3, 2, 2)
    assert read_idx_labels(labels).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match=r"l-idx1-ubyte.gz.*wrong dimension count.*1 dimensions"):
        read_idx_images(labels)
    with pytest.raises(ValueError, match=r"i-idx3-ubyte.*wrong dimension count"):
        read_idx_labels(images)


def _valid_bytes(shape=(2, 3, 4), code=0x08) -> bytes:
    dtype = IDX_DTYPES[code]
    header = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    return header + np.arange(int(np.prod(shape)), dtype=dtype).tobytes()


CORRUPT = {
    "empty": (b"", "too short"),
    "short magic": (b"\x00\x00", "too short"),
    "bad magic": (b"\x01" + _valid_bytes()[1:], "bad magic number"),
    "bad magic byte 2": (b"\x00\x07" + _valid_bytes()[2:], "bad magic number"),
    "png, not idx": (b"\x89PNG\r\n\x1a\n" + bytes(40), "bad magic number"),
    "unknown dtype code": (bytes([0, 0, 0x0A, 3]) + _valid_bytes()[4:], "unknown IDX dtype code 0x0a"),
    "zero dims": (bytes([0, 0, 8, 0]) + _valid_bytes()[4:], "bad IDX dimension count 0"),
    "too many dims": (bytes([0, 0, 8, 200]) + bytes(800), "bad IDX dimension count 200"),
    "truncated header": (_valid_bytes()[:10], "truncated IDX header"),
    "truncated data": (_valid_bytes()[:-5], "truncated: the header declares shape \\(2, 3, 4\\)"),
    "header only": (_valid_bytes()[:16], "truncated"),
    "extra bytes": (_valid_bytes() + b"\x00" * 3, "size mismatch"),
    "declared too large": (bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 28, 28) + bytes(100), "truncated"),
    # gzip: the array was allocated as declared first: numpy's "array is too big" / MemoryError, naming no file
    "declared beyond memory": (bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 100000, 100000) + bytes(100),
                               r"header declares shape \(60000, 100000, 100000\)"),
    "declared beyond int64": (bytes([0, 0, 8, 3]) + struct.pack(">3I", 4000000000, 4000000000, 4000000000) + bytes(100),
                              r"header declares shape \(4000000000, 4000000000, 4000000000\)"),
    "dtype size mismatch": (bytes([0, 0, 0x0C]) + _valid_bytes()[3:], "truncated"),  # int32 declared, bytes of uint8
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_corrupt_files_raise_value_error_naming_file(tmp_path, case, suffix):
    data, message = CORRUPT[case]
    path = tmp_path / f"corrupt-{case.replace(' ', '_')}{suffix}"
    if suffix:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_valid_bytes((50, 28, 28)))[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated gzip stream") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_crc(tmp_path):
    blob = bytearray(gzip.compress(_valid_bytes()))
    blob[-8] ^= 0xFF  # CRC32 of the uncompressed data
    path = tmp_path / "crc-idx3-ubyte.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_gzip_garbage_body(tmp_path):
    path = tmp_path / "garbage.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope-idx3-ubyte"):
        read_idx(tmp_path / "nope-idx3-ubyte")


def test_write_rejects_unsupported(tmp_path):
    with pytest.raises(ValueError, match="cannot hold dtype"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="1 to 16 dimensions"):
        write_idx(tmp_path / "x", np.zeros((), np.uint8))


@pytest.mark.skipif(not (FASHION / "train-labels-idx1-ubyte.gz").exists(), reason="needs apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_files():
    assert read_idx_header(FASHION / "train-images-idx3-ubyte.gz").shape == (60000, 28, 28)
    test_images = read_idx_images(FASHION / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_labels(FASHION / "t10k-labels-idx1-ubyte.gz")
    assert test_images.shape == (10000, 28, 28) and test_images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels).tolist()) == set(range(10))
    assert test_images.max() == 255 and 0 < test_images.mean() < 255
