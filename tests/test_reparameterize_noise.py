"""The noise of ``reparameterize``: distribution, determinism, seeds, explicit eps.

Statistical bounds are derived from the sample size n: for standard-normal draws the sample
mean has standard error 1/sqrt(n), the sample variance sqrt(2/(n-1)), a sample correlation of
independent draws 1/sqrt(n); each is checked at 5 standard errors (a false alarm ~ 6e-7 per
check). The seeds are fixed, so the tests are deterministic.

The Triton kernels draw Philox4x32-10 followed by Box-Muller on both of its uniform pairs, four
normals per Philox call: eps at row r, column c is output c % 4 of the counter
(first_row + r) * ceil(Z/4) + c // 4. ``reference.latent_noise_ref`` / ``philox_randn_ref`` (the
torch path on CUDA) are the same stream in pure torch ops. Both are checked against an
independent NumPy Philox4x32-10, itself checked against the Random123 known-answer vectors.
The torch path on the CPU draws its own cheap stream (a seeded ``torch.randn`` per block of 64
rows), checked here against that definition: row r depends on (seed, r) only, on both paths.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import fastvae
from _oracles import BACKENDS


def _recovered_eps(z, mu, logvar):
    return ((z.double() - mu.double()) * torch.exp(-0.5 * logvar.double())).flatten()


def _check_standard_normal(eps: torch.Tensor, rows: int, cols: int) -> None:
    n = eps.numel()
    e = eps.numpy()
    mean, var = e.mean(), e.var(ddof=1)
    assert abs(mean) < 5.0 / math.sqrt(n), mean
    assert abs(var - 1.0) < 5.0 * math.sqrt(2.0 / (n - 1)), var
    ks = stats.kstest(e, "norm")
    assert ks.pvalue > 1e-4, ks
    grid = e.reshape(rows, cols)
    # neighbours along a row, and the same column in neighbouring rows: uncorrelated
    along = np.corrcoef(grid[:, :-1].ravel(), grid[:, 1:].ravel())[0, 1]
    across = np.corrcoef(grid[:-1].ravel(), grid[1:].ravel())[0, 1]
    assert abs(along) < 5.0 / math.sqrt(grid[:, 1:].size), along
    assert abs(across) < 5.0 / math.sqrt(grid[1:].size), across
    # no repeated draws (a broken offset would hand two elements the same counter)
    assert np.unique(e).size == n


def test_torch_path_noise_is_standard_normal(backend):
    backend("torch")
    rows, cols = 2000, 100  # 200k draws
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(rows, cols, generator=g), torch.randn(rows, cols, generator=g)
    z, _ = fastvae.reparameterize(mu, logvar, seed=1234)
    _check_standard_normal(_recovered_eps(z, mu, logvar), rows, cols)


@pytest.mark.interpreter
def test_triton_path_noise_is_standard_normal(backend):
    backend("triton")
    rows, cols = 1024, 64  # 65k draws: about 0.5 s under the interpreter
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(rows, cols, generator=g), torch.randn(rows, cols, generator=g)
    z, _ = fastvae.reparameterize(mu, logvar, seed=1234)
    _check_standard_normal(_recovered_eps(z, mu, logvar), rows, cols)


# ---- both paths draw exactly Philox4x32-10 + Box-Muller ----

_M32 = np.uint64(0xFFFFFFFF)


def _philox4x32_10(counters, key):
    """Philox4x32 with 10 rounds (Salmon et al. 2011), vectorised over counters (uint64 arrays)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _M32 for c in counters)
    k0, k1 = np.uint64(key[0]) & _M32, np.uint64(key[1]) & _M32
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _M32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _M32
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & _M32, (k1 + np.uint64(0xBB67AE85)) & _M32
    return c0, c1, c2, c3


def test_numpy_philox_matches_random123_known_answers():
    kat = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0], [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for ctr, key, expected in kat:
        assert [int(v[0]) for v in _philox4x32_10([np.array([c]) for c in ctr], key)] == expected


def _kernel_noise(seed: int, draws: np.ndarray, n_cols: int) -> np.ndarray:
    """The noise of draw rows ``draws`` (1-D), (len(draws), n_cols): column c of draw row d is
    output c % 4 of Philox((k low, k high, 0, 0), (seed low, seed high)) at k = d * ceil(Z/4) + c // 4,
    each output mapped to [0, 1); Box-Muller turns (u0, u1) into columns 4q, 4q+1 (cos, sin) and
    (u2, u3) into 4q+2, 4q+3."""
    quads = -(-n_cols // 4)
    k = (draws.astype(np.uint64)[:, None] * np.uint64(quads) + np.arange(quads, dtype=np.uint64)[None, :]).ravel()
    s = seed % 2**64
    zero = np.zeros_like(k)
    outputs = _philox4x32_10([k & _M32, k >> np.uint64(32), zero, zero], [s & 0xFFFFFFFF, s >> 32])

    def uniform(i):
        x = i.astype(np.uint32).view(np.int32).astype(np.int64)
        return np.where(x < 0, ~x, x) * 4.6566127342e-10

    u0, u1, u2, u3 = (uniform(o) for o in outputs)
    r01, r23 = np.sqrt(-2.0 * np.log(np.maximum(1.0e-7, u0))), np.sqrt(-2.0 * np.log(np.maximum(1.0e-7, u2)))
    normals = np.stack([r01 * np.cos(2 * np.pi * u1), r01 * np.sin(2 * np.pi * u1),
                        r23 * np.cos(2 * np.pi * u3), r23 * np.sin(2 * np.pi * u3)], axis=-1)
    return normals.reshape(len(draws), 4 * quads)[:, :n_cols]


@pytest.mark.interpreter
@pytest.mark.parametrize("seed", [0, 1234, 2**40 + 17, 2**63 - 1, -5])
@pytest.mark.parametrize("Z", [7, 8, 1])
def test_kernel_draws_are_philox_at_row_major_offsets(backend, seed, Z):
    """The kernel's Philox + Box-Muller: row r is the stream's row first_row + r."""
    backend("triton")
    S, B = 2, 5
    z, _ = fastvae.reparameterize(torch.zeros(S, B, Z), torch.zeros(S, B, Z), seed=seed)
    expected = _kernel_noise(seed, np.arange(S * B), Z).reshape(S, B, Z)
    np.testing.assert_allclose(z.double().numpy(), expected, rtol=0, atol=2e-6)  # float32 transcendental rounding
    # first_row shifts the rows along the same stream
    z_tail, _ = fastvae.reparameterize(torch.zeros(3, Z), torch.zeros(3, Z), seed=seed, first_row=4)
    np.testing.assert_allclose(z_tail.double().numpy(), _kernel_noise(seed, np.arange(4, 7), Z), rtol=0, atol=2e-6)


@pytest.mark.parametrize("seed", [3, 2**63 - 1])
def test_reference_stream_positions(seed):
    """reference.philox_randn_ref at stream position p is output p % 4 of counter p // 4, and
    latent_noise_ref's (S, N, Z) draws sit at ((first_row + r) * S + s) * Z + c for Z % 4 == 0."""
    from fastvae import reference

    positions = np.arange(3, 61)
    stream = reference.philox_randn_ref(torch.tensor([seed]), torch.from_numpy(positions)).double().numpy()
    expected = _kernel_noise(seed, np.arange(16), 4).ravel()[3:61]
    np.testing.assert_allclose(stream, expected, rtol=0, atol=2e-6)
    S, N, Z, first_row = 3, 2, 8, 5
    draws = reference.latent_noise_ref(torch.tensor([seed]), N, Z, samples=S, first_row=first_row).double().numpy()
    for s in range(S):
        for r in range(N):
            start = ((first_row + r) * S + s) * Z
            position = torch.arange(start, start + Z)
            np.testing.assert_array_equal(draws[s, r], reference.philox_randn_ref(torch.tensor([seed]), position).double().numpy())


@pytest.mark.parametrize("seed", [0, 1234, 2**40 + 17, 2**63 - 1, -5])
@pytest.mark.parametrize("Z", [7, 8])
def test_reference_noise_is_the_kernel_stream(seed, Z):
    """``reference.latent_noise_ref`` (the torch path's draw on CUDA) is the kernels' stream."""
    from fastvae import reference

    eps = reference.latent_noise_ref(torch.tensor([seed]), 50, Z, first_row=3)[0]
    np.testing.assert_allclose(eps.double().numpy(), _kernel_noise(seed, np.arange(3, 53), Z), rtol=0, atol=2e-6)


@pytest.mark.parametrize("seed", [0, 2**63 - 1, -5])
def test_cpu_torch_path_draws_seeded_randn_blocks(backend, seed):
    """On the CPU the torch path's eps of row r is row r % 64 of torch.randn((64, Z)) from a
    generator seeded with derive_seed(seed, "reparameterize", r // 64); rows cross blocks."""
    from fastvae.data.seeding import derive_seed

    backend("torch")
    Z, first, rows = 5, 60, 80  # rows 60..139: blocks 0, 1 and 2
    blocks = [torch.randn((64, Z), generator=torch.Generator().manual_seed(derive_seed(seed, "reparameterize", b)))
              for b in range(3)]
    expected = torch.cat(blocks)[first:first + rows]
    z, _ = fastvae.reparameterize(torch.zeros(rows, Z), torch.zeros(rows, Z), seed=seed, first_row=first)
    assert torch.equal(z, expected)
    # a shard draws exactly the rows the whole batch draws
    whole, _ = fastvae.reparameterize(torch.zeros(200, Z), torch.zeros(200, Z), seed=seed)
    assert torch.equal(whole[first:first + rows], z)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_kernels_draw_the_reference_philox_noise(monkeypatch, dtype):
    """The same seed gives the same z on the Triton path and through ``reference.latent_noise_ref``
    (to float32 rounding of log / sqrt / sin / cos)."""
    from fastvae import reference

    mu = torch.randn(7, 13, generator=torch.Generator().manual_seed(1)).to(dtype)
    logvar = torch.randn(7, 13, generator=torch.Generator().manual_seed(2)).to(dtype)
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    tol = {torch.float64: 2e-6, torch.float32: 2e-6, torch.float16: 2e-3}[dtype]
    for seed, first in ((77, 0), (78, 3)):
        z, _ = fastvae.reparameterize(mu, logvar, seed=seed, first_row=first)
        eps = reference.latent_noise_ref(torch.tensor([seed]), 7, 13, first_row=first)[0]
        expected, _ = reference.reparameterize_ref(mu, logvar, eps.to(dtype))
        torch.testing.assert_close(z, expected, rtol=tol, atol=tol)


# ---- determinism and seeds ----


def _inputs(shape=(6, 5), dtype=torch.float32):
    g = torch.Generator().manual_seed(42)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_same_seed_same_z_different_seed_different_z(backend, backend_name):
    backend(backend_name)
    mu, logvar = _inputs()
    z1, kl1 = fastvae.reparameterize(mu, logvar, seed=7)
    z2, kl2 = fastvae.reparameterize(mu, logvar, seed=7)
    assert torch.equal(z1, z2) and torch.equal(kl1, kl2)
    z3, _ = fastvae.reparameterize(mu, logvar, seed=8)
    assert not torch.isclose(z1, z3).any()  # every element moves
    e1, e3 = _recovered_eps(z1, mu, logvar), _recovered_eps(z3, mu, logvar)
    assert abs(np.corrcoef(e1.numpy(), e3.numpy())[0, 1]) < 0.6  # not a shifted copy (30 draws)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_seed_as_int64_tensor_equals_int_seed(backend, backend_name):
    backend(backend_name)
    mu, logvar = _inputs()
    z_int, _ = fastvae.reparameterize(mu, logvar, seed=2**33 + 5)
    for seed in (torch.tensor([2**33 + 5]), torch.tensor(2**33 + 5)):
        z_t, _ = fastvae.reparameterize(mu, logvar, seed=seed)
        assert torch.equal(z_int, z_t)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_manual_seed_makes_seed_none_reproducible(backend, backend_name):
    backend(backend_name)
    mu, logvar = _inputs()
    torch.manual_seed(3)
    a1, _ = fastvae.reparameterize(mu, logvar)
    a2, _ = fastvae.reparameterize(mu, logvar)
    torch.manual_seed(3)
    b1, _ = fastvae.reparameterize(mu, logvar)
    b2, _ = fastvae.reparameterize(mu, logvar)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.isclose(a1, a2).any()  # successive calls draw fresh noise
    torch.manual_seed(4)
    c1, _ = fastvae.reparameterize(mu, logvar)
    assert not torch.isclose(a1, c1).any()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_seeded_and_eps_calls_leave_the_global_generator_alone(backend, backend_name):
    backend(backend_name)
    mu, logvar = _inputs()
    state = torch.get_rng_state()
    fastvae.reparameterize(mu, logvar, seed=1)
    fastvae.reparameterize(mu, logvar, eps=torch.ones_like(mu))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_eps_is_used_exactly(backend, backend_name, dtype):
    backend(backend_name)
    mu, logvar = _inputs((4, 9), dtype)
    eps = torch.randn(4, 9, generator=torch.Generator().manual_seed(5)).to(dtype)
    z, _ = fastvae.reparameterize(mu, logvar, eps=eps)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    expected = (mu.to(acc) + torch.exp(0.5 * logvar.to(acc)) * eps.to(acc)).to(dtype)
    # computed in the accumulation dtype and rounded once: equal up to a last-bit exp difference
    tol = {torch.float64: 1e-15, torch.float32: 1e-6, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(z, expected, rtol=tol, atol=tol)
    # zero noise gives z = mu exactly
    z0, _ = fastvae.reparameterize(mu, logvar, eps=torch.zeros_like(mu))
    assert torch.equal(z0, mu)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_noise_depends_on_flat_row_not_on_layout(backend, backend_name):
    """(S, B, Z) inputs draw the noise of their (S*B, Z) flattening; a non-contiguous mu the
    same noise as its contiguous copy; first_row picks up the stream where a shard starts."""
    backend(backend_name)
    mu, logvar = _inputs((6, 5))
    z2d, _ = fastvae.reparameterize(mu, logvar, seed=9)
    z3d, _ = fastvae.reparameterize(mu.reshape(2, 3, 5), logvar.reshape(2, 3, 5), seed=9)
    assert torch.equal(z3d.reshape(6, 5), z2d)
    mu_t = mu.t().contiguous().t()
    z_nc, _ = fastvae.reparameterize(mu_t, logvar, seed=9)
    assert torch.equal(z_nc, z2d)
    z_shard, _ = fastvae.reparameterize(mu[4:], logvar[4:], seed=9, first_row=4)
    assert torch.equal(z_shard, z2d[4:])
