"""Latent head of the ELBO: S reparameterised draws and the KL, one pass over memory.

Forward, per row r of (N, Z) inputs and draw s < S (std = exp(lv / 2)):
    eps[s, r, c] = normal(seed, draw = (first_row + r) * S + s, column c)   (or a given eps)
    z[s, r, c]   = mu[r, c] + std[r, c] * eps[s, r, c]
    analytic KL: kl[r]    = 0.5 * sum_c (mu^2 + std^2 - 1 - lv)
    sampled KL:  kl[s, r] = log q(z_s|x) - log p(z_s) = 0.5 * sum_c (z^2 - eps^2 - lv)   (log 2pi cancels)
Backward, with upstream gz (S, N, Z) and gkl ((N,) analytic, (S, N) sampled), summed over s:
    dmu = sum_s gz_s + gkl * mu                                  [analytic]
        + sum_s gkl_s * z_s                                      [sampled]
    dlv = sum_s 0.5 * std * eps_s * gz_s + 0.5 * gkl * (std^2 - 1)                [analytic]
        + sum_s gkl_s * (0.5 * std * eps_s * z_s - 0.5)                           [sampled]

Noise: one Philox4x32-10 call (Salmon et al. 2011; key = the seed's two 32-bit words, counter
= (k low, k high, 0, 0)) gives four uint32, hence four uniforms u0..u3 in [0, 1) and, by
Box-Muller on both pairs with both branches, four normals:
    n0, n1 = R(u0) cos(2 pi u1), R(u0) sin(2 pi u1);  n2, n3 = R(u2) cos(2 pi u3), R(u2) sin(2 pi u3)
with R(u) = sqrt(-2 log max(u, 1e-7)). They are the noise of one *quad*, four consecutive
columns 4q..4q+3 of one draw row, at counter k = draw * ceil(Z / 4) + q. Equivalently, the noise
at stream position p is output p % 4 of counter p // 4, with rows padded to a multiple of 4
columns: p = draw * 4 * ceil(Z / 4) + c, which is ((first_row + r) * S + s) * Z + c whenever
Z % 4 == 0. ``fastvae.reference.philox_randn_ref`` draws exactly this stream in torch.

Why this layout (sm_90 SASS and ptxas registers from ``python -m bench.kernel_compile``; the
previous kernel is the tl.randn version with a 64 x 32 tile, 8 warps):
- tl.randn used two of Philox's four outputs and one Box-Muller branch per normal: a Philox
  (10 rounds, ~70 instructions), a log, a sqrt and a cos per element, ~150 instructions per
  element with the addressing. Here one Philox, two log/sqrt and four sin/cos (accurate, not
  the approximate MUFU.SIN: the torch path must draw the same noise) serve four elements:
  the forward's SASS is 832 instructions for one quad per thread, ~340 of them the sin/cos
  large-argument paths that 2 pi u < 2 pi never takes: ~120 per element with the addressing,
  the loads and stores, the KL and its scan (~60 per element per further draw).
- A thread owns whole quads: its four columns are consecutive, so when Z and the row strides
  are multiples of 4 (ROW_UNIT = 4: Z = 20, 200, and mu/logvar as chunks of one (N, 2Z) output)
  a quad is one 16 B load or store in float32 (LDG.E.128; 8 B in half precision).
- Small Z (20, 200) wasted lanes in a power-of-two tile of columns (20 of 32 columns used, 38 %
  idle) and left too few programs (N/64: 2 for N = 128). The forward now lays a program's quads
  out flat: QUADS (a power of two >= ceil(Z/4)) quads hold ROWS = QUADS // ceil(Z/4) whole
  rows, so at most ceil(Z/4) - 1 quads idle (Z = 20: 30 of 32, 255 of 256 busy; Z = 200: 50 of
  64, 250 of 256). Whole rows per program keep each row's KL sum inside the program (a
  segmented scan over the program's quads: no atomics, no second pass). The launcher takes
  the smallest program (one warp) while larger ones would leave fewer than two per SM of an
  H100 (N = 128, Z = 20: 22 programs of 30 busy threads; Z = 200: 128 programs), and grows it
  to 8 warps for large N.
- Registers: 166 (forward) and 214 (backward) per thread before, 230 for the bf16 backward, and
  the bf16 backward at Z = 200 spilled; now 43 and 44 (float32), no spills, no shared memory.
- mu, lv and std stay in registers across the S draws: one read of mu/logvar for S draws.
  Rows longer than 4 * MAX_QUADS_PER_PROGRAM columns are walked in chunks (CHUNKED),
  re-reading mu/lv per draw from cache.
- Backward: recompute eps (Philox) rather than read z. Per element, float32: recompute reads
  mu, lv, gz and writes dmu, dlv = 20 B and ~130 instructions (the backward's 856 per quad,
  less the sin/cos slow paths); reading z instead is 24 B (+20 %) and ~40 instructions. On an
  H100 (3.35 TB/s; 132 SMs x 128 lanes x 1.98 GHz = 33 T lane-instructions/s) 20 B take
  6.0 ps and 130 instructions 3.9 ps, so the kernel stays memory bound and the fewer bytes
  win (6.0 vs 7.2 ps). It is also exact: (z - mu) from a stored z loses the digits of std * eps that z's
  rounding removed (in bf16 z, all of them when std << |mu|), and for S draws it would read
  S x N x Z of z rather than N x Z of mu/lv.
- The backward has no reduction over columns, so its grid is flat over all N * ceil(Z/4) quads
  (rows may straddle programs): no idle lanes, and as many programs as there are warps of
  work at small N (N = 128, Z = 20: 640 quads, 20 one-warp programs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import launch
from .launch_config import accumulation_dtype, latent_backward_tiling, latent_forward_tiling

TWO_PI = tl.constexpr(6.283185307179586)
QUAD = tl.constexpr(4)


@triton.jit
def _uniform(bits):
    # uint32 -> float32 in [0, 1), as Triton's uint_to_uniform_float: the bits as int32, folded to
    # >= 0 (x < 0 -> -x - 1), times 2^-31 rounded down so the largest value stays below 1
    x = bits.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, -x - 1, x)
    return x.to(tl.float32) * 4.6566127342e-10


@triton.jit
def _normal_quads(seed, counter):
    # [Q] int64 counters -> [Q, 4] float32 standard normals, column j = Philox output j's normal
    lo = counter.to(tl.uint32)
    hi = (counter >> 32).to(tl.uint32)
    zero = lo * 0
    b0, b1, b2, b3 = tl.philox(seed, lo, hi, zero, zero)
    r01 = tl.sqrt(-2.0 * tl.log(tl.maximum(_uniform(b0), 1.0e-7)))
    r23 = tl.sqrt(-2.0 * tl.log(tl.maximum(_uniform(b2), 1.0e-7)))
    t1 = TWO_PI * _uniform(b1)
    t3 = TWO_PI * _uniform(b3)
    pairs = tl.join(tl.join(r01 * tl.cos(t1), r23 * tl.cos(t3)), tl.join(r01 * tl.sin(t1), r23 * tl.sin(t3)))
    # pairs[q, i, j] = n_{2i+j}: row-major reshape puts n0..n3 in columns 0..3
    return tl.reshape(pairs, (counter.shape[0], 4))


@triton.jit
def _segment_add(value_a, key_a, value_b, key_b):
    # combine of a segmented inclusive scan: keys are sorted, a key change starts a new segment
    return tl.where(key_a == key_b, value_a + value_b, value_b), key_b


@triton.jit
def _row_sums(terms, local_row):
    # [Q] per-quad terms of consecutive rows -> the running sum of each row (its total at the row's last quad)
    sums, _ = tl.associative_scan((terms, local_row), 0, _segment_add)
    return sums


@triton.jit
def _row_offsets(start, rows, row_stride, ROW_UNIT: tl.constexpr):
    # [Q, 1] int64 element offsets of rows: start and row_stride are in units of ROW_UNIT
    # elements, so the compiler knows the offsets are multiples of ROW_UNIT (a tl.multiple_of
    # hint on them does not survive canonicalisation)
    return (ROW_UNIT * (start + rows * row_stride))[:, None]


@triton.jit
def _quad_mask(valid, cols, n_cols, ROW_UNIT: tl.constexpr):
    # [Q, 4] mask of the elements to touch; with Z % 4 == 0 a valid quad is whole, and a mask
    # constant over each quad lets the compiler keep the quad's loads and stores one vector
    if ROW_UNIT == QUAD:
        return tl.broadcast_to(valid[:, None], cols.shape)
    return valid[:, None] & (cols < n_cols)


@triton.jit
def _load_quads(ptr, start, row_stride, col_stride, rows, cols, mask, dtype, ROW_UNIT: tl.constexpr):
    # [Q, 4] elements (start + rows[:, None] * row_stride + cols * col_stride) of a strided tensor, as ``dtype``
    offsets = _row_offsets(start, rows, row_stride, ROW_UNIT) + cols.to(tl.int64) * col_stride
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(dtype)


@triton.jit
def latent_head_forward_kernel(
    mu_ptr, mu_row_stride, mu_col_stride,  # (N, Z) encoder mean
    lv_ptr, lv_row_stride, lv_col_stride,  # (N, Z) encoder log-variance, mu's dtype
    eps_ptr, eps_sample_stride, eps_row_stride, eps_col_stride,  # (S, N, Z) explicit noise, read only if HAS_EPS
    seed_ptr,  # (1,) int64 Philox seed, read only if not HAS_EPS
    first_row,  # global index of row 0 in the seed's stream (data-parallel shards)
    z_ptr,  # (S, N, Z) contiguous output, mu's dtype
    kl_ptr,  # (S, N) if SAMPLED_KL else (N,): contiguous output in the accumulation dtype
    n_rows, n_cols, n_samples,
    HAS_EPS: tl.constexpr,
    SAMPLED_KL: tl.constexpr,
    ROWS: tl.constexpr,  # whole rows per program (1 if CHUNKED)
    QUADS: tl.constexpr,  # quads per program (a power of two), or per chunk if CHUNKED
    CHUNKED: tl.constexpr,  # rows longer than QUADS quads: one row per program, walked in chunks
    ROW_UNIT: tl.constexpr,  # row/sample strides are in units of this many elements: 4 (a quad is one
    # aligned vector for loads and stores) when Z and all those strides are multiples of 4, else 1
):
    acc_dtype = kl_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    quads_per_row = (n_cols + 3) // 4
    lane = tl.arange(0, 4)[None, :]
    f = tl.arange(0, QUADS)
    if not HAS_EPS:
        seed = tl.load(seed_ptr)
    if CHUNKED:
        row = pid + f * 0  # [QUADS] int64, all this program's row
        for s in range(n_samples):
            s64 = tl.cast(s, tl.int64)  # sample offsets (s x rows, s x sample stride) pass 2**31
            draw = (first_row + row) * n_samples + s
            kl = tl.zeros([QUADS], dtype=acc_dtype)
            for start in range(0, quads_per_row, QUADS):
                quad = start + f
                cols = 4 * quad[:, None] + lane
                mask = _quad_mask(quad < quads_per_row, cols, n_cols, ROW_UNIT)
                mu = _load_quads(mu_ptr, 0, mu_row_stride, mu_col_stride, row, cols, mask, acc_dtype, ROW_UNIT)
                lv = _load_quads(lv_ptr, 0, lv_row_stride, lv_col_stride, row, cols, mask, acc_dtype, ROW_UNIT)
                std = tl.exp(0.5 * lv)
                if HAS_EPS:
                    eps = _load_quads(eps_ptr, s64 * eps_sample_stride, eps_row_stride, eps_col_stride, row, cols, mask,
                                      acc_dtype, ROW_UNIT)
                else:
                    eps = _normal_quads(seed, draw * quads_per_row + quad).to(acc_dtype)
                z = mu + std * eps
                tl.store(z_ptr + _row_offsets(0, s64 * n_rows + row, n_cols // ROW_UNIT, ROW_UNIT) + cols, z.to(z_ptr.dtype.element_ty),
                         mask=mask)
                if SAMPLED_KL:
                    kl += tl.sum(tl.where(mask, z * z - eps * eps - lv, 0.0), axis=1)
                else:
                    kl += tl.sum(tl.where(mask & (s == 0), mu * mu + std * std - 1.0 - lv, 0.0), axis=1)
            if SAMPLED_KL:
                tl.store(kl_ptr + s64 * n_rows + pid, 0.5 * tl.sum(kl, axis=0))
            elif s == 0:
                tl.store(kl_ptr + pid, 0.5 * tl.sum(kl, axis=0))
    else:
        local_row = f // quads_per_row
        quad = f - local_row * quads_per_row
        row = pid * ROWS + local_row
        valid = (local_row < ROWS) & (row < n_rows)
        row_end = valid & (quad == quads_per_row - 1)  # where a row's scan holds its total
        cols = 4 * quad[:, None] + lane
        mask = _quad_mask(valid, cols, n_cols, ROW_UNIT)
        mu = _load_quads(mu_ptr, 0, mu_row_stride, mu_col_stride, row, cols, mask, acc_dtype, ROW_UNIT)
        lv = _load_quads(lv_ptr, 0, lv_row_stride, lv_col_stride, row, cols, mask, acc_dtype, ROW_UNIT)
        std = tl.exp(0.5 * lv)
        if not SAMPLED_KL:
            terms = tl.sum(tl.where(mask, mu * mu + std * std - 1.0 - lv, 0.0), axis=1)
            tl.store(kl_ptr + row, 0.5 * _row_sums(terms, local_row), mask=row_end)
        first_draw = (first_row + row) * n_samples
        for s in range(n_samples):
            s64 = tl.cast(s, tl.int64)  # sample offsets (s x rows, s x sample stride) pass 2**31
            if HAS_EPS:
                eps = _load_quads(eps_ptr, s64 * eps_sample_stride, eps_row_stride, eps_col_stride, row, cols, mask,
                                  acc_dtype, ROW_UNIT)
            else:
                eps = _normal_quads(seed, (first_draw + s) * quads_per_row + quad).to(acc_dtype)
            z = mu + std * eps
            tl.store(z_ptr + _row_offsets(0, s64 * n_rows + row, n_cols // ROW_UNIT, ROW_UNIT) + cols, z.to(z_ptr.dtype.element_ty),
                         mask=mask)
            if SAMPLED_KL:
                terms = tl.sum(tl.where(mask, z * z - eps * eps - lv, 0.0), axis=1)
                tl.store(kl_ptr + s64 * n_rows + row, 0.5 * _row_sums(terms, local_row), mask=row_end)


@triton.jit
def latent_head_backward_kernel(
    mu_ptr, mu_row_stride, mu_col_stride,  # (N, Z)
    lv_ptr, lv_row_stride, lv_col_stride,  # (N, Z)
    eps_ptr, eps_sample_stride, eps_row_stride, eps_col_stride,  # (S, N, Z), read only if HAS_EPS
    seed_ptr,  # (1,) int64, the forward's seed
    first_row,  # the forward's first row
    gz_ptr, gz_sample_stride, gz_row_stride, gz_col_stride,  # (S, N, Z) upstream grad of z, read only if HAS_GRAD_Z
    gkl_ptr, gkl_sample_stride, gkl_row_stride,  # (S, N) or (N,) upstream grad of kl, read only if HAS_GRAD_KL
    dmu_ptr, dlv_ptr,  # (N, Z) contiguous outputs, in mu's / logvar's dtype
    n_rows, n_cols, n_samples,
    HAS_EPS: tl.constexpr,
    HAS_GRAD_Z: tl.constexpr,
    HAS_GRAD_KL: tl.constexpr,
    SAMPLED_KL: tl.constexpr,
    QUADS: tl.constexpr,  # quads per program; the grid is flat over all rows' quads
    ROW_UNIT: tl.constexpr,  # row/sample strides are in units of this many elements: 4 (a quad is one
    # aligned vector for loads and stores) when Z and all those strides are multiples of 4, else 1
):
    acc_dtype = tl.float64 if dmu_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    quads_per_row = (n_cols + 3) // 4
    # this program's first quad is pid * QUADS of the flat grid: its row and column, in int32
    # (pid * QUADS // q = (pid // q) * QUADS + (pid % q) * QUADS // q; a 64-bit division would
    # be a ptxas subroutine with a stack frame)
    part = (pid % quads_per_row) * QUADS
    first = (pid // quads_per_row).to(tl.int64) * QUADS + part // quads_per_row
    offset = part % quads_per_row + tl.arange(0, QUADS)
    local_row = offset // quads_per_row
    quad = offset - local_row * quads_per_row
    row = first + local_row
    valid = row < n_rows
    cols = 4 * quad[:, None] + tl.arange(0, 4)[None, :]
    mask = _quad_mask(valid, cols, n_cols, ROW_UNIT)
    mu = _load_quads(mu_ptr, 0, mu_row_stride, mu_col_stride, row, cols, mask, acc_dtype, ROW_UNIT)
    lv = _load_quads(lv_ptr, 0, lv_row_stride, lv_col_stride, row, cols, mask, acc_dtype, ROW_UNIT)
    std = tl.exp(0.5 * lv)
    dmu = tl.zeros([QUADS, 4], dtype=acc_dtype)
    dlv = tl.zeros([QUADS, 4], dtype=acc_dtype)
    if HAS_GRAD_KL and not SAMPLED_KL:
        gkl = tl.load(gkl_ptr + row * gkl_row_stride, mask=valid, other=0.0).to(acc_dtype)[:, None]
        dmu += gkl * mu
        dlv += 0.5 * gkl * (std * std - 1.0)
    if HAS_GRAD_Z or (HAS_GRAD_KL and SAMPLED_KL):
        if not HAS_EPS:
            seed = tl.load(seed_ptr)
        first_draw = (first_row + row) * n_samples
        for s in range(n_samples):
            s64 = tl.cast(s, tl.int64)  # sample offsets (s x rows, s x sample stride) pass 2**31
            if HAS_EPS:
                eps = _load_quads(eps_ptr, s64 * eps_sample_stride, eps_row_stride, eps_col_stride, row, cols, mask,
                                  acc_dtype, ROW_UNIT)
            else:
                eps = _normal_quads(seed, (first_draw + s) * quads_per_row + quad).to(acc_dtype)
            std_eps = std * eps
            if HAS_GRAD_Z:
                gz = _load_quads(gz_ptr, s64 * gz_sample_stride, gz_row_stride, gz_col_stride, row, cols, mask, acc_dtype, ROW_UNIT)
                dmu += gz
                dlv += 0.5 * std_eps * gz
            if HAS_GRAD_KL and SAMPLED_KL:
                gkl = tl.load(gkl_ptr + s64 * gkl_sample_stride + row * gkl_row_stride, mask=valid,
                              other=0.0).to(acc_dtype)[:, None]
                z = mu + std_eps
                dmu += gkl * z
                dlv += gkl * (0.5 * std_eps * z - 0.5)
    out = _row_offsets(0, row, n_cols // ROW_UNIT, ROW_UNIT) + cols
    tl.store(dmu_ptr + out, dmu.to(dmu_ptr.dtype.element_ty), mask=mask)
    tl.store(dlv_ptr + out, dlv.to(dlv_ptr.dtype.element_ty), mask=mask)


def _row_unit(n_cols: int, *tensors: torch.Tensor | None) -> int:
    """4 when Z and every stride but the last (column) one of ``tensors`` are multiples of 4, else 1."""
    aligned = n_cols % 4 == 0 and all(t is None or all(st % 4 == 0 for st in t.stride()[:-1]) for t in tensors)
    return 4 if aligned else 1


def _strides(t: torch.Tensor | None, unit: int, dims: int) -> tuple[int, ...]:
    """The strides of a ``dims``-D tensor, all but the column stride in units of ``unit``; zeros if absent."""
    if t is None:
        return (0,) * dims
    *outer, col = t.stride()
    return (*(st // unit for st in outer), col)


def _check_noise_shape(eps: torch.Tensor | None, samples: int, n_rows: int, n_cols: int) -> None:
    if eps is not None and tuple(eps.shape) != (samples, n_rows, n_cols):
        raise ValueError(f"eps must have shape (samples, N, Z) = {(samples, n_rows, n_cols)}, got {tuple(eps.shape)}")


def latent_head_forward(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None,
    seed: torch.Tensor,
    first_row: int = 0,
    samples: int = 1,
    sampled_kl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward on (N, Z) mu/logvar, eps (S, N, Z) or None.

    Returns z (S, N, Z) contiguous in mu's dtype and kl, (S, N) if ``sampled_kl`` else (N,),
    in the accumulation dtype.
    """
    n_rows, n_cols = mu.shape
    _check_noise_shape(eps, samples, n_rows, n_cols)
    acc = accumulation_dtype(mu, logvar)
    z = torch.empty((samples, n_rows, n_cols), dtype=mu.dtype, device=mu.device)
    kl = torch.empty((samples, n_rows) if sampled_kl else (n_rows,), dtype=acc, device=mu.device)
    if n_rows == 0:
        return z, kl
    tiling = latent_forward_tiling(n_rows, n_cols)
    unit = _row_unit(n_cols, mu, logvar, eps)
    launch(
        latent_head_forward_kernel, tiling.grid(n_rows),
        mu, *_strides(mu, unit, 2), logvar, *_strides(logvar, unit, 2),
        eps if eps is not None else mu, *_strides(eps, unit, 3), seed, first_row,
        z, kl, n_rows, n_cols, samples,
        HAS_EPS=eps is not None, SAMPLED_KL=sampled_kl,
        ROWS=tiling.rows, QUADS=tiling.quads, CHUNKED=tiling.chunked,
        ROW_UNIT=unit, num_warps=tiling.num_warps,
    )
    return z, kl


def latent_head_backward(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None,
    seed: torch.Tensor,
    first_row: int,
    samples: int,
    sampled_kl: bool,
    grad_z: torch.Tensor | None,
    grad_kl: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward; returns (dmu, dlogvar), each (N, Z) contiguous in its input's dtype.

    ``grad_z`` is (S, N, Z), ``grad_kl`` (S, N) if ``sampled_kl`` else (N,); None for no gradient.
    """
    n_rows, n_cols = mu.shape
    _check_noise_shape(eps, samples, n_rows, n_cols)
    dmu = torch.empty((n_rows, n_cols), dtype=mu.dtype, device=mu.device)
    dlv = torch.empty((n_rows, n_cols), dtype=logvar.dtype, device=mu.device)
    if n_rows == 0:
        return dmu, dlv
    if grad_kl is None:
        gkl_strides = (0, 0)
    elif sampled_kl:
        gkl_strides = tuple(grad_kl.stride())
    else:
        gkl_strides = (0, grad_kl.stride(0))
    tiling = latent_backward_tiling(n_rows, n_cols)
    unit = _row_unit(n_cols, mu, logvar, eps, grad_z)
    launch(
        latent_head_backward_kernel, tiling.grid(n_rows, n_cols),
        mu, *_strides(mu, unit, 2), logvar, *_strides(logvar, unit, 2),
        eps if eps is not None else mu, *_strides(eps, unit, 3), seed, first_row,
        grad_z if grad_z is not None else mu, *_strides(grad_z, unit, 3),
        grad_kl if grad_kl is not None else mu, *gkl_strides,
        dmu, dlv, n_rows, n_cols, samples,
        HAS_EPS=eps is not None, HAS_GRAD_Z=grad_z is not None, HAS_GRAD_KL=grad_kl is not None,
        SAMPLED_KL=sampled_kl, QUADS=tiling.quads, ROW_UNIT=unit,
        num_warps=tiling.num_warps,
    )
    return dmu, dlv
