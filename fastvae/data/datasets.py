"""Resolving ``--data digits | fashion-mnist | PATH`` (and ``--test-data PATH``) into a :class:`Dataset`.

Names:

* ``digits`` — the embedded 8x8 digits (:mod:`fastvae.data.digits`): 1,500 train / 297 test rows.
* ``fashion-mnist`` — the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``): 60,000 train / 10,000 test 28x28 images.

Paths:

* a directory holding MNIST-format files ``train-images-idx3-ubyte`` and, optionally,
  ``t10k-images-idx3-ubyte`` (each raw or ``.gz``; ``train-images.idx3-ubyte`` spellings too)
  — e.g. the real MNIST files;
* a single ``.npy`` file (N, ...) or IDX file (raw or gzip; detected from the content).

Without a test file (``test=``), the last 10% of the rows (at most 10,000) are the test set:
deterministic, and a view (no copy) of a memory-mapped file. If the file is sorted (e.g. by
class) give a separate test file instead.

Values: uint8 data is stored as is and divided by 255 per batch (``Dataset.divisor``), unless
it only holds 0 and 1; other dtypes are used as they are. ``Dataset.kind`` is ``"unit"`` when
the values lie in [0, 1] (Bernoulli likelihood, binarisation meaningful) and ``"real"``
otherwise (Gaussian). Every row of every file is checked first (:mod:`~fastvae.data.validation`,
cached per file): a NaN or infinite value is an error naming the file, the row and the value.

>>> ds = load_dataset("digits")
>>> ds.train.shape, ds.test.shape, ds.example_shape, ds.kind
((1500, 64), (297, 64), (8, 8), 'unit')
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .arrays import flatten_rows, is_npy, load_npy, storage_dtype, to_unit_float
from .batches import make_batches
from .digits import DIGITS_SHAPE, load_digits
from .idx import read_idx
from .resident import rows_to_device
from .validation import require_float32_range, rows_digest, summarize_rows
from .source import BatchSource

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASET_NAMES: tuple[str, ...] = ("digits", "fashion-mnist")
TEST_FRACTION = 0.1
MAX_TEST_ROWS = 10_000

Kind = Literal["unit", "real"]

_TRAIN_IDX = ("train-images-idx3-ubyte", "train-images.idx3-ubyte")
_TEST_IDX = ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A training set (and maybe a test set) of flattened examples.

    Attributes:
        name: ``"digits"``, ``"fashion-mnist"`` or the path given.
        train: (N, D) rows as stored (uint8 pixels, floats...); may be a read-only ``np.memmap``.
        test: (N_test, D) rows, or None.
        example_shape: the shape of one example, e.g. (8, 8), (28, 28) (IDX images), (32, 32, 3) (a
            channels-last .npy), or (D,); batches and ``tensor(shaped=True)`` keep it.
        kind: ``"unit"`` (values in [0, 1]: Bernoulli) or ``"real"`` (Gaussian).
        divisor: stored values / divisor = features (255 for uint8 pixels), or None.
        source: where the data came from (paths), for logs and checkpoints.
        outside_unit: for ``"real"`` data, where its values first leave [0, 1] ("row 17 of
            FILE holds 1.5"), for the error that refuses a Bernoulli likelihood.
        fingerprint: ``"sha256:<hex>"`` of the training data's rows (of the whole file when the
            test rows are split off it), computed by the validation scan: what ``--resume``
            compares, so a moved file resumes and a changed one is refused.
        test_fingerprint: the same of a separate test file's rows (None when the test rows are split
            off the training file, which ``fingerprint`` covers): what ``fastvae eval`` / ``plot``
            compare, so a relative ``--test-data`` read from another directory is refused.
    """

    name: str
    train: np.ndarray
    test: np.ndarray | None
    example_shape: tuple[int, ...]
    kind: Kind
    divisor: float | None
    source: str
    outside_unit: str | None = None
    fingerprint: str | None = None
    test_fingerprint: str | None = None

    @property
    def num_features(self) -> int:
        return int(self.train.shape[1])

    @property
    def likelihood(self) -> str:
        """The natural decoder likelihood: ``"bernoulli"`` for unit data, ``"gaussian"`` otherwise."""
        return "bernoulli" if self.kind == "unit" else "gaussian"

    def split(self, split: Literal["train", "test"]) -> np.ndarray:
        if split == "train":
            return self.train
        if split == "test":
            if self.test is None:
                raise ValueError(f"dataset {self.name!r} has no test set")
            return self.test
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def tensor(
        self, split: Literal["train", "test"] = "test", device: torch.device | str = "cpu", *, limit: int | None = None,
        shaped: bool = False,
    ) -> torch.Tensor:
        """A split (its first ``limit`` rows, if given) as one float32 (N, D) tensor on ``device``
        (``shaped=True``: (N, *example_shape)).

        Only the rows asked for are read, so ``limit`` keeps a huge memory-mapped split out of memory.
        """
        rows = self.split(split)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"limit must be a positive int, got {limit!r}")
            rows = rows[:limit]
        stored = rows_to_device(rows, device)
        if stored.device.type == "cpu" and stored.data_ptr() == rows.__array_interface__["data"][0]:
            stored = stored.clone()  # shares the array's memory: never convert that in place
        x = to_unit_float(stored, self.divisor)
        return x.view(x.shape[0], *self.example_shape) if shaped else x

    def batches(self, device: torch.device | str, batch_size: int, seed: int, **kwargs: object) -> BatchSource:
        """:func:`~fastvae.data.batches.make_batches` over the training rows, with this dataset's
        divisor; batches are shaped (M, *example_shape)."""
        kwargs.setdefault("example_shape", self.example_shape)
        return make_batches(self.train, device, batch_size, seed, divisor=self.divisor, **kwargs)  # type: ignore[arg-type]


# ---- files ------------------------------------------------------------------------------------
def _find(directory: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` present in ``directory``, raw preferred over .gz (raw files are mapped)."""
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_array_file(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, ...]]:
    """An IDX (raw/gz) or .npy file as (N, D) rows and the shape of one example."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, expected a .npy or IDX file")
    if is_npy(path):
        array = load_npy(path)
    elif path.endswith(".npy"):
        raise ValueError(f"{path}: not a valid .npy file (bad magic string)")
    else:
        array = read_idx(path)
        if array.ndim < 2:
            raise ValueError(
                f"{path}: a {array.ndim}-D IDX file (labels?) of shape {array.shape}; need images (N, H, W) or rows (N, D)"
            )
        if array.shape[0] == 0 or math.prod(array.shape[1:]) == 0:
            raise ValueError(f"{path}: IDX array of shape {array.shape} holds no examples")
    rows = flatten_rows(array, path)
    return rows, _example_shape(array)


def _example_shape(array: np.ndarray) -> tuple[int, ...]:
    if array.ndim > 2:
        return tuple(int(s) for s in array.shape[1:])
    d = int(array.shape[1])
    side = math.isqrt(d)
    return (side, side) if side * side == d else (d,)


def _without_unit_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


def _scaling(rows: np.ndarray, where: str) -> tuple[float | None, Kind, str | None, str | None]:
    """The divisor and kind of stored rows (see the module docs), from every row
    (:mod:`~fastvae.data.validation`: a NaN or inf anywhere, or a value that float32 features
    cannot hold, is an error naming the row and the value), where the values first leave [0, 1] (None if they do not), and the rows' digest."""
    summary = summarize_rows(rows, where)
    summary.require_finite(where)
    require_float32_range(rows, summary, where)
    if storage_dtype(rows.dtype) == np.uint8:
        return (None if summary.high <= 1 else 255.0), "unit", None, summary.digest
    if rows.dtype == np.bool_:
        return None, "unit", None, summary.digest
    outside = summary.outside_unit(where)
    return None, ("unit" if outside is None else "real"), outside, summary.digest


def _split_off_test(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = rows.shape[0]
    n_test = min(MAX_TEST_ROWS, int(n * TEST_FRACTION))
    if n_test == 0 or n - n_test == 0:
        raise ValueError(f"{n} rows are too few to split off a test set; pass a test file")
    return rows[: n - n_test], rows[n - n_test :]


# ---- datasets ---------------------------------------------------------------------------------
def load_digits_dataset() -> Dataset:
    """The embedded digits (float32 in [0, 1]; train 1,500 rows, test 297)."""
    train = load_digits("train")
    return Dataset(
        name="digits",
        train=train,
        test=load_digits("test"),
        example_shape=DIGITS_SHAPE,
        kind="unit",
        divisor=None,
        source="fastvae/data/digits.csv.gz (embedded)",
        fingerprint=rows_digest(train),
    )


def load_mnist_dir(directory: str | os.PathLike, *, name: str | None = None) -> Dataset:
    """A directory of MNIST-format IDX image files (``train-images-idx3-ubyte[.gz]``,
    optionally ``t10k-images-idx3-ubyte[.gz]``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    train_path = _find(directory, _TRAIN_IDX)
    if train_path is None:
        raise FileNotFoundError(
            f"{directory}: no MNIST-format training images: expected {_TRAIN_IDX[0]} or {_TRAIN_IDX[0]}.gz there"
        )
    test_path = _find(directory, _TEST_IDX)
    return _from_files(name or str(directory), train_path, test_path)


def load_fashion_mnist(directory: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (``FASHION_MNIST_DIR``), or
    from ``directory`` holding its files."""
    directory = Path(FASHION_MNIST_DIR if directory is None else directory)
    if _find(directory, _TRAIN_IDX) is None:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: no {_TRAIN_IDX[0]}[.gz] in {directory}. Install it with "
            "`apt-get install dataset-fashion-mnist`, or pass --data DIR for a directory of MNIST-format IDX files"
        )
    return load_mnist_dir(directory, name="fashion-mnist")


def _from_files(name: str, train_path: str | os.PathLike, test_path: str | os.PathLike | None) -> Dataset:
    train, example_shape = read_array_file(train_path)
    divisor, kind, outside, fingerprint = _scaling(train, os.fspath(train_path))
    test_fingerprint = None
    if test_path is None:
        train, test = _split_off_test(train)
        source = f"{os.fspath(train_path)} (last {test.shape[0]} rows as test)"
    else:
        test, test_shape = read_array_file(test_path)
        if test.shape[1] != train.shape[1]:
            raise ValueError(
                f"{os.fspath(test_path)}: test examples have {test.shape[1]} features but the training examples in "
                f"{os.fspath(train_path)} have {train.shape[1]}"
            )
        if _without_unit_dims(test_shape) != _without_unit_dims(example_shape):
            # the same number of values in another layout (channels-first vs channels-last, W x H...):
            # each test row would be read in the training layout, its pixels scrambled, without a word.
            # Size-1 dims ((H, W, 1) vs (H, W)) change no value's place in the row.
            raise ValueError(
                f"{os.fspath(test_path)}: test examples are shaped {test_shape} but the training examples in "
                f"{os.fspath(train_path)} are {example_shape}; store the test examples in the training layout"
            )
        if storage_dtype(test.dtype) != storage_dtype(train.dtype):
            raise ValueError(
                f"{os.fspath(test_path)}: test data is stored as {test.dtype} but the training data in "
                f"{os.fspath(train_path)} as {train.dtype}; store both alike"
            )
        test_divisor, test_kind, test_outside, test_fingerprint = _scaling(test, os.fspath(test_path))
        if test_fingerprint is not None and test_fingerprint == fingerprint:
            raise ValueError(
                f"{os.fspath(test_path)}: the test data holds exactly the training rows of {os.fspath(train_path)}; "
                "the test ELBO would measure the training examples: give held-out data, or no test file "
                "(the last 10% of the rows are then held out)"
            )
        if divisor is None and test_divisor is not None:
            raise ValueError(
                f"{os.fspath(test_path)}: uint8 test values exceed 1 while the training data in {os.fspath(train_path)} is 0/1"
            )
        if divisor is not None and test_divisor is None:
            # one divisor serves both: 0/1 test pixels would become 0 and 1/255, an almost blank test set
            raise ValueError(
                f"{os.fspath(test_path)}: uint8 test values are all 0 or 1 while the training data in "
                f"{os.fspath(train_path)} holds 0..255 pixels (divided by 255): the test rows "
                f"would read as 0 and 1/255; store both on the same scale (0..255 pixels, or 0/1)"
            )
        if test_kind == "real":
            kind, outside = "real", outside or test_outside
        source = f"{os.fspath(train_path)} + {os.fspath(test_path)}"
    return Dataset(name=name, train=train, test=test, example_shape=example_shape, kind=kind, divisor=divisor,
                   source=source, outside_unit=outside, fingerprint=fingerprint, test_fingerprint=test_fingerprint)


def load_dataset(data: str | os.PathLike = "digits", *, test: str | os.PathLike | None = None) -> Dataset:
    """Resolve ``--data`` (a name or a path) and optional ``--test-data`` into a :class:`Dataset`.

    Names win over same-named paths (write ``./digits`` for a directory called digits).

    Raises:
        FileNotFoundError: a missing path, or Fashion-MNIST not installed (the message says how to get it).
        ValueError: a corrupt file, or test data that does not match the training data.
    """
    spec = os.fspath(data)
    if spec == "digits":
        if test is not None:
            raise ValueError("--test-data does not apply to the embedded digits (they have a fixed test split)")
        return load_digits_dataset()
    if spec == "fashion-mnist":
        if test is not None:
            raise ValueError("--test-data does not apply to fashion-mnist (it has its own test set)")
        return load_fashion_mnist()
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"--data {spec!r}: no such file or directory; give {' or '.join(DATASET_NAMES)}, a .npy file, "
            "an IDX file, or a directory of MNIST-format IDX files"
        )
    if test is not None and not Path(test).expanduser().exists():
        raise FileNotFoundError(f"--test-data {os.fspath(test)!r}: no such file")
    for flag, given in (("--data", path), ("--test-data", None if test is None else Path(test).expanduser())):
        if given is not None and not (given.is_file() or given.is_dir()):  # a pipe would block, a device never end
            raise ValueError(f"{flag} {os.fspath(given)!r} is not a regular file or a directory (a pipe or a device?): "
                             "fastvae reads data files more than once (it checks every row, then maps them); "
                             "write the data to a file")
    if path.is_dir():
        if test is not None:
            raise ValueError(f"--test-data does not apply to a directory ({spec}): put t10k-images-idx3-ubyte in it")
        return load_mnist_dir(path, name=spec)
    return _from_files(spec, path, None if test is None else Path(test).expanduser())
