"""The retuned kernels compiled on a GPU: the latent head's S draws and sampled KL against the
float64 definitions, and every tiling the launchers choose (forced through FILL_PROGRAMS /
REDUCE_PROGRAMS, as tests/test_kernel_tiling.py does under the interpreter).

Every test is marked ``gpu`` and skips without CUDA; run with ``TRITON_INTERPRET=0``.
"""

from __future__ import annotations

import pytest
import torch

import fastvae
from fastvae import reference
from fastvae.kernels import launch_config
from fastvae.latent import _latent_head
from test_latent_samples import SEED, TOLERANCES, _close, _definition, _inputs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("n_rows, n_cols", [(128, 20), (4096, 200), (33, 7), (3, 4100)])
def test_compiled_kernel_on_cuda(n_rows, n_cols, dtype):
    """The compiled kernel (S = 3, sampled KL) against the float64 definition with the reference
    noise on the GPU. The GPU's float32 log / sqrt / sin / cos may differ from torch's by an ulp
    or two: 10x the interpreter's seeded tolerances."""
    mu, logvar = (t.cuda() for t in _inputs(n_rows, n_cols, dtype))
    seed = SEED.cuda()
    mu_k, lv_k = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    z, kl = _latent_head(mu_k, lv_k, None, seed, 5, 3, True)
    eps = reference.latent_noise_ref(seed, n_rows, n_cols, 3, first_row=5)
    mu_d, lv_d = mu.double().requires_grad_(), logvar.double().requires_grad_()
    z_d, kl_d = _definition(mu_d, lv_d, eps, True)
    tol = TOLERANCES[dtype].get("seeded", TOLERANCES[dtype])
    widen = lambda t: (t[0] * 10, t[1] * 10)  # noqa: E731
    _close(z, z_d, widen(tol["z"]), "z")
    _close(kl, kl_d, widen(tol["kl"]) if n_cols < 4096 else (2e-5, 5e-2), "kl")
    g = torch.Generator(device="cuda").manual_seed(1)
    gz, gkl = torch.randn(z.shape, generator=g, device="cuda"), torch.rand(kl.shape, generator=g, device="cuda")
    ((z.float() * gz).sum() + (kl.float() * gkl).sum()).backward()
    ((z_d * gz.double()).sum() + (kl_d * gkl.double()).sum()).backward()
    _close(mu_k.grad, mu_d.grad, widen(tol["grad"]), "dmu")
    _close(lv_k.grad, lv_d.grad, widen(tol["grad"]), "dlogvar")


@pytest.mark.parametrize("fill_programs, reduce_programs", [(1, 1), (10_000, 10_000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_likelihood_tilings_on_cuda(monkeypatch, fill_programs, reduce_programs, dtype):
    """Large- and small-N tiles, and a per-feature logvar's gradient walked by 1 program per column block."""
    monkeypatch.setattr(launch_config, "FILL_PROGRAMS", fill_programs)
    monkeypatch.setattr(launch_config, "REDUCE_PROGRAMS", reduce_programs)
    g = torch.Generator(device="cuda").manual_seed(0)
    N, D = 1000, 784
    mean = torch.randn(N, D, generator=g, device="cuda").to(dtype)
    logvar = (0.5 * torch.randn(D, generator=g, device="cuda")).to(dtype)
    x = torch.rand(N, D, generator=g, device="cuda").to(dtype)
    weight = torch.rand(N, generator=g, device="cuda") + 0.5
    grads = {}
    for backend_name in ("auto", "torch"):
        monkeypatch.setenv("FASTVAE_BACKEND", backend_name)
        leaves = [mean.clone().requires_grad_(), logvar.clone().requires_grad_()]
        ll = fastvae.gaussian_log_likelihood(leaves[0], leaves[1], x)
        cb = fastvae.continuous_bernoulli_log_likelihood(leaves[0], x)
        ((ll + cb) * weight).sum().backward()
        grads[backend_name] = [ll.detach(), cb.detach()] + [leaf.grad for leaf in leaves]
    rtol, atol = (1e-5, 1e-3) if dtype == torch.float32 else (1e-2, 1e-2)
    for a, b in zip(grads["auto"], grads["torch"]):
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol * max(1.0, b.abs().max().item() * 1e-4))
