"""IWAE and DReG on CUDA tensors: the compiled Triton kernels (``auto`` backend) against the
torch path on the same device (which draws the kernel's own Philox stream there, so a seed
gives both the same draws), half precision, large K, and ``torch.compile``.

Marked ``gpu``: skips without a CUDA device; nothing touches CUDA at import time. Run with
``TRITON_INTERPRET=0``.
"""

from __future__ import annotations

import pytest
import torch

import fastvae
from _oracles import iwae_bound, sampled_kl

pytestmark = pytest.mark.gpu

DEVICE = "cuda"


def _model(z_dim=20, x_dim=784, seed=0):
    torch.manual_seed(seed)
    encoder = torch.nn.Linear(x_dim, 2 * z_dim).to(DEVICE)
    decoder = torch.nn.Linear(z_dim, x_dim).to(DEVICE)
    x = (torch.rand(64, x_dim, device=DEVICE) < 0.3).float()
    return encoder, decoder, x


def _step(backend_name, monkeypatch, estimator, K, encoder, decoder, x, dtype=torch.float32, seed=11):
    monkeypatch.setenv("FASTVAE_BACKEND", backend_name)
    params = [*encoder.parameters(), *decoder.parameters()]
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        mu, logvar = encoder(x).chunk(2, -1)
        z, kl = fastvae.reparameterize(mu, logvar, seed=seed, samples=K, kl="sampled")
        logits = decoder(z)
    loss = fastvae.IWAELoss("bernoulli", estimator=estimator)(logits, x, kl)
    return [loss.detach(), *torch.autograd.grad(loss, params)]


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
@pytest.mark.parametrize("K", [1, 5, 50, 500])
def test_kernels_match_the_torch_path(monkeypatch, estimator, K):
    encoder, decoder, x = _model()
    kernel = _step("auto", monkeypatch, estimator, K, encoder, decoder, x)
    torch_path = _step("torch", monkeypatch, estimator, K, encoder, decoder, x)
    torch.testing.assert_close(kernel[0], torch_path[0], rtol=1e-5, atol=1e-4)
    for a, b in zip(kernel[1:], torch_path[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sampled_kl_and_bound_against_float64(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    g = torch.Generator(device=DEVICE).manual_seed(3)
    mu = torch.randn(300, 50, device=DEVICE, generator=g)
    logvar = 0.5 * torch.randn(300, 50, device=DEVICE, generator=g)
    z, kl = fastvae.reparameterize(mu, logvar, seed=5, samples=50, kl="sampled")
    torch.testing.assert_close(kl.double(), sampled_kl(z, mu, logvar), rtol=1e-5, atol=2e-3)
    ll = -100.0 + 30.0 * torch.randn(50, 300, device=DEVICE, generator=g)
    torch.testing.assert_close(fastvae.reference.importance_weighted_bound_ref(ll, kl).double(), iwae_bound(ll, kl),
                               rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_bf16_autocast_step_is_finite_and_close(monkeypatch, estimator):
    encoder, decoder, x = _model()
    half = _step("auto", monkeypatch, estimator, 50, encoder, decoder, x, dtype=torch.bfloat16)
    full = _step("auto", monkeypatch, estimator, 50, encoder, decoder, x)
    assert half[0].dtype == torch.float32 and all(torch.isfinite(t).all() for t in half)
    torch.testing.assert_close(half[0], full[0], rtol=2e-2, atol=1.0)


def test_compiled_iwae_step_matches_eager(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    torch._dynamo.reset()
    encoder, decoder, x = _model()
    params = [*encoder.parameters(), *decoder.parameters()]
    crit = fastvae.IWAELoss("bernoulli")

    def forward(x, seed):
        mu, logvar = encoder(x).chunk(2, -1)
        z, kl = fastvae.reparameterize(mu, logvar, seed=seed, samples=50, kl="sampled")
        return crit(decoder(z), x, kl)

    def step(fn):
        loss = fn(x, torch.tensor([7], device=DEVICE))
        return [loss.detach(), *torch.autograd.grad(loss, params)]

    eager, compiled = step(forward), step(torch.compile(forward, fullgraph=True))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
