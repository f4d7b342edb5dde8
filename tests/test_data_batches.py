"""Batch sources: epoch coverage, DDP shards, determinism, exact resume, resident == streaming,
dynamic binarisation, the chooser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvae.data import (
    DeviceResidentBatches,
    EpochSchedule,
    StreamingBatches,
    choose_source,
    epoch_permutation,
    make_batches,
    sequential_batches,
)
from fastvae.data.binarize import Binarizer, bernoulli_binarize, threshold_binarize
from fastvae.data.seeding import derive_seed

SOURCES = [DeviceResidentBatches, StreamingBatches]


def _ids(n: int, d: int = 3) -> np.ndarray:
    """Row i holds i in every column: batches reveal which examples they hold."""
    return np.repeat(np.arange(n, dtype=np.float32)[:, None], d, axis=1)


def _row_ids(x: torch.Tensor) -> list[int]:
    return x[:, 0].to(torch.int64).tolist()


def _memmap(tmp_path, array: np.ndarray, name="data.npy") -> np.ndarray:
    np.save(tmp_path / name, array)
    return np.load(tmp_path / name, mmap_mode="r")


@pytest.fixture(params=SOURCES, ids=lambda c: c.__name__)
def source_cls(request):
    return request.param


def _make(cls, array, batch_size, seed=0, rank=0, world_size=1, **kw):
    return cls(array, "cpu", batch_size, seed, rank, world_size, **kw)


def test_each_epoch_covers_every_example_once(source_cls):
    with _make(source_cls, _ids(60), 10) as src:
        epochs = [[i for x in src for i in _row_ids(x)] for _ in range(3)]
    for seen in epochs:
        assert sorted(seen) == list(range(60))
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh permutation each epoch


def test_remainder_drop_last_and_not(source_cls):
    with _make(source_cls, _ids(23), 5) as src:  # drop_last: 4 batches of 5, 3 skipped
        batches = list(src)
    assert [len(b) for b in batches] == [5] * 4 and len({i for b in batches for i in _row_ids(b)}) == 20
    with _make(source_cls, _ids(23), 5, drop_last=False) as src:
        batches = list(src)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(i for b in batches for i in _row_ids(b)) == list(range(23))


@pytest.mark.parametrize("drop_last", [True, False])
def test_ddp_shards_disjoint_equal_and_equal_to_single_process(source_cls, drop_last):
    n, m, world = 101, 4, 3
    with _make(source_cls, _ids(n), m * world, seed=7, drop_last=drop_last) as single:
        reference = [list(src_batch) for src_batch in [_row_ids(x) for epoch in range(2) for x in single]]
    per_rank = []
    for rank in range(world):
        with _make(source_cls, _ids(n), m, seed=7, rank=rank, world_size=world, drop_last=drop_last) as src:
            per_rank.append([_row_ids(x) for epoch in range(2) for x in src])
    assert all(len(r) == len(reference) for r in per_rank)
    for step, global_batch in enumerate(reference):
        shards = [per_rank[r][step] for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # equal sizes per rank
        joined = sum(shards, [])
        # Rank blocks, in order, are the global batch; only a drop_last=False tail step leaves
        # out its last (remainder mod world_size) rows, so that ranks stay equal.
        assert joined == global_batch[: len(joined)]
        assert len(global_batch) - len(joined) == (0 if len(joined) == m * world else (n % (m * world)) % world)
    steps = len(reference) // 2
    for epoch in range(2):
        seen = [i for r in range(world) for b in per_rank[r][epoch * steps : (epoch + 1) * steps] for i in b]
        assert len(seen) == len(set(seen))  # disjoint across ranks and steps
        assert len(seen) == (n // (m * world)) * m * world + (0 if drop_last else ((n % (m * world)) // world) * world)


def test_deterministic_with_seed(source_cls):
    def run(seed):
        with _make(source_cls, _ids(50), 7, seed=seed) as src:
            return [_row_ids(x) for _ in range(2) for x in src]

    assert run(3) == run(3)
    assert run(3) != run(4)
    order = epoch_permutation(50, 3, 1)[:7].tolist()
    assert run(3)[len(run(3)) // 2] == order  # epoch 1 starts with its permutation


@pytest.mark.parametrize("binarize", ["none", "dynamic", "threshold"])
def test_resume_mid_epoch_is_exact(source_cls, binarize):
    data = np.random.default_rng(0).random((90, 6)).astype(np.float32)
    with _make(source_cls, data, 8, seed=11, binarize=binarize) as src:
        full = [x for _ in range(3) for x in src]  # 11 batches per epoch
    with _make(source_cls, data, 8, seed=11, binarize=binarize) as src:
        head = [next(iter(src)) for _ in range(15)]  # into epoch 1
        state = src.state_dict()
    assert state["epoch"] == 1 and state["position"] == 4
    for resume_cls in SOURCES:  # a state saved by either source resumes in either
        with _make(resume_cls, data, 8, seed=11, binarize=binarize) as src:
            src.load_state_dict(state)
            tail = [x for x in src] + [x for x in src]
        assert len(head) + len(tail) == len(full)
        for a, b in zip(head + tail, full):
            assert torch.equal(a, b)


def test_state_after_last_batch_points_to_next_epoch(source_cls):
    with _make(source_cls, _ids(20), 10) as src:
        it = iter(src)
        next(it), next(it)
        assert src.state_dict()["epoch"] == 1 and src.state_dict()["position"] == 0
        assert list(it) == []
        assert src.epoch == 1


def test_state_layout_mismatch(source_cls):
    with _make(source_cls, _ids(20), 5, seed=1) as src:
        state = src.state_dict()
    for change in ({"seed": 2}, {"batch_size": 4}, {"world_size": 2}, {"num_examples": 21}):
        with _make(source_cls, _ids(20), 5, seed=1) as src:
            with pytest.raises(ValueError, match=next(iter(change))):
                src.load_state_dict({**state, **change})
    with _make(source_cls, _ids(20), 5, seed=1) as src:
        with pytest.raises(ValueError, match="outside an epoch"):
            src.load_state_dict({**state, "position": 4})
        src.load_state_dict({**state, "epoch": torch.tensor(2), "position": np.int64(3)})  # checkpoint types
        assert (src.epoch, src.position) == (2, 3)


@pytest.mark.parametrize("binarize", ["none", "dynamic", "threshold"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_streaming_equals_resident(tmp_path, binarize, world_size):
    pixels = np.random.default_rng(1).integers(0, 256, size=(257, 20), dtype=np.uint8)
    mapped = _memmap(tmp_path, pixels)
    for rank in range(world_size):
        kw = dict(seed=5, rank=rank, world_size=world_size, divisor=255.0, binarize=binarize, drop_last=False)
        with _make(DeviceResidentBatches, mapped, 16, **kw) as a, _make(StreamingBatches, mapped, 16, prefetch=2, **kw) as b:
            xs = [x for _ in range(2) for x in a]
            ys = [y for _ in range(2) for y in b]
        assert len(xs) == len(ys) > 0
        for x, y in zip(xs, ys):
            assert x.dtype == y.dtype == torch.float32 and torch.equal(x, y)
            assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_big_endian_and_widened_dtypes_stream(tmp_path):
    a = np.arange(40 * 3).reshape(40, 3)
    for dtype in (">i2", np.uint16, ">f8"):
        mapped = _memmap(tmp_path, a.astype(dtype), name=f"{np.dtype(dtype).str}.npy")
        with _make(DeviceResidentBatches, mapped, 8) as r, _make(StreamingBatches, mapped, 8) as s:
            for x, y in zip(r, s):
                assert torch.equal(x, y) and torch.equal(x[:, 0] + 1, x[:, 1]) and bool((x[:, 0] % 3 == 0).all())


def test_dynamic_binarisation():
    data = np.full((400, 50), 0.3, dtype=np.float32)
    data[:, :10] = 0.0
    data[:, 10:20] = 1.0
    with DeviceResidentBatches(data, "cpu", 100, seed=0, binarize="dynamic") as src:
        e0 = torch.cat(list(src))
        e1 = torch.cat(list(src))
    for x in (e0, e1):
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        assert x[:, :10].sum() == 0 and x[:, 10:20].min() == 1
        assert abs(float(x[:, 20:].mean()) - 0.3) < 0.01
    assert not torch.equal(e0, e1)  # a fresh draw every epoch


def test_dynamic_binarisation_shards_match_global_batch():
    x = torch.rand(12, 5)
    g = torch.Generator().manual_seed(1)
    whole = bernoulli_binarize(x, g)
    for rank in range(3):
        g.manual_seed(1)
        part = bernoulli_binarize(x[rank * 4 : (rank + 1) * 4], g, first_row=rank * 4, total_rows=12)
        assert torch.equal(part, whole[rank * 4 : (rank + 1) * 4])
    with pytest.raises(ValueError, match="do not fit"):
        bernoulli_binarize(x, g, first_row=1, total_rows=12)


def test_threshold_and_modes():
    assert threshold_binarize(torch.tensor([0.0, 0.5, 0.51, 1.0])).tolist() == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="binarize must be one of"):
        Binarizer("stochastic", 0, "cpu")
    assert derive_seed(1, "a", 2) != derive_seed(1, "b", 2)
    assert 0 <= derive_seed(-5, "a", 2**70) < 2**63


def test_schedule_errors():
    with pytest.raises(ValueError, match="rank must be < world_size"):
        EpochSchedule(10, 2, world_size=2, rank=2)
    with pytest.raises(ValueError, match="make no batch"):
        EpochSchedule(10, 6, world_size=2)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        EpochSchedule(10, 2.0)  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        EpochSchedule(10, 5).rows(2)


def test_chooser(tmp_path):
    ram = np.zeros((1000, 100), np.uint8)
    mapped = _memmap(tmp_path, ram)
    assert choose_source(ram, "cpu", memory_budget_bytes=10) == "resident"  # in RAM already: used in place
    assert choose_source(mapped, "cpu", memory_budget_bytes=10_000) == "streaming"
    assert choose_source(mapped, "cpu", memory_budget_bytes=200_000) == "resident"
    with make_batches(mapped, "cpu", 10, 0, memory_budget_bytes=10_000) as src:
        assert isinstance(src, StreamingBatches) and src.max_mapped_bytes == 2_500
    with make_batches(mapped, "cpu", 10, 0, memory_budget_bytes=10_000, source="resident") as src:
        assert isinstance(src, DeviceResidentBatches)
    with pytest.raises(ValueError, match="source must be"):
        make_batches(mapped, "cpu", 10, 0, source="fast")


def test_resident_uses_ram_arrays_in_place():
    data = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    src = DeviceResidentBatches(data, "cpu", 10, seed=0)
    assert np.shares_memory(src.data.numpy(), data)
    x = next(iter(src))
    x += 1  # batches are fresh tensors, the data is never touched
    assert np.array_equal(src.data.numpy(), data)


def test_sequential_batches(tmp_path):
    mapped = _memmap(tmp_path, np.arange(50, dtype=np.uint8).reshape(25, 2))
    seen = [b for b in sequential_batches(mapped, 10, "cpu", divisor=255.0)]
    assert [len(b) for b in seen] == [10, 10, 5]
    assert torch.equal(torch.cat(seen) * 255, torch.arange(50, dtype=torch.float32).reshape(25, 2))
    parts = [torch.cat(list(sequential_batches(mapped, 4, "cpu", rank=r, world_size=3))) for r in range(3)]
    assert torch.equal(torch.cat(parts), torch.arange(50, dtype=torch.float32).reshape(25, 2))


@pytest.mark.gpu
def test_cuda_streaming_equals_resident(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, size=(1000, 33), dtype=np.uint8)
    mapped = _memmap(tmp_path, pixels)
    kw = dict(divisor=255.0, binarize="dynamic")
    with DeviceResidentBatches(mapped, "cuda", 64, 3, **kw) as a, StreamingBatches(mapped, "cuda", 64, 3, **kw) as b:
        assert b._buffers[0].is_pinned()
        for _ in range(3):
            for x, y in zip(a, b):
                assert x.is_cuda and y.is_cuda and torch.equal(x, y)
        state = b.state_dict()
        b.load_state_dict({**state, "position": 2})  # restart while copies may be in flight
        a.load_state_dict({**state, "position": 2})
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    with make_batches(mapped, "cuda", 64, 0) as src:
        assert isinstance(src, DeviceResidentBatches) and src.data.is_cuda
