"""Every row of a data file is checked before training (fastvae.data.validation): a NaN, an
infinity or (for a Bernoulli likelihood) a value outside [0, 1] in any row is an error naming
the file, the row and the value; the scan streams a memory map with bounded memory and is
cached per file identity."""

import os

import numpy as np
import pytest

from fastvae.data import load_dataset, load_npy
from fastvae.data import validation
from fastvae.data.memory import rss_bytes
from fastvae.data.validation import ValueSummary, scan_rows, summarize_rows
from fastvae.models import MLPConfig
from fastvae.train_config import TrainConfig
from fastvae.trainer import train

N, D = 10_000, 6
# The old check looked at 4,096 rows spread evenly over the file; this row was never among them.
UNSAMPLED_ROW = next(r for r in range(N) if r not in set(np.linspace(0, N - 1, 4096).astype(np.int64).tolist()))


def _unit_rows(seed=0, n=N):
    return np.random.default_rng(seed).random((n, D), dtype=np.float32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_in_any_row_is_an_error_naming_file_row_value(tmp_path, bad):
    rows = _unit_rows()
    rows[UNSAMPLED_ROW, 3] = bad
    np.save(tmp_path / "train.npy", rows)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'train.npy'}: data contains NaN or infinite values: "
                                         rf"row {UNSAMPLED_ROW} holds {bad}"):
        load_dataset(tmp_path / "train.npy")


def test_a_non_finite_value_in_the_test_file(tmp_path):
    test = _unit_rows(1, n=500)
    test[321, 0] = np.nan
    np.save(tmp_path / "train.npy", _unit_rows())
    np.save(tmp_path / "test.npy", test)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'test.npy'}: .* row 321 holds nan"):
        load_dataset(tmp_path / "train.npy", test=tmp_path / "test.npy")


@pytest.mark.parametrize("value", [1.5, -0.25])
def test_a_value_outside_unit_in_any_row_refuses_bernoulli_by_row_and_value(tmp_path, value):
    rows = _unit_rows()
    rows[UNSAMPLED_ROW, 1] = value
    np.save(tmp_path / "train.npy", rows)
    ds = load_dataset(tmp_path / "train.npy")
    assert ds.kind == "real"
    assert ds.outside_unit == f"row {UNSAMPLED_ROW} of {tmp_path / 'train.npy'} holds {value:g}"
    cfg = dict(data=str(tmp_path / "train.npy"), model=MLPConfig(latent_dim=2, hidden_dim=8), batch_size=50,
               samples=100, device="cpu", out=str(tmp_path / "run"))
    for likelihood in ("bernoulli", "continuous_bernoulli"):
        with pytest.raises(ValueError, match=rf"not in \[0, 1\] \(row {UNSAMPLED_ROW} of .*train.npy holds {value:g}\)"):
            train(TrainConfig(**cfg, likelihood=likelihood))
    train(TrainConfig(**cfg, likelihood="gaussian"))  # real-valued data: the Gaussian applies


def test_uint8_pixels_are_scaled_by_the_whole_file(tmp_path):
    """0/1 bytes with one 255 in a row a sample skips: pixels (divide by 255), not 0/1 values."""
    rows = (np.random.default_rng(2).random((N, D)) > 0.5).astype(np.uint8)
    np.save(tmp_path / "binary.npy", rows)
    assert load_dataset(tmp_path / "binary.npy").divisor is None
    rows[UNSAMPLED_ROW, 2] = 255
    np.save(tmp_path / "pixels.npy", rows)
    assert load_dataset(tmp_path / "pixels.npy").divisor == 255.0


def test_scan_finds_the_first_offending_rows():
    rows = np.zeros((50, 3), dtype=np.float64)
    rows[7, 2], rows[9, 0], rows[30, 1] = 2.0, -1.0, 3.0
    for chunk in (8, 24, 10_000):  # the offending rows in various chunks
        s = scan_rows(rows, chunk_bytes=chunk)
        assert (s.rows, s.low, s.high, s.nonfinite, s.below_zero, s.above_one) == (50, -1.0, 3.0, None, (9, -1.0), (7, 2.0))
        assert s.outside_unit("f") == "row 7 of f holds 2"
    rows[40, 1], rows[44, 0] = np.inf, np.nan
    assert scan_rows(rows, chunk_bytes=24).nonfinite == (40, np.inf)
    assert scan_rows(np.zeros((0, 3))) == ValueSummary(0, np.inf, -np.inf)
    assert scan_rows(np.ones((4, 2), dtype=np.bool_)).unit


def test_the_scan_of_a_memory_map_keeps_resident_memory_bounded(tmp_path):
    rows = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(48 * 1024, 256))
    rows[:] = 0.5
    rows[-1, -1] = 2.0
    rows.flush()
    del rows
    mapped = load_npy(tmp_path / "big.npy")  # 48 MiB, memory-mapped
    before = rss_bytes()
    summary = scan_rows(mapped, chunk_bytes=1 << 20)
    grown = rss_bytes() - before
    assert summary.above_one == (48 * 1024 - 1, 2.0)
    assert grown < 16 << 20, f"resident memory grew by {grown / 2**20:.1f} MiB scanning a 48 MiB map"


def test_the_summary_is_cached_by_file_identity(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(cache))
    path = tmp_path / "train.npy"
    np.save(path, _unit_rows(n=1000))
    scans = []
    real_scan = validation.scan_rows
    monkeypatch.setattr(validation, "scan_rows", lambda rows: scans.append(1) or real_scan(rows))

    first = summarize_rows(load_npy(path), path)
    assert len(scans) == 1 and len(list(cache.glob("*.json"))) == 1
    assert summarize_rows(load_npy(path), path) == first and len(scans) == 1  # cached
    assert not list(cache.glob(".*.tmp"))  # written atomically: no temporary left

    rows = _unit_rows(n=1000)
    rows[5, 5] = np.nan
    np.save(tmp_path / "replacement.npy", rows)
    os.replace(tmp_path / "replacement.npy", path)  # same path and size, new file (inode, mtime)
    again = summarize_rows(load_npy(path), path)
    assert len(scans) == 2 and again.nonfinite == (5, pytest.approx(np.nan, nan_ok=True))

    for entry in cache.glob("*.json"):  # a cache entry that is junk is ignored (and rewritten)
        entry.write_text("{not json")
    third = summarize_rows(load_npy(path), path)
    assert len(scans) == 3 and third.nonfinite[0] == 5
    summarize_rows(load_npy(path), path)
    assert len(scans) == 3


def test_an_unwritable_cache_only_costs_a_rescan(tmp_path, monkeypatch):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(blocked / "cache"))
    np.save(tmp_path / "train.npy", _unit_rows(n=200))
    assert load_dataset(tmp_path / "train.npy").kind == "unit"


def test_default_cache_location_is_the_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTVAE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert validation.cache_dir() == tmp_path / "fastvae" / "data-checks"
