"""The embedded digits: shape, range, fixed split."""

from __future__ import annotations

import numpy as np
import pytest

from fastvae.data.digits import DIGITS_TEST_SIZE, load_digits, load_digits_labels, load_digits_raw


def test_all_rows():
    x = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    pixels, labels = load_digits_raw()
    assert np.array_equal(x * 16, pixels)  # exact: /16 is a power of two
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_fixed_split():
    train, test = load_digits("train"), load_digits("test")
    assert train.shape == (1500, 64) and test.shape == (DIGITS_TEST_SIZE, 64)
    assert np.array_equal(np.concatenate([train, test]), load_digits("all"))
    assert set(load_digits_labels("test").tolist()) == set(range(10))
    assert np.array_equal(load_digits("train"), train)  # deterministic, and callers get copies
    train[:] = 5
    assert load_digits("train").max() == 1.0


def test_bad_split():
    with pytest.raises(ValueError, match="split must be"):
        load_digits("validation")
