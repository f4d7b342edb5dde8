"""fastvae's autograd Functions and custom ops under ``torch.func`` (grad, vmap, jacrev), cheaply.

- :class:`FuncFunction`: a ``torch.autograd.Function`` in the ``setup_context`` style (needed
  by torch.func) whose ``apply`` skips the argument binding that torch does on every call for
  that style (``inspect.signature``: ~15 us a call, noticeable in a small step) unless a
  torch.func transform is active.
- ``register_vmap`` helpers: every op works on independent rows (N, D), so V vmapped instances
  of an (N, D) call are one call on (V * N, D) rows: one kernel launch, not V (the generic
  fallback would loop, and cannot handle the backward ops' list outputs at all).
"""

from __future__ import annotations

import torch

try:  # private torch API, stable since torch 2.0; without it every call takes torch's own path
    from torch._C import _are_functorch_transforms_active
    from torch._functorch.utils import unwrap_dead_wrappers
except ImportError:  # pragma: no cover
    _are_functorch_transforms_active = None  # then: as if a transform were always active


def transforms_active() -> bool:
    """Whether a torch.func transform (grad, vmap, ...) is running the current code."""
    return _are_functorch_transforms_active is None or _are_functorch_transforms_active()


class FuncFunction(torch.autograd.Function):
    """Base class: subclasses define ``forward(*args)``, ``setup_context`` and ``backward``."""

    @classmethod
    def apply(cls, *args):
        if transforms_active():
            return super().apply(*args)
        # what torch.autograd.Function.apply does once it has bound the arguments
        return super(torch.autograd.Function, cls).apply(*unwrap_dead_wrappers(args))


def batch_first(t: torch.Tensor, in_dim: int | None, batch_size: int) -> torch.Tensor:
    """``t`` with its vmapped dim first (V, ...); an unbatched tensor is expanded (a view)."""
    if in_dim is None:
        return t.expand(batch_size, *t.shape)
    return t.movedim(in_dim, 0)


def fold_rows(t: torch.Tensor, in_dim: int | None, batch_size: int, row_dim: int = 0) -> torch.Tensor:
    """An instance's rows (dim ``row_dim``: (N, D), (N,), (S, N, D)...), vmapped: the V instances
    merged into that dim ((V * N, D), (V * N,), (S, V * N, D)...)."""
    t = batch_first(t, in_dim, batch_size).movedim(0, row_dim)
    return t.flatten(row_dim, row_dim + 1)


def unfold_rows(t: torch.Tensor, batch_size: int, row_dim: int = 0) -> torch.Tensor:
    """The inverse of :func:`fold_rows` for an op's output: V split out of dim ``row_dim``,
    which is then the vmapped dim."""
    return t.unflatten(row_dim, (batch_size, t.shape[row_dim] // batch_size))
