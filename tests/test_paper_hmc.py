"""HMC leaves a known Gaussian invariant, and its step-size adaptation reaches the target acceptance."""

import math

import pytest
import torch

from fastvae.paper.hmc import HMC, log_prob_and_grad


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a correlated 2-D Gaussian with very different scales along its axes
MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[4.0, 1.2], [1.2, 0.5]], dtype=torch.float64)
PREC = torch.linalg.inv(COV)
CHOL = torch.linalg.cholesky(COV)


def log_prob(z: torch.Tensor) -> torch.Tensor:
    d = z - MEAN
    return -0.5 * ((d @ PREC) * d).sum(-1)


def exact_samples(n: int, gen: torch.Generator) -> torch.Tensor:
    return MEAN + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ CHOL.T


def test_adaptation_reaches_target_acceptance():
    gen = torch.Generator().manual_seed(0)
    hmc = HMC(n_leapfrog=10, step_size=1.0, target_accept=0.9, adapt_rate=0.1)
    z = exact_samples(2000, gen)
    z, _ = hmc.run(log_prob, z, 200, adapt=True, generator=gen)
    _, rate = hmc.run(log_prob, z, 20, adapt=False, generator=gen)
    assert abs(rate - 0.9) < 0.05, (rate, hmc.step_size)


def matches_target(z: torch.Tensor) -> bool:
    """Chains started from exact draws stay exact under an invariant kernel: after T transitions
    the B chain states are i.i.d. draws from the target, so the sample mean has standard error
    sqrt(S_ii / B) and each sample (co)variance sqrt((S_ii S_jj + S_ij^2) / B). The bound is
    5 s.e. per entry (a false alarm has probability ~6e-7 per entry)."""
    B = z.shape[0]
    mean, cov = z.mean(0), torch.cov(z.T)
    if not torch.isfinite(cov).all():
        return False
    for i in range(2):
        if abs(mean[i] - MEAN[i]) > 5 * math.sqrt(COV[i, i] / B):
            return False
        for j in range(2):
            if abs(cov[i, j] - COV[i, j]) > 5 * math.sqrt((COV[i, i] * COV[j, j] + COV[i, j] ** 2) / B):
                return False
    return True


@pytest.mark.parametrize("adapt_first", [True, False])
def test_hmc_leaves_gaussian_invariant(adapt_first):
    gen = torch.Generator().manual_seed(1)
    hmc = HMC(n_leapfrog=10, step_size=0.5 if not adapt_first else 1.0, target_accept=0.9, adapt_rate=0.1)
    if adapt_first:
        hmc.run(log_prob, exact_samples(500, gen), 100, adapt=True, generator=gen)
    z0 = exact_samples(20000, gen)
    z, rate = hmc.run(log_prob, z0, 15, adapt=False, generator=gen)
    assert rate > 0.5  # the chains do move ...
    assert (z - z0).abs().sum(-1).gt(0).double().mean() > 0.5
    assert matches_target(z), (z.mean(0), torch.cov(z.T))  # ... and stay on target


def test_the_invariance_check_has_power():
    """Leapfrog without the Metropolis correction, at the same step size (0.5) as above, is
    biased (its variance along the narrow axis grows by ~15 %); the same check catches it."""
    gen = torch.Generator().manual_seed(2)
    hmc = HMC(n_leapfrog=10, step_size=0.5)
    z = exact_samples(20000, gen)
    for _ in range(15):
        p = torch.randn(z.shape, generator=gen, dtype=z.dtype)
        _, g = log_prob_and_grad(log_prob, z)
        z, _, _, _ = hmc.leapfrog(log_prob, z, p, g)  # always accept
    assert not matches_target(z)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_leapfrog"):
        HMC(n_leapfrog=0)
    with pytest.raises(ValueError, match="target_accept"):
        HMC(target_accept=1.5)
