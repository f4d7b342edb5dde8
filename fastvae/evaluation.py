"""Evaluation of any model: the ELBO on held-out data and the importance-sampled marginal log-likelihood.

    ELBO(x)  = E_q[log p(x|z)] - KL(q(z|x) || p(z))            (the training step's own terms)
    log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,   z_k ~ q(z|x)

The model is anything with ``encode``/``decode`` (:mod:`fastvae.models.interface`); give the
likelihood, or let it be read from ``model.likelihood`` (fastvae's models have one). The ELBO
goes through :func:`fastvae.step.aevb_objective` with a fixed seed: eps of test row r depends
only on (seed, r), so the estimate does not depend on the batch size. All log-densities go
through fastvae's fused heads, batched as (K, B, .).

>>> elbo = dataset_elbo(model, x_test)                  # mean ELBO per example, nats
>>> log_px = importance_sampled_log_px(model, x_test[:100], n_samples=1000)   # (100,)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .likelihood import gaussian_log_likelihood, log_likelihood
from .step import ELBO, Noise, aevb_objective, decoder_rows

EVAL_SEED = 1234


def model_likelihood(model: nn.Module, likelihood: str | None) -> str:
    """``likelihood``, or the model's own ``likelihood`` attribute when None."""
    if likelihood is not None:
        return likelihood
    found = getattr(model, "likelihood", None)
    if not isinstance(found, str):
        raise TypeError(f"{type(model).__name__} has no likelihood attribute; pass likelihood= "
                        "('bernoulli', 'continuous_bernoulli' or 'gaussian')")
    return found


@torch.no_grad()
def elbo_per_example(model: nn.Module, x: torch.Tensor, likelihood: str | None = None, n_samples: int = 1,
                     seed: int = EVAL_SEED, first_row: int = 0) -> torch.Tensor:
    """ELBO of each example of ``x`` (B, *example_shape), averaged over ``n_samples`` draws of z:
    shape (B,). The draws are rows ``first_row ...`` of ``seed``'s noise stream."""
    out = aevb_objective(model, x, Noise.from_int(seed, x.device, first_row), 1.0,
                         likelihood=model_likelihood(model, likelihood), objective=ELBO(n_samples))
    return out.log_likelihood - out.kl


@torch.no_grad()
def importance_log_weights(model: nn.Module, x: torch.Tensor, n_samples: int,
                           likelihood: str | None = None) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for K = ``n_samples`` draws z_k ~ q(z|x) (torch's generator):
    shape (K, B)."""
    likelihood = model_likelihood(model, likelihood)
    b = x.shape[0]
    rows = x.reshape(b, -1)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn((n_samples, *mu.shape), device=mu.device, dtype=mu.dtype)
    out = decoder_rows(model.decode(z.reshape(n_samples * b, -1)), n_samples, b, rows.shape[-1])
    log_px_given_z = log_likelihood(likelihood, out, rows)
    log_pz = gaussian_log_likelihood(torch.zeros_like(mu[:1]), 0.0, z)
    log_qz = gaussian_log_likelihood(mu, logvar, z)
    return log_px_given_z + log_pz - log_qz


@torch.no_grad()
def importance_sampled_log_px(
    model: nn.Module, x: torch.Tensor, n_samples: int = 1000, max_elements: int = 2**24,
    likelihood: str | None = None,
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x) for each example of ``x``: shape (B,).

    The K samples are drawn in chunks so that no (k, B, D) tensor exceeds ``max_elements``;
    chunks are combined exactly (logsumexp of logsumexps).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    chunk = max(1, min(n_samples, max_elements // max(1, x.numel())))
    partial = []
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        partial.append(torch.logsumexp(importance_log_weights(model, x, k, likelihood), dim=0))
    return torch.logsumexp(torch.stack(partial), dim=0) - math.log(n_samples)


@torch.no_grad()
def dataset_elbo(
    model: nn.Module, data: torch.Tensor, batch_size: int = 1000, n_samples: int = 1, seed: int = EVAL_SEED,
    likelihood: str | None = None,
) -> float:
    """Mean ELBO per example over ``data`` (N, *example_shape), in nats. Row r's noise is row r of
    ``seed``'s stream (training's RNG is untouched)."""
    likelihood = model_likelihood(model, likelihood)

    def per_batch(xb: torch.Tensor, start: int) -> torch.Tensor:
        return elbo_per_example(model, xb, likelihood, n_samples, seed, first_row=start)

    return _dataset_mean(per_batch, model, data, batch_size)


@torch.no_grad()
def dataset_log_px(
    model: nn.Module, data: torch.Tensor, n_samples: int = 1000, batch_size: int = 100, seed: int = EVAL_SEED,
    likelihood: str | None = None,
) -> float:
    """Mean importance-sampled log p(x) per example over ``data`` (N, *example_shape), in nats
    (draws from torch's generator seeded with ``seed``, forked: training's RNG is untouched)."""
    likelihood = model_likelihood(model, likelihood)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _dataset_mean(lambda xb, start: importance_sampled_log_px(model, xb, n_samples, likelihood=likelihood),
                             model, data, batch_size)


def _dataset_mean(per_example, model: nn.Module, data: torch.Tensor, batch_size: int) -> float:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for start in range(0, data.shape[0], batch_size):
            xb = data[start:start + batch_size].to(device, non_blocking=True)
            total += per_example(xb if xb.is_floating_point() else xb.float(), start).double().sum()
    finally:
        model.train(was_training)
    return total.item() / max(1, data.shape[0])  # the one host sync
