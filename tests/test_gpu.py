"""The same checks on CUDA tensors: compiled Triton kernels (the ``auto`` backend) against the
torch path on the same device, torch.distributions in float64, gradcheck, noise, bf16
accumulation, torch.compile and CUDA-graph capture.

Every test is marked ``gpu`` and skips without a CUDA device; nothing here touches CUDA at
import time. Run with ``TRITON_INTERPRET=0`` so the kernels are compiled, not interpreted.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.autograd import gradcheck

import fastvae
from _oracles import bernoulli_ll, continuous_bernoulli_ll, gaussian_ll, kl_standard_normal

pytestmark = pytest.mark.gpu

DEVICE = "cuda"

# Per-dtype tolerances, kernels vs torch path on the GPU (see test_kernels_interpreter.py for
# the reasoning: float32 accumulation in both; gradients rounded once to the input dtype).
# The GPU's exp/log may differ from the CPU's by an ulp or two, hence the slightly wider float32 grads.
TOLERANCES = {
    torch.float32: {
        "value": dict(rtol=2e-6, atol=5e-4), "grad": dict(rtol=1e-5, atol=1e-5), "reduced_grad": dict(rtol=1e-5, atol=5e-4),
    },
    torch.float16: {
        "value": dict(rtol=2e-6, atol=5e-4), "grad": dict(rtol=1e-3, atol=1e-3), "reduced_grad": dict(rtol=1e-3, atol=1e-3),
    },
    torch.bfloat16: {
        "value": dict(rtol=2e-6, atol=5e-4), "grad": dict(rtol=8e-3, atol=8e-3), "reduced_grad": dict(rtol=8e-3, atol=8e-3),
    },
}
DTYPES = list(TOLERANCES)


def _on(device_backend, monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", device_backend)


def _rand(shape, dtype, seed, kind="randn", scale=1.0, grad=True):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    if kind == "rand":
        t = torch.rand(shape, generator=g, device=DEVICE)
    else:
        t = scale * torch.randn(shape, generator=g, device=DEVICE)
    return t.to(dtype).requires_grad_(grad)


def _run(monkeypatch, backend_name, fn, inputs, weights):
    monkeypatch.setenv("FASTVAE_BACKEND", backend_name)
    leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    sum((1.7 * w * o.float()).sum() for o, w in zip(outputs, weights)).backward()
    return [o.detach() for o in outputs], [leaf.grad for leaf in leaves if leaf.requires_grad]


def _compare(monkeypatch, fn, inputs, dtype, weights, widen=1.0):
    """Kernels (auto backend on CUDA) vs the torch path, values and gradients (tolerances times ``widen``)."""
    out_k, grads_k = _run(monkeypatch, "auto", fn, inputs, weights)
    out_r, grads_r = _run(monkeypatch, "torch", fn, inputs, weights)
    for a, b in zip(out_k, out_r):
        assert a.device.type == "cuda" and a.dtype == b.dtype and torch.isfinite(a).all()
        kind = "grad" if a.shape == inputs[0].shape else "value"
        torch.testing.assert_close(a, b, **{k: widen * v for k, v in TOLERANCES[dtype][kind].items()})
    for a, b in zip(grads_k, grads_r):
        assert torch.isfinite(a).all()
        reduced = a.numel() < max(i.numel() for i in inputs)
        tolerance = TOLERANCES[dtype]["reduced_grad" if reduced else "grad"]
        torch.testing.assert_close(a, b, **{k: widen * v for k, v in tolerance.items()})


CASES = ["bernoulli", "continuous_bernoulli", "gaussian_like_x", "gaussian_per_feature", "gaussian_scalar"]


def _case(case, shape, dtype):
    x = _rand(shape, dtype, 1, kind="rand")
    if case in ("bernoulli", "continuous_bernoulli"):
        return getattr(fastvae, f"{case}_log_likelihood"), [_rand(shape, dtype, 2, scale=3.0), x]
    lv_shape = {"gaussian_like_x": shape, "gaussian_per_feature": shape[-1:], "gaussian_scalar": ()}[case]
    return fastvae.gaussian_log_likelihood, [_rand(shape, dtype, 2), _rand(lv_shape, dtype, 3, scale=0.5), x]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(64, 1), (64, 7), (256, 784), (33, 1000), (8, 12288), (41, 1271), (3, 17, 129)])
@pytest.mark.parametrize("case", CASES)
def test_kernels_match_torch_path(monkeypatch, case, shape, dtype):
    fn, inputs = _case(case, shape, dtype)
    _compare(monkeypatch, fn, inputs, dtype, [torch.rand(shape[:-1], device=DEVICE) + 0.5])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_and_broadcast(monkeypatch, dtype):
    S, B, D = 3, 16, 300
    out = _rand((S, D, B), dtype, 4).detach().transpose(1, 2).requires_grad_()  # non-contiguous
    x = _rand((B, 2 * D), dtype, 5, kind="rand")[:, ::2].detach().requires_grad_()  # sliced, broadcast over S
    w = [torch.rand(S, B, device=DEVICE) + 0.5]
    _compare(monkeypatch, fastvae.bernoulli_log_likelihood, [out, x], dtype, w)
    _compare(monkeypatch, fastvae.continuous_bernoulli_log_likelihood, [out, x], dtype, w)
    _compare(monkeypatch, fastvae.gaussian_log_likelihood, [out, _rand((B, D), dtype, 6, scale=0.5), x], dtype, w)
    _compare(monkeypatch, fastvae.gaussian_log_likelihood, [out, _rand((D,), dtype, 7, scale=0.5), x], dtype, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Z", [1, 7, 64, 1000])
def test_latent_head_matches_torch_path(monkeypatch, Z, dtype):
    shape = (257, Z)
    mu, logvar = _rand(shape, dtype, 8), _rand(shape, dtype, 9, scale=0.5)
    eps = _rand(shape, dtype, 10, grad=False)
    weights = [torch.rand(shape, device=DEVICE), torch.rand(shape[0], device=DEVICE)]
    _compare(monkeypatch, lambda m, lv: fastvae.reparameterize(m, lv, eps=eps), [mu, logvar], dtype, weights)
    # drawn noise: both paths draw the same Philox stream; the kernel's log / cos may be the GPU's
    # approximate instructions (absolute error ~1e-6), torch's are not: 10x the float32 tolerance
    _compare(monkeypatch, lambda m, lv: fastvae.reparameterize(m, lv, seed=1234), [mu, logvar], dtype, weights, widen=10.0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_elbo_loss_matches_torch_path(monkeypatch, likelihood, reduction, dtype):
    S, B, Z, D = 2, 100, 20, 784
    mu, logvar = _rand((S, B, Z), dtype, 11), _rand((S, B, Z), dtype, 12, scale=0.5)
    out, x = _rand((S, B, D), dtype, 13), _rand((B, D), dtype, 14, kind="rand", grad=False)
    crit = fastvae.ELBOLoss(likelihood, reduction=reduction, beta=0.5)
    inputs = [mu, logvar, out] + ([_rand((D,), dtype, 15, scale=0.3)] if likelihood == "gaussian" else [])

    def step(m, lv, o, *dec_lv):
        _, kl = fastvae.reparameterize(m, lv, seed=3)
        return crit((o, dec_lv[0]) if dec_lv else o, x, kl)

    weight = torch.rand(S, B, device=DEVICE) + 0.5 if reduction == "none" else torch.tensor(1.0, device=DEVICE)
    _compare(monkeypatch, step, inputs, dtype, [weight])


# ---- float64 oracles and gradcheck on CUDA ----


def test_values_match_torch_distributions_float64(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    f64 = torch.float64
    logits, mean = _rand((5, 3, 129), f64, 16, scale=3.0), _rand((5, 3, 129), f64, 17)
    x, lv = _rand((3, 129), f64, 18, kind="rand"), _rand((129,), f64, 19)
    tol = dict(rtol=1e-10, atol=1e-10)
    xs = x.expand(5, 3, 129)
    torch.testing.assert_close(fastvae.bernoulli_log_likelihood(logits, x), bernoulli_ll(logits, xs), **tol)
    torch.testing.assert_close(
        fastvae.continuous_bernoulli_log_likelihood(logits, x), continuous_bernoulli_ll(logits, xs), atol=1e-9, rtol=1e-10
    )
    torch.testing.assert_close(fastvae.gaussian_log_likelihood(mean, lv, x), gaussian_ll(mean, lv, xs), **tol)
    mu, logvar = _rand((7, 11), f64, 20), _rand((7, 11), f64, 21)
    _, kl = fastvae.reparameterize(mu, logvar, seed=0)
    torch.testing.assert_close(kl, kl_standard_normal(mu, logvar), **tol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_on_cuda(monkeypatch, reduction):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    f64 = torch.float64
    mu, logvar = _rand((3, 2), f64, 22), _rand((3, 2), f64, 23, scale=0.5)
    logits, x = _rand((3, 5), f64, 24), _rand((3, 5), f64, 25, kind="rand")
    mean, lv = _rand((3, 5), f64, 26), _rand((5,), f64, 27, scale=0.5)
    eps = _rand((3, 2), f64, 28)
    assert gradcheck(lambda m, l: fastvae.reparameterize(m, l, seed=9), (mu, logvar))
    assert gradcheck(lambda m, l, e: fastvae.reparameterize(m, l, eps=e), (mu, logvar, eps))
    assert gradcheck(fastvae.bernoulli_log_likelihood, (logits, x))
    assert gradcheck(fastvae.continuous_bernoulli_log_likelihood, (logits, x))
    for lv_ in (lv, _rand((3, 5), f64, 29), _rand((), f64, 30)):
        assert gradcheck(fastvae.gaussian_log_likelihood, (mean, lv_, x))
    for likelihood in ("bernoulli", "continuous_bernoulli", "gaussian"):
        crit = fastvae.ELBOLoss(likelihood, reduction=reduction, beta=0.7)

        def f(m, l, o, xx):
            _, kl = fastvae.reparameterize(m, l, seed=5)
            return crit((o, lv) if likelihood == "gaussian" else o, xx, kl)

        assert gradcheck(f, (mu, logvar, logits, x))


# ---- precision and extremes ----


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_accumulates_in_float32(monkeypatch, dtype):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    D = 12288
    logits = _rand((4, D), dtype, 31, scale=0.5, grad=False)
    x = _rand((4, D), dtype, 32, kind="rand", grad=False)
    ll = fastvae.bernoulli_log_likelihood(logits, x)
    assert ll.dtype == torch.float32
    l, xd = logits.double(), x.double()
    expected = (xd * l - torch.nn.functional.softplus(l)).sum(-1)
    assert (expected.to(dtype).double() - expected).abs().max() > 0.5  # the dtype itself could not hold it
    torch.testing.assert_close(ll.double(), expected, rtol=2e-6, atol=0)
    mu, logvar = _rand((4, D), dtype, 33, grad=False), _rand((4, D), dtype, 34, scale=0.3, grad=False)
    _, kl = fastvae.reparameterize(mu, logvar, seed=0)
    assert kl.dtype == torch.float32
    md, lvd = mu.double(), logvar.double()
    torch.testing.assert_close(kl.double(), 0.5 * (md.square() + lvd.exp() - 1 - lvd).sum(-1), rtol=2e-6, atol=0)


def test_extreme_values_are_finite(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    logits = torch.tensor([[1e4, -1e4, 1e-8, 0.09, 0.11, -3.0]], device=DEVICE, requires_grad=True)
    x = torch.tensor([[1.0, 0.0, 0.5, 0.2, 0.8, 1.0]], device=DEVICE)
    for f in (fastvae.bernoulli_log_likelihood, fastvae.continuous_bernoulli_log_likelihood):
        ll = f(logits, x)
        ll.sum().backward()
        assert torch.isfinite(ll).all() and torch.isfinite(logits.grad).all()
        logits.grad = None
    l64 = logits.detach().double()
    cb_expected = continuous_bernoulli_ll(l64[:, 2:], x[:, 2:]) + (  # torch.distributions is exact off the huge logits
        x[:, :2].double() * l64[:, :2] - l64[:, :2].clamp_min(0) + torch.log(l64[:, :2].abs())
    ).sum(-1)
    torch.testing.assert_close(fastvae.continuous_bernoulli_log_likelihood(logits, x).double(), cb_expected, rtol=1e-6, atol=2e-3)
    mu = torch.tensor([[0.0, 3.0]], device=DEVICE, requires_grad=True)
    logvar = torch.tensor([[80.0, -80.0]], device=DEVICE, requires_grad=True)
    z, kl = fastvae.reparameterize(mu, logvar, seed=1)
    ll = fastvae.gaussian_log_likelihood(mu, logvar, mu.detach() + 1e-3)
    (z.sum() + kl.sum() + ll.sum()).backward()
    for t in (z, kl, ll, mu.grad, logvar.grad):
        assert torch.isfinite(t).all()


# ---- noise ----


def test_noise_statistics_and_seeds(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    rows, cols = 10000, 100  # 1M draws
    mu, logvar = _rand((rows, cols), torch.float32, 35, grad=False), _rand((rows, cols), torch.float32, 36, grad=False)
    z, _ = fastvae.reparameterize(mu, logvar, seed=2024)
    e = ((z.double() - mu.double()) * torch.exp(-0.5 * logvar.double())).cpu().numpy()
    n = e.size
    assert abs(e.mean()) < 5 / math.sqrt(n)
    assert abs(e.var(ddof=1) - 1) < 5 * math.sqrt(2 / (n - 1))
    assert stats.kstest(e.ravel(), "norm").pvalue > 1e-4
    assert abs(np.corrcoef(e[:, :-1].ravel(), e[:, 1:].ravel())[0, 1]) < 5 / math.sqrt(e[:, 1:].size)
    assert abs(np.corrcoef(e[:-1].ravel(), e[1:].ravel())[0, 1]) < 5 / math.sqrt(e[1:].size)
    z2, _ = fastvae.reparameterize(mu, logvar, seed=2024)
    z3, _ = fastvae.reparameterize(mu, logvar, seed=2025)
    z4, _ = fastvae.reparameterize(mu, logvar, seed=torch.tensor([2024], device=DEVICE))
    assert torch.equal(z, z2) and torch.equal(z, z4) and not torch.isclose(z, z3).any()
    torch.manual_seed(0)
    a, _ = fastvae.reparameterize(mu, logvar)
    torch.manual_seed(0)
    b, _ = fastvae.reparameterize(mu, logvar)
    assert torch.equal(a, b)


# ---- compile, CUDA graphs, devices ----


def test_compiled_training_step_matches_eager(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    torch._dynamo.reset()
    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(784, 40).to(DEVICE), torch.nn.Linear(20, 784).to(DEVICE)
    params = list(enc.parameters()) + list(dec.parameters())
    crit = fastvae.ELBOLoss("bernoulli", reduction="mean")
    x = torch.rand(100, 784, device=DEVICE)

    def forward(x, seed):
        mu, logvar = enc(x).chunk(2, -1)
        z, kl = fastvae.reparameterize(mu, logvar, seed=seed)
        return crit(dec(z), x, kl)

    def step(fn):
        for p in params:
            p.grad = None
        loss = fn(x, torch.tensor([7], device=DEVICE))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    eager = step(forward)
    compiled = step(torch.compile(forward, fullgraph=True))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cuda_graph_capture_with_the_seed_in_a_device_tensor(monkeypatch):
    """The seed is read on the device: a captured graph replays with new noise when the seed
    tensor is updated in place, equal to an eager call with that seed."""
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    mu, logvar = _rand((64, 16), torch.float32, 37, grad=False), _rand((64, 16), torch.float32, 38, grad=False)
    seed = torch.tensor([1], device=DEVICE)
    fastvae.reparameterize(mu, logvar, seed=seed)  # warm-up (compiles the kernel) outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z_static, kl_static = fastvae.reparameterize(mu, logvar, seed=seed)
    for value in (5, 6):
        seed.fill_(value)
        graph.replay()
        torch.cuda.synchronize()
        z_eager, kl_eager = fastvae.reparameterize(mu, logvar, seed=value)
        assert torch.equal(z_static, z_eager) and torch.equal(kl_static, kl_eager)


def test_mixing_cuda_and_cpu_tensors_names_the_argument(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    logits = torch.zeros(2, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"x is on cpu but logits is on cuda"):
        fastvae.bernoulli_log_likelihood(logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"logvar is on cpu but mu is on cuda"):
        fastvae.reparameterize(logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"seed is on cpu"):
        fastvae.reparameterize(logits, logits, seed=torch.tensor([1]))
