"""The AEVB paper's encoder and decoder: MLPs with Gaussian q(z|x) and a Bernoulli or Gaussian p(x|z).

>>> model = VAE(ModelConfig(data_dim=784, latent_dim=20))
>>> out = model(torch.rand(100, 784))
>>> loss = model.loss(out, torch.rand(100, 784))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import NamedTuple

import torch
from torch import nn

from .latent import reparameterize
from .likelihood import LIKELIHOODS
from .loss import ELBOLoss

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU, "gelu": nn.GELU}
DECODER_VARIANCES = ("per_example", "per_feature")
INITS = ("paper", "torch")


@dataclass
class ModelConfig:
    """Architecture of the encoder/decoder pair. Defaults: the paper's MNIST model.

    ``decoder_variance`` (Gaussian only): ``per_example`` = the decoder outputs a logvar per
    pixel and example; ``per_feature`` = one learned logvar per pixel.
    ``squash_mean`` (Gaussian only): sigmoid on the decoder mean, as the paper's Frey Face model.
    ``init``: ``paper`` = weights ~ N(0, 0.01^2), zero biases; ``torch`` = PyTorch's default.
    """

    data_dim: int
    latent_dim: int = 20
    hidden_dim: int = 500
    depth: int = 1
    activation: str = "tanh"
    likelihood: str = "bernoulli"
    decoder_variance: str = "per_example"
    squash_mean: bool = False
    init: str = "paper"

    def __post_init__(self) -> None:
        for name in ("data_dim", "latent_dim", "hidden_dim", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        choices = {
            "activation": tuple(ACTIVATIONS),
            "likelihood": LIKELIHOODS,
            "decoder_variance": DECODER_VARIANCES,
            "init": INITS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(in_dim: int, hidden_dim: int, depth: int, activation: str) -> nn.Sequential:
    """``depth`` hidden layers of ``hidden_dim`` units, each followed by the activation."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag exp(logvar(x)))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.body = mlp(cfg.data_dim, cfg.hidden_dim, cfg.depth, cfg.activation)
        self.head = nn.Linear(cfg.hidden_dim, 2 * cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar


class Decoder(nn.Module):
    """p(x|z): Bernoulli/continuous-Bernoulli logits, or a Gaussian (mean, logvar)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.body = mlp(cfg.latent_dim, cfg.hidden_dim, cfg.depth, cfg.activation)
        gaussian = cfg.likelihood == "gaussian"
        per_example = gaussian and cfg.decoder_variance == "per_example"
        self.head = nn.Linear(cfg.hidden_dim, (2 if per_example else 1) * cfg.data_dim)
        self.logvar = nn.Parameter(torch.zeros(cfg.data_dim)) if gaussian and not per_example else None

    def forward(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.body(z))
        if self.cfg.likelihood != "gaussian":
            return out
        if self.logvar is None:
            mean, logvar = out.chunk(2, dim=-1)
        else:
            mean, logvar = out, self.logvar
        return (torch.sigmoid(mean) if self.cfg.squash_mean else mean), logvar

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z]: sigmoid(logits) for Bernoulli, the mean for Gaussian, the CB mean for continuous Bernoulli."""
        out = self(z)
        if self.cfg.likelihood == "gaussian":
            return out[0]
        if self.cfg.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return torch.distributions.ContinuousBernoulli(logits=out.float()).mean


class VAEOutput(NamedTuple):
    decoder_out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    kl: torch.Tensor
    z: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class VAE(nn.Module):
    """Encoder + reparameterised sample + decoder; ``loss`` is the negative ELBO via ``fastvae.ELBOLoss``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = GaussianEncoder(cfg)
        self.decoder = Decoder(cfg)
        self.criterion = ELBOLoss(cfg.likelihood, "mean")
        if cfg.init == "paper":
            self.reset_parameters_paper()

    def reset_parameters_paper(self, std: float = 0.01) -> None:
        """The paper's initialisation: weights from N(0, std^2), biases and logvars zero."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.zeros_(p)

    def forward(
        self,
        x: torch.Tensor,
        n_samples: int | None = None,
        seed: torch.Tensor | int | None = None,
        first_row: int = 0,
        eps: torch.Tensor | None = None,
    ) -> VAEOutput:
        """Encode, draw z (L = ``n_samples`` draws stacked in front: (L, ..., Z)), decode.

        ``seed``/``first_row``/``eps`` go to :func:`fastvae.reparameterize`.
        """
        mu, logvar = self.encoder(x)
        if n_samples is not None:
            mu = mu.expand(n_samples, *mu.shape)
            logvar = logvar.expand(n_samples, *logvar.shape)
        z, kl = reparameterize(mu, logvar, seed=seed, eps=eps, first_row=first_row)
        return VAEOutput(self.decoder(z), kl, z, mu, logvar)

    def loss(self, out: VAEOutput, x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Mean negative ELBO per example (and per sample when L > 1)."""
        self.criterion.beta = beta
        return self.criterion(out.decoder_out, x, out.kl)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of E[x|z] with z from the prior N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.cfg.latent_dim, device=device, generator=generator)
        return self.decoder.mean(z)

    @torch.no_grad()
    def manifold(self, grid: int) -> torch.Tensor:
        """The paper's Fig. 4 for a 2-D latent: E[x|z] over a grid x grid of prior quantiles
        z = (Phi^-1(u), Phi^-1(v)), u, v evenly spaced in (0, 1); shape (grid, grid, D), row 0
        holding the largest z_2."""
        if self.cfg.latent_dim != 2:
            raise ValueError(f"a manifold grid needs a 2-D latent space, this model has latent_dim={self.cfg.latent_dim}")
        normal = NormalDist()
        q = torch.tensor([normal.inv_cdf((i + 0.5) / grid) for i in range(grid)])
        z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
        z = torch.stack([z1.reshape(-1), z2.reshape(-1)], 1).to(next(self.parameters()).device)
        return self.decoder.mean(z).reshape(grid, grid, -1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x|z] at z = mu(x)."""
        mu, _ = self.encoder(x)
        return self.decoder.mean(mu)

