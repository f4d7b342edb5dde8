"""Exact check: a linear-Gaussian VAE against closed-form probabilistic PCA (Tipping & Bishop 1999).

PPCA:  z ~ N(0, I_q),  x = W z + mu + sigma * eps,  so  x ~ N(mu, C),  C = W W^T + sigma^2 I_D.
Its maximum-likelihood solution is closed form: with S the sample covariance (eigenvalues
l_1 >= ... >= l_D, eigenvectors U),

    sigma^2_ML = mean(l_{q+1}, ..., l_D),   W_ML = U_q (L_q - sigma^2_ML I)^{1/2},   mu_ML = mean(x),

and the maximised log-likelihood per example is -1/2 (D log 2 pi + log|C_ML| + tr(C_ML^{-1} S)).

A VAE with a linear decoder (mean W z + b, one learned isotropic variance) and a linear
Gaussian encoder has exactly the PPCA family as its generative model, and the family of its
q contains the exact posterior at the ML solution once W's columns are orthogonal (then the
posterior covariance sigma^2 (W^T W + sigma^2 I)^{-1} is diagonal, and it is x-independent:
the encoder's logvar is one learned vector). So a well-trained linear VAE's ELBO should
reach the ML log-likelihood: the gap measures optimisation + estimator error of the fastvae
training path, with the exact answer known.

>>> data = sample_ppca(random_ppca(10, 2), 2000)
>>> result = ppca_check(data, q=2)
>>> result.gap_elbo            # ML log-lik minus the VAE's ELBO, nats per example
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..evaluation import dataset_elbo, importance_sampled_log_px
from ..step import ELBO, Noise, noise_seed
from ..train_step import ObjectiveModule, TrainStep


@dataclass
class PPCAModel:
    """x ~ N(mu, W W^T + sigma2 I)."""

    W: torch.Tensor  # (D, q)
    mu: torch.Tensor  # (D,)
    sigma2: float

    @property
    def covariance(self) -> torch.Tensor:
        D = self.W.shape[0]
        return self.W @ self.W.T + self.sigma2 * torch.eye(D, dtype=self.W.dtype)


def random_ppca(D: int, q: int, sigma: float = 0.5, seed: int = 0) -> PPCAModel:
    """A random PPCA model: W with N(0, 1) entries scaled to column norms 1..q+1, mu ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, q, generator=g, dtype=torch.float64)
    W = W / W.norm(dim=0) * torch.arange(q + 1, 1, -1, dtype=torch.float64) * 1.5
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    return PPCAModel(W, mu, sigma**2)


def sample_ppca(model: PPCAModel, n: int, seed: int = 1) -> torch.Tensor:
    """n draws x = W z + mu + sigma eps: (n, D), float64."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.W.shape[1], generator=g, dtype=torch.float64)
    eps = torch.randn(n, model.W.shape[0], generator=g, dtype=torch.float64)
    return z @ model.W.T + model.mu + math.sqrt(model.sigma2) * eps


def fit_ppca_ml(x: torch.Tensor, q: int) -> PPCAModel:
    """Tipping & Bishop's closed-form ML estimate (W up to a rotation; here R = I)."""
    x = x.double()
    mu = x.mean(0)
    S = (x - mu).T @ (x - mu) / x.shape[0]
    evals, evecs = torch.linalg.eigh(S)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    sigma2 = evals[q:].mean().item()
    W = evecs[:, :q] * torch.sqrt(torch.clamp(evals[:q] - sigma2, min=0.0))
    return PPCAModel(W, mu, sigma2)


def ppca_log_likelihood(model: PPCAModel, x: torch.Tensor) -> torch.Tensor:
    """Exact log N(x; mu, C) of each row of ``x``: shape (N,), float64."""
    x = x.double()
    L = torch.linalg.cholesky(model.covariance)
    d = torch.linalg.solve_triangular(L, (x - model.mu).T, upper=False)  # (D, N)
    D = x.shape[1]
    return -0.5 * (D * math.log(2 * math.pi) + 2 * torch.log(torch.diagonal(L)).sum() + (d**2).sum(0))


def ml_log_likelihood(x: torch.Tensor, q: int) -> float:
    """Maximised PPCA log-likelihood per example: -1/2 (D log 2pi + log|C| + tr(C^{-1} S))."""
    model = fit_ppca_ml(x, q)
    x = x.double()
    S = (x - model.mu).T @ (x - model.mu) / x.shape[0]
    C = model.covariance
    D = x.shape[1]
    return -0.5 * (D * math.log(2 * math.pi) + torch.logdet(C).item() + torch.trace(torch.linalg.solve(C, S)).item())


class LinearEncoder(nn.Module):
    """q(z|x) = N(A x + a, diag exp(s)): a linear mean, one learned logvar vector."""

    def __init__(self, D: int, q: int):
        super().__init__()
        self.mean = nn.Linear(D, q)
        self.logvar = nn.Parameter(torch.zeros(q))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.mean(x)
        return mu, self.logvar.expand_as(mu)


class LinearDecoder(nn.Module):
    """p(x|z) = N(W z + b, exp(s) I): a linear mean, one learned isotropic logvar."""

    def __init__(self, D: int, q: int):
        super().__init__()
        self.mean_map = nn.Linear(q, D)
        self.log_sigma2 = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean_map(z), self.log_sigma2

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean_map(z)


class LinearVAE(nn.Module):
    """A linear-Gaussian VAE: ``encode``/``decode`` as every fastvae model, so the training step
    and ``fastvae.evaluation`` apply to it unchanged."""

    likelihood = "gaussian"

    def __init__(self, D: int, q: int):
        super().__init__()
        self.encoder = LinearEncoder(D, q)
        self.decoder = LinearDecoder(D, q)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(z)

    def marginal(self) -> PPCAModel:
        """The trained model's exact marginal p(x) = N(b, W W^T + exp(s) I)."""
        lin = self.decoder.mean_map
        return PPCAModel(lin.weight.detach().double(), lin.bias.detach().double(), self.decoder.log_sigma2.exp().item())


def train_linear_vae(
    x: torch.Tensor, q: int, steps: int = 1000, lr: float = 0.1, n_samples: int = 4, seed: int = 0
) -> LinearVAE:
    """Full-batch Adam on the negative ELBO (``n_samples`` reparameterised draws per point) through
    fastvae's training step, the step size decayed by cosine to 1 %."""
    torch.manual_seed(seed)
    x = x.float()
    model = LinearVAE(x.shape[1], q)
    with torch.no_grad():  # start the decoder at the data mean, small weights
        model.decoder.mean_map.bias.copy_(x.mean(0))
        model.decoder.mean_map.weight.normal_(0.0, 0.1)
        model.encoder.mean.weight.normal_(0.0, 0.1)
        model.encoder.mean.bias.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    step = TrainStep(ObjectiveModule(model, "gaussian", ELBO(samples=n_samples)), opt)
    noise, beta = Noise(torch.zeros(1, dtype=torch.int64)), torch.ones(())
    for t in range(steps):
        noise.seed.fill_(noise_seed(seed, t))
        step(x, noise, beta)
        sched.step()
    return model


@dataclass
class PPCACheck:
    """Per-example log-likelihoods (nats) of the exact check."""

    D: int
    q: int
    n: int
    ml_log_lik: float  # closed-form ML PPCA log-likelihood (the optimum over the family)
    true_log_lik: float  # log-likelihood under the generating model
    vae_exact_marginal: float  # closed-form log p(x) of the trained VAE's generative model
    vae_is_log_px: float  # importance-sampled log p(x) of the trained VAE (q as proposal)
    is_stderr: float  # standard error of (IS - exact) over examples
    vae_elbo: float  # the trained VAE's ELBO
    gap_elbo: float  # ml_log_lik - vae_elbo
    gap_marginal: float  # ml_log_lik - vae_exact_marginal (optimisation gap)
    subspace_angle_deg: float  # largest principal angle between the VAE's and ML's W spans

    def to_dict(self) -> dict:
        return asdict(self)


def ppca_check(
    x: torch.Tensor, q: int, true_model: PPCAModel | None = None, steps: int = 1000, is_samples: int = 1000,
    elbo_samples: int = 100, seed: int = 0,
) -> PPCACheck:
    """Train a linear VAE on ``x`` and compare it with the closed-form ML PPCA solution."""
    model = train_linear_vae(x, q, steps=steps, seed=seed)
    xf = x.float()
    ml = ml_log_likelihood(x, q)
    exact = ppca_log_likelihood(model.marginal(), x)
    torch.manual_seed(seed + 1)
    is_est = torch.cat([importance_sampled_log_px(model, xb, is_samples) for xb in xf.split(500)]).double()
    diff = is_est - exact
    elbo = dataset_elbo(model, xf, n_samples=elbo_samples)
    W_vae = model.marginal().W
    W_ml = fit_ppca_ml(x, q).W
    angle = _max_principal_angle(W_vae, W_ml)
    true = ppca_log_likelihood(true_model, x).mean().item() if true_model is not None else float("nan")
    return PPCACheck(
        D=x.shape[1], q=q, n=x.shape[0], ml_log_lik=ml, true_log_lik=true,
        vae_exact_marginal=exact.mean().item(), vae_is_log_px=is_est.mean().item(),
        is_stderr=(diff.std() / math.sqrt(len(diff))).item(), vae_elbo=elbo,
        gap_elbo=ml - elbo, gap_marginal=ml - exact.mean().item(), subspace_angle_deg=angle,
    )


def _max_principal_angle(A: torch.Tensor, B: torch.Tensor) -> float:
    """Largest principal angle (degrees) between span(A) and span(B)."""
    qa, _ = torch.linalg.qr(A.double())
    qb, _ = torch.linalg.qr(B.double())
    s = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)
    return math.degrees(math.acos(s.min().item()))


__all__ = [
    "PPCAModel", "random_ppca", "sample_ppca", "fit_ppca_ml", "ppca_log_likelihood", "ml_log_likelihood",
    "LinearVAE", "train_linear_vae", "PPCACheck", "ppca_check",
]
