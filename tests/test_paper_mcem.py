"""Monte Carlo EM: the E-step samples the posterior, the M-step raises log p(x, z), training raises log p(x)."""

import math

import pytest
import torch

from fastvae.models import MLPConfig
from fastvae.paper.marginal import hmc_proposal_log_px, prior_proposal_log_px
from fastvae.paper.mcem import MonteCarloEM, log_joint, make_decoder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_data(n=200, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(4, d, generator=g) < 0.5).float()
    x = protos[torch.randint(0, 4, (n,), generator=g)]
    return torch.where(torch.rand(x.shape, generator=g) < 0.05, 1 - x, x)


def test_m_step_increases_the_log_joint_at_the_samples():
    torch.manual_seed(0)
    x = toy_data()
    cfg, data_dim = MLPConfig(latent_dim=2, hidden_dim=20), 16
    mcem = MonteCarloEM(make_decoder(cfg, data_dim, "bernoulli"), "bernoulli", n_train=200, latent_dim=2, lr=0.05)
    idx = torch.arange(50)
    stats = [mcem.step(x[idx], idx) for _ in range(5)]
    assert all(s.log_joint_m > s.log_joint_e for s in stats)
    z = mcem.z[idx]
    assert torch.isfinite(z).all()


def test_e_step_adapts_to_ninety_percent_acceptance_and_moves_the_chains():
    torch.manual_seed(1)
    x = toy_data()
    cfg, data_dim = MLPConfig(latent_dim=2, hidden_dim=20), 16
    mcem = MonteCarloEM(make_decoder(cfg, data_dim, "bernoulli"), "bernoulli", n_train=200, latent_dim=2, lr=0.05, step_size=1.0)
    rates = []
    for it in range(150):
        idx = torch.randint(0, 200, (50,))
        rates.append(mcem.step(x[idx], idx).accept_rate)
    assert abs(sum(rates[-50:]) / 50 - 0.9) < 0.07
    z0 = mcem.z.clone()
    idx = torch.arange(200)
    mcem.e_step(x, idx)
    assert (mcem.z - z0).abs().sum(-1).gt(0).float().mean() > 0.5


def test_training_increases_the_marginal_likelihood():
    torch.manual_seed(2)
    x = toy_data()
    cfg, data_dim = MLPConfig(latent_dim=2, hidden_dim=20), 16
    dec = make_decoder(cfg, data_dim, "bernoulli")
    mcem = MonteCarloEM(dec, "bernoulli", n_train=200, latent_dim=2, lr=0.1)
    before = prior_proposal_log_px(dec, "bernoulli", x, 2, n_samples=2000).mean().item()
    for _ in range(200):
        idx = torch.randint(0, 200, (50,))
        mcem.step(x[idx], idx)
    after_prior = prior_proposal_log_px(dec, "bernoulli", x, 2, n_samples=2000).mean().item()
    after_hmc = hmc_proposal_log_px(dec, "bernoulli", x, 2, n_samples=300).mean().item()
    assert after_prior > before + 2.0
    # both estimators are stochastic lower bounds of the same log p(x); on a 2-D latent with
    # 2000 prior draws they agree closely
    assert abs(after_hmc - after_prior) < 0.3
    assert before > -16 * math.log(2) - 1.0  # sanity: an untrained decoder is ~ uniform bits


def test_log_joint_is_likelihood_plus_standard_normal_prior():
    cfg, data_dim = MLPConfig(latent_dim=2, hidden_dim=3), 5
    dec = make_decoder(cfg, data_dim, "bernoulli")
    x = torch.ones(4, 5)
    z = torch.randn(4, 2)
    ref = torch.distributions.Bernoulli(logits=dec(z)).log_prob(x).sum(-1) + torch.distributions.Normal(0, 1).log_prob(z).sum(-1)
    torch.testing.assert_close(log_joint(dec, "bernoulli", x, z), ref)
