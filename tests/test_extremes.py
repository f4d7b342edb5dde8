"""Extreme inputs and half-precision accumulation, on both backends.

- logits of +-1e4 and logvars of +-80 give finite values and gradients that match closed
  forms evaluated in float64;
- the continuous-Bernoulli normaliser near logit 0 (where its closed form is 0/0) matches
  float64 torch.distributions, on both sides of the series cut-offs;
- float16 / bfloat16 inputs are accumulated in float32: a row long enough that a half-precision
  running sum is visibly wrong still comes out at float32 accuracy, as a float32 tensor.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastvae
from _oracles import BACKENDS, continuous_bernoulli_ll

F64 = dict(dtype=torch.float64)


def _leaf(values, dtype):
    return torch.tensor(values, dtype=dtype).requires_grad_()


def _assert_finite(*tensors):
    for t in tensors:
        assert torch.isfinite(t).all(), t


# ---- Bernoulli and continuous Bernoulli at logits +-1e4 ----


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_bernoulli_huge_logits_closed_form(backend, backend_name, dtype):
    backend(backend_name)
    # a row mixing huge and ordinary logits, data at 0, 1 and in between
    logits = _leaf([[1e4, -1e4, 1e4, -1e4, 1e-3, -2.5, 0.0, 30.0]], dtype)
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.3, 1.0, 0.5, 0.0]], dtype=dtype)
    ll = fastvae.bernoulli_log_likelihood(logits, x)
    (1.7 * ll).sum().backward()
    _assert_finite(ll, logits.grad)
    l, xd = logits.detach().double(), x.double()  # the values actually stored in dtype
    # x*l - softplus(l) with softplus(l) = max(l, 0) + log1p(exp(-|l|))
    expected = (xd * l - l.clamp_min(0) - torch.log1p(torch.exp(-l.abs()))).sum(-1)
    # float32 accumulation of terms as large as 1e4: a few ulps of 1e4
    torch.testing.assert_close(ll.double(), expected, rtol=0, atol=1e-11 if dtype == torch.float64 else 4e-3)
    expected_grad = 1.7 * (xd - torch.sigmoid(l))
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(logits.grad.double(), expected_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_continuous_bernoulli_huge_logits_closed_form(backend, backend_name, dtype):
    """For |l| >= 40, tanh(|l|/2) = 1 in float64, so log C(l) = log|l| (torch.distributions'
    own ContinuousBernoulli clamps the probabilities there and is no oracle)."""
    backend(backend_name)
    logits = _leaf([[1e4, -1e4, 50.0, -3e3]], dtype)
    x = torch.tensor([[1.0, 0.2, 0.7, 0.0]], dtype=dtype)
    ll = fastvae.continuous_bernoulli_log_likelihood(logits, x)
    (2.0 * ll).sum().backward()
    _assert_finite(ll, logits.grad)
    l, xd = logits.detach().double(), x.double()
    expected = (xd * l - l.clamp_min(0) - torch.log1p(torch.exp(-l.abs())) + torch.log(l.abs())).sum(-1)
    torch.testing.assert_close(ll.double(), expected, rtol=0, atol=1e-11 if dtype == torch.float64 else 4e-3)
    # d/dl = x - sigmoid(l) + 1/l - 1/sinh(l), and 1/sinh(l) < 1e-21 here
    expected_grad = 2.0 * (xd - torch.sigmoid(l) + 1.0 / l)
    torch.testing.assert_close(logits.grad.double(), expected_grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_continuous_bernoulli_near_logit_zero(backend, backend_name, dtype):
    """Around the series cut-offs (0.1 in float64, 0.5 in float32) and down to 1e-8."""
    backend(backend_name)
    points = [0.0, 1e-8, -1e-8, 1e-3, -1e-3, 0.09, 0.0999, 0.1, 0.11, -0.11, 0.3, 0.4999, 0.5, 0.5001, 0.7, -2.0]
    logits = _leaf([points], dtype)
    x = torch.linspace(0.05, 0.95, len(points), dtype=dtype)[None]
    ll_rows = torch.stack([fastvae.continuous_bernoulli_log_likelihood(logits[:, i : i + 1], x[:, i : i + 1]) for i in range(len(points))], -1)
    ll_rows.sum().backward()
    _assert_finite(ll_rows, logits.grad)
    # oracle: float64 torch.distributions (its own series near p = 1/2), value and autograd gradient
    l64 = logits.detach().double().requires_grad_()
    ref = torch.stack([continuous_bernoulli_ll(l64[:, i : i + 1], x[:, i : i + 1]) for i in range(len(points))], -1)
    ref.sum().backward()
    tol = 1e-14 if dtype == torch.float64 else 4e-7  # float32: a few ulps of values ~ 1
    torch.testing.assert_close(ll_rows.double(), ref.detach(), rtol=0, atol=tol)
    # just above the cut-off the closed-form gradient 1/l - 1/sinh(l) loses ~3 bits to cancellation
    torch.testing.assert_close(logits.grad.double(), l64.grad, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)
    # log C is even and smooth: no jump across the cut-off (value at 0 is log 2)
    zero = fastvae.continuous_bernoulli_log_likelihood(torch.zeros(1, 1, dtype=dtype), torch.full((1, 1), 0.5, dtype=dtype))
    torch.testing.assert_close(zero.double(), torch.tensor([math.log(2.0) - math.log(2.0)], **F64), rtol=0, atol=tol)


# ---- Gaussian and KL at logvar +-80 (float32) ----


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_gaussian_extreme_logvar_float32(backend, backend_name):
    backend(backend_name)
    mean = _leaf([[0.0, 1.0, -3.0, 2.0, 0.5]], torch.float32)
    logvar = _leaf([[-80.0, 80.0, -80.0, 80.0, 0.0]], torch.float32)
    x = torch.tensor([[1e-3, 5.0, -3.0 + 2e-3, -1e3, 0.25]])
    ll = fastvae.gaussian_log_likelihood(mean, logvar, x)
    (1.7 * ll).sum().backward()
    _assert_finite(ll, mean.grad, logvar.grad)
    m, lv, xd = mean.detach().double(), logvar.detach().double(), x.double()
    r = xd - m  # residual of the stored values, in float64
    expected = (-0.5 * (math.log(2 * math.pi) + lv + r.square() * torch.exp(-lv))).sum(-1)
    torch.testing.assert_close(ll.double(), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(mean.grad.double(), 1.7 * r * torch.exp(-lv), rtol=1e-5, atol=1e-30)
    torch.testing.assert_close(logvar.grad.double(), 1.7 * 0.5 * (r.square() * torch.exp(-lv) - 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_latent_head_extreme_logvar_float32(backend, backend_name):
    backend(backend_name)
    mu = _leaf([[0.0, 3.0, -1.0, 0.5]], torch.float32)
    logvar = _leaf([[80.0, -80.0, 80.0, -80.0]], torch.float32)
    eps = torch.tensor([[0.5, -1.0, 2.0, 0.1]])
    z, kl = fastvae.reparameterize(mu, logvar, eps=eps)
    gz = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    torch.autograd.backward((z, kl), (gz, torch.tensor([1.7])))
    _assert_finite(z, kl, mu.grad, logvar.grad)
    m, lv, e = mu.detach().double(), logvar.detach().double(), eps.double()
    torch.testing.assert_close(z.double(), m + torch.exp(0.5 * lv) * e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kl.double(), 0.5 * (m.square() + torch.exp(lv) - 1 - lv).sum(-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(mu.grad.double(), gz + 1.7 * m, rtol=1e-6, atol=1e-6)
    expected_dlv = 0.5 * gz * torch.exp(0.5 * lv) * e + 0.5 * 1.7 * torch.expm1(lv)
    torch.testing.assert_close(logvar.grad.double(), expected_dlv, rtol=1e-6, atol=1e-6)
    # drawn noise too: finite at both extremes
    z2, kl2 = fastvae.reparameterize(mu, logvar, seed=1)
    (z2.sum() + kl2.sum()).backward()
    _assert_finite(z2, kl2, mu.grad, logvar.grad)


# ---- half precision accumulates in float32 ----


def _fp16_running_sum(terms: np.ndarray, dtype) -> float:
    """What a half-precision accumulator would return (the failure this guards against)."""
    acc = dtype(0)
    for t in terms.astype(dtype):
        acc = dtype(acc + t)
    return float(acc)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_accumulates_in_float32(backend, backend_name, dtype):
    backend(backend_name)
    D = 4096
    g = torch.Generator().manual_seed(0)
    logits = (0.5 * torch.randn(1, D, generator=g)).to(dtype)
    x = torch.rand(1, D, generator=g).to(dtype)
    ll = fastvae.bernoulli_log_likelihood(logits, x)
    assert ll.dtype == torch.float32
    l, xd = logits.double(), x.double()
    terms = xd * l - F.softplus(l)
    expected = terms.sum(-1)
    # an accumulator in the input dtype (or even a float32 sum rounded to it) is far off...
    if dtype == torch.float16:
        naive = _fp16_running_sum(terms[0].numpy(), np.float16)
        assert abs(naive - expected.item()) > 5.0
    assert abs(expected.to(dtype).double().item() - expected.item()) > 0.1
    # ...ours is at float32 accuracy on the same (upcast) inputs
    torch.testing.assert_close(ll.double(), expected, rtol=2e-6, atol=0)

    mean, x2 = torch.randn(2, D, generator=g).to(dtype), torch.randn(2, D, generator=g).to(dtype)
    lv = torch.full((D,), -1.0).to(dtype)
    gll = fastvae.gaussian_log_likelihood(mean, lv, x2)
    assert gll.dtype == torch.float32
    m, lvd, xx = mean.double(), lv.double(), x2.double()
    ref = (-0.5 * (math.log(2 * math.pi) + lvd + (xx - m).square() * torch.exp(-lvd))).sum(-1)
    torch.testing.assert_close(gll.double(), ref, rtol=2e-6, atol=0)

    mu, logvar = torch.randn(2, D, generator=g).to(dtype), (0.3 * torch.randn(2, D, generator=g)).to(dtype)
    z, kl = fastvae.reparameterize(mu, logvar, seed=0)
    assert z.dtype == dtype and kl.dtype == torch.float32
    md, lvd = mu.double(), logvar.double()
    torch.testing.assert_close(kl.double(), 0.5 * (md.square() + lvd.exp() - 1 - lvd).sum(-1), rtol=2e-6, atol=0)

    loss = fastvae.ELBOLoss(reduction="sum")(logits.expand(2, D), x.expand(2, D), kl)
    assert loss.dtype == torch.float32


# ---- Python numbers meeting half-precision tensors ----


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("logvar", [0.1, -2.3, 1])
def test_python_scalar_logvar_is_not_rounded_to_half(backend, backend_name, dtype, logvar):
    """A float logvar with a half mean is taken in float32, not rounded to the mean's dtype
    (bf16 rounds 0.1 to 0.10009765625: 0.033 nats per example at D = 784)."""
    backend(backend_name)
    D = 784
    g = torch.Generator().manual_seed(1)
    mean, x = torch.rand(2, D, generator=g).to(dtype), torch.rand(2, D, generator=g)
    ll = fastvae.gaussian_log_likelihood(mean, logvar, x)
    expected = (-0.5 * (math.log(2 * math.pi) + logvar + (x.double() - mean.double()).square() * math.exp(-logvar))).sum(-1)
    rounded = torch.tensor(float(logvar)).to(dtype).double()
    if rounded.item() != logvar:  # the old behaviour would have been this far off
        off = (0.5 * D * abs(rounded.item() - logvar))
        assert off > 1e-3
    torch.testing.assert_close(ll.double(), expected, rtol=2e-6, atol=1e-4)
    # the same through the loss module, and with a float64 x: the scalar is then float64
    crit = fastvae.ELBOLoss("gaussian", reduction="none")
    torch.testing.assert_close(crit((mean, logvar), x, torch.zeros(2)).double(), -expected, rtol=2e-6, atol=1e-4)
    ll64 = fastvae.gaussian_log_likelihood(mean, logvar, x.double())
    assert ll64.dtype == torch.float64
    torch.testing.assert_close(ll64, expected, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_beta_times_a_half_kl_is_taken_in_float32(backend, backend_name):
    """A user's own half-precision kl is upcast before beta scales it (no half rounding of beta * kl)."""
    backend(backend_name)
    logits, x = torch.zeros(3, 4), torch.full((3, 4), 0.5)
    kl = torch.tensor([1232.0, 567.0, 3.3]).to(torch.bfloat16)
    beta = 0.1
    loss = fastvae.ELBOLoss(reduction="none", beta=beta)(logits, x, kl)
    expected = beta * kl.double() - fastvae.bernoulli_log_likelihood(logits, x).double()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)
    assert ((beta * kl).double() - beta * kl.double()).abs().max() > 0.1  # what half arithmetic would give


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("fn", ["bernoulli", "continuous_bernoulli"])
def test_float64_softplus_is_not_cut_off_at_20(backend, backend_name, fn):
    """F.softplus returns l itself above its default threshold 20: 4e-10 off per element at
    l = 21.6, a million float64 ulps (found by the fuzz suite). Exact: l + log1p(e^-l)."""
    backend(backend_name)
    logits = torch.tensor([[21.6358, 25.0, 30.0, 35.0, -21.6358]], dtype=torch.float64)
    x = torch.tensor([[0.9207, 0.5, 1.0, 0.25, 0.0]], dtype=torch.float64)
    softplus = logits.clamp_min(0) + torch.log1p(torch.exp(-logits.abs()))
    expected = (x * logits - softplus).sum(-1)
    ll = fastvae.bernoulli_log_likelihood(logits, x)
    if fn == "continuous_bernoulli":
        a = logits.abs()
        expected = expected + (torch.log(a) - torch.log(-torch.expm1(-a)) + torch.log1p(torch.exp(-a))).sum(-1)
        ll = fastvae.continuous_bernoulli_log_likelihood(logits, x)
    torch.testing.assert_close(ll, expected, rtol=4e-16, atol=0)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_beta_times_a_float32_kl_is_taken_in_float64_with_a_float64_likelihood(backend, backend_name):
    """The loss is float64 when the likelihood is: beta * kl must not round to float32 first
    (found by the fuzz suite: 1.5e-11 off at beta = 3.25)."""
    backend(backend_name)
    logits, x = torch.tensor([[0.0015]], dtype=torch.float64), torch.tensor([[0.9701]], dtype=torch.float64)
    kl = torch.tensor([0.0015], dtype=torch.float32)
    loss = fastvae.ELBOLoss(reduction="none", beta=3.25)(logits, x, kl)
    assert loss.dtype == torch.float64
    expected = 3.25 * kl.double() - fastvae.bernoulli_log_likelihood(logits, x)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-17)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_narrower_broadcast_input_gets_its_gradient_summed_in_the_accumulation_dtype(backend, backend_name):
    """float32 x broadcast over float64 rows: its gradient is summed over the rows in float64
    and rounded to float32 once (the kernel path rounded each row's share first; found by the
    fuzz suite: 5.7e-7 relative, 5 float32 ulps, where the contributions nearly cancel)."""
    backend(backend_name)
    mean = torch.tensor([[[0.0012], [0.0010]]], dtype=torch.float64)
    logvar = torch.tensor([[[0.2674], [-0.3976]]], dtype=torch.float64)
    x = torch.zeros(1, requires_grad=True)
    g = torch.tensor([[0.7, -0.3]], dtype=torch.float64)
    (grad,) = torch.autograd.grad(fastvae.gaussian_log_likelihood(mean, logvar, x), x, g)
    exact = (g.unsqueeze(-1) * (mean - 0.0) * torch.exp(-logvar)).sum()  # d/dx = -(x - m) e^-lv, per row
    assert grad.dtype == torch.float32
    assert grad.item() == exact.float().item()  # the float64 sum, rounded once
