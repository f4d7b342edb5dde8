"""Binarisation of [0, 1] features for the Bernoulli likelihood.

* ``"dynamic"``: a fresh Bernoulli draw every time an example is seen (``x_bin = u < x``,
  ``u ~ U[0, 1)``), as is usual for MNIST-like data. The noise of a batch is a pure function of
  ``(seed, epoch, step)``: it is drawn on the batch's device from a generator seeded with
  :func:`~fastvae.data.seeding.derive_seed` — no host-device sync, and a resumed run draws
  exactly what the uninterrupted one did. Noise is drawn for the whole *global* batch and each
  data-parallel rank keeps its own rows, so ``world_size`` ranks binarise exactly as one
  process with the global batch does.
* ``"threshold"``: ``x > 0.5``, fixed.
* ``"none"``: features as they are.

>>> import torch
>>> b = Binarizer("dynamic", seed=0, device="cpu")
>>> x = torch.full((4, 3), 0.5)
>>> torch.equal(b(x, epoch=0, step=0), b(x, epoch=0, step=0))
True
>>> threshold_binarize(torch.tensor([0.2, 0.5, 0.7])).tolist()
[0.0, 0.0, 1.0]
"""

from __future__ import annotations

from typing import Literal

import torch

from .seeding import derive_seed

BinarizeMode = Literal["none", "dynamic", "threshold"]
BINARIZE_MODES: tuple[str, ...] = ("none", "dynamic", "threshold")


def threshold_binarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(x > threshold)`` as float32."""
    return (x > threshold).to(torch.float32)


def bernoulli_binarize(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    first_row: int = 0,
    total_rows: int | None = None,
) -> torch.Tensor:
    """One Bernoulli draw per feature, ``P(1) = x``, as float32, from ``generator`` (on ``x``'s device).

    The uniforms are drawn for a ``(total_rows, D)`` batch and rows ``first_row : first_row + len(x)``
    are used, so a shard of a batch gets the same draws as the whole batch would.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be a (rows, features) tensor, got shape {tuple(x.shape)}")
    rows = x.shape[0]
    total = rows if total_rows is None else total_rows
    if first_row < 0 or first_row + rows > total:
        raise ValueError(f"rows {first_row}..{first_row + rows} do not fit in a batch of {total} rows")
    u = torch.rand((total, x.shape[1]), generator=generator, device=x.device, dtype=torch.float32)
    if total != rows:
        u = u[first_row : first_row + rows]
    return u.lt_(x)  # 1.0 where u < x, else 0.0, written over the noise: one kernel


class Binarizer:
    """Applies a binarisation mode to batches keyed by ``(epoch, step)``; see the module docs."""

    def __init__(self, mode: BinarizeMode | str, seed: int, device: torch.device | str) -> None:
        if mode not in BINARIZE_MODES:
            raise ValueError(f"binarize must be one of {', '.join(BINARIZE_MODES)}, got {mode!r}")
        self.mode = mode
        self.seed = seed
        self.device = torch.device(device)
        self._generator: torch.Generator | None = None

    def __call__(
        self, x: torch.Tensor, epoch: int, step: int, *, first_row: int = 0, total_rows: int | None = None
    ) -> torch.Tensor:
        if self.mode == "none":
            return x
        if self.mode == "threshold":
            return threshold_binarize(x)
        if self._generator is None or self._generator.device != x.device:
            self._generator = torch.Generator(device=x.device)
        self._generator.manual_seed(derive_seed(self.seed, "binarize", epoch, step))
        return bernoulli_binarize(x, self._generator, first_row=first_row, total_rows=total_rows)
