"""Monte Carlo EM with an HMC E-step: the AEVB paper's third baseline (its Section 5).

Only a generative model exists (the decoder p(x|z) and the fixed prior p(z) = N(0, I)); there
is no encoder. One iteration on a minibatch (x_i, i in I):

* **E-step** — ``hmc_transitions`` HMC transitions (10 leapfrog steps each, the step size adapted
  toward 90 % acceptance, as the paper) of the latents z_i targeting
  p(z|x_i) ∝ p(x_i|z) p(z). The chains are *persistent*: each training point keeps its latent
  state between visits (stored in ``self.z``), so the sampler keeps mixing across epochs
  rather than restarting from the prior.
* **M-step** — ``m_steps`` (5, as the paper) Adagrad updates of the decoder on
  ``-mean log p(x_i, z_i) + |theta|^2 / 2N`` at those samples.

>>> mcem = MonteCarloEM(make_decoder(MLPConfig(latent_dim=3), 784, "bernoulli"), "bernoulli", n_train=len(train), lr=0.02)
>>> stats = mcem.step(x_batch, batch_indices)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..likelihood import log_likelihood
from ..models import MLPConfig, MLPVAE
from ..models.mlp import Decoder
from .common import log_standard_normal, parameter_prior_penalty
from .hmc import HMC


def make_decoder(cfg: MLPConfig, data_dim: int, likelihood: str) -> Decoder:
    """A decoder initialised as the paper's VAE (weights N(0, 0.01^2), zero biases)."""
    return MLPVAE(cfg, (data_dim,), likelihood).decoder


def log_joint(decoder: nn.Module, likelihood: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) for each row: shape z.shape[:-1] (x broadcasts against z's rows)."""
    return log_likelihood(likelihood, decoder(z), x) + log_standard_normal(z)


class MCEMStats(NamedTuple):
    accept_rate: float  # mean HMC acceptance probability of this E-step
    step_size: float  # leapfrog step size after adaptation
    log_joint_e: float  # mean log p(x, z) after the E-step, before the M-step
    log_joint_m: float  # mean log p(x, z) at the same z after the M-step


class MonteCarloEM:
    """MCEM on a decoder, with persistent per-example HMC chains.

    Args:
        decoder: p(x|z) (a ``fastvae.models.Decoder`` or any module with the same outputs).
        likelihood: ``"bernoulli"``, ``"gaussian"`` or ``"continuous_bernoulli"``.
        n_train: number of training points N (one persistent latent chain each; scales the prior).
        latent_dim: Z.
        lr: Adagrad step size of the M-step.
        n_leapfrog, target_accept, step_size: HMC settings (paper: 10 steps, 90 %).
        hmc_transitions: HMC transitions per E-step.
        m_steps: decoder updates per M-step (paper: 5).
        weight_prior: add the N(0, I) parameter prior ``|theta|^2 / 2N``.
    """

    def __init__(
        self,
        decoder: nn.Module,
        likelihood: str,
        n_train: int,
        latent_dim: int,
        lr: float = 0.02,
        n_leapfrog: int = 10,
        target_accept: float = 0.9,
        step_size: float = 0.05,
        hmc_transitions: int = 1,
        m_steps: int = 5,
        weight_prior: bool = True,
        generator: torch.Generator | None = None,
    ):
        if m_steps < 1 or hmc_transitions < 1:
            raise ValueError(f"m_steps and hmc_transitions must be >= 1, got {m_steps}, {hmc_transitions}")
        self.decoder = decoder
        self.likelihood = likelihood
        self.n_train = n_train
        self.m_steps = m_steps
        self.hmc_transitions = hmc_transitions
        self.weight_prior = weight_prior
        self.generator = generator
        self.hmc = HMC(n_leapfrog=n_leapfrog, step_size=step_size, target_accept=target_accept)
        self.optimizer = torch.optim.Adagrad(decoder.parameters(), lr=lr)
        param = next(decoder.parameters())
        self.z = torch.randn(n_train, latent_dim, generator=generator, device=param.device, dtype=param.dtype)

    def e_step(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Advance the chains of the examples ``idx`` (their data ``x``); returns (z, acceptance)."""
        z = self.z[idx]

        def target(zz: torch.Tensor) -> torch.Tensor:
            return log_joint(self.decoder, self.likelihood, x, zz)

        total = 0.0
        for _ in range(self.hmc_transitions):
            z, alpha = self.hmc.step(target, z, adapt=True, generator=self.generator)
            total += alpha.mean().item()
        self.z[idx] = z
        return z, total / self.hmc_transitions

    def m_step(self, x: torch.Tensor, z: torch.Tensor) -> list[float]:
        """``m_steps`` Adagrad updates on -mean log p(x, z) (+ prior); returns the objective before each."""
        objectives = []
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for _ in range(self.m_steps):
            objective = log_joint(self.decoder, self.likelihood, x, z).mean()
            loss = -objective
            if self.weight_prior:
                loss = loss + parameter_prior_penalty(params, self.n_train)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            objectives.append(objective.item())
        return objectives

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> MCEMStats:
        """One E-step + M-step on the minibatch ``x`` = train[idx]."""
        z, accept = self.e_step(x, idx)
        objectives = self.m_step(x, z)
        with torch.no_grad():
            after = log_joint(self.decoder, self.likelihood, x, z).mean().item()
        return MCEMStats(accept, self.hmc.step_size, objectives[0], after)
