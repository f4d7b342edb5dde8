"""The interface shared by the batch sources: epochs, exact resume state, conversion, binarisation.

A source yields float32 tensors of shape ``(M, D)`` on its device. Iterating a source yields
the rest of the current epoch and then moves to the next, so::

    for epoch in range(epochs):
        for x in batches:          # x: (M, D) float32 on the device
            ...
        # or: checkpoint batches.state_dict() at any point, and later
    batches.load_state_dict(state)  # the next batch is exactly the one that came next

``state_dict()`` always describes the *next* batch to be produced: ``{"epoch", "position"}``
plus the layout (seed, sizes) it is valid for, which ``load_state_dict`` checks.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .arrays import flatten_rows, to_unit_float
from .binarize import Binarizer, BinarizeMode
from .schedule import EpochSchedule

_LAYOUT_KEYS = ("seed", "num_examples", "batch_size", "world_size", "drop_last")


class BatchSource(abc.ABC):
    """Base class of :class:`DeviceResidentBatches` and :class:`StreamingBatches`.

    Args:
        array: the training examples, (N, ...) — flattened to (N, D) rows; may be a memory map.
        device: where the batches go.
        batch_size: rows per batch on this rank (M); the global batch is ``world_size * M``.
        seed: the run's data seed (permutations and dynamic binarisation derive from it).
        rank, world_size: this process's data-parallel shard; see :mod:`fastvae.data.schedule`.
        divisor: stored values are divided by it (255 for uint8 pixels); None keeps them.
        binarize: ``"none"``, ``"dynamic"`` or ``"threshold"`` (see :mod:`fastvae.data.binarize`).
        drop_last: skip each epoch's remainder so every batch has M rows (default).
        example_shape: the shape of one example, e.g. (28, 28) or (32, 32, 3): batches come as
            (M, *example_shape), a view of the rows; None (default) keeps (M, D) rows.
    """

    def __init__(
        self,
        array: np.ndarray,
        device: torch.device | str,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        divisor: float | None = None,
        binarize: BinarizeMode | str = "none",
        drop_last: bool = True,
        example_shape: tuple[int, ...] | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if divisor is not None and not divisor > 0:
            raise ValueError(f"divisor must be positive, got {divisor}")
        self.array = flatten_rows(np.asarray(array) if not isinstance(array, np.ndarray) else array)
        self.device = _resolve_device(device)
        self.schedule = EpochSchedule(
            num_examples=int(self.array.shape[0]),
            batch_size=batch_size,
            world_size=world_size,
            rank=rank,
            drop_last=drop_last,
        )
        self.seed = seed
        self.divisor = divisor
        self.binarizer = Binarizer(binarize, seed, self.device)
        self.epoch = 0
        self.position = 0
        self.example_shape = None if example_shape is None else tuple(int(s) for s in example_shape)
        if self.example_shape is not None and math.prod(self.example_shape) != self.num_features:
            raise ValueError(f"example_shape {self.example_shape} does not hold the {self.num_features} features of a row")

    # ---- layout -------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.schedule.batch_size

    @property
    def num_features(self) -> int:
        return int(self.array.shape[1])

    @property
    def num_batches(self) -> int:
        """Batches per epoch (on each rank)."""
        return self.schedule.num_batches

    # ---- iteration ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[torch.Tensor]:
        """The remaining batches of the current epoch; afterwards the source is at the next epoch."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def stream(self) -> Iterator[torch.Tensor]:
        """Batches without end, across epochs (for training by a number of samples)."""
        while True:
            yield self.next_batch()

    def next_batch(self) -> torch.Tensor:
        """The batch at the current (epoch, position), then advance."""
        epoch, step = self.epoch, self.position
        raw = self._fetch(epoch, step)
        x = to_unit_float(raw, self.divisor)
        x = self.binarizer(
            x, epoch, step, first_row=self.schedule.first_global_row(step), total_rows=self.schedule.global_rows(step)
        )
        self.epoch, self.position = self.schedule.advance(epoch, step)
        return x if self.example_shape is None else x.view(x.shape[0], *self.example_shape)

    @abc.abstractmethod
    def _fetch(self, epoch: int, step: int) -> torch.Tensor:
        """This rank's rows of ``(epoch, step)`` as stored (storage dtype), on the device, in a
        fresh tensor (never one the source will write again)."""

    # ---- resume -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch, and the layout it is valid for (plain ints/bools)."""
        s = self.schedule
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_examples": s.num_examples,
            "batch_size": s.batch_size,
            "world_size": s.world_size,
            "drop_last": s.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; ``ValueError`` if it was saved for another layout."""
        mine = self.state_dict()
        for key in _LAYOUT_KEYS:
            if key in state and _plain(state[key]) != mine[key]:
                raise ValueError(
                    f"data state was saved with {key}={_plain(state[key])!r} but this run has {key}={mine[key]!r}; "
                    "resume with the same data, seed, batch size and number of processes"
                )
        epoch, position = int(_plain(state["epoch"])), int(_plain(state["position"]))
        if epoch < 0 or not 0 <= position < self.num_batches:
            raise ValueError(f"data state (epoch {epoch}, position {position}) is outside an epoch of {self.num_batches} batches")
        self.epoch, self.position = epoch, position

    # ---- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Release background resources (a no-op for sources without any)."""

    def __enter__(self) -> BatchSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """Checkpoint values may come back as 0-d tensors or numpy scalars."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _resolve_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device
