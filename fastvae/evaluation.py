"""Evaluation: the ELBO on held-out data and the importance-sampled marginal log-likelihood.

    log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,   z_k ~ q(z|x)

All three log-densities go through fastvae's fused heads, batched as (K, B, .).

>>> elbo = dataset_elbo(model, x_test)                  # mean ELBO per example, nats
>>> log_px = importance_sampled_log_px(model, x_test[:100], n_samples=1000)   # (100,)
"""

from __future__ import annotations

import math

import torch

from .likelihood import gaussian_log_likelihood, log_likelihood
from .models import VAE

EVAL_SEED = 1234


@torch.no_grad()
def elbo_per_example(model: VAE, x: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
    """ELBO of each row of ``x`` (B, D), averaged over ``n_samples`` draws of z: shape (B,)."""
    out = model(x, n_samples=n_samples)
    ll = log_likelihood(model.cfg.likelihood, out.decoder_out, x)
    return (ll - out.kl).mean(0)


@torch.no_grad()
def importance_log_weights(model: VAE, x: torch.Tensor, n_samples: int) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for K = ``n_samples`` draws z_k ~ q(z|x): shape (K, B)."""
    mu, logvar = model.encoder(x)
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn((n_samples, *mu.shape), device=mu.device, dtype=mu.dtype)
    log_px_given_z = log_likelihood(model.cfg.likelihood, model.decoder(z), x)
    log_pz = gaussian_log_likelihood(torch.zeros_like(mu[:1]), 0.0, z)
    log_qz = gaussian_log_likelihood(mu, logvar, z)
    return log_px_given_z + log_pz - log_qz


@torch.no_grad()
def importance_sampled_log_px(
    model: VAE, x: torch.Tensor, n_samples: int = 1000, max_elements: int = 2**24
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x) for each row of ``x`` (B, D): shape (B,).

    The K samples are drawn in chunks so that no (k, B, D) tensor exceeds ``max_elements``;
    chunks are combined exactly (logsumexp of logsumexps).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    chunk = max(1, min(n_samples, max_elements // max(1, x.numel())))
    partial = []
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        partial.append(torch.logsumexp(importance_log_weights(model, x, k), dim=0))
    return torch.logsumexp(torch.stack(partial), dim=0) - math.log(n_samples)


def _in_batches(x: torch.Tensor, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size]


@torch.no_grad()
def dataset_elbo(
    model: VAE, data: torch.Tensor, batch_size: int = 1000, n_samples: int = 1, seed: int = EVAL_SEED
) -> float:
    """Mean ELBO per example over ``data`` (N, D), in nats.

    Evaluation draws from its own seeded stream, leaving training's RNG untouched.
    """
    return _dataset_mean(lambda xb: elbo_per_example(model, xb, n_samples), model, data, batch_size, seed)


@torch.no_grad()
def dataset_log_px(
    model: VAE, data: torch.Tensor, n_samples: int = 1000, batch_size: int = 100, seed: int = EVAL_SEED
) -> float:
    """Mean importance-sampled log p(x) per example over ``data`` (N, D), in nats."""
    return _dataset_mean(lambda xb: importance_sampled_log_px(model, xb, n_samples), model, data, batch_size, seed)


def _dataset_mean(per_example, model: VAE, data: torch.Tensor, batch_size: int, seed: int) -> float:
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for xb in _in_batches(data, batch_size):
            xb = xb.to(device, non_blocking=True)
            total += per_example(xb if xb.is_floating_point() else xb.float()).double().sum()
    model.train(was_training)
    return total.item() / max(1, data.shape[0])
