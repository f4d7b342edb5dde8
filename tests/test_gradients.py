"""Gradients: torch.autograd.gradcheck in float64 for every public function, both backends.

gradcheck compares the analytic Jacobian (all of it, so every upstream gradient, not just 1)
with central differences. The Triton path runs under the interpreter, so inputs stay tiny.
A second set of tests backpropagates a non-unit, per-row upstream gradient and compares
with autograd through the torch.distributions oracle.
"""

import pytest
import torch
from torch.autograd import gradcheck

import fastvae
from _oracles import BACKENDS, bernoulli_ll, continuous_bernoulli_ll, gaussian_ll, kl_standard_normal

F64 = dict(dtype=torch.float64)


def _randn(*shape, seed, scale=1.0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, **F64)).requires_grad_(grad)


def _rand(*shape, seed, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, **F64).requires_grad_(grad)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 4), (2, 2, 3)])
def test_gradcheck_reparameterize_seeded(backend, backend_name, shape):
    backend(backend_name)
    mu, logvar = _randn(*shape, seed=0), _randn(*shape, seed=1, scale=0.5)
    # z and kl both; a fixed seed makes z a deterministic function of (mu, logvar)
    assert gradcheck(lambda m, lv: fastvae.reparameterize(m, lv, seed=11), (mu, logvar))
    if len(shape) == 2:  # only one output used (the other's gradient is undefined in backward)
        assert gradcheck(lambda m, lv: fastvae.reparameterize(m, lv, seed=11)[0], (mu, logvar))
        assert gradcheck(lambda m, lv: fastvae.reparameterize(m, lv, seed=11)[1], (mu, logvar))


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_gradcheck_reparameterize_eps_requires_grad(backend, backend_name):
    backend(backend_name)
    mu, logvar, eps = _randn(3, 4, seed=2), _randn(3, 4, seed=3), _randn(3, 4, seed=4)
    assert gradcheck(lambda m, lv, e: fastvae.reparameterize(m, lv, eps=e), (mu, logvar, eps))
    # eps not requiring grad: the other two still get theirs
    assert gradcheck(lambda m, lv: fastvae.reparameterize(m, lv, eps=eps.detach()), (mu, logvar))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("fn", ["bernoulli", "continuous_bernoulli"])
def test_gradcheck_logit_likelihoods(backend, backend_name, fn):
    backend(backend_name)
    f = getattr(fastvae, f"{fn}_log_likelihood")
    logits, x = _randn(3, 5, seed=5, scale=2.0), _rand(3, 5, seed=6)
    with torch.no_grad():  # include logits inside the series region of log C, on both sides of 0
        logits[0, :3] = torch.tensor([1e-3, -0.05, 0.3])
    assert gradcheck(f, (logits, x))  # grad w.r.t. logits and x
    assert gradcheck(lambda l: f(l, x.detach()), (logits,))
    # broadcast leading dims: logits (S, B, D), x (B, D) requiring grad
    logits3 = _randn(2, 3, 5, seed=7)
    assert gradcheck(f, (logits3, x))
    # through the dispatcher
    assert gradcheck(lambda l, xx: fastvae.log_likelihood(fn, l, xx), (logits, x))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("logvar_shape", [(3, 5), (5,), (), (1, 5)], ids=["like_x", "per_feature", "scalar", "row1"])
def test_gradcheck_gaussian(backend, backend_name, logvar_shape):
    backend(backend_name)
    mean, x = _randn(3, 5, seed=8), _randn(3, 5, seed=9)
    logvar = _randn(*logvar_shape, seed=10, scale=0.5)
    assert gradcheck(fastvae.gaussian_log_likelihood, (mean, logvar, x))
    assert gradcheck(lambda m, lv: fastvae.gaussian_log_likelihood(m, lv, x.detach()), (mean, logvar))
    assert gradcheck(lambda lv: fastvae.gaussian_log_likelihood(mean.detach(), lv, x.detach()), (logvar,))
    assert gradcheck(lambda m, lv, xx: fastvae.log_likelihood("gaussian", (m, lv), xx), (mean, logvar, x))


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_gradcheck_gaussian_3d_broadcast(backend, backend_name):
    """mean (S, B, D) against x (B, D) and a logvar (B, D) that broadcasts over S."""
    backend(backend_name)
    mean, x, logvar = _randn(2, 3, 4, seed=11), _randn(3, 4, seed=12), _randn(3, 4, seed=13, scale=0.5)
    assert gradcheck(fastvae.gaussian_log_likelihood, (mean, logvar, x))
    assert gradcheck(fastvae.gaussian_log_likelihood, (mean, _randn(4, seed=14), x))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_gradcheck_elbo_loss(backend, backend_name, reduction, likelihood):
    """The whole loss: reparameterize -> ELBOLoss, gradients to mu, logvar, decoder output and x."""
    backend(backend_name)
    B, Z, D = 3, 2, 4
    mu, logvar = _randn(B, Z, seed=15), _randn(B, Z, seed=16, scale=0.5)
    x = _rand(B, D, seed=17)
    crit = fastvae.ELBOLoss(likelihood, reduction=reduction, beta=0.7)
    if likelihood == "gaussian":
        mean, dec_lv = _randn(B, D, seed=18), _randn(D, seed=19, scale=0.5)

        def f(m, lv, mean, dec_lv, x):
            _, kl = fastvae.reparameterize(m, lv, seed=5)
            return crit((mean, dec_lv), x, kl)

        assert gradcheck(f, (mu, logvar, mean, dec_lv, x))
    else:
        logits = _randn(B, D, seed=18)

        def f(m, lv, logits, x):
            z, kl = fastvae.reparameterize(m, lv, seed=5)
            # the decoder output depends on z, as in a VAE, so z's gradient is exercised too
            return crit(logits + z.sum(-1, keepdim=True), x, kl)

        assert gradcheck(f, (mu, logvar, logits, x))


def test_gradcheck_elbo_loss_tensor_beta():
    beta = torch.tensor(0.4, **F64, requires_grad=True)
    logits, x, kl = _randn(3, 4, seed=20), _rand(3, 4, seed=21), _rand(3, seed=22)
    assert gradcheck(lambda b, l, k: fastvae.ELBOLoss(beta=b)(l, x, k), (beta, logits, kl))


# ---- non-unit upstream gradients, against autograd through the torch.distributions oracle ----


def _grads(output, weights, inputs):
    (1.7 * (weights * output).sum()).backward()
    grads = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    return grads


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_weighted_upstream_gradient_matches_oracle(backend, backend_name, likelihood):
    backend(backend_name)
    S, B, D = 2, 3, 7
    w = torch.randn(S, B, generator=torch.Generator().manual_seed(23), **F64)  # per-row upstream weight
    out, x = _randn(S, B, D, seed=24, scale=2.0), _rand(B, D, seed=25)
    if likelihood == "gaussian":
        lv = _randn(D, seed=26, scale=0.5)
        inputs = [out, lv, x]
        ours = _grads(fastvae.gaussian_log_likelihood(out, lv, x), w, inputs)
        ref = _grads(gaussian_ll(out, lv, x), w, inputs)
    else:
        f = getattr(fastvae, f"{likelihood}_log_likelihood")
        oracle = bernoulli_ll if likelihood == "bernoulli" else continuous_bernoulli_ll
        inputs = [out, x]
        ours = _grads(f(out, x), w, inputs)
        ref = _grads(oracle(out, x.expand(S, B, D)), w, inputs)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_weighted_upstream_gradient_reparameterize(backend, backend_name):
    backend(backend_name)
    mu, logvar, eps = _randn(4, 3, seed=27), _randn(4, 3, seed=28), _randn(4, 3, seed=29)
    gz = torch.randn(4, 3, generator=torch.Generator().manual_seed(30), **F64)
    gkl = torch.randn(4, generator=torch.Generator().manual_seed(31), **F64)
    z, kl = fastvae.reparameterize(mu, logvar, eps=eps)
    torch.autograd.backward((z, kl), (gz, gkl))
    ours = [mu.grad.clone(), logvar.grad.clone(), eps.grad.clone()]
    for t in (mu, logvar, eps):
        t.grad = None
    z_ref = mu + torch.exp(0.5 * logvar) * eps
    torch.autograd.backward((z_ref, kl_standard_normal(mu, logvar)), (gz, gkl))
    for a, b in zip(ours, [mu.grad, logvar.grad, eps.grad]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_seeded_backward_uses_the_forward_noise(backend, backend_name):
    """dz/dlogvar = (z - mu) / 2 must hold for drawn noise (the backward regenerates eps)."""
    backend(backend_name)
    mu, logvar = _randn(5, 6, seed=32), _randn(5, 6, seed=33)
    z, _ = fastvae.reparameterize(mu, logvar, seed=1234)
    gz = torch.randn(5, 6, generator=torch.Generator().manual_seed(34), **F64)
    (z * gz).sum().backward()
    torch.testing.assert_close(logvar.grad, gz * (z.detach() - mu.detach()) / 2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mu.grad, gz, rtol=0, atol=0)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_elbo_loss_reduction_backward_scaled(backend, backend_name, reduction):
    """Each reduction's backward, scaled by 1.7 (and by a per-row weight for 'none')."""
    backend(backend_name)
    S, B, D, Z = 2, 3, 5, 2
    mu, logvar = _randn(S, B, Z, seed=35), _randn(S, B, Z, seed=36)
    logits, x = _randn(S, B, D, seed=37), _rand(B, D, seed=38, grad=False)
    inputs = [mu, logvar, logits]
    w = torch.rand(S, B, generator=torch.Generator().manual_seed(39), **F64) if reduction == "none" else 1.0

    _, kl = fastvae.reparameterize(mu, logvar, seed=3)
    loss = fastvae.ELBOLoss(reduction=reduction, beta=2.0)(logits, x, kl)
    ours = _grads(loss, w, inputs)
    per_example = 2.0 * kl_standard_normal(mu, logvar) - bernoulli_ll(logits, x.expand(S, B, D))
    ref_loss = {"mean": per_example.mean(), "sum": per_example.sum(), "none": per_example}[reduction]
    ref = _grads(ref_loss, w, inputs)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
