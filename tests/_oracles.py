"""Shared test helpers: backend parametrisation and the independent float64 oracles.

The oracles are written with ``torch.distributions`` only (never with fastvae.reference),
so that the reference path itself is checked against an independent definition.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, ContinuousBernoulli, Normal, kl_divergence

# The torch path runs everywhere; the Triton path on CPU tensors needs the interpreter.
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.interpreter)]


def bernoulli_ll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli(logits).log_prob(x).sum(-1) in float64 (continuous x allowed, as with BCE)."""
    return Bernoulli(logits=logits.double(), validate_args=False).log_prob(x.double()).sum(-1)


def continuous_bernoulli_ll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return ContinuousBernoulli(logits=logits.double(), validate_args=False).log_prob(x.double()).sum(-1)


def gaussian_ll(mean: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    mean, logvar, x = mean.double(), torch.as_tensor(logvar).double(), x.double()
    return Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    q = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
    p = Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    return kl_divergence(q, p).sum(-1)


def max_errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max rel error) with the relative error floored at |expected| >= 1."""
    actual, expected = actual.double(), expected.double()
    diff = (actual - expected).abs()
    if diff.numel() == 0:
        return 0.0, 0.0
    return diff.max().item(), (diff / expected.abs().clamp_min(1.0)).max().item()


def sampled_kl(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log q(z|x) - log p(z) per draw in float64: Normal(mu, exp(lv/2)) against N(0, I)."""
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    return (q.log_prob(z) - p.log_prob(z)).sum(-1)


def iwae_bound(ll: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k exp(ll_k - kl_k) over dim 0 in float64, the log-sum-exp written out."""
    log_w = ll.double() - kl.double()
    top = log_w.max(0).values
    return top + torch.log(torch.exp(log_w - top).sum(0)) - torch.log(torch.tensor(float(log_w.shape[0]), dtype=torch.float64))
