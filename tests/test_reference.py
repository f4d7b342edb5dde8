"""Values against an independent oracle: torch.distributions in float64, on both backends.

The torch path runs on plain CPU tensors; the Triton path runs the same kernels as on a GPU
under Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest).
"""

import pytest
import torch

import fastvae
from _oracles import BACKENDS, bernoulli_ll, continuous_bernoulli_ll, gaussian_ll, kl_standard_normal

F64 = dict(dtype=torch.float64)
TOL = dict(rtol=1e-10, atol=1e-10)
SHAPES = [(5, 1), (3, 7), (2, 3, 11), (4, 130)]


def _data(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(shape, generator=g, **F64)
    x_binary = torch.bernoulli(torch.full(shape, 0.5, **F64), generator=g)
    x_unit = torch.rand(shape, generator=g, **F64)
    return logits, x_binary, x_unit


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bernoulli_matches_torch_distributions(backend, backend_name, shape):
    backend(backend_name)
    logits, x_binary, x_unit = _data(shape)
    for x in (x_binary, x_unit):  # binary data, and continuous data as in BCE practice
        ll = fastvae.bernoulli_log_likelihood(logits, x)
        assert ll.shape == shape[:-1] and ll.dtype == torch.float64
        torch.testing.assert_close(ll, bernoulli_ll(logits, x), **TOL)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_continuous_bernoulli_matches_torch_distributions(backend, backend_name, shape):
    backend(backend_name)
    logits, _, x = _data(shape)
    # logits straddling the Taylor cut-off near 0 as well as ordinary ones
    logits.view(-1)[::3] *= 0.02
    ll = fastvae.continuous_bernoulli_log_likelihood(logits, x)
    assert ll.shape == shape[:-1] and ll.dtype == torch.float64
    # the series near logit 0 is truncated after u^4 (first omitted term < 1e-9 per element)
    torch.testing.assert_close(ll, continuous_bernoulli_ll(logits, x), rtol=1e-10, atol=1e-9 * shape[-1])


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("logvar_kind", ["like_x", "per_feature", "scalar_tensor", "python_float"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_matches_torch_distributions(backend, backend_name, logvar_kind, shape):
    backend(backend_name)
    g = torch.Generator().manual_seed(1)
    mean, x = torch.randn(shape, generator=g, **F64), torch.randn(shape, generator=g, **F64)
    logvar = {
        "like_x": lambda: torch.randn(shape, generator=g, **F64),
        "per_feature": lambda: torch.randn(shape[-1:], generator=g, **F64),
        "scalar_tensor": lambda: torch.tensor(-0.7, **F64),
        "python_float": lambda: -0.7,
    }[logvar_kind]()
    ll = fastvae.gaussian_log_likelihood(mean, logvar, x)
    assert ll.shape == shape[:-1] and ll.dtype == torch.float64
    torch.testing.assert_close(ll, gaussian_ll(mean, torch.as_tensor(logvar, **F64), x), **TOL)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_kl_matches_kl_divergence_and_z_uses_eps(backend, backend_name, shape):
    backend(backend_name)
    g = torch.Generator().manual_seed(2)
    mu, logvar, eps = (torch.randn(shape, generator=g, **F64) for _ in range(3))
    z, kl = fastvae.reparameterize(mu, logvar, eps=eps)
    assert z.shape == shape and z.dtype == torch.float64
    assert kl.shape == shape[:-1] and kl.dtype == torch.float64
    torch.testing.assert_close(kl, kl_standard_normal(mu, logvar), **TOL)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps, **TOL)
    # the same KL for drawn noise
    _, kl_drawn = fastvae.reparameterize(mu, logvar, seed=3)
    torch.testing.assert_close(kl_drawn, kl_standard_normal(mu, logvar), **TOL)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_broadcast_leading_dims(backend, backend_name):
    """x (B, D) against decoder outputs (S, B, D): S importance samples of each example."""
    backend(backend_name)
    g = torch.Generator().manual_seed(4)
    S, B, D = 3, 4, 9
    logits, mean = torch.randn(S, B, D, generator=g, **F64), torch.randn(S, B, D, generator=g, **F64)
    x = torch.rand(B, D, generator=g, **F64)
    logvar_rows = torch.randn(B, D, generator=g, **F64)  # broadcast over S, per element otherwise
    xs = x.expand(S, B, D)
    torch.testing.assert_close(fastvae.bernoulli_log_likelihood(logits, x), bernoulli_ll(logits, xs), **TOL)
    torch.testing.assert_close(
        fastvae.continuous_bernoulli_log_likelihood(logits, x), continuous_bernoulli_ll(logits, xs), **TOL
    )
    ll = fastvae.gaussian_log_likelihood(mean, logvar_rows, x)
    assert ll.shape == (S, B)
    torch.testing.assert_close(ll, gaussian_ll(mean, logvar_rows.expand(S, B, D), xs), **TOL)
    # and the other way round: one decoder output for S copies of the data
    torch.testing.assert_close(
        fastvae.bernoulli_log_likelihood(logits[0], xs), bernoulli_ll(logits[0].expand(S, B, D), xs), **TOL
    )


def _hand_written_elbo(likelihood, out, x, kl, beta):
    if likelihood == "bernoulli":
        ll = bernoulli_ll(out, x)
    elif likelihood == "continuous_bernoulli":
        ll = continuous_bernoulli_ll(out, x)
    else:
        ll = gaussian_ll(out[0], out[1], x)
    return beta * kl.double() - ll


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_elbo_loss_reductions(backend, backend_name, likelihood, reduction):
    backend(backend_name)
    g = torch.Generator().manual_seed(5)
    S, B, D, Z = 2, 3, 6, 4
    mu, logvar = torch.randn(S, B, Z, generator=g, **F64), torch.randn(S, B, Z, generator=g, **F64)
    _, kl = fastvae.reparameterize(mu, logvar, seed=0)
    x = torch.rand(S, B, D, generator=g, **F64)
    if likelihood == "gaussian":
        out = (torch.randn(S, B, D, generator=g, **F64), torch.randn(D, generator=g, **F64))
    else:
        out = torch.randn(S, B, D, generator=g, **F64)
    beta = 0.3
    loss = fastvae.ELBOLoss(likelihood, reduction=reduction, beta=beta)(out, x, kl)
    per_example = _hand_written_elbo(likelihood, out, x, kl_standard_normal(mu, logvar), beta)
    expected = {"mean": per_example.mean(), "sum": per_example.sum(), "none": per_example}[reduction]
    assert loss.shape == expected.shape
    torch.testing.assert_close(loss, expected, **TOL)
    # a 0-d tensor beta gives the same loss as the float
    loss_t = fastvae.ELBOLoss(likelihood, reduction=reduction, beta=torch.tensor(beta, **F64))(out, x, kl)
    torch.testing.assert_close(loss_t, expected, **TOL)


def test_elbo_loss_is_the_usual_hand_written_vae_loss():
    """The drop-in claim of the README: BCE-with-logits(sum) + KLD(sum)."""
    g = torch.Generator().manual_seed(6)
    logits, x = torch.randn(8, 20, generator=g, **F64), torch.rand(8, 20, generator=g, **F64)
    mu, logvar = torch.randn(8, 3, generator=g, **F64), torch.randn(8, 3, generator=g, **F64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    _, kl = fastvae.reparameterize(mu, logvar, seed=1)
    torch.testing.assert_close(fastvae.ELBOLoss(reduction="sum")(logits, x, kl), bce + kld, **TOL)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_empty_batch(backend, backend_name):
    backend(backend_name)
    mu = torch.zeros(0, 4, **F64)
    z, kl = fastvae.reparameterize(mu, mu, seed=0)
    assert z.shape == (0, 4) and kl.shape == (0,)
    assert fastvae.bernoulli_log_likelihood(torch.zeros(0, 5), torch.zeros(0, 5)).shape == (0,)
    assert fastvae.gaussian_log_likelihood(torch.zeros(2, 0, 5), torch.zeros(5), torch.zeros(2, 0, 5)).shape == (2, 0)
    loss = fastvae.ELBOLoss(reduction="sum")(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0))
    assert loss.item() == 0.0
