"""The kernels under every tiling their launchers choose (Triton's interpreter, tiny shapes).

The tile choices depend on N through FILL_PROGRAMS / REDUCE_PROGRAMS (kernels/launch_config.py),
sized for a 132-SM GPU, so the small inputs of an interpreter test would only ever see the
small-N tilings. Here those constants are turned down to force the large-N ones (several row
blocks per program for a broadcast logvar's gradient, 8-warp latent programs holding many
rows) and up to force the smallest, and the results are compared with the torch path (and
the float64 definitions, via the torch path's own tests).
"""

from __future__ import annotations

import pytest
import torch

import fastvae
from fastvae import reference
from fastvae.kernels import launch_config
from fastvae.latent import _latent_head

pytestmark = pytest.mark.interpreter

# per-dtype tolerances as in test_kernels_interpreter.py: float32 row sums; gradients rounded once
VALUE = dict(rtol=2e-6, atol=2e-4)
GRAD = {torch.float32: dict(rtol=2e-6, atol=2e-4), torch.bfloat16: dict(rtol=8e-3, atol=8e-3)}


def _grads(monkeypatch, backend_name, fn, inputs, weight):
    monkeypatch.setenv("FASTVAE_BACKEND", backend_name)
    leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    (1.7 * weight * out).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves if leaf.requires_grad]


@pytest.mark.parametrize("reduce_programs", [1, 3, 10_000])
@pytest.mark.parametrize("logvar_shape", ["per_feature", "scalar"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_broadcast_logvar_gradient_over_many_row_blocks(monkeypatch, reduce_programs, logvar_shape, dtype):
    """REDUCE_PROGRAMS = 1: each column block's single program walks all 37 rows (10 row blocks);
    3: a few programs of several row blocks each; 10 000: one row block per program."""
    monkeypatch.setattr(launch_config, "REDUCE_PROGRAMS", reduce_programs)
    N, D = 37, 300
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(N, D, generator=g).to(dtype).requires_grad_()
    logvar = (0.5 * torch.randn(D if logvar_shape == "per_feature" else (), generator=g)).to(dtype).requires_grad_()
    x = torch.rand(N, D, generator=g).to(dtype)
    weight = torch.rand(N, generator=g) + 0.5
    tiling = launch_config.elementwise_tiling(N, D, reduce_rows=True)
    if reduce_programs == 1:
        assert tiling.row_programs == 1 and tiling.rows_per_program > tiling.block_rows
    out_k, grads_k = _grads(monkeypatch, "triton", fastvae.gaussian_log_likelihood, [mean, logvar, x], weight)
    out_r, grads_r = _grads(monkeypatch, "torch", fastvae.gaussian_log_likelihood, [mean, logvar, x], weight)
    torch.testing.assert_close(out_k, out_r, **VALUE)
    for a, b in zip(grads_k, grads_r):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **GRAD[dtype])


@pytest.mark.parametrize("fill_programs", [1, 10_000])
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_likelihood_small_and_large_tiles(monkeypatch, fill_programs, likelihood):
    """FILL_PROGRAMS = 1: the large-N tiles (2048-element backward tiles, 2-row forward blocks);
    10 000: the smallest (512-element tiles, one row per forward program)."""
    monkeypatch.setattr(launch_config, "FILL_PROGRAMS", fill_programs)
    N, D = 9, 260
    g = torch.Generator().manual_seed(1)
    out = (2.0 * torch.randn(N, D, generator=g)).requires_grad_()
    x = torch.rand(N, D, generator=g).requires_grad_()
    weight = torch.rand(N, generator=g) + 0.5
    if likelihood == "gaussian":
        fn, inputs = fastvae.gaussian_log_likelihood, [out, (0.3 * torch.randn(N, D, generator=g)).requires_grad_(), x]
    else:
        fn, inputs = getattr(fastvae, f"{likelihood}_log_likelihood"), [out, x]
    out_k, grads_k = _grads(monkeypatch, "triton", fn, inputs, weight)
    out_r, grads_r = _grads(monkeypatch, "torch", fn, inputs, weight)
    torch.testing.assert_close(out_k, out_r, **VALUE)
    for a, b in zip(grads_k, grads_r):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("fill_programs", [1, 10_000])
@pytest.mark.parametrize("N, n_cols, layout", [(120, 20, "contiguous"), (120, 20, "chunk"), (120, 7, "contiguous"),
                                               (12, 200, "chunk")])
def test_latent_tiles_and_vector_layouts(monkeypatch, backend, fill_programs, N, n_cols, layout):
    """FILL_PROGRAMS = 1: 8-warp programs of 256 quads (Z = 20: 51 rows each; Z = 200: 5, so
    N = 12 ends in a partial program);
    10 000: one-warp programs. Z % 4 == 0 with row strides % 4 == 0 (also mu/logvar as chunks
    of one (N, 2Z) tensor) takes the vector path (ROW_UNIT = 4); Z = 7 the scalar one."""
    backend("triton")
    monkeypatch.setattr(launch_config, "FILL_PROGRAMS", fill_programs)
    S = 2
    g = torch.Generator().manual_seed(2)
    if layout == "chunk":
        mu, logvar = torch.randn(N, 2 * n_cols, generator=g).chunk(2, dim=-1)
    else:
        mu, logvar = torch.randn(N, n_cols, generator=g), torch.randn(N, n_cols, generator=g)
    mu, logvar = mu.detach().requires_grad_(), logvar.detach().requires_grad_()
    seed = torch.tensor([5])
    z, kl = _latent_head(mu, logvar, None, seed, 3, S, True)
    eps = reference.latent_noise_ref(seed, N, n_cols, S, first_row=3)
    std = torch.exp(0.5 * logvar.detach())
    zd = mu.detach() + std * eps
    torch.testing.assert_close(z, zd, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(kl, 0.5 * (zd**2 - eps**2 - logvar.detach()).sum(-1), rtol=2e-6, atol=5e-5)
    gz = torch.randn(S, N, 2 * n_cols, generator=g)[..., ::2]  # a strided upstream gradient
    gkl = torch.rand(S, N, generator=g)
    ((z * gz).sum() + (kl * gkl).sum()).backward()
    dmu = (gz + gkl[..., None] * zd).sum(0)
    dlv = (0.5 * std * eps * gz + gkl[..., None] * (0.5 * std * eps * zd - 0.5)).sum(0)
    torch.testing.assert_close(mu.grad, dmu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar.grad, dlv, rtol=1e-5, atol=1e-5)


def test_tilings_fill_the_gpu_at_small_batch():
    """The launchers' grids at the paper's batch (N = 100/128): many programs, few idle lanes."""
    forward = launch_config.latent_forward_tiling(128, 20)
    assert forward.grid(128)[0] >= 20 and forward.rows * 5 >= 0.9 * forward.quads  # >= 90 % of quads busy
    backward = launch_config.latent_backward_tiling(128, 20)
    assert backward.grid(128, 20)[0] == 128 * 5 // 32
    grid = launch_config.elementwise_tiling(100, 784).grid(784)
    assert grid[0] * grid[1] >= 132  # more programs than an H100 has SMs (the row-only grid had 50)
    assert launch_config.row_tiling(784, n_rows=100).grid(100)[0] == 100
