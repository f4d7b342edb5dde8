"""Hamiltonian Monte Carlo over latent variables, batched over examples.

One independent chain per row of ``z`` (B, Z); ``log_prob(z)`` returns the unnormalised
log-density of each row, shape (B,). A transition is the textbook one (Neal 2011):

    p ~ N(0, I);  (z', p') = leapfrog^L(z, p; eps)
    accept with probability min(1, exp(H(z, p) - H(z', p'))),  H = -log_prob(z) + |p|^2 / 2

The step size is one scalar shared by the batch, adapted (when asked) by a Robbins-Monro
update on its logarithm toward a target mean acceptance probability (0.9, as the AEVB
paper's MCEM baseline):  log eps += rate * (mean acceptance - target).
Adaptation breaks detailed balance only while it runs; freeze it (``adapt=False``) for exact
invariance.

>>> hmc = HMC(n_leapfrog=10, step_size=0.1, target_accept=0.9)
>>> z, accept = hmc.step(lambda z: -0.5 * (z ** 2).sum(-1), torch.randn(100, 3))
"""

from __future__ import annotations

import math
from typing import Callable

import torch

LogProb = Callable[[torch.Tensor], torch.Tensor]


def log_prob_and_grad(log_prob: LogProb, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log_prob(z)`` (B,) and its gradient with respect to ``z`` (B, Z), both detached."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = log_prob(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad.detach()


class HMC:
    """Batched HMC with ``n_leapfrog`` leapfrog steps and an adaptive scalar step size.

    Args:
        n_leapfrog: leapfrog steps per transition (L).
        step_size: initial leapfrog step size (eps).
        target_accept: mean acceptance probability the adaptation steers toward.
        adapt_rate: gain of the log-step-size update.
        min_step, max_step: clamp on the adapted step size.
    """

    def __init__(
        self,
        n_leapfrog: int = 10,
        step_size: float = 0.1,
        target_accept: float = 0.9,
        adapt_rate: float = 0.05,
        min_step: float = 1e-5,
        max_step: float = 10.0,
        jitter: float = 0.2,
    ):
        if n_leapfrog < 1:
            raise ValueError(f"n_leapfrog must be >= 1, got {n_leapfrog}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        self.n_leapfrog = n_leapfrog
        self.step_size = float(step_size)
        self.target_accept = target_accept
        self.adapt_rate = adapt_rate
        self.min_step = min_step
        self.max_step = max_step
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.jitter = jitter
        self.last_accept_rate = float("nan")

    def leapfrog(
        self, log_prob: LogProb, z: torch.Tensor, p: torch.Tensor, grad: torch.Tensor,
        eps: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """L leapfrog steps of size ``eps`` (default: the current step size; a (B, 1) tensor
        gives each chain its own) from (z, p); returns (z', p', log_prob(z'), grad(z'))."""
        if eps is None:
            eps = self.step_size
        p = p + 0.5 * eps * grad
        lp = torch.empty(0)  # set by the first leapfrog step (n_leapfrog >= 1)
        for i in range(self.n_leapfrog):
            z = z + eps * p
            lp, grad = log_prob_and_grad(log_prob, z)
            if i < self.n_leapfrog - 1:
                p = p + eps * grad
        p = p + 0.5 * eps * grad
        return z, p, lp, grad

    @torch.no_grad()
    def step(
        self,
        log_prob: LogProb,
        z: torch.Tensor,
        adapt: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One HMC transition of every chain: returns (new z (B, Z), acceptance probability (B,))."""
        lp0, grad0 = log_prob_and_grad(log_prob, z)
        p0 = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        u_eps = torch.rand((*z.shape[:-1], 1), generator=generator, device=z.device, dtype=z.dtype)
        eps = self.step_size * (1.0 + self.jitter * (2.0 * u_eps - 1.0))
        z1, p1, lp1, _ = self.leapfrog(log_prob, z, p0, grad0, eps)
        h0 = -lp0 + 0.5 * (p0**2).sum(-1)
        h1 = -lp1 + 0.5 * (p1**2).sum(-1)
        log_alpha = torch.clamp(h0 - h1, max=0.0)
        # a diverged trajectory (inf/nan energy) is rejected
        log_alpha = torch.where(torch.isfinite(log_alpha), log_alpha, torch.full_like(log_alpha, -math.inf))
        u = torch.rand(log_alpha.shape, generator=generator, device=z.device, dtype=log_alpha.dtype)
        accept = torch.log(u) < log_alpha
        z_new = torch.where(accept.unsqueeze(-1), z1, z)
        alpha = log_alpha.exp()
        self.last_accept_rate = alpha.mean().item()
        if adapt:
            self.adapt(self.last_accept_rate)
        return z_new, alpha

    def adapt(self, accept_rate: float) -> None:
        """Robbins-Monro update of log(step size) toward ``target_accept``."""
        log_eps = math.log(self.step_size) + self.adapt_rate * (accept_rate - self.target_accept)
        self.step_size = float(min(self.max_step, max(self.min_step, math.exp(log_eps))))

    def run(
        self,
        log_prob: LogProb,
        z: torch.Tensor,
        n_steps: int,
        adapt: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, float]:
        """``n_steps`` transitions; returns the final z and the mean acceptance probability."""
        total = 0.0
        for _ in range(n_steps):
            z, alpha = self.step(log_prob, z, adapt=adapt, generator=generator)
            total += alpha.mean().item()
        return z, total / max(1, n_steps)
