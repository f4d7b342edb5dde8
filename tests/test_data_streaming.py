"""The streaming source's thread: errors reach the consumer, shutdown never hangs, RSS stays bounded."""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
import torch

from fastvae.data import StreamingBatches, make_batches, rss_bytes
from fastvae.data import streaming as streaming_module
from fastvae.data.gather import mapped_bytes_per_row

JOIN_S = 10.0


def _mapped(tmp_path, n=2000, d=16):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((n, d)).astype(np.float32))
    return np.load(path, mmap_mode="r")


def _join_in_thread(fn) -> bool:
    """Run ``fn`` in a helper thread; True when it returned within JOIN_S (no hang)."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(JOIN_S)
    return not t.is_alive()


def test_worker_exception_propagates(tmp_path, monkeypatch):
    real = streaming_module.epoch_permutation

    def failing(n, seed, epoch):
        if epoch == 1:
            raise OSError(f"disk gone at epoch {epoch}")
        return real(n, seed, epoch)

    monkeypatch.setattr(streaming_module, "epoch_permutation", failing)
    src = StreamingBatches(_mapped(tmp_path), "cpu", 100, seed=0, prefetch=2)
    assert len(list(src)) == 20  # epoch 0 is fine
    with pytest.raises(OSError, match="disk gone at epoch 1"):
        next(iter(src))
    assert src._prefetcher is None  # stopped and joined
    assert not any(t.name.startswith("fastvae-prefetch") and t.is_alive() for t in threading.enumerate())
    src.close()


def test_keyboard_interrupt_in_worker_reaches_consumer(tmp_path, monkeypatch):
    def interrupted(n, seed, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(streaming_module, "epoch_permutation", interrupted)
    with StreamingBatches(_mapped(tmp_path), "cpu", 100, seed=0) as src:
        with pytest.raises(KeyboardInterrupt):
            next(iter(src))


def test_early_break_then_close_does_not_hang(tmp_path):
    src = StreamingBatches(_mapped(tmp_path), "cpu", 10, seed=0, prefetch=2)
    for i, _ in enumerate(src):
        if i == 2:
            break  # the thread is now blocked: every buffer is full
    thread = src._prefetcher.thread
    assert thread.is_alive()
    assert _join_in_thread(src.close)
    assert not thread.is_alive()
    assert _join_in_thread(src.close)  # idempotent
    # iteration restarts from where it stopped
    assert src.state_dict()["position"] == 3
    assert len(list(src)) == 200 - 3
    src.close()


def test_exception_in_consumer_then_collection_stops_thread(tmp_path):
    src = StreamingBatches(_mapped(tmp_path), "cpu", 10, seed=0)

    def train():
        for x in src:
            raise RuntimeError("loss is nan")

    with pytest.raises(RuntimeError, match="loss is nan"):
        train()
    thread = src._prefetcher.thread
    del src
    gc.collect()
    thread.join(JOIN_S)
    assert not thread.is_alive()


def test_abandoned_generator_and_source_stop_thread(tmp_path):
    src = StreamingBatches(_mapped(tmp_path), "cpu", 10, seed=0)
    it = iter(src)
    next(it)
    thread = src._prefetcher.thread
    del it, src
    gc.collect()
    thread.join(JOIN_S)
    assert not thread.is_alive()


def test_load_state_restarts_the_thread(tmp_path):
    data = _mapped(tmp_path)
    with StreamingBatches(data, "cpu", 100, seed=3) as src:
        first = [x for x in src]
        src.load_state_dict({"epoch": 0, "position": 5})
        again = [x for x in src]
    assert all(torch.equal(a, b) for a, b in zip(first[5:], again)) and len(again) == 15


def _big_file(tmp_path, n: int, d: int):
    """A float32 (n, d) .npy file filled through write() (a mapping would count in our RSS)."""
    path = tmp_path / "big.npy"
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    del header
    with open(path, "r+b") as f:
        f.seek(-n * d * 4, os.SEEK_END)
        chunk = np.random.default_rng(0).random((1024, d)).astype(np.float32).tobytes()
        for _ in range(n // 1024):
            f.write(chunk)
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("reader", ["pread", "mmap"])
def test_rss_stays_bounded_on_a_file_much_larger_than_the_budget(tmp_path, reader):
    """Stream 200 MiB through a 10 MiB budget: RSS growth stays bounded by what the reader may
    hold, independent of the file size.

    Bound: the host buffers and the gather temporaries, plus for ``mmap`` the pages mapped between
    releases (a quarter of the budget, plus one row's folio at the 2 MiB worst case), plus 32 MiB
    of slack for the allocator and the thread's stack. Without page release the ``mmap`` reader
    grows towards the 200 MiB read.
    """
    n, d, batch = 51_200, 1024, 64  # rows of 4 KiB: 200 MiB
    array = _big_file(tmp_path, n, d)
    budget = 10 << 20
    src = make_batches(array, "cpu", batch, seed=0, memory_budget_bytes=budget, prefetch=3, reader=reader)
    assert isinstance(src, StreamingBatches) and src.reader == reader
    base = rss_bytes()
    peak, rows = base, 0
    for x in src.stream():
        rows += x.shape[0]
        peak = max(peak, rss_bytes())
        if rows * d * 4 >= 200 << 20:  # a whole file's worth of rows
            break
    src.close()
    row_bytes = d * 4
    bound = (3 + 1) * batch * row_bytes + 4 * batch * row_bytes + (32 << 20)
    if reader == "mmap":
        bound += src.max_mapped_bytes + mapped_bytes_per_row(row_bytes)
    growth = peak - base
    assert growth < bound, (f"{reader}: RSS growth {growth / 2**20:.1f} MiB streaming 200 MiB "
                            f"(bound {bound / 2**20:.1f} MiB)")
