"""The latent head's S-draw and sampled-KL modes (``fastvae.latent._latent_head``), the kernel
under Triton's interpreter, against float64 definitions written with torch.distributions.

z[s, r] = mu[r] + std[r] * eps[s, r]; the analytic KL is KL(N(mu, std^2) || N(0, I)) per row,
the sampled KL log q(z_s|x) - log p(z_s) per draw (Normal(mu, std).log_prob(z) - Normal(0, 1).log_prob(z)).
Gradients are checked against autograd through those float64 definitions with the kernel's own
noise (``reference.latent_noise_ref``, itself checked against an independent NumPy Philox in
test_reparameterize_noise.py), and by ``gradcheck`` on the op in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from fastvae import reference
from fastvae.latent import _latent_head

pytestmark = pytest.mark.interpreter

# Kernel (float32 accumulation) vs the float64 definition: z elementwise, rounded once to the
# dtype; per-row sums over Z terms of size ~1-10 (rounded at 2^-24 each, Z <= 4100 here);
# gradients summed over S draws then rounded to the dtype (fp16 2^-11, bf16 2^-8 relative).
# The drawn noise is float32 in every dtype, and the interpreter's float32 log/sin/cos (NumPy)
# differ from torch's by an ulp or two: |delta eps| < 2e-6, times std < 3 here, bounds the
# float64 seeded comparison ("seeded"); explicit float64 noise is compared at float64 rounding.
TOLERANCES = {
    torch.float64: dict(z=(1e-12, 1e-12), kl=(1e-12, 1e-10), grad=(1e-12, 1e-12),
                        seeded=dict(z=(0, 6e-6), kl=(0, 2e-4), grad=(0, 2e-4))),
    torch.float32: dict(z=(2e-6, 2e-6), kl=(2e-6, 5e-4), grad=(2e-5, 2e-5)),
    torch.float16: dict(z=(1e-3, 1e-3), kl=(2e-6, 5e-4), grad=(2e-3, 2e-3)),
    torch.bfloat16: dict(z=(8e-3, 8e-3), kl=(2e-6, 5e-4), grad=(1.6e-2, 1.6e-2)),
}
SEED = torch.tensor([20240611])


@pytest.fixture(autouse=True)
def _triton(backend):
    backend("triton")


def _inputs(n_rows, n_cols, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n_rows, n_cols, generator=g).to(dtype)
    logvar = (0.7 * torch.randn(n_rows, n_cols, generator=g)).to(dtype)
    return mu, logvar


def _definition(mu, logvar, eps, sampled_kl):
    """float64 z (S, N, Z) and kl ((S, N) or (N,)) from torch.distributions."""
    mu, logvar, eps = mu.double(), logvar.double(), eps.double()
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.loc + q.scale * eps
    if sampled_kl:
        p = Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
        return z, (q.log_prob(z) - p.log_prob(z)).sum(-1)
    return z, torch.distributions.kl_divergence(q, Normal(0.0, 1.0)).sum(-1)


def _close(actual, expected, tolerance, what):
    rtol, atol = tolerance
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=what)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("sampled_kl", [False, True], ids=["analytic", "sampled"])
@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("n_rows, n_cols", [(5, 20), (3, 7), (37, 1), (2, 200)])
def test_values_and_gradients(n_rows, n_cols, samples, sampled_kl, dtype):
    mu, logvar = _inputs(n_rows, n_cols, dtype)
    mu_k, lv_k = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    z, kl = _latent_head(mu_k, lv_k, None, SEED, 11, samples, sampled_kl)
    assert z.shape == (samples, n_rows, n_cols) and z.dtype == dtype and z.is_contiguous()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert kl.shape == ((samples, n_rows) if sampled_kl else (n_rows,)) and kl.dtype == acc

    eps = reference.latent_noise_ref(SEED, n_rows, n_cols, samples, first_row=11)
    mu_d, lv_d = mu.double().requires_grad_(), logvar.double().requires_grad_()
    z_d, kl_d = _definition(mu_d, lv_d, eps, sampled_kl)
    tol = TOLERANCES[dtype].get("seeded", TOLERANCES[dtype])
    _close(z, z_d, tol["z"], "z")
    _close(kl, kl_d, tol["kl"], "kl")

    g = torch.Generator().manual_seed(1)
    gz, gkl = torch.randn(z.shape, generator=g), 0.5 + torch.rand(kl.shape, generator=g)
    (1.7 * ((z.float() * gz).sum() + (kl.float() * gkl).sum())).backward()
    (1.7 * ((z_d * gz.double()).sum() + (kl_d * gkl.double()).sum())).backward()
    assert mu_k.grad.dtype == dtype and lv_k.grad.dtype == dtype
    _close(mu_k.grad, mu_d.grad, tol["grad"], "dmu")
    _close(lv_k.grad, lv_d.grad, tol["grad"], "dlogvar")


@pytest.mark.parametrize("sampled_kl", [False, True], ids=["analytic", "sampled"])
def test_gradcheck(sampled_kl):
    """Seeded noise is a fixed function of (seed, position): z and kl are smooth in mu, logvar."""
    mu, logvar = _inputs(3, 5, torch.float64)
    mu.requires_grad_(), logvar.requires_grad_()

    def head(m, lv):
        return _latent_head(m, lv, None, SEED, 2, 2, sampled_kl)

    assert torch.autograd.gradcheck(head, (mu, logvar), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("sampled_kl", [False, True], ids=["analytic", "sampled"])
def test_only_one_output_has_a_gradient(sampled_kl):
    """Backward with only z, or only kl, used downstream (the other upstream grad is None)."""
    mu, logvar = _inputs(4, 6, torch.float64)
    eps = reference.latent_noise_ref(SEED, 4, 6, 2)
    for pick in (0, 1):
        mu_k, lv_k = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        out = _latent_head(mu_k, lv_k, None, SEED, 0, 2, sampled_kl)[pick]
        (out * 1.3).sum().backward()
        mu_d, lv_d = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        (_definition(mu_d, lv_d, eps, sampled_kl)[pick] * 1.3).sum().backward()
        seeded = TOLERANCES[torch.float64]["seeded"]["grad"]
        _close(mu_k.grad, mu_d.grad, seeded, f"dmu, output {pick}")
        _close(lv_k.grad, lv_d.grad, seeded, f"dlogvar, output {pick}")


@pytest.mark.parametrize("sampled_kl", [False, True], ids=["analytic", "sampled"])
def test_explicit_eps_strided_with_gradient(sampled_kl):
    """eps (S, N, Z), non-contiguous and requiring grad, is used exactly; dL/deps flows."""
    S, N, Z = 2, 3, 5
    mu, logvar = _inputs(N, Z, torch.float64)
    mu.requires_grad_(), logvar.requires_grad_()
    base = torch.randn(S, Z, 2 * N, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = base[..., ::2].transpose(1, 2).detach().requires_grad_()  # (S, N, Z), strided
    assert not eps.is_contiguous()
    z, kl = _latent_head(mu, logvar, eps, torch.zeros(0, dtype=torch.int64), 0, S, sampled_kl)
    leaves = [t.detach().clone().requires_grad_() for t in (mu, logvar, eps)]
    z_d, kl_d = _definition(*leaves, sampled_kl)
    _close(z, z_d, TOLERANCES[torch.float64]["z"], "z")
    _close(kl, kl_d, TOLERANCES[torch.float64]["kl"], "kl")
    g = torch.Generator().manual_seed(4)
    gz, gkl = torch.randn(z.shape, generator=g, dtype=torch.float64), torch.rand(kl.shape, generator=g, dtype=torch.float64)
    ((z * gz).sum() + (kl * gkl).sum()).backward()
    ((z_d * gz).sum() + (kl_d * gkl).sum()).backward()
    for kernel_leaf, leaf, name in zip((mu, logvar, eps), leaves, ("mu", "logvar", "eps")):
        _close(kernel_leaf.grad, leaf.grad, TOLERANCES[torch.float64]["grad"], name)


def test_first_row_shards_line_up_with_the_global_batch():
    """Rows [4, 9) of a 9-row batch drawn alone with first_row=4 get the same S draws."""
    mu, logvar = _inputs(9, 6, torch.float32)
    z_all, kl_all = _latent_head(mu, logvar, None, SEED, 0, 3, True)
    z_shard, kl_shard = _latent_head(mu[4:], logvar[4:], None, SEED, 4, 3, True)
    assert torch.equal(z_shard, z_all[:, 4:]) and torch.equal(kl_shard, kl_all[:, 4:])


def test_one_draw_is_the_plain_head():
    """samples=1 draws the noise reparameterize draws for the same seed."""
    import fastvae

    mu, logvar = _inputs(5, 8, torch.float32)
    z, kl = _latent_head(mu, logvar, None, SEED, 0, 1, False)
    z_api, kl_api = fastvae.reparameterize(mu, logvar, seed=SEED)
    assert torch.equal(z[0], z_api) and torch.equal(kl, kl_api)


def test_chunked_rows():
    """Z > 4096: one row per program, walked in chunks, S draws re-read mu/logvar per draw."""
    S, N, Z = 2, 2, 4100
    mu, logvar = _inputs(N, Z, torch.float32)
    for sampled_kl in (False, True):
        mu_k, lv_k = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        z, kl = _latent_head(mu_k, lv_k, None, SEED, 1, S, sampled_kl)
        eps = reference.latent_noise_ref(SEED, N, Z, S, first_row=1)
        z_d, kl_d = _definition(mu, logvar, eps, sampled_kl)
        _close(z, z_d, TOLERANCES[torch.float32]["z"], "z")
        _close(kl, kl_d, (2e-6, 5e-3), "kl")  # 4100 float32 terms of size ~1-10
        (z.sum() + kl.sum()).backward()
        assert torch.isfinite(mu_k.grad).all() and torch.isfinite(lv_k.grad).all()


def test_sampled_kl_averages_to_the_analytic_kl():
    """E_q[log q(z) - log p(z)] = KL(q || p). Summed over N = 64 independent rows, the mean over
    S = 100 draws is within 5 standard errors of the summed analytic KL (standard error from
    the rows' sample variances: sqrt(sum_r var_r / S); a false alarm ~6e-7)."""
    S, N = 100, 64
    mu, logvar = _inputs(N, 4, torch.float32)
    _, kl_sampled = _latent_head(mu, logvar, None, SEED, 0, S, True)
    _, kl_analytic = _latent_head(mu, logvar, None, SEED, 0, 1, False)
    draws = kl_sampled.double()
    error = draws.mean(0).sum() - kl_analytic.double().sum()
    se = (draws.var(0).sum() / S).sqrt()
    assert error.abs() < 5 * se, (error, se)


def test_bad_arguments():
    mu, logvar = _inputs(3, 4, torch.float32)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        _latent_head(mu, logvar, None, SEED, 0, 0, False)
    with pytest.raises(ValueError, match=r"eps must have shape \(samples, N, Z\)"):
        _latent_head(mu, logvar, torch.zeros(3, 4), torch.zeros(0, dtype=torch.int64), 0, 1, False)

