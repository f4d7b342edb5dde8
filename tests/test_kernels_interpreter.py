"""The Triton kernels (run on CPU tensors by Triton's interpreter) against the torch path.

Both paths accumulate in float32 for float32 / float16 / bfloat16 inputs, so they must agree
to float32 rounding on the per-row values; gradients are written in the input dtype, so they
agree to that dtype's rounding. The largest errors seen are collected per dtype and printed
at the end of the module (run with ``-s`` to see them).

Grids stay tiny (a few rows): the interpreter runs each program in numpy.
"""

from __future__ import annotations

import pytest
import torch

import fastvae
from _oracles import max_errors

pytestmark = pytest.mark.interpreter

# Per-dtype tolerances, interpreter vs torch path (assert_close: |a - b| <= atol + rtol * |b|).
# values: per-row sums accumulated in float32 in both paths, in different orders; the
#   atol covers D terms of size ~1-10 each rounded at float32's 2^-24 (D <= 1271 here).
# grads: elementwise, each rounded once to the input dtype (fp16 2^-11, bf16 2^-8 relative);
#   the atol allows one ulp near |g| ~ 1 (float32 keeps a small margin for exp/log differences).
# reduced_grad: gradients summed over broadcast rows (per-feature / scalar logvar, data
#   broadcast over samples): float32 sums like the values, then rounded to the input dtype.
TOLERANCES = {
    torch.float32: {
        "value": dict(rtol=2e-6, atol=2e-4), "grad": dict(rtol=2e-6, atol=2e-6), "reduced_grad": dict(rtol=2e-6, atol=2e-4),
    },
    torch.float16: {
        "value": dict(rtol=2e-6, atol=2e-4), "grad": dict(rtol=1e-3, atol=1e-3), "reduced_grad": dict(rtol=1e-3, atol=1e-3),
    },
    torch.bfloat16: {
        "value": dict(rtol=2e-6, atol=2e-4), "grad": dict(rtol=8e-3, atol=8e-3), "reduced_grad": dict(rtol=8e-3, atol=8e-3),
    },
}
DTYPES = list(TOLERANCES)
LAYOUT_DTYPES = [torch.float32, torch.float16]  # the slower layout cases: float32 and float16 only
DIMS = [1, 7, 784, 1000]


def _check(actual, expected, dtype, kind, tolerance=None):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    abs_err, rel_err = max_errors(actual, expected)
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype][tolerance or kind], msg=lambda default: (
        f"{default}\n{dtype} {kind}: max error abs {abs_err:.3e}, rel {rel_err:.3e} (|ref| floored at 1)"))


def _run(monkeypatch, backend_name, fn, inputs, weights):
    """fn(*inputs) on one backend; returns its outputs and the grads of the inputs that require grad.

    Inputs keep their memory layout (transposed, sliced, expanded): ``detach`` shares it. The
    upstream gradient is 1.7 times a per-row (or per-element) weight, not 1.
    """
    monkeypatch.setenv("FASTVAE_BACKEND", backend_name)
    leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum((1.7 * (w * o.float())).sum() for o, w in zip(outputs, weights))
    loss.backward()
    return [o.detach() for o in outputs], [leaf.grad for leaf in leaves if leaf.requires_grad]


def _compare(monkeypatch, fn, inputs, dtype, weights):
    out_t, grads_t = _run(monkeypatch, "triton", fn, inputs, weights)
    out_r, grads_r = _run(monkeypatch, "torch", fn, inputs, weights)
    for a, b in zip(out_t, out_r):
        # elementwise outputs (z) are rounded to the input dtype like gradients; row values are float32
        elementwise = a.shape == inputs[0].shape
        _check(a, b, dtype, "z" if elementwise else "value", "grad" if elementwise else "value")
    assert len(grads_t) == len(grads_r) == sum(t.requires_grad for t in inputs)
    for a, b, t in zip(grads_t, grads_r, [t for t in inputs if t.requires_grad]):
        assert a.dtype == t.dtype and a.shape == t.shape
        reduced = t.numel() < max(i.numel() for i in inputs)
        _check(a, b, dtype, "reduced_grad" if reduced else "grad")


def _make(shape, dtype, seed, kind="randn", scale=1.0, grad=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g) if kind == "rand" else scale * torch.randn(shape, generator=g)
    return t.to(dtype).requires_grad_(grad)


def _row_weights(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) + 0.5


LIKELIHOOD_CASES = ["bernoulli", "continuous_bernoulli", "gaussian_like_x", "gaussian_per_feature", "gaussian_scalar"]


def _likelihood_case(case, shape, dtype, x_grad=True):
    """(fn, inputs) for one likelihood case with decoder output and data of ``shape``."""
    x = _make(shape, dtype, 1, kind="rand", grad=x_grad)
    if case in ("bernoulli", "continuous_bernoulli"):
        f = getattr(fastvae, f"{case}_log_likelihood")
        return f, [_make(shape, dtype, 2, scale=3.0), x]
    lv_shape = {"gaussian_like_x": shape, "gaussian_per_feature": shape[-1:], "gaussian_scalar": ()}[case]
    return fastvae.gaussian_log_likelihood, [_make(shape, dtype, 2), _make(lv_shape, dtype, 3, scale=0.5), x]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("case", LIKELIHOOD_CASES)
def test_likelihood_rows(monkeypatch, case, D, dtype):
    shape = (3, D)
    fn, inputs = _likelihood_case(case, shape, dtype)
    _compare(monkeypatch, fn, inputs, dtype, [_row_weights(shape[:-1], 4)])


@pytest.mark.parametrize("dtype", LAYOUT_DTYPES, ids=str)
@pytest.mark.parametrize("case", LIKELIHOOD_CASES)
def test_likelihood_3d_and_irregular(monkeypatch, case, dtype):
    for shape in [(2, 3, 7), (41, 1271)]:
        fn, inputs = _likelihood_case(case, shape, dtype)
        _compare(monkeypatch, fn, inputs, dtype, [_row_weights(shape[:-1], 5)])


@pytest.mark.parametrize("dtype", LAYOUT_DTYPES, ids=str)
@pytest.mark.parametrize("case", LIKELIHOOD_CASES)
def test_likelihood_non_contiguous(monkeypatch, case, dtype):
    """Transposed decoder output and data, and a column-sliced logvar."""
    D, N = 9, 4
    fn, inputs = _likelihood_case(case, (N, D), dtype)
    transposed = [t.detach().t().contiguous().t().requires_grad_(t.requires_grad) if t.dim() == 2 else t for t in inputs]
    assert all(t.is_leaf for t in transposed)
    assert not transposed[0].is_contiguous()
    _compare(monkeypatch, fn, transposed, dtype, [_row_weights((N,), 6)])
    sliced = [
        _make((N, 2 * D), dtype, 7 + i)[:, ::2].detach().requires_grad_(t.requires_grad) if t.dim() == 2 else t
        for i, t in enumerate(inputs)
    ]
    assert not sliced[0].is_contiguous()
    _compare(monkeypatch, fn, sliced, dtype, [_row_weights((N,), 8)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_likelihood_broadcast_leading_dims(monkeypatch, dtype):
    """Decoder outputs (S, B, D) against data (B, D) and a logvar (B, D) broadcast over S."""
    S, B, D = 3, 2, 11
    out, x = _make((S, B, D), dtype, 9), _make((B, D), dtype, 10, kind="rand")
    w = [_row_weights((S, B), 11)]
    _compare(monkeypatch, fastvae.bernoulli_log_likelihood, [out, x], dtype, w)
    _compare(monkeypatch, fastvae.continuous_bernoulli_log_likelihood, [out, x], dtype, w)
    _compare(monkeypatch, fastvae.gaussian_log_likelihood, [out, _make((B, D), dtype, 12, scale=0.5), x], dtype, w)
    _compare(monkeypatch, fastvae.gaussian_log_likelihood, [out, _make((1, 1, D), dtype, 13), x], dtype, w)
    # expanded (stride-0) data
    _compare(monkeypatch, fastvae.bernoulli_log_likelihood, [out, x.detach().expand(S, B, D)], dtype, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", DIMS)
def test_latent_head_explicit_eps(monkeypatch, D, dtype):
    shape = (3, D)
    mu, logvar, eps = _make(shape, dtype, 14), _make(shape, dtype, 15, scale=0.5), _make(shape, dtype, 16, grad=False)
    weights = [_make(shape, torch.float32, 17, grad=False), _row_weights((3,), 18)]
    _compare(monkeypatch, lambda m, lv: fastvae.reparameterize(m, lv, eps=eps), [mu, logvar], dtype, weights)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_latent_head_3d_non_contiguous_eps_grad(monkeypatch, dtype):
    S, B, Z = 2, 3, 5
    mu = _make((S, B, Z), dtype, 19)
    logvar = _make((S, Z, B), dtype, 20, scale=0.5).detach().transpose(1, 2).requires_grad_()  # non-contiguous
    eps = _make((S, B, 2 * Z), dtype, 21)[..., ::2].detach().requires_grad_()  # sliced, requires grad
    weights = [_make((S, B, Z), torch.float32, 22, grad=False), _row_weights((S, B), 23)]
    _compare(monkeypatch, lambda m, lv, e: fastvae.reparameterize(m, lv, eps=e), [mu, logvar, eps], dtype, weights)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_latent_head_seeded_gradients(monkeypatch, dtype):
    """Drawn noise differs between the paths, but given the Triton path's own z, its gradients
    must be those of the torch path fed the same noise, eps = (z - mu) / std (float32 inputs
    recover eps exactly enough; for half precision z is rounded, so compare in float32)."""
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    mu, logvar = _make((4, 6), torch.float32, 24), _make((4, 6), torch.float32, 25, scale=0.5)
    z, kl = fastvae.reparameterize(mu.to(dtype), logvar.to(dtype), seed=99)
    assert z.dtype == dtype and kl.dtype == torch.float32
    z32, _ = fastvae.reparameterize(mu, logvar, seed=99)
    eps = ((z32 - mu) * torch.exp(-0.5 * logvar)).detach()
    # half-precision z is the float32 z rounded once
    torch.testing.assert_close(z.float(), z32.detach(), **TOLERANCES[dtype]["grad"])
    weights = [_make((4, 6), torch.float32, 26, grad=False), _row_weights((4,), 27)]
    _, grads_t = _run(monkeypatch, "triton", lambda m, lv: fastvae.reparameterize(m, lv, seed=99), [mu, logvar], weights)
    _, grads_r = _run(monkeypatch, "torch", lambda m, lv: fastvae.reparameterize(m, lv, eps=eps), [mu, logvar], weights)
    for a, b in zip(grads_t, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_elbo_loss(monkeypatch, likelihood, reduction, dtype):
    S, B, Z, D = 2, 3, 4, 10
    mu, logvar = _make((S, B, Z), dtype, 28), _make((S, B, Z), dtype, 29, scale=0.5)
    eps = _make((S, B, Z), dtype, 30, grad=False)
    out, x = _make((S, B, D), dtype, 31), _make((B, D), dtype, 32, kind="rand", grad=False)
    crit = fastvae.ELBOLoss(likelihood, reduction=reduction, beta=0.5)
    inputs = [mu, logvar, out]
    if likelihood == "gaussian":
        inputs.append(_make((D,), dtype, 33, scale=0.3))

    def step(m, lv, o, *dec_lv):
        _, kl = fastvae.reparameterize(m, lv, eps=eps)
        return crit((o, dec_lv[0]) if dec_lv else o, x, kl)

    weight = _row_weights((S, B), 34) if reduction == "none" else torch.tensor(1.0)  # times 1.7
    _compare(monkeypatch, step, inputs, dtype, [weight])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_batch(monkeypatch, dtype):
    out, x = _make((0, 7), dtype, 35), _make((0, 7), dtype, 36, kind="rand")
    _compare(monkeypatch, fastvae.bernoulli_log_likelihood, [out, x], dtype, [torch.ones(0)])
    mu = _make((0, 3), dtype, 37)
    _compare(monkeypatch, lambda m: fastvae.reparameterize(m, m, seed=1)[1], [mu], dtype, [torch.ones(0)])


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_only_x_requires_grad(monkeypatch, likelihood):
    """The kernel's backward with only the data requiring grad (decoder output frozen)."""
    out, x = _make((3, 7), torch.float32, 38, grad=False), _make((3, 7), torch.float32, 39, kind="rand")
    if likelihood == "gaussian":
        fn, inputs = fastvae.gaussian_log_likelihood, [out, torch.tensor(0.3), x]
    else:
        fn, inputs = getattr(fastvae, f"{likelihood}_log_likelihood"), [out, x]
    _compare(monkeypatch, fn, inputs, torch.float32, [_row_weights((3,), 40)])
