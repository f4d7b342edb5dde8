"""Importance-sampled log p(x) and the ELBO on a linear-Gaussian model whose log p(x) is closed form.

Model: z ~ N(0, I_Z), x | z ~ N(W z + b, s2 I_D) with W = Q diag(w) (orthonormal Q), so
p(x) = N(b, W W^T + s2 I) and the exact posterior is diagonal:
Sigma = diag(1 / (1 + w^2 / s2)), mean = Sigma W^T (x - b) / s2.
"""

import math

import pytest
import torch
from torch import nn

from fastvae.evaluation import (
    dataset_elbo,
    dataset_log_px,
    elbo_per_example,
    importance_log_weights,
    importance_sampled_log_px,
)

D, Z, S2 = 6, 3, 0.3


class LinearGaussianVAE(nn.Module):
    def __init__(self, posterior_shift: float = 0.0, posterior_logvar_shift: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(D, Z, generator=g, dtype=torch.float64))
        self.w = q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.shift, self.lv_shift = posterior_shift, posterior_logvar_shift
        self.likelihood = "gaussian"
        self.anchor = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # gives the module a device

    def encode(self, x):
        var = 1.0 / (1.0 + (self.w ** 2).sum(0) / S2)
        mean = (x - self.b) @ self.w * var / S2
        return mean + self.shift, (var.log() + self.lv_shift).expand_as(mean)

    def decode(self, z):
        return z @ self.w.T + self.b, torch.tensor(math.log(S2), dtype=torch.float64)

    def exact_log_px(self, x):
        cov = self.w @ self.w.T + S2 * torch.eye(D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def sample_x(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, Z, generator=g, dtype=torch.float64)
        return z @ self.w.T + self.b + math.sqrt(S2) * torch.randn(n, D, generator=g, dtype=torch.float64)


def test_exact_posterior_gives_exact_log_px_and_a_tight_elbo():
    model = LinearGaussianVAE()
    x = model.sample_x(50)
    torch.manual_seed(0)
    exact = model.exact_log_px(x)
    torch.testing.assert_close(importance_sampled_log_px(model, x, n_samples=7), exact, rtol=0, atol=1e-9)
    # with q = p(z|x) the ELBO equals log p(x) in expectation (the analytic-KL estimator still has
    # variance per draw): a 4000-draw average is within a few standard errors (sd ~ 1 nat -> 0.016)
    elbo = elbo_per_example(model, x, n_samples=4000)
    assert (elbo - exact).abs().max() < 0.1


def test_wrong_posterior_importance_sampling_converges_and_the_elbo_is_below():
    model = LinearGaussianVAE(posterior_shift=0.3, posterior_logvar_shift=0.4)  # q wider and off-centre
    x = model.sample_x(40)
    exact = model.exact_log_px(x)
    torch.manual_seed(0)
    elbo = elbo_per_example(model, x, n_samples=2000)
    gap = exact - elbo
    assert (gap > 0.05).all()  # the bound is strict for a wrong q
    k = 20000
    estimate = importance_sampled_log_px(model, x, n_samples=k, max_elements=2**20)  # chunked
    # The estimate is log of a mean of K weights; its standard error is ~ sd(w) / (sqrt(K) mean(w))
    # (delta method), measured from a fresh set of weights. Allow 5 standard errors.
    w = torch.exp(importance_log_weights(model, x, k) - exact)
    standard_error = w.std(0) / (math.sqrt(k) * w.mean(0))
    assert ((estimate - exact).abs() < 5 * standard_error).all()
    # the estimate is tighter than the ELBO for every example
    assert (estimate > elbo).all()


def test_dataset_means_leave_the_training_rng_alone():
    model = LinearGaussianVAE(posterior_shift=0.1)
    x = model.sample_x(30)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    a = dataset_log_px(model, x, n_samples=64, batch_size=7)
    b = dataset_elbo(model, x, batch_size=8)
    after = torch.rand(3)
    assert torch.equal(before, after)
    assert a == dataset_log_px(model, x, n_samples=64, batch_size=7)  # evaluation is seeded: repeatable
    exact = model.exact_log_px(x).mean().item()
    assert abs(a - exact) < 0.05 and abs(b - exact) < 1.0  # b: one draw per example, 30 examples


def test_the_test_elbo_does_not_depend_on_the_batch_size():
    """Row r's noise is row r of the evaluation seed's stream, whatever batches it falls in."""
    model = LinearGaussianVAE(posterior_shift=0.2)
    x = model.sample_x(70)
    per_example = elbo_per_example(model, x)
    in_pieces = torch.cat([elbo_per_example(model, x[i:i + 9], first_row=i) for i in range(0, 70, 9)])
    assert torch.equal(per_example, in_pieces)
    assert dataset_elbo(model, x, batch_size=9) == pytest.approx(dataset_elbo(model, x, batch_size=70), rel=1e-12)
    assert dataset_elbo(model, x, seed=1) != dataset_elbo(model, x, seed=2)


# ---- log p(x)'s errors and the posterior diagnostics ----


def test_delta_method_variance_matches_repeated_estimates():
    """Var(log p^) from one run's weights, (K sum w~^2 - 1) / (K - 1), against the spread of R = 400
    independent estimates: the sample variance's relative standard error is sqrt(2 / (R - 1)) = 7%
    (normal approximation), the delta method's bias O(1/K) is < 1% at K = 200; allow 5 standard errors."""
    from fastvae.evaluation import importance_sampled_log_px_and_variance

    model = LinearGaussianVAE(posterior_shift=0.3, posterior_logvar_shift=0.4)
    x = model.sample_x(4)
    torch.manual_seed(0)
    runs = [importance_sampled_log_px_and_variance(model, x, 200) for _ in range(400)]
    estimates, variances = torch.stack([r[0] for r in runs]), torch.stack([r[1] for r in runs])
    ratio = variances.mean(0) / estimates.var(0)
    assert ((ratio - 1).abs() < 5 * math.sqrt(2 / 399)).all(), ratio
    # the exact posterior: every weight equal, no importance-sampling variance
    _, exact_variance = importance_sampled_log_px_and_variance(LinearGaussianVAE(), x, 50)
    assert exact_variance.abs().max() < 1e-9


def test_dataset_log_px_stats():
    from fastvae.evaluation import dataset_log_px_stats

    model = LinearGaussianVAE(posterior_shift=0.2)
    x = model.sample_x(40)
    stats = dataset_log_px_stats(model, x, n_samples=300, batch_size=16)
    # the same seeded draws as dataset_log_px, batch by batch
    assert stats["log_px"] == pytest.approx(dataset_log_px(model, x, n_samples=300, batch_size=16), rel=1e-12)
    exact = model.exact_log_px(x)
    assert stats["log_px_se"] == pytest.approx(exact.std().item() / math.sqrt(40), rel=0.05)
    assert abs(stats["log_px"] - exact.mean().item()) < 5 * stats["log_px_mc_se"] + 1e-9
    assert 0 < stats["log_px_mc_se"] < stats["log_px_se"] and 1 <= stats["log_px_min_ess"] <= 300
    with pytest.raises(ValueError, match="data has no examples"):  # was torch.cat's error on an empty list
        dataset_log_px_stats(model, x[:0], n_samples=3)


class CollapsingEncoder(nn.Module):
    """Latent dim 0 follows x (mu = x_0, var 0.04); dims 1, 2 are the prior (mu = 0, lv = 0) except
    that dim 1's mean moves a little, with Var_x mu_1 = 0.005^2 * Var x_1 < 0.01: still inactive."""

    likelihood = "gaussian"

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def encode(self, x):
        mu = torch.stack([x[:, 0], 0.005 * x[:, 1], torch.zeros_like(x[:, 0])], dim=-1)
        logvar = torch.stack([torch.full_like(x[:, 0], math.log(0.04)), torch.zeros_like(x[:, 0]),
                              torch.zeros_like(x[:, 0])], dim=-1)
        return mu, logvar


def test_posterior_diagnostics_kl_per_dim_and_active_units():
    from fastvae.evaluation import posterior_diagnostics

    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    diagnostics = posterior_diagnostics(CollapsingEncoder(), x, batch_size=64)
    kl = diagnostics["kl_per_dim"]
    expected0 = (0.5 * (x[:, 0] ** 2 + 0.04 - 1 - math.log(0.04))).mean().item()
    assert kl[0] == pytest.approx(expected0, rel=1e-12)
    assert kl[1] == pytest.approx((0.5 * (0.005 * x[:, 1]) ** 2).mean().item(), rel=1e-12) and kl[2] == 0.0
    assert diagnostics["active_units"] == 1
    assert diagnostics["posterior_mean_variance"][0] == pytest.approx(x[:, 0].var().item(), rel=1e-12)


def test_no_examples_and_bad_counts_are_refused_naming_the_argument():
    # dataset_elbo / dataset_log_px over no examples (or with batch_size <= 0, which evaluates
    # none) returned 0.0, a perfect-looking score; the others failed in range() or torch.cat
    from fastvae.evaluation import dataset_log_px_stats, posterior_diagnostics

    model = LinearGaussianVAE()
    x = model.sample_x(8)
    for run in (lambda **kw: dataset_elbo(model, **kw), lambda **kw: dataset_log_px(model, n_samples=3, **kw),
                lambda **kw: dataset_log_px_stats(model, n_samples=3, **kw),
                lambda **kw: posterior_diagnostics(model, **kw)):
        with pytest.raises(ValueError, match=r"data has no examples \(shape \(0, 6\)\)"):
            run(data=x[:0])
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad!r}"):
                run(data=x, batch_size=bad)
    for bad in (2.0, True, 0):
        with pytest.raises(ValueError, match=f"n_samples must be a positive integer, got {bad!r}"):
            importance_sampled_log_px(model, x, n_samples=bad)
        with pytest.raises(ValueError, match=f"n_samples must be a positive integer, got {bad!r}"):
            dataset_log_px_stats(model, x, n_samples=bad)


class BernoulliVAE(nn.Module):
    """A small Bernoulli VAE on D binary features (weights fixed by a seed)."""

    likelihood = "bernoulli"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.dec = nn.Linear(D, 2 * Z), nn.Linear(Z, D)

    def encode(self, x):
        return self.enc(x).chunk(2, -1)

    def decode(self, z):
        return self.dec(z)


def test_uint8_pixels_above_1_are_refused_naming_the_data():
    # uint8 0..255 pixels (which fastvae's data layer divides by 255) were evaluated as 0..255:
    # a Bernoulli ELBO of thousands of positive nats, active units, log p(x), without a word
    from fastvae.evaluation import dataset_log_px_stats, posterior_diagnostics

    model = BernoulliVAE()
    pixels = torch.randint(0, 256, (20, D), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    message = r"data is uint8 with values up to 255: 8-bit pixels, .* pass data.float\(\) / 255"
    for run in (lambda x: dataset_elbo(model, x), lambda x: dataset_log_px(model, x, n_samples=3),
                lambda x: dataset_log_px_stats(model, x, n_samples=3), lambda x: posterior_diagnostics(model, x)):
        with pytest.raises(ValueError, match=message):
            run(pixels)
    for run in (lambda x: elbo_per_example(model, x), lambda x: importance_sampled_log_px(model, x, n_samples=3)):
        with pytest.raises(ValueError, match=message.replace("data", "x")):
            run(pixels)
    # 0/1 uint8 data, as the data layer keeps it, evaluates like its floats
    binary = (pixels > 127).to(torch.uint8)
    assert dataset_elbo(model, binary) == dataset_elbo(model, binary.float())
    torch.testing.assert_close(elbo_per_example(model, binary), elbo_per_example(model, binary.float()))
