"""Pieces shared by the paper's methods: the N(0, I) priors and sampling from p(x|z).

The paper regularises every method with a weight-decay term that is the log-density of a
N(0, I) prior on the parameters theta. Per training example (the losses here are means over a
minibatch of M from N points) that is ``|theta|^2 / (2 N)``, added to the loss.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..likelihood import gaussian_log_likelihood


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) of each row of ``z`` (..., Z): shape z.shape[:-1]."""
    return gaussian_log_likelihood(torch.zeros_like(z), torch.zeros((), dtype=z.dtype, device=z.device), z)


def parameter_prior_penalty(params: Iterable[nn.Parameter], n_train: int) -> torch.Tensor:
    """``sum |theta|^2 / (2 N)``: the N(0, I) parameter prior, per training example."""
    params = list(params)
    total = sum((p.pow(2).sum() for p in params), torch.zeros((), device=params[0].device))
    return total / (2.0 * max(1, n_train))


@torch.no_grad()
def sample_likelihood(
    likelihood: str,
    decoder_out: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One draw x ~ p(x|z) from a decoder output: Bernoulli(logits), N(mean, exp(logvar)) or
    continuous Bernoulli(logits)."""
    if likelihood == "bernoulli":
        probs = torch.sigmoid(decoder_out)
        return (torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype) < probs).to(probs.dtype)
    if likelihood == "gaussian":
        mean, logvar = decoder_out
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * torch.as_tensor(logvar, dtype=mean.dtype, device=mean.device)) * noise
    if likelihood == "continuous_bernoulli":
        # inverse-CDF sampling through torch.distributions (uses the global RNG)
        return torch.distributions.ContinuousBernoulli(logits=decoder_out.float()).sample().to(decoder_out.dtype)
    raise ValueError(f"unknown likelihood {likelihood!r}")
