"""Importance-weighted training: ``reparameterize(samples=K, kl=...)`` and ``IWAELoss``.

Values and gradients are checked against independent float64 oracles (``_oracles``:
torch.distributions densities, the log-sum-exp written out), gradcheck, K in {1, 2, 5, 50},
extreme log-weights, half-precision inputs, awkward shapes, both backends and
``torch.compile(fullgraph=True)``. The DReG estimator has its own module (test_dreg.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

import fastvae
from _oracles import BACKENDS, bernoulli_ll, continuous_bernoulli_ll, gaussian_ll, iwae_bound, kl_standard_normal, sampled_kl
from fastvae import reference

F64 = dict(dtype=torch.float64)
KS = [1, 2, 5, 50]


def _randn(*shape, seed, scale=1.0, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(grad)


def _rand(*shape, seed, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ---- reparameterize(samples=K, kl=...) ----


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (2, 3, 5)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_draw_shapes_and_dtypes(backend, backend_name, shape, dtype):
    backend(backend_name)
    mu, logvar = _randn(*shape, seed=0, dtype=dtype), _randn(*shape, seed=1, dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for samples in (None, 1, 3):
        for kl_mode in ("analytic", "sampled"):
            z, kl = fastvae.reparameterize(mu, logvar, seed=4, samples=samples, kl=kl_mode)
            lead = () if samples is None else (samples,)
            assert z.shape == (*lead, *shape) and z.dtype == dtype
            assert kl.shape == (*lead, *shape[:-1]) and kl.dtype == acc
            assert torch.isfinite(z).all() and torch.isfinite(kl).all()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_one_sample_draws_what_no_samples_draws(backend, backend_name):
    backend(backend_name)
    mu, logvar = _randn(4, 3, seed=2, dtype=torch.float32), _randn(4, 3, seed=3, dtype=torch.float32)
    z, kl = fastvae.reparameterize(mu, logvar, seed=11, first_row=2)
    z1, kl1 = fastvae.reparameterize(mu, logvar, seed=11, first_row=2, samples=1)
    assert torch.equal(z1[0], z) and torch.equal(kl1[0], kl)
    z_s, kl_s = fastvae.reparameterize(mu, logvar, seed=11, first_row=2, kl="sampled")
    assert torch.equal(z_s, z)
    torch.testing.assert_close(kl_s, sampled_kl(z, mu, logvar).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("seed", [0, 2**40 + 17, -5])
def test_draw_s_of_row_r_is_stream_row_r_times_samples_plus_s(backend, backend_name, seed):
    """With S draws, draw s of row r takes the noise of the stream's row (first_row + r) * S + s:
    what a single row drawn without samples at that first_row gets (whose position in the
    Philox stream test_reparameterize_noise checks against an independent NumPy Philox)."""
    backend(backend_name)
    S, rows, Z = 3, (2, 3), 5
    for first_row in (0, 5):
        z, _ = fastvae.reparameterize(torch.zeros(*rows, Z), torch.zeros(*rows, Z), seed=seed, samples=S,
                                      first_row=first_row, kl="sampled")
        z = z.reshape(S, -1, Z)
        for s in range(S):
            for r in range(z.shape[1]):
                row, _ = fastvae.reparameterize(torch.zeros(1, Z), torch.zeros(1, Z), seed=seed,
                                                first_row=(first_row + r) * S + s)
                assert torch.equal(z[s, r], row[0]), (s, r)
    # a shard's rows draw what the same rows of the whole batch draw
    mu, logvar = _randn(6, Z, seed=5, dtype=torch.float32), _randn(6, Z, seed=6, dtype=torch.float32)
    whole, _ = fastvae.reparameterize(mu, logvar, seed=seed, samples=S)
    shard, _ = fastvae.reparameterize(mu[4:], logvar[4:], seed=seed, samples=S, first_row=4)
    assert torch.equal(shard, whole[:, 4:])


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_sampled_kl_is_log_q_minus_log_p(backend, backend_name, dtype):
    backend(backend_name)
    mu, logvar = _randn(5, 7, seed=7, dtype=dtype), _randn(5, 7, seed=8, scale=2.0, dtype=dtype)
    eps = _randn(4, 5, 7, seed=9, dtype=dtype)
    z, kl = fastvae.reparameterize(mu, logvar, eps=eps, samples=4, kl="sampled")
    z_exact = mu.double() + torch.exp(0.5 * logvar.double()) * eps.double()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5}[dtype]
    torch.testing.assert_close(kl.double(), sampled_kl(z_exact, mu, logvar), rtol=tol, atol=tol * 10)
    _, kl_analytic = fastvae.reparameterize(mu, logvar, eps=eps, samples=4)
    assert kl_analytic.shape == (4, 5)
    for s in range(4):  # the closed form, the same for every draw
        torch.testing.assert_close(kl_analytic[s].double(), kl_standard_normal(mu, logvar), rtol=tol, atol=tol * 10)


def test_sampled_kl_averages_to_the_analytic_kl(backend):
    """Mean over K = 20,000 draws within 5 standard errors (SE = sample std / sqrt(K)) of the
    closed form, per row (a false alarm ~6e-7 per row; the seed is fixed)."""
    backend("torch")
    mu, logvar = _randn(3, 4, seed=10, dtype=torch.float32), _randn(3, 4, seed=11, dtype=torch.float32)
    _, kl = fastvae.reparameterize(mu, logvar, seed=12, samples=20_000, kl="sampled")
    se = kl.double().std(0) / math.sqrt(kl.shape[0])
    gap = (kl.double().mean(0) - kl_standard_normal(mu, logvar)).abs()
    assert (gap < 5 * se).all(), (gap, se)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("kl_mode", ["sampled", "analytic"])
def test_gradcheck_draws(backend, backend_name, kl_mode):
    backend(backend_name)
    mu, logvar = _randn(3, 2, seed=13, grad=True), _randn(3, 2, seed=14, scale=0.5, grad=True)
    eps = _randn(4, 3, 2, seed=15, grad=True)
    assert gradcheck(lambda m, lv, e: fastvae.reparameterize(m, lv, eps=e, samples=4, kl=kl_mode), (mu, logvar, eps))
    # only kl used, 3-D leading dims (the seeded draws: the kernel's own noise on the Triton path)
    mu3, lv3 = _randn(2, 1, 3, seed=16, grad=True), _randn(2, 1, 3, seed=17, grad=True)
    assert gradcheck(lambda m, lv: fastvae.reparameterize(m, lv, seed=5, samples=2, kl=kl_mode)[1], (mu3, lv3))
    if backend_name == "torch":  # the interpreter is slow: these add no kernel code path
        assert gradcheck(lambda m, lv: fastvae.reparameterize(m, lv, seed=3, samples=4, kl=kl_mode), (mu, logvar))
        assert gradcheck(lambda m, lv: fastvae.reparameterize(m, lv, seed=5, kl=kl_mode), (mu3, lv3))


# ---- IWAELoss: values and gradients against the float64 oracle ----


def _decoder_out(likelihood, K, examples, D, seed, dtype=torch.float64):
    out = _randn(K, *examples, D, seed=seed, scale=2.0, dtype=dtype, grad=True)
    if likelihood == "gaussian":
        return out, _randn(D, seed=seed + 1, scale=0.5, dtype=dtype, grad=True)
    return out


def _oracle_ll(likelihood, out, x):
    if likelihood == "gaussian":
        return gaussian_ll(out[0], out[1], x)
    return {"bernoulli": bernoulli_ll, "continuous_bernoulli": continuous_bernoulli_ll}[likelihood](out, x)


def _leaves(out):
    return list(out) if isinstance(out, tuple) else [out]


def _oracle_loss(likelihood, reduction, out, x, kl):
    loss = -iwae_bound(_oracle_ll(likelihood, out, x), kl)
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("likelihood, reduction, examples", [
    ("bernoulli", "mean", (7,)),
    ("continuous_bernoulli", "sum", (1,)),
    ("gaussian", "none", (2, 3)),
])
def test_loss_and_gradients_match_oracle(backend, backend_name, K, likelihood, reduction, examples):
    backend(backend_name)
    D = 5
    out = _decoder_out(likelihood, K, examples, D, seed=20)
    x = _rand(*examples, D, seed=21).requires_grad_()
    kl = _randn(K, *examples, seed=22, scale=3.0, grad=True)
    loss = fastvae.IWAELoss(likelihood, reduction)(out, x, kl)
    expected = _oracle_loss(likelihood, reduction, out, x, kl)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    upstream = _rand(*loss.shape, seed=23) + 0.5  # not 1, different per example
    inputs = _leaves(out) + [x, kl]
    got = torch.autograd.grad(loss, inputs, upstream)
    want = torch.autograd.grad(expected, inputs, upstream)
    names = ["out", "logvar", "x", "kl"] if likelihood == "gaussian" else ["out", "x", "kl"]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_gradcheck_loss(backend, backend_name):
    backend(backend_name)
    for likelihood, K in (("bernoulli", 3), ("gaussian", 2)):
        out = _decoder_out(likelihood, K, (2,), 3, seed=30)
        x = _rand(2, 3, seed=31).requires_grad_()
        kl = _randn(K, 2, seed=32, grad=True)
        for reduction in ("mean", "none"):
            crit = fastvae.IWAELoss(likelihood, reduction)
            if likelihood == "gaussian":
                assert gradcheck(lambda m, lv, xx, k: crit((m, lv), xx, k), (*out, x, kl))
            else:
                assert gradcheck(lambda o, xx, k: crit(o, xx, k), (out, x, kl))
    # end to end: encoder outputs -> K draws -> a linear decoder -> the loss
    mu, logvar = _randn(2, 2, seed=33, grad=True), _randn(2, 2, seed=34, scale=0.5, grad=True)
    w = _randn(2, 3, seed=35, grad=True)
    xb = _rand(2, 3, seed=36)

    def end_to_end(m, lv, ww):
        z, kl = fastvae.reparameterize(m, lv, seed=7, samples=5, kl="sampled")
        return fastvae.IWAELoss("bernoulli", "sum")(z @ ww, xb, kl)

    assert gradcheck(end_to_end, (mu, logvar, w))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_one_draw_equals_elbo_loss(backend, backend_name, likelihood):
    backend(backend_name)
    mu, logvar = _randn(6, 3, seed=40, dtype=torch.float32, grad=True), _randn(6, 3, seed=41, dtype=torch.float32, grad=True)
    dec = torch.nn.Linear(3, 8)
    x = _rand(6, 8, seed=42, dtype=torch.float32)

    def step(make_loss):
        mu.grad = logvar.grad = None
        dec.zero_grad()
        z, kl = fastvae.reparameterize(mu, logvar, seed=9, samples=1, kl="sampled")
        out = dec(z)
        out = (out, torch.zeros(())) if likelihood == "gaussian" else out
        loss = make_loss(out, kl)
        loss.backward()
        return [loss.detach(), mu.grad, logvar.grad, *[p.grad for p in dec.parameters()]]

    iwae = step(lambda out, kl: fastvae.IWAELoss(likelihood, "sum")(out, x, kl))
    elbo = step(lambda out, kl: fastvae.ELBOLoss(likelihood, "sum")(out, x, kl))
    for a, b in zip(iwae, elbo):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_extreme_log_weights_are_stable():
    """Log-weights of size 1e4-1e30 that differ by up to 1e3 between draws: the bound is the
    max-shifted log-sum-exp, its weights a softmax (float32 in, float64 oracle)."""
    K, B = 50, 4
    spread = 1e3 * _rand(K, B, seed=50)
    for offset in (0.0, -1e4, 1e4, -1e30):
        ll = (offset + spread).float().requires_grad_()
        kl = (spread.flip(0) * 0.5).float().requires_grad_()
        bound = reference.importance_weighted_bound_ref(ll, kl)
        expected = iwae_bound(ll, kl)
        assert torch.isfinite(bound).all()
        torch.testing.assert_close(bound.double(), expected, rtol=2e-7, atol=1e-3)
        g_ll, g_kl = torch.autograd.grad(bound.sum(), (ll, kl))
        w = torch.softmax(ll.double() - kl.double(), 0)
        # float32 rounds ll - kl by up to 2^-24 |ll - kl|, hence w by that much relative
        # (at -1e30 the spread is below float32's resolution: uniform weights, exactly)
        lw_scale = (ll.double() - kl.double()).abs().max().item() if abs(offset) < 1e6 else 0.0
        torch.testing.assert_close(g_ll.double(), w, rtol=0, atol=2**-23 * lw_scale + 1e-7)
        torch.testing.assert_close(g_kl, -g_ll)
        assert torch.isfinite(g_ll).all()
    # all draws equally (im)probable: uniform weights, bound = the common log-weight
    flat = torch.full((K, B), -3e4, requires_grad=True)
    bound = reference.importance_weighted_bound_ref(flat, torch.zeros(K, B))
    torch.testing.assert_close(bound, torch.full((B,), -3e4))
    (g,) = torch.autograd.grad(bound.sum(), flat)
    torch.testing.assert_close(g, torch.full((K, B), 1.0 / K))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_accumulate_in_float32(dtype):
    """Half-precision ll / kl are upcast once: the bound is float32 and equals the float64 oracle
    on the rounded inputs to float32 accuracy (summing in half precision would be off by >1e-2)."""
    K, B = 50, 3
    ll = (-60.0 + 4.0 * _randn(K, B, seed=60)).to(dtype).requires_grad_()
    kl = (10.0 + _randn(K, B, seed=61)).to(dtype).requires_grad_()
    bound = reference.importance_weighted_bound_ref(ll, kl)
    assert bound.dtype == torch.float32
    torch.testing.assert_close(bound.double(), iwae_bound(ll, kl), rtol=1e-6, atol=1e-5)
    g_ll, g_kl = torch.autograd.grad(bound.sum(), (ll, kl))
    assert g_ll.dtype == dtype and g_kl.dtype == dtype
    w = torch.softmax(ll.double() - kl.double(), 0)
    torch.testing.assert_close(g_ll.double(), w, rtol=1e-2, atol=1e-3)  # rounded once to the half dtype
    # through the loss: half decoder output and kl, float32 loss
    out = _randn(K, B, 6, seed=62, dtype=dtype, grad=True)
    loss = fastvae.IWAELoss("bernoulli", "none")(out, _rand(B, 6, seed=63, dtype=dtype), kl)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_awkward_layouts(backend, backend_name):
    """Non-contiguous decoder output and kl, x broadcast over leading example dims, a single example."""
    backend(backend_name)
    K, D = 5, 7
    out_t = _randn(D, 3, K, seed=70, grad=True)
    out = out_t.permute(2, 1, 0)  # (K, 3, D), non-contiguous
    x = _rand(D, seed=71)  # one x broadcast over the 3 examples and the draws
    kl = _randn(3, K, seed=72, grad=True).t()  # (K, 3), non-contiguous
    loss = fastvae.IWAELoss("bernoulli", "none")(out, x, kl)
    expected = -iwae_bound(bernoulli_ll(out, x.expand(3, D)), kl)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(loss.sum(), (out_t, kl))
    want = torch.autograd.grad(expected.sum(), (out_t, kl))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # one example without example dims: decoder_out (K, D), x (D,), kl (K,)
    loss1 = fastvae.IWAELoss("bernoulli", "none")(out[:, 0], x, kl[:, 0])
    torch.testing.assert_close(loss1, expected[0])


# ---- torch.compile ----


class TinyIWAE(torch.nn.Module):
    def __init__(self, samples=5, x_dim=6, z_dim=2):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(x_dim, 2 * z_dim)
        self.decoder = torch.nn.Linear(z_dim, x_dim)
        self.samples = samples
        self.criterion = fastvae.IWAELoss("bernoulli", reduction="mean")

    def forward(self, x, seed):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z, kl = fastvae.reparameterize(mu, logvar, seed=seed, samples=self.samples, kl="sampled")
        return self.criterion(self.decoder(z), x, kl)


def _step(forward, model, x, seed):
    model.zero_grad(set_to_none=True)
    loss = forward(x, seed)
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_compiled_iwae_step_matches_eager(backend, backend_name):
    backend(backend_name)
    torch._dynamo.reset()
    model = TinyIWAE()
    x = _rand(4, 6, seed=80, dtype=torch.float32)
    compiled = torch.compile(model.forward, backend="aot_eager", fullgraph=True)
    for seed in (torch.tensor([3]), torch.tensor([4])):
        eager = _step(model.forward, model, x, seed)
        for a, b in zip(_step(compiled, model, x, seed), eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---- bad input ----


MU, LOGVAR = torch.randn(3, 2), torch.randn(3, 2)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(samples=0), ValueError, r"samples must be a positive integer .* got 0"),
    (dict(samples=-2), ValueError, r"samples must be a positive int"),
    (dict(samples=2.0), ValueError, r"samples must be a positive integer .* got 2.0"),
    (dict(samples=True), ValueError, r"samples must be a positive integer .* got True"),
    (dict(samples=torch.tensor(3)), ValueError, r"samples must be a positive int"),
    (dict(kl="exact"), ValueError, r"kl must be one of analytic, sampled, got 'exact'"),
    (dict(samples=4, eps=torch.randn(3, 2)), ValueError, r"eps has shape \(3, 2\) but must be \(4, 3, 2\)"),
    (dict(eps=torch.randn(4, 3, 2)), ValueError, r"eps has shape \(4, 3, 2\) but must be \(3, 2\), like mu"),
    # more draws than a tensor can index: torch's "Overflow when unpacking long long" with a C++ stack
    (dict(samples=2**62, seed=1), ValueError, r"samples=4611686018427387904 draws of mu of shape \(3, 2\) would "
                                              r"make z of 27670116110564327424 elements"),
])
def test_reparameterize_rejects_bad_draw_arguments(backend, kwargs, error, match):
    backend("torch")
    with pytest.raises(error, match=match):
        fastvae.reparameterize(MU, LOGVAR, **kwargs)


K_BAD = 4
OUT, X, KL = torch.randn(K_BAD, 3, 5), torch.rand(3, 5), torch.randn(K_BAD, 3)


@pytest.mark.parametrize("make, args, error, match", [
    (lambda: fastvae.IWAELoss(estimator="rws"), None, ValueError, r"estimator must be one of iwae, dreg, got 'rws'"),
    (lambda: fastvae.IWAELoss("poisson"), None, ValueError, r"likelihood must be one of"),
    (lambda: fastvae.IWAELoss(reduction="avg"), None, ValueError, r"reduction must be one of"),
    (fastvae.IWAELoss, (OUT, X, KL.sum()), ValueError, r"kl is 0-d"),
    (fastvae.IWAELoss, (OUT, X, KL.long()), TypeError, r"kl must be a floating-point tensor"),
    (fastvae.IWAELoss, (OUT, X, KL[:3]), ValueError, r"decoder_out has 4 draws .* but kl has 3"),
    (fastvae.IWAELoss, (OUT, X, torch.randn(K_BAD, 2)), ValueError, r"kl has shape \(4, 2\) but the draws have shape \(4, 3\)"),
    (fastvae.IWAELoss, (OUT, X, KL[0]), ValueError, r"decoder_out has 4 draws .* but kl has 3"),
    (fastvae.IWAELoss, (OUT[0], X, KL), ValueError, r"decoder_out has shape \(3, 5\) and x \(3, 5\): decoder_out must have the K draws"),
    (lambda: fastvae.IWAELoss("gaussian"), ((OUT[0], torch.zeros(())), X, KL), ValueError, r"decoder_out's mean has shape \(3, 5\)"),
    (fastvae.IWAELoss, (OUT, X.expand(K_BAD, 3, 5), KL), ValueError, r"must have the K draws as an extra first dim"),
    (fastvae.IWAELoss, (OUT, X, KL.to("meta")), ValueError, r"kl is on meta but x is on cpu"),
    (fastvae.IWAELoss, ((OUT, torch.zeros(())), X, KL), TypeError, r"decoder_out must be a logits tensor"),
    (fastvae.IWAELoss, (OUT, torch.rand(3, 4), KL), ValueError, r"x has last dimension 4 but logits has 5"),
    # K = 0 failed in log(K) with "math domain error"
    (fastvae.IWAELoss, (OUT[:0], X, KL[:0]), ValueError, r"decoder_out has 0 draws \(dim 0 of \(0, 3, 5\)\)"),
])
def test_iwae_loss_rejects_bad_input(make, args, error, match):
    with pytest.raises(error, match=match):
        crit = make()
        crit(*args)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
@pytest.mark.parametrize("grad", [True, False])
def test_iwae_loss_refuses_the_analytic_kl_broadcast_over_the_draws(backend, backend_name, estimator, grad):
    # reparameterize(..., samples=K) returns the analytic KL broadcast over the K draws unless
    # kl="sampled"; IWAELoss took it and returned -(logmeanexp_k log p(x|z_k) - KL), no bound on
    # log p(x), without a word (estimator="iwae", and "dreg" without grad)
    backend(backend_name)
    mu, logvar = torch.randn(3, 2, requires_grad=grad), torch.randn(3, 2, requires_grad=grad)
    x = torch.rand(3, 4).round()
    crit = fastvae.IWAELoss("bernoulli", estimator=estimator)
    z, kl = fastvae.reparameterize(mu, logvar, samples=5)
    logits = z @ torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"kl holds the same value for each of its 5 draws .*kl='analytic'.*"
                                         r"call reparameterize\(\.\.\., samples=K, kl='sampled'\)"):
        crit(logits, x, kl)
    z, kl = fastvae.reparameterize(mu, logvar, samples=5, kl="sampled")
    crit(z @ torch.randn(2, 4), x, kl)
    # one draw: the analytic KL gives the ELBO, a bound (iwae estimator; DReG needs the sampled kl)
    z, kl = fastvae.reparameterize(mu, logvar, samples=1)
    if estimator == "iwae" or not grad:
        torch.testing.assert_close(crit(z @ torch.ones(2, 4), x, kl),
                                   fastvae.ELBOLoss("bernoulli")(z @ torch.ones(2, 4), x, kl))


def test_first_row_bound_counts_the_draws(backend):
    """With K draws the last noise counter is ((first_row + N) * K) * ceil(Z / 4) - 1 < 2**63:
    K times fewer rows fit, and the bound is exact."""
    backend("torch")
    K, (N, Z) = 3, MU.shape
    largest = fastvae.latent.last_first_row(N, Z, K)
    assert largest == 2**63 // (K * -(-Z // 4)) - N
    z, _ = fastvae.reparameterize(MU, LOGVAR, seed=1, samples=K, first_row=largest)
    assert torch.isfinite(z).all()
    with pytest.raises(ValueError, match=rf"first_row={largest + 1} is too large.*\* 3 \(samples\).*at most {largest}"):
        fastvae.reparameterize(MU, LOGVAR, seed=1, samples=K, first_row=largest + 1)
