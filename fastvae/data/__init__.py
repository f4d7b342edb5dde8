"""fastvae's data layer: readers, the dataset registry, binarisation and the batch sources.

>>> from fastvae.data import load_dataset
>>> ds = load_dataset("digits")                      # or "fashion-mnist", or a path
>>> batches = ds.batches("cpu", batch_size=100, seed=0, binarize="dynamic")
>>> x = next(iter(batches))                          # (100, 64) float32 in {0, 1}
>>> state = batches.state_dict()                     # save it; load_state_dict(state) resumes exactly

Modules: :mod:`~fastvae.data.idx` (IDX files), :mod:`~fastvae.data.arrays` (.npy),
:mod:`~fastvae.data.digits` (the embedded digits), :mod:`~fastvae.data.datasets` (the
registry), :mod:`~fastvae.data.binarize`, :mod:`~fastvae.data.schedule` (epoch permutations and
data-parallel shards), :mod:`~fastvae.data.resident` / :mod:`~fastvae.data.streaming` (the two
batch sources), :mod:`~fastvae.data.batches` (the chooser), :mod:`~fastvae.data.sequential`
(in-order evaluation batches), :mod:`~fastvae.data.memory` (budgets, RSS, page release).
"""

from .arrays import flatten_rows, load_npy, to_unit_float
from .batches import choose_source, make_batches, resident_bytes
from .binarize import BINARIZE_MODES, Binarizer, bernoulli_binarize, threshold_binarize
from .datasets import (
    DATASET_NAMES,
    FASHION_MNIST_DIR,
    Dataset,
    load_dataset,
    load_digits_dataset,
    load_fashion_mnist,
    load_mnist_dir,
    read_array_file,
)
from .digits import load_digits, load_digits_labels
from .idx import read_idx, read_idx_header, read_idx_images, read_idx_labels, write_idx
from .memory import default_memory_budget, release_pages, rss_bytes
from .resident import DeviceResidentBatches, rows_to_device
from .schedule import EpochSchedule, epoch_permutation
from .sequential import sequential_batches
from .source import BatchSource
from .streaming import StreamingBatches

__all__ = [
    "BINARIZE_MODES",
    "BatchSource",
    "Binarizer",
    "DATASET_NAMES",
    "Dataset",
    "DeviceResidentBatches",
    "EpochSchedule",
    "FASHION_MNIST_DIR",
    "StreamingBatches",
    "bernoulli_binarize",
    "choose_source",
    "default_memory_budget",
    "epoch_permutation",
    "flatten_rows",
    "load_dataset",
    "load_digits",
    "load_digits_dataset",
    "load_digits_labels",
    "load_fashion_mnist",
    "load_mnist_dir",
    "load_npy",
    "make_batches",
    "read_array_file",
    "read_idx",
    "read_idx_header",
    "read_idx_images",
    "read_idx_labels",
    "release_pages",
    "resident_bytes",
    "rows_to_device",
    "rss_bytes",
    "sequential_batches",
    "threshold_binarize",
    "to_unit_float",
    "write_idx",
]
