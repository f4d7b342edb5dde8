"""The dataset registry: names, directories of IDX files, single files, test splits, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastvae.data import datasets as registry
from fastvae.data import load_dataset, write_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_digits_default():
    ds = load_dataset()
    assert ds.name == "digits" and ds.train.shape == (1500, 64) and ds.test.shape == (297, 64)
    assert ds.example_shape == (8, 8) and ds.kind == "unit" and ds.likelihood == "bernoulli" and ds.divisor is None
    x = ds.tensor("test")
    assert x.dtype == torch.float32 and x.shape == (297, 64) and 0 <= x.min() and x.max() == 1
    x += 1
    assert ds.test.max() == 1.0  # tensor() never aliases the dataset's arrays
    assert torch.equal(ds.tensor("train", limit=10), torch.from_numpy(ds.train[:10]))
    with ds.batches("cpu", 100, seed=0, binarize="dynamic") as b:
        batch = next(iter(b))
    assert batch.shape == (100, 8, 8) and set(batch.unique().tolist()) <= {0.0, 1.0}  # each example keeps its shape


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(), reason="needs apt-get install dataset-fashion-mnist")
def test_fashion_mnist_package():
    ds = load_dataset("fashion-mnist")
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    assert ds.train.dtype == np.uint8 and ds.divisor == 255.0 and ds.kind == "unit"
    assert ds.example_shape == (28, 28)
    with ds.batches("cpu", 100, seed=0) as b:
        x = next(iter(b))
    assert x.dtype == torch.float32 and x.shape == (100, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist")
    assert str(tmp_path / "nowhere") in str(info.value)


def _mnist_dir(root: Path, n_train=120, n_test=30, gz=False, test=True, name="train-images-idx3-ubyte") -> Path:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / f"{name}{suffix}", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(root / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n_train, dtype=np.uint8))
    if test:
        write_idx(root / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_format_directory(tmp_path, gz):
    ds = load_dataset(_mnist_dir(tmp_path / "mnist", gz=gz))
    assert ds.train.shape == (120, 784) and ds.test.shape == (30, 784) and ds.example_shape == (28, 28)
    assert ds.divisor == 255.0 and ds.kind == "unit"
    assert isinstance(ds.train, np.memmap) == (not gz)  # raw files are mapped, never read whole


def test_mnist_dir_alternative_names_and_no_test_file(tmp_path):
    ds = load_dataset(_mnist_dir(tmp_path / "m", test=False, name="train-images.idx3-ubyte"))
    assert ds.train.shape == (108, 784) and ds.test.shape == (12, 784)  # last 10% as test


def test_directory_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset(tmp_path / "empty")


def test_single_npy_splits_off_the_tail(tmp_path):
    a = np.random.default_rng(0).normal(size=(200, 3, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    ds = load_dataset(str(tmp_path / "a.npy"))
    assert ds.train.shape == (180, 12) and ds.test.shape == (20, 12) and ds.example_shape == (3, 4)
    assert ds.kind == "real" and ds.likelihood == "gaussian" and ds.divisor is None
    assert np.array_equal(ds.test, a.reshape(200, 12)[180:]) and isinstance(ds.train, np.memmap)


def test_npy_with_test_file_and_kinds(tmp_path):
    np.save(tmp_path / "tr.npy", np.random.default_rng(0).random((50, 16)).astype(np.float32))
    np.save(tmp_path / "te.npy", np.random.default_rng(1).random((10, 16)).astype(np.float32))
    ds = load_dataset(tmp_path / "tr.npy", test=tmp_path / "te.npy")
    assert ds.train.shape == (50, 16) and ds.test.shape == (10, 16) and ds.kind == "unit" and ds.example_shape == (4, 4)
    np.save(tmp_path / "bin.npy", (np.random.default_rng(0).random((50, 10)) > 0.5).astype(np.uint8))
    binary = load_dataset(tmp_path / "bin.npy")
    assert binary.divisor is None and binary.kind == "unit" and binary.example_shape == (10,)


def test_single_idx_file(tmp_path):
    write_idx(tmp_path / "imgs-idx3-ubyte", np.zeros((40, 5, 5), np.uint8) + 7)
    ds = load_dataset(tmp_path / "imgs-idx3-ubyte")
    assert ds.train.shape == (36, 25) and ds.example_shape == (5, 5) and ds.divisor == 255.0


def test_registry_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory.*digits.*fashion-mnist"):
        load_dataset(tmp_path / "missing.npy")
    np.save(tmp_path / "a.npy", np.zeros((30, 4), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((30, 5), np.float32))
    with pytest.raises(ValueError, match=r"b.npy.*5 features.*a.npy.*4"):
        load_dataset(tmp_path / "a.npy", test=tmp_path / "b.npy")
    with pytest.raises(FileNotFoundError, match="--test-data"):
        load_dataset(tmp_path / "a.npy", test=tmp_path / "nope.npy")
    with pytest.raises(ValueError, match="--test-data does not apply"):
        load_dataset("digits", test=tmp_path / "a.npy")
    write_idx(tmp_path / "labels-idx1-ubyte", np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match="labels-idx1-ubyte.*labels"):
        load_dataset(tmp_path / "labels-idx1-ubyte")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="bad.npy"):
        load_dataset(tmp_path / "bad.npy")
    np.save(tmp_path / "tiny.npy", np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="too few to split"):
        load_dataset(tmp_path / "tiny.npy")
    np.save(tmp_path / "nan.npy", np.full((30, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="nan.npy: data contains NaN"):
        load_dataset(tmp_path / "nan.npy")


def test_values_beyond_float32_are_refused_naming_the_row(tmp_path):
    # float64 data is finite as stored but becomes inf as float32 features: training stopped with a
    # non-finite loss naming no row, and a huge value in the test rows gave a test ELBO of -inf
    a = np.random.default_rng(0).random((50, 4))
    a[37, 2] = -1e300
    np.save(tmp_path / "big.npy", a)
    with pytest.raises(ValueError, match=r"big.npy: row 37 holds -1e\+300, beyond the range of float32"):
        load_dataset(tmp_path / "big.npy")
    np.save(tmp_path / "tr.npy", a[:30] * 0 + 0.5)
    b = np.full((10, 4), 0.5)
    b[4, 0] = 1e39
    np.save(tmp_path / "te.npy", b)
    with pytest.raises(ValueError, match=r"te.npy: row 4 holds 1e\+39"):
        load_dataset(tmp_path / "tr.npy", test=tmp_path / "te.npy")
    a[37, 2] = -3e38  # within float32's range: a real dataset
    np.save(tmp_path / "ok.npy", a)
    assert load_dataset(tmp_path / "ok.npy").kind == "real"


def test_a_test_file_holding_the_training_rows_is_refused(tmp_path):
    # --test-data naming the --data file (or a copy of it) reported the training ELBO as the test ELBO
    a = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    np.save(tmp_path / "tr.npy", a)
    np.save(tmp_path / "copy.npy", a)
    for test in ("tr.npy", "copy.npy"):
        with pytest.raises(ValueError, match=f"{test}: the test data holds exactly the training rows of .*tr.npy"):
            load_dataset(tmp_path / "tr.npy", test=tmp_path / test)
    np.save(tmp_path / "te.npy", a[:10])  # other rows (here a subset): held out as far as fastvae can tell
    assert load_dataset(tmp_path / "tr.npy", test=tmp_path / "te.npy").test.shape == (10, 4)


def test_a_test_file_in_another_layout_is_refused(tmp_path):
    # a channels-first (N, C, H, W) test file for channels-last (N, H, W, C) training data has as many
    # values per example: each test row was read in the training layout (pixels scrambled) and the
    # test ELBO reported without a word
    a = np.random.default_rng(0).random((70, 8, 6, 3)).astype(np.float32)
    np.save(tmp_path / "tr.npy", a[:50])
    np.save(tmp_path / "chw.npy", a[50:].transpose(0, 3, 1, 2).copy())
    np.save(tmp_path / "flat.npy", a[50:].reshape(20, -1))
    for test, shape in (("chw.npy", r"\(3, 8, 6\)"), ("flat.npy", r"\(12, 12\)")):
        with pytest.raises(ValueError, match=f"{test}: test examples are shaped {shape} but the training examples in "
                                             r".*tr.npy are \(8, 6, 3\)"):
            load_dataset(tmp_path / "tr.npy", test=tmp_path / test)
    np.save(tmp_path / "hwc.npy", a[50:])
    assert load_dataset(tmp_path / "tr.npy", test=tmp_path / "hwc.npy").example_shape == (8, 6, 3)
    # size-1 dims move no value: (H, W, 1) test examples for (H, W) training examples are the same rows
    np.save(tmp_path / "grey.npy", a[:50, ..., 0])
    np.save(tmp_path / "grey1.npy", a[50:, ..., :1])
    assert load_dataset(tmp_path / "grey.npy", test=tmp_path / "grey1.npy").test.shape == (20, 48)


def test_a_0_1_uint8_test_file_for_0_255_training_pixels_is_refused(tmp_path):
    # one divisor (the training data's 255) serves both files: 0/1 test pixels were read as 0 and
    # 1/255, an almost blank test set, and its test ELBO reported without a word
    pixels = np.random.default_rng(0).integers(0, 256, (70, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "tr.npy", pixels[:50])
    np.save(tmp_path / "te01.npy", (pixels[50:] > 127).astype(np.uint8))
    with pytest.raises(ValueError, match=r"te01.npy: uint8 test values are all 0 or 1 while the training data in "
                                         r".*tr.npy holds 0..255 pixels"):
        load_dataset(tmp_path / "tr.npy", test=tmp_path / "te01.npy")
    np.save(tmp_path / "te.npy", pixels[50:])
    assert load_dataset(tmp_path / "tr.npy", test=tmp_path / "te.npy").divisor == 255.0
