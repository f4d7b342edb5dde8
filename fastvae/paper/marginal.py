"""log p(x) of any decoder by importance sampling with an HMC-fitted proposal.

Used to compare AEVB, wake-sleep and MCEM with one estimator (MCEM has no encoder, so the
encoder-proposal estimator of ``fastvae.evaluation`` cannot serve all three). For each x:

1. run ``n_chains`` HMC chains on p(z|x) ∝ p(x|z) p(z) from prior draws: ``burn_in``
   adapted transitions, then ``n_keep`` frozen ones whose states are kept;
2. fit a Gaussian N(m, S) to the kept states (all chains pooled), widen it
   (S' = ``inflate``^2 S + 1e-4 I);
3. importance-sample with the *defensive* mixture r(z) = (1 - a) N(m, S') + a N(0, I)
   (a = ``prior_weight``), K = ``n_samples`` draws:

       log p(x) ~= logsumexp_k [log p(x, z_k) - log r(z_k)] - log K.

The estimate of p(x) is unbiased for any such r (the HMC run only chooses r), so its log is a
stochastic lower bound on log p(x) (Jensen) — like the paper's estimator, not identical to it:
the paper used an HMC-based estimator of the posterior (its Appendix D). The prior component
keeps the weights bounded (w <= p(x|z) / a), so a mis-fitted Gaussian costs variance, not bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import log_standard_normal
from .hmc import HMC
from .mcem import log_joint


@torch.no_grad()
def hmc_proposal_log_px(
    decoder: nn.Module,
    likelihood: str,
    x: torch.Tensor,
    latent_dim: int,
    n_samples: int = 500,
    n_chains: int = 2,
    burn_in: int = 20,
    n_keep: int = 15,
    n_leapfrog: int = 10,
    inflate: float = 1.5,
    prior_weight: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Estimate log p(x) for each row of ``x`` (B, D): shape (B,). See the module docstring."""
    B = x.shape[0]
    dtype, device = x.dtype, x.device
    xc = x.repeat(n_chains, 1)  # (C*B, D), chain c of example b at row c*B + b

    def target(z: torch.Tensor) -> torch.Tensor:
        return log_joint(decoder, likelihood, xc, z)

    hmc = HMC(n_leapfrog=n_leapfrog, step_size=0.1, target_accept=0.9, adapt_rate=0.2, jitter=0.5)
    z = torch.randn(n_chains * B, latent_dim, generator=generator, dtype=dtype, device=device)
    z, _ = hmc.run(target, z, burn_in, adapt=True, generator=generator)
    kept = []
    for _ in range(n_keep):
        z, _ = hmc.step(target, z, adapt=False, generator=generator)
        kept.append(z.view(n_chains, B, latent_dim))
    samples = torch.cat(kept, 0)  # (n_keep*C, B, Z)
    m = samples.mean(0)
    centred = samples - m
    S = torch.einsum("kbi,kbj->bij", centred, centred) / max(1, samples.shape[0] - 1)
    S = inflate**2 * S + 1e-4 * torch.eye(latent_dim, dtype=dtype, device=device)
    fitted = torch.distributions.MultivariateNormal(m, covariance_matrix=S)

    chunk = max(1, min(n_samples, 2**22 // max(1, x.numel())))
    partial = []
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        from_prior = torch.rand(k, B, 1, generator=generator, dtype=dtype, device=device) < prior_weight
        eps = torch.randn(k, B, latent_dim, generator=generator, dtype=dtype, device=device)
        z_fit = m + torch.einsum("bij,kbj->kbi", fitted.scale_tril, eps)
        z_pri = torch.randn(k, B, latent_dim, generator=generator, dtype=dtype, device=device)
        zk = torch.where(from_prior, z_pri, z_fit)
        log_r = torch.logaddexp(
            math.log1p(-prior_weight) + fitted.log_prob(zk), math.log(prior_weight) + log_standard_normal(zk)
        )
        log_w = log_joint(decoder, likelihood, x, zk) - log_r
        partial.append(torch.logsumexp(log_w, 0))
    return torch.logsumexp(torch.stack(partial), 0) - math.log(n_samples)


@torch.no_grad()
def prior_proposal_log_px(
    decoder: nn.Module, likelihood: str, x: torch.Tensor, latent_dim: int, n_samples: int = 1000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The simplest estimator, z_k ~ p(z): log mean_k p(x|z_k). Fine for Z <= 3 with many samples."""
    chunk = max(1, min(n_samples, 2**22 // max(1, x.numel())))
    partial = []
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        zk = torch.randn(k, x.shape[0], latent_dim, generator=generator, dtype=x.dtype, device=x.device)
        partial.append(torch.logsumexp(log_likelihood_only(decoder, likelihood, x, zk), 0))
    return torch.logsumexp(torch.stack(partial), 0) - math.log(n_samples)


def log_likelihood_only(decoder: nn.Module, likelihood: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) (no prior term)."""
    return log_joint(decoder, likelihood, x, z) - log_standard_normal(z)
