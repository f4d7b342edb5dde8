"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal, 1995) on fastvae's encoder/decoder.

The model is a ``fastvae.models.MLPVAE`` (the same architecture AEVB trains); only the update
rule differs:

* **wake** — update the generative model (the decoder; the prior p(z) = N(0, I) is fixed) by
  ascending ``mean log p(x, z)`` at z ~ q(z|x), a sample with no gradient through it;
* **sleep** — update the recognition model (the encoder) by ascending ``mean log q(z|x)`` on
  fantasies z ~ p(z), x ~ p(x|z) (Bernoulli: sampled bits; Gaussian: N(mean, exp(logvar))).

Each phase also carries the paper's N(0, I) parameter prior on the parameters it updates.
Its lower bound is the ELBO with the recognition model as q — ``fastvae.evaluation``'s
``dataset_elbo`` applies unchanged.

>>> model = MLPVAE(MLPConfig(latent_dim=10), example_shape=(784,), likelihood="bernoulli")
>>> ws = WakeSleep(model, lr=0.02, n_train=60000)
>>> stats = ws.step(x_batch)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..likelihood import gaussian_log_likelihood, log_likelihood
from ..models import MLPVAE
from .common import log_standard_normal, parameter_prior_penalty, sample_likelihood


class WakeSleepSamples(NamedTuple):
    """The samples one wake-sleep step used (returned so tests can re-derive the updates)."""

    z_wake: torch.Tensor  # (B, Z), z ~ q(z|x) for the data batch
    z_sleep: torch.Tensor  # (B', Z), z ~ p(z)
    x_sleep: torch.Tensor  # (B', D), x ~ p(x|z_sleep)
    wake_objective: float  # mean log p(x, z_wake) before the update
    sleep_objective: float  # mean log q(z_sleep | x_sleep) before the update


def wake_objective(model: MLPVAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mean over the batch of log p(x, z) = log p(x|z) + log p(z) (p(z) has no parameters)."""
    ll = log_likelihood(model.likelihood, model.decoder(z), x)
    return (ll + log_standard_normal(z)).mean()


def sleep_objective(model: MLPVAE, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mean over the batch of log q(z|x) = log N(z; mu(x), diag exp(logvar(x)))."""
    mu, logvar = model.encoder(x)
    return gaussian_log_likelihood(mu, logvar, z).mean()


@torch.no_grad()
def sample_recognition(model: MLPVAE, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ q(z|x), detached."""
    mu, logvar = model.encoder(x)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


@torch.no_grad()
def dream(model: MLPVAE, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fantasies: z ~ N(0, I), x ~ p(x|z). Returns (z (n, Z), x (n, D))."""
    param = next(model.parameters())
    z = torch.randn(n, model.cfg.latent_dim, generator=generator, device=param.device, dtype=param.dtype)
    return z, sample_likelihood(model.likelihood, model.decoder(z), generator)


class WakeSleep:
    """Wake-sleep training of a ``MLPVAE``: one Adagrad optimiser per phase.

    Args:
        model: the encoder/decoder pair (same classes AEVB trains).
        lr: Adagrad step size of both phases.
        n_train: training-set size N (scales the parameter prior, ``|theta|^2 / 2N``); 0 = no prior.
        optimizer: ``"adagrad"`` (the paper) or ``"sgd"`` (used by the tests).
    """

    def __init__(self, model: MLPVAE, lr: float = 0.02, n_train: int = 0, optimizer: str = "adagrad"):
        self.model = model
        self.n_train = n_train
        opt = {"adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}.get(optimizer)
        if opt is None:
            raise ValueError(f"optimizer must be 'adagrad' or 'sgd', got {optimizer!r}")
        self.gen_params = list(model.decoder.parameters())
        self.rec_params = list(model.encoder.parameters())
        self.gen_opt = opt(self.gen_params, lr=lr)
        self.rec_opt = opt(self.rec_params, lr=lr)

    def _prior(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        if self.n_train <= 0:
            return torch.zeros((), device=params[0].device)
        return parameter_prior_penalty(params, self.n_train)

    def wake(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
        """Wake phase: one ascent step on mean log p(x, z), z ~ q(z|x). Returns (z, objective)."""
        z = sample_recognition(self.model, x, generator)
        objective = wake_objective(self.model, x, z)
        self.gen_opt.zero_grad(set_to_none=True)
        (-objective + self._prior(self.gen_params)).backward()
        self.gen_opt.step()
        return z, objective.item()

    def sleep(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Sleep phase: one ascent step on mean log q(z|x) over n fantasies. Returns (z, x, objective)."""
        z, x = dream(self.model, n, generator)
        objective = sleep_objective(self.model, z, x)
        self.rec_opt.zero_grad(set_to_none=True)
        (-objective + self._prior(self.rec_params)).backward()
        self.rec_opt.step()
        return z, x, objective.item()

    def step(self, x: torch.Tensor, generator: torch.Generator | None = None) -> WakeSleepSamples:
        """A wake step on the batch ``x`` then a sleep step on as many fantasies."""
        z_wake, wake_obj = self.wake(x, generator)
        z_sleep, x_sleep, sleep_obj = self.sleep(x.shape[0], generator)
        return WakeSleepSamples(z_wake, z_sleep, x_sleep, wake_obj, sleep_obj)
