"""Row readers of the streaming source: pread and mmap agree with the array, for views too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvae.data import StreamingBatches, DeviceResidentBatches
from fastvae.data.gather import locate_file_rows, make_gatherer, resolve_reader


@pytest.fixture
def mapped(tmp_path):
    a = np.random.default_rng(0).integers(-1000, 1000, size=(300, 7)).astype(">i4")
    np.save(tmp_path / "a.npy", a)
    return np.load(tmp_path / "a.npy", mmap_mode="r")


@pytest.mark.parametrize("view", ["whole", "tail", "head", "strided"])
@pytest.mark.parametrize("reader", ["pread", "mmap"])
def test_readers_match_the_array(mapped, view, reader):
    array = {"whole": mapped, "tail": mapped[123:], "head": mapped[:50], "strided": mapped[5::3]}[view]
    g = make_gatherer(array, batch_size=40, reader=reader, max_mapped_bytes=1)
    try:
        rng = np.random.default_rng(1)
        for size in (1, 17, 40):
            index = np.sort(rng.choice(len(array), size, replace=False))
            assert np.array_equal(g.gather(index), array[index])
        assert np.array_equal(g.gather(np.arange(min(40, len(array)))), array[:40])  # one run
    finally:
        g.close()


def test_auto_reader(mapped, tmp_path):
    assert resolve_reader(mapped, "auto")[0] == "pread"
    assert resolve_reader(np.asarray(mapped).copy(), "auto")[0] == "mmap"  # in RAM: np.take
    with pytest.raises(ValueError, match="reader must be one of"):
        resolve_reader(mapped, "fast")
    rows = locate_file_rows(mapped[10:])
    assert rows is not None and rows.offset == locate_file_rows(mapped).offset + 10 * 28


def test_streaming_readers_equal_resident(mapped):
    kw = dict(seed=3, divisor=None, drop_last=False)
    with DeviceResidentBatches(mapped[7:], "cpu", 32, **kw) as r, \
            StreamingBatches(mapped[7:], "cpu", 32, reader="pread", **kw) as p, \
            StreamingBatches(mapped[7:], "cpu", 32, reader="mmap", **kw) as m:
        assert p.reader == "pread" and m.reader == "mmap"
        for x, y, z in zip(r, p, m):
            assert torch.equal(x, y) and torch.equal(x, z)


def test_file_truncated_under_the_reader(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((1000, 64), np.float32))
    array = np.load(path, mmap_mode="r")
    with StreamingBatches(array, "cpu", 100, seed=0, reader="pread") as src:
        next(iter(src))
        src.close()
        with open(path, "r+b") as f:
            f.truncate(4096)
        with pytest.raises(ValueError, match="short read") as info:
            list(src)
        assert str(path) in str(info.value)
