"""The embedded dataset: 1,797 8x8 handwritten digits (UCI optical recognition of handwritten
digits, test part; scikit-learn's ``load_digits`` copy), shipped as ``digits.csv.gz``.

Each CSV row holds the 64 pixel counts (0..16, row-major 8x8) then the label (0..9). Features
are scaled to [0, 1] as ``pixels / 16`` in float32 (exact: 16 is a power of two).

Split (fixed, deterministic, no seed involved): the first 1,500 rows train, the last 297 test.
The rows cycle through the classes, so both parts hold every digit in near-equal numbers.

>>> train = load_digits("train")
>>> train.shape, train.dtype, float(train.max())
((1500, 64), dtype('float32'), 1.0)
>>> load_digits("test").shape
(297, 64)
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources
from typing import Literal

import numpy as np

DIGITS_FILE = "digits.csv.gz"
DIGITS_ROWS = 1797
DIGITS_SHAPE = (8, 8)
DIGITS_MAX = 16
DIGITS_TEST_SIZE = 297

Split = Literal["train", "test", "all"]


@functools.lru_cache(maxsize=1)
def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The embedded rows as stored: pixels (1797, 64) uint8 in 0..16 and labels (1797,) uint8.

    The arrays are cached and read-only.
    """
    source = resources.files(__package__).joinpath(DIGITS_FILE)
    with source.open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (DIGITS_ROWS, 65):
        raise ValueError(f"{DIGITS_FILE}: expected {DIGITS_ROWS} rows of 65 values, got shape {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > DIGITS_MAX or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{DIGITS_FILE}: pixel values must lie in 0..{DIGITS_MAX} and labels in 0..9")
    pixels, labels = pixels.astype(np.uint8), labels.astype(np.uint8)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def _rows(split: Split) -> slice:
    if split == "train":
        return slice(0, DIGITS_ROWS - DIGITS_TEST_SIZE)
    if split == "test":
        return slice(DIGITS_ROWS - DIGITS_TEST_SIZE, DIGITS_ROWS)
    if split == "all":
        return slice(0, DIGITS_ROWS)
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


def load_digits(split: Split = "all") -> np.ndarray:
    """Digits features in [0, 1], float32, shape (rows, 64): 1500 train, 297 test, 1797 all."""
    pixels, _ = load_digits_raw()
    return pixels[_rows(split)].astype(np.float32) / np.float32(DIGITS_MAX)


def load_digits_labels(split: Split = "all") -> np.ndarray:
    """The digit classes (0..9) of the same rows, uint8."""
    return load_digits_raw()[1][_rows(split)].copy()
