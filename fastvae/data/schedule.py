"""Which rows every batch of every epoch holds, on every data-parallel rank.

Both batch sources (device-resident and streaming) take their rows from here, so for the same
seed they produce the same batches, bit for bit.

* Epoch ``e`` visits the examples in the order ``epoch_permutation(N, seed, e)``: a
  ``torch.randperm`` on the CPU from a generator seeded by ``(seed, e)`` — the same on every
  machine and device, and independent of the other epochs (so resuming needs no history).
* Step ``s`` of an epoch is the *global batch* ``perm[s*G : (s+1)*G]``, ``G = world_size * M``;
  rank ``r`` takes its ``r``-th contiguous block of ``M`` rows. The ranks' blocks are disjoint
  and together are exactly the global batch that a single process with batch size ``G`` sees.
* Remainder: the last ``N mod G`` positions of each permutation. With ``drop_last=True``
  (default: every batch has the same shape, as CUDA graphs and ``torch.compile`` want) they
  are skipped — they are different examples every epoch. With ``drop_last=False`` they form
  one shorter last step in which each rank takes ``(N mod G) // world_size`` rows; the
  ``< world_size`` positions left over are skipped, so ranks always hold equal shares.

>>> sched = EpochSchedule(num_examples=10, batch_size=2, world_size=2, rank=1)
>>> sched.num_batches, sched.rows(0), sched.rows(1)
(2, (2, 4), (6, 8))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .seeding import derive_seed


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits the examples: an int64 CPU tensor, a permutation of 0..N-1."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(seed, "permutation", epoch))
    return torch.randperm(num_examples, generator=generator, dtype=torch.int64)


def _require_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class EpochSchedule:
    """The batch layout of one rank: per-rank batch size ``batch_size``, global batch ``world_size * batch_size``."""

    num_examples: int
    batch_size: int
    world_size: int = 1
    rank: int = 0
    drop_last: bool = True

    def __post_init__(self) -> None:
        _require_int("num_examples", self.num_examples, 1)
        _require_int("batch_size", self.batch_size, 1)
        _require_int("world_size", self.world_size, 1)
        _require_int("rank", self.rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size, got rank {self.rank} of world_size {self.world_size}")
        if self.num_batches == 0:
            raise ValueError(
                f"{self.num_examples} examples make no batch of {self.batch_size} per rank on {self.world_size} rank(s) "
                f"(global batch {self.global_batch_size}); use a smaller batch size"
            )

    @property
    def global_batch_size(self) -> int:
        return self.world_size * self.batch_size

    @property
    def _full(self) -> int:
        return self.num_examples // self.global_batch_size

    @property
    def _tail(self) -> int:
        """Per-rank rows of the shorter last step (0 when there is none)."""
        if self.drop_last:
            return 0
        return (self.num_examples - self._full * self.global_batch_size) // self.world_size

    @property
    def num_batches(self) -> int:
        """Steps per epoch."""
        return self._full + (1 if self._tail else 0)

    def batch_rows(self, step: int) -> int:
        """This rank's rows in step ``step``."""
        self._check_step(step)
        return self.batch_size if step < self._full else self._tail

    def global_rows(self, step: int) -> int:
        """All ranks' rows in step ``step`` (the global batch)."""
        return self.world_size * self.batch_rows(step)

    def rows(self, step: int) -> tuple[int, int]:
        """``(start, stop)``: this rank's positions in the epoch permutation at step ``step``."""
        m = self.batch_rows(step)
        start = step * self.global_batch_size + self.rank * m
        return start, start + m

    def first_global_row(self, step: int) -> int:
        """Offset of this rank's rows within the global batch of step ``step``."""
        return self.rank * self.batch_rows(step)

    def advance(self, epoch: int, step: int) -> tuple[int, int]:
        """The position after ``(epoch, step)``."""
        return (epoch, step + 1) if step + 1 < self.num_batches else (epoch + 1, 0)

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.num_batches:
            raise IndexError(f"step {step} is outside an epoch of {self.num_batches} batches")
