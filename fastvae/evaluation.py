"""Evaluation of any model: the ELBO on held-out data and the importance-sampled marginal log-likelihood.

    ELBO(x)  = E_q[log p(x|z)] - KL(q(z|x) || p(z))            (the training step's own terms)
    log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,   z_k ~ q(z|x)

The second is Burda et al.'s protocol (K = 5,000 in ``fastvae eval``): the K draws and their
log q - log p come from the fused latent head (``reparameterize(..., samples=K, kl="sampled")``),
log p(x|z_k) from the likelihood head. It comes with two standard errors: over the test
examples (their spread, what a different test set would change) and of the importance sampling
itself (the delta method on each example's mean of K weights). Posterior-collapse diagnostics:
the KL per latent dimension and the active units (Burda et al.: Var_x E_q[z_j] > 0.01).

The model is anything with ``encode``/``decode`` (:mod:`fastvae.models.interface`); give the
likelihood, or let it be read from ``model.likelihood`` (fastvae's models have one). The ELBO
goes through :func:`fastvae.step.aevb_objective` with a fixed seed: eps of test row r depends
only on (seed, r), so the estimate does not depend on the batch size. All log-densities go
through fastvae's fused heads, batched as (K, B, .).

>>> elbo = dataset_elbo(model, x_test)                  # mean ELBO per example, nats
>>> log_px = importance_sampled_log_px(model, x_test[:100], n_samples=1000)   # (100,)
>>> stats = dataset_log_px_stats(model, x_test[:1000], n_samples=5000)  # log_px, log_px_se, log_px_mc_se
>>> diagnostics = posterior_diagnostics(model, x_test)   # kl_per_dim, active_units
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .input_checks import require_positive_int
from .latent import reparameterize
from .likelihood import log_likelihood
from .step import ELBO, Noise, aevb_objective, decoder_rows

EVAL_SEED = 1234
#: Burda et al.'s log p(x) protocol, the default of ``fastvae eval`` and ``evaluate_run``: K
#: importance samples per example, over the first this many test examples.
LOG_PX_SAMPLES = 5000
LOG_PX_EXAMPLES = 1000
#: Burda et al.'s active-unit threshold on Var_x E_q[z_j].
ACTIVE_UNIT_THRESHOLD = 0.01




def require_examples(data: torch.Tensor) -> None:
    """``data`` must hold at least one example: a mean over none is no number (it read 0.0)."""
    if data.dim() == 0 or data.shape[0] == 0:
        raise ValueError(f"data has no examples (shape {tuple(data.shape)}); evaluate at least one")


def require_features(data: torch.Tensor, name: str = "data") -> None:
    """``data`` must hold what the model sees: floats, or integers used as they are (0/1 pixels,
    counts). uint8 values above 1 are 8-bit pixels, which fastvae's data layer divides by 255
    before any model sees them: evaluated as 0..255 they gave a Bernoulli ELBO of +2,000 nats
    without a word, so they are refused (one host sync, for uint8 data only)."""
    if data.dtype != torch.uint8 or not data.numel():
        return
    top = int(data.max())  # the one host sync
    if top > 1:
        raise ValueError(f"{name} is uint8 with values up to {top}: 8-bit pixels, which the model was "
                         f"trained on divided by 255 (fastvae's data layer does so); pass {name}.float() / 255")


def as_features(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the model's float input (:func:`require_features`)."""
    require_features(x, "x")
    return x if x.is_floating_point() else x.float()


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
    x = as_features(x)
    out = aevb_objective(model, x, Noise.from_int(seed, x.device, first_row), 1.0,
                         likelihood=model_likelihood(model, likelihood), objective=ELBO(n_samples))
    return out.log_likelihood - out.kl


@torch.no_grad()
def importance_log_weights(model: nn.Module, x: torch.Tensor, n_samples: int,
                           likelihood: str | None = None) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for K = ``n_samples`` draws z_k ~ q(z|x) (torch's generator):
    shape (K, B). The draws and log q - log p come from the fused latent head in one pass."""
    likelihood = model_likelihood(model, likelihood)
    x = as_features(x)
    b = x.shape[0]
    rows = x.reshape(b, -1)
    mu, logvar = model.encode(x)
    z, log_q_minus_log_p = reparameterize(mu, logvar, samples=n_samples, kl="sampled")  # (K, B, Z), (K, B)
    # z is K-major, (K, B, Z): its leading axis is the draws, so the rows come back (K, B, D), like the weights
    out = decoder_rows(model.decode(z.reshape(n_samples * b, -1)), examples=n_samples, draws=b,
                       features=rows.shape[-1])
    return log_likelihood(likelihood, out, rows) - log_q_minus_log_p


@torch.no_grad()
def importance_sampled_log_px(
    model: nn.Module, x: torch.Tensor, n_samples: int = 1000, max_elements: int = 2**24,
    likelihood: str | None = None,
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x) for each example of ``x``: shape (B,).

    The K samples are drawn in chunks so that no (k, B, D) tensor exceeds ``max_elements``;
    chunks are combined exactly (logsumexp of logsumexps).
    """
    return importance_sampled_log_px_and_variance(model, x, n_samples, max_elements, likelihood)[0]


@torch.no_grad()
def importance_sampled_log_px_and_variance(
    model: nn.Module, x: torch.Tensor, n_samples: int = 1000, max_elements: int = 2**24,
    likelihood: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of ``x``: the estimate log p^(x) = log mean_k w_k, and the variance of that
    estimate from the importance sampling, (B,) each.

    Delta method: Var(log p^) ~ Var(w) / (K mean(w)^2) = (K sum_k w~_k^2 - 1) / (K - 1) with the
    normalised weights w~ (K / that sum is the effective sample size); accumulated over chunks as
    log-sum-exps of log w and of 2 log w, so it never overflows. K = 1 gives no variance (nan).
    """
    n_samples = require_positive_int("n_samples", n_samples)
    chunk = max(1, min(n_samples, max_elements // max(1, x.numel())))
    sums, square_sums = [], []
    for start in range(0, n_samples, chunk):
        log_w = importance_log_weights(model, x, min(chunk, n_samples - start), likelihood)
        sums.append(torch.logsumexp(log_w, dim=0))
        square_sums.append(torch.logsumexp(2.0 * log_w.double(), dim=0))
    log_sum, log_square_sum = torch.logsumexp(torch.stack(sums), 0), torch.logsumexp(torch.stack(square_sums), 0)
    squared_weights = torch.exp(log_square_sum - 2.0 * log_sum.double())  # sum_k w~_k^2, in [1/K, 1]
    if n_samples == 1:
        return log_sum, torch.full_like(squared_weights, math.nan)
    return log_sum - math.log(n_samples), (n_samples * squared_weights - 1.0) / (n_samples - 1)


@torch.no_grad()
def dataset_elbo(
    model: nn.Module, data: torch.Tensor, batch_size: int = 1000, n_samples: int = 1, seed: int = EVAL_SEED,
    likelihood: str | None = None,
) -> float:
    """Mean ELBO per example over ``data`` (N, *example_shape), in nats. Row r's noise is row r of
    ``seed``'s stream (training's RNG is untouched)."""
    likelihood = model_likelihood(model, likelihood)
    require_positive_int("batch_size", batch_size)
    require_examples(data)
    require_features(data)

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
    require_positive_int("n_samples", n_samples)
    require_positive_int("batch_size", batch_size)
    require_examples(data)
    require_features(data)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _dataset_mean(lambda xb, start: importance_sampled_log_px(model, xb, n_samples, likelihood=likelihood),
                             model, data, batch_size)


@torch.no_grad()
def dataset_log_px_stats(
    model: nn.Module, data: torch.Tensor, n_samples: int = LOG_PX_SAMPLES, batch_size: int = 100, seed: int = EVAL_SEED,
    likelihood: str | None = None,
) -> dict[str, float]:
    """Burda et al.'s log p(x) protocol over ``data`` (N, *example_shape), with its errors:

    ``log_px``: the mean over the examples of log p^(x_i) (K = ``n_samples`` draws each);
    ``log_px_se``: its standard error over the examples, std_i log p^(x_i) / sqrt(N);
    ``log_px_mc_se``: its importance-sampling error, sqrt(sum_i Var(log p^(x_i))) / N (delta method);
    ``log_px_min_ess``: the smallest effective sample size K / (K sum_k w~_k^2) of any example.
    Draws from torch's generator seeded with ``seed``, forked (training's RNG is untouched).
    """
    likelihood = model_likelihood(model, likelihood)
    n_samples = require_positive_int("n_samples", n_samples)
    require_positive_int("batch_size", batch_size)
    require_examples(data)
    require_features(data)
    device = next(model.parameters()).device
    estimates, variances = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, data.shape[0], batch_size):
                xb = data[start:start + batch_size].to(device, non_blocking=True)
                log_px, variance = importance_sampled_log_px_and_variance(
                    model, xb if xb.is_floating_point() else xb.float(), n_samples, likelihood=likelihood)
                estimates.append(log_px.double())
                variances.append(variance)
    finally:
        model.train(was_training)
    log_px, variance = torch.cat(estimates).cpu(), torch.cat(variances).cpu()  # the one host sync
    n = log_px.numel()
    ess = n_samples / ((n_samples - 1) * variance + 1.0) if n_samples > 1 else torch.ones_like(variance)
    return {
        "log_px": log_px.mean().item(),
        "log_px_se": (log_px.std() / math.sqrt(n)).item() if n > 1 else math.nan,
        "log_px_mc_se": (variance.sum().sqrt() / n).item(),
        "log_px_min_ess": ess.min().item(),
    }


@torch.no_grad()
def posterior_diagnostics(
    model: nn.Module, data: torch.Tensor, batch_size: int = 1000, threshold: float = ACTIVE_UNIT_THRESHOLD,
) -> dict[str, object]:
    """Posterior-collapse diagnostics of the encoder over ``data`` (N, *example_shape):

    ``kl_per_dim``: mean over the examples of KL(q(z_j|x) || N(0, 1)) for each latent dim j
    (they sum to the mean analytic KL); ``active_units``: the number of dims with
    Var_x E_q[z_j] = Var_x mu_j(x) > ``threshold`` (Burda et al. 2015: 0.01);
    ``posterior_mean_variance``: those variances, per dim.
    """
    require_positive_int("batch_size", batch_size)
    require_examples(data)
    require_features(data)
    device = next(model.parameters()).device
    kl_sum = mu_sum = mu_square_sum = None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, data.shape[0], batch_size):
            xb = data[start:start + batch_size].to(device, non_blocking=True)
            mu, logvar = model.encode(xb if xb.is_floating_point() else xb.float())
            mu, logvar = mu.double(), logvar.double()
            kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
            batch = (kl.sum(0), mu.sum(0), mu.square().sum(0))
            if kl_sum is None:
                kl_sum, mu_sum, mu_square_sum = batch
            else:
                kl_sum, mu_sum, mu_square_sum = kl_sum + batch[0], mu_sum + batch[1], mu_square_sum + batch[2]
    finally:
        model.train(was_training)
    n = data.shape[0]
    mean = mu_sum / n
    variance = ((mu_square_sum - n * mean.square()) / max(n - 1, 1)).clamp_min(0.0)
    return {
        "kl_per_dim": kl_sum.div(n).tolist(),  # one host sync
        "active_units": int((variance > threshold).sum().item()),
        "posterior_mean_variance": variance.tolist(),
    }


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
