"""The one step's objective, ``fastvae.step.aevb_objective``, against an independent definition:
``torch.distributions`` log-densities and KL at the z the step drew (recorded by the model), for
every likelihood, L >= 1 draws and beta; the draw layout (global noise rows) behind exact
data-parallel training; every decoder-output shape the interface allows; clear errors."""

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, ContinuousBernoulli, Normal, kl_divergence

from fastvae.latent import cpu_seeded_normal
from fastvae.step import ELBO, Noise, aevb_objective

B, Z, SHAPE = 6, 3, (2, 5)  # examples of shape 2 x 5 (D = 10)
D = 10


class Recording(nn.Module):
    """Fixed posteriors; the decoder is a fixed linear map of z, in the layout asked for."""

    def __init__(self, likelihood: str, logvar_layout: str = "like_mean", shaped: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mu = nn.Parameter(torch.randn(B, Z, generator=g, dtype=torch.float64))
        self.logvar = nn.Parameter(0.3 * torch.randn(B, Z, generator=g, dtype=torch.float64))
        self.w = nn.Parameter(torch.randn(Z, 2 * D, generator=g, dtype=torch.float64))
        self.likelihood, self.logvar_layout, self.shaped = likelihood, logvar_layout, shaped
        self.per_feature = nn.Parameter(0.2 * torch.randn(D, generator=g, dtype=torch.float64))
        self.z = None

    def encode(self, x):
        assert x.shape[1:] == SHAPE
        rows = torch.arange(x.shape[0])
        return self.mu[rows], self.logvar[rows]

    def decode(self, z):
        self.z = z.detach().clone()
        out = z @ self.w
        mean, lv = out[:, :D], out[:, D:]
        shape = (z.shape[0], *SHAPE) if self.shaped else (z.shape[0], D)
        if self.likelihood != "gaussian":
            return mean.reshape(shape)
        logvar = {"like_mean": lv.reshape(shape), "per_feature": self.per_feature,
                  "per_feature_shaped": self.per_feature.reshape(SHAPE), "scalar": self.per_feature[0]}[self.logvar_layout]
        return mean.reshape(shape), logvar

    def reference_ll(self, x):
        """log p(x | z) per recorded z with torch.distributions (float64): shape (B, L)."""
        out = self.z @ self.w
        mean, lv = out[:, :D], out[:, D:]
        rows = x.reshape(B, 1, D).double()
        mean = mean.reshape(B, -1, D)
        if self.likelihood == "bernoulli":
            return Bernoulli(logits=mean).log_prob(rows).sum(-1)
        if self.likelihood == "continuous_bernoulli":
            return ContinuousBernoulli(logits=mean, validate_args=False).log_prob(rows).sum(-1)
        logvar = {"like_mean": lv.reshape(B, -1, D), "per_feature": self.per_feature,
                  "per_feature_shaped": self.per_feature, "scalar": self.per_feature[0]}[self.logvar_layout]
        return Normal(mean, torch.exp(0.5 * logvar)).log_prob(rows).sum(-1)


def _x(likelihood):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, *SHAPE, generator=g, dtype=torch.float64)
    return (x > 0.5).double() if likelihood == "bernoulli" else x


CASES = [("bernoulli", "like_mean", True), ("continuous_bernoulli", "like_mean", False),
         ("gaussian", "like_mean", True), ("gaussian", "like_mean", False), ("gaussian", "per_feature", True),
         ("gaussian", "per_feature_shaped", True), ("gaussian", "scalar", False)]


@pytest.mark.parametrize("likelihood, logvar_layout, shaped", CASES)
@pytest.mark.parametrize("draws", [1, 4])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_the_step_is_the_elbo_of_torch_distributions(likelihood, logvar_layout, shaped, draws, beta):
    model = Recording(likelihood, logvar_layout, shaped)
    x = _x(likelihood)
    out = aevb_objective(model, x, Noise.from_int(7), torch.tensor(beta, dtype=torch.float64),
                         likelihood=likelihood, objective=ELBO(draws))
    q = Normal(model.mu, torch.exp(0.5 * model.logvar))
    kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)  # (B,): the same for every draw
    ll = model.reference_ll(x)  # (B, L)
    torch.testing.assert_close(out.log_likelihood, ll.mean(1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.kl, kl.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.objective, (beta * kl[:, None] - ll).mean(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.negative_elbo(), (kl - ll.mean(1)).mean().detach(), rtol=1e-10, atol=1e-10)
    # and the gradient of the objective is the gradient of the reference objective
    grads = torch.autograd.grad(out.objective, [model.mu, model.logvar, model.w])
    z = model.mu[:, None] + torch.exp(0.5 * model.logvar[:, None]) * _eps(7, 0, B * draws).reshape(B, draws, Z)
    model.z = z.reshape(B * draws, Z)  # the same z, now differentiable: the reference objective
    expected = torch.autograd.grad((beta * kl[:, None] - model.reference_ll(x)).mean(), [model.mu, model.logvar, model.w])
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)


def _eps(seed, first_row, rows):
    return cpu_seeded_normal(seed, first_row, rows, Z).double()


@pytest.mark.parametrize("draws", [1, 3])
def test_draw_l_of_example_i_is_global_noise_row_i_times_l(draws):
    model = Recording("bernoulli")
    aevb_objective(model, _x("bernoulli"), Noise.from_int(11, first_row=2), likelihood="bernoulli",
                   objective=ELBO(draws))
    eps = (model.z - model.mu.repeat_interleave(draws, 0)) * torch.exp(-0.5 * model.logvar.repeat_interleave(draws, 0))
    torch.testing.assert_close(eps, _eps(11, 2 * draws, B * draws), rtol=1e-6, atol=1e-6)


def test_shards_of_a_batch_compute_the_rows_of_the_whole_batch():
    """What N data-parallel ranks compute: rank r's examples with first_row = r * M."""
    model = Recording("gaussian")
    x = _x("gaussian")
    whole = aevb_objective(model, x, Noise.from_int(3), likelihood="gaussian", objective=ELBO(2))

    class Shard(Recording):
        def encode(self, xs):
            return self.mu[self.rows], self.logvar[self.rows]

    shard = Shard("gaussian")
    shard.load_state_dict(model.state_dict())
    parts = []
    for first in (0, 2, 4):
        shard.rows = torch.arange(first, first + 2)
        parts.append(aevb_objective(shard, x[first:first + 2], Noise.from_int(3, first_row=first),
                                    likelihood="gaussian", objective=ELBO(2)))
    torch.testing.assert_close(torch.cat([p.log_likelihood for p in parts]), whole.log_likelihood, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([p.kl for p in parts]), whole.kl, rtol=0, atol=0)


@pytest.mark.parametrize("examples, draws", [(5, 2), (2, 5), (4, 1)])
def test_one_logvar_per_row_stays_per_row_when_there_are_d_rows(examples, draws):
    # a Gaussian decoder's per-row logvar (rows, 1) holds D values when there are D rows (here
    # D = 10: 5 examples x 2 draws; in training a batch of D with L = 1): it was taken for a
    # per-feature (D,) logvar, a wrong ELBO without an error
    class PerRow(Recording):
        def decode(self, z):
            self.z = z.detach().clone()
            out = z @ self.w
            return out[:, :D], out[:, D:D + 1]

    model = PerRow("gaussian")
    x = torch.rand(examples, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = aevb_objective(model, x, Noise.from_int(5), likelihood="gaussian", objective=ELBO(draws))
    w = model.z @ model.w
    mean, logvar = w[:, :D].reshape(examples, draws, D), w[:, D:D + 1].reshape(examples, draws, 1)
    expected = Normal(mean, torch.exp(0.5 * logvar)).log_prob(x.reshape(examples, 1, D)).sum(-1).mean(1)
    torch.testing.assert_close(out.log_likelihood, expected.detach(), rtol=1e-10, atol=1e-10)


def test_a_decoder_output_of_the_wrong_size_is_refused():
    class Wrong(Recording):
        def decode(self, z):
            return torch.zeros(z.shape[0] + 1, D, dtype=torch.float64)

    with pytest.raises(ValueError, match=r"model.decode returned an output of shape \(7, 10\) for 6 latent rows"):
        aevb_objective(Wrong("bernoulli"), _x("bernoulli"), Noise.from_int(0))
    with pytest.raises(TypeError, match="returned 3 tensors"):
        class Triple(Recording):
            def decode(self, z):
                return (z, z, z)

        aevb_objective(Triple("gaussian"), _x("gaussian"), Noise.from_int(0), likelihood="gaussian")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        aevb_objective(Recording("bernoulli"), _x("bernoulli"), Noise.from_int(0), likelihood="poisson")
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        ELBO(0)


@pytest.mark.parametrize("beta, error", [(-1.0, ValueError), (float("nan"), ValueError), (torch.tensor(-0.5), ValueError),
                                         (torch.ones(2), ValueError), (torch.tensor(1), TypeError), ("1", TypeError)])
def test_a_bad_beta_is_refused_where_it_enters_the_step(beta, error):
    from fastvae.models import MLPConfig, build_model
    from fastvae.step import Noise

    model = build_model(MLPConfig(latent_dim=2, hidden_dim=4), (6,), "bernoulli")
    with pytest.raises(error, match="beta"):
        aevb_objective(model, torch.rand(3, 6), Noise(torch.tensor([1]), 0), beta)
