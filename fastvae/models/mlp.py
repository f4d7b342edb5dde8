"""``--arch mlp``: the AEVB paper's encoder and decoder, MLPs with a Gaussian q(z|x).

>>> model = MLPVAE(MLPConfig(latent_dim=20), example_shape=(28, 28), likelihood="bernoulli")
>>> mu, logvar = model.encode(torch.rand(100, 28, 28))       # (100, 20) each
>>> logits = model.decode(mu)                                # (100, 784): one row per example
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import MLPConfig
from .heads import DecoderHead
from .linear import Linear

ACTIVATION_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(in_dim: int, hidden_dim: int, depth: int, activation: str) -> nn.Sequential:
    """``depth`` hidden layers of ``hidden_dim`` units, each followed by the activation."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [Linear(in_dim if i == 0 else hidden_dim, hidden_dim), ACTIVATION_MODULES[activation]()]
    return nn.Sequential(*layers)


def paper_init_(module: nn.Module, std: float = 0.01) -> None:
    """The paper's initialisation: weights from N(0, std^2), biases and logvars zero."""
    for p in module.parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, 0.0, std)
        else:
            nn.init.zeros_(p)


class GaussianEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag exp(logvar(x))) from (..., D) rows."""

    def __init__(self, features: int, cfg: MLPConfig):
        super().__init__()
        self.body = mlp(features, cfg.hidden_dim, cfg.depth, cfg.activation)
        self.head = Linear(cfg.hidden_dim, 2 * cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar


class Decoder(nn.Module):
    """p(x|z): Bernoulli/continuous-Bernoulli logits, or a Gaussian (mean, logvar), as (..., D) rows."""

    def __init__(self, features: int, cfg: MLPConfig, likelihood: str):
        super().__init__()
        self.body = mlp(cfg.latent_dim, cfg.hidden_dim, cfg.depth, cfg.activation)
        self.out = DecoderHead(likelihood, cfg.decoder_variance, cfg.squash_mean)
        self.head = Linear(cfg.hidden_dim, self.out.outputs_per_feature * features)
        self.logvar = nn.Parameter(torch.zeros(features)) if self.out.learned_logvar else None

    def forward(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.out(self.head(self.body(z)), self.logvar)


class MLPVAE(nn.Module):
    """The paper's VAE: ``encode(x) -> (mu, logvar)``, ``decode(z) -> decoder output`` (rows).

    Args:
        cfg: the architecture (:class:`~fastvae.models.config.MLPConfig`).
        example_shape: the shape of one example, e.g. (28, 28); examples are flattened.
        likelihood: ``"bernoulli"``, ``"continuous_bernoulli"`` or ``"gaussian"``.
    """

    def __init__(self, cfg: MLPConfig, example_shape: tuple[int, ...], likelihood: str):
        super().__init__()
        self.cfg, self.example_shape, self.likelihood = cfg, tuple(int(s) for s in example_shape), likelihood
        features = math.prod(self.example_shape)
        self.encoder = GaussianEncoder(features, cfg)
        self.decoder = Decoder(features, cfg, likelihood)
        if cfg.init == "paper":
            paper_init_(self)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (..., *example_shape) -> mu, logvar: (..., Z)."""
        return self.encoder(x.flatten(x.dim() - len(self.example_shape)))

    def decode(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """z: (..., Z) -> logits (..., D), or (mean (..., D), logvar) for a Gaussian."""
        return self.decoder(z)
