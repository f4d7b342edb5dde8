"""Latent head of the ELBO: reparameterised sample and analytic KL, one pass over memory.

Forward, per row r of (N, Z) inputs:
    eps = randn(seed, first + r * Z + c)    (Philox, never stored; or read from a given eps)
    z   = mu + exp(lv / 2) * eps
    kl  = 0.5 * sum_c (mu^2 + exp(lv) - 1 - lv)
Backward, with upstream gz (N, Z) and gkl (N,):
    dmu = gz + gkl * mu
    dlv = 0.5 * gz * exp(lv / 2) * eps + 0.5 * gkl * (exp(lv) - 1)
The seed comes from a device tensor (drawn there per step: graph-capture safe, no host
sync); ``first`` is a fixed launch argument that lets DDP ranks draw their shard of one global
stream. eps is regenerated from (seed, offset) rather than re-read: the backward then reads three
(N, Z) tensors (gz, mu, lv) instead of four (z or eps as well).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch_config import row_tiling


@triton.jit
def latent_head_forward_kernel(
    mu_ptr, mu_row_stride, mu_col_stride,  # (N, Z) encoder mean
    lv_ptr, lv_row_stride, lv_col_stride,  # (N, Z) encoder log-variance
    eps_ptr, eps_row_stride, eps_col_stride,  # (N, Z) explicit noise, read only if HAS_EPS
    seed_ptr,  # (1,) int64 Philox seed; read only if not HAS_EPS
    first,  # offset of this launch's first element in the seed's stream
    z_ptr,  # (N, Z) contiguous output, mu's dtype
    kl_ptr,  # (N,) output in the accumulation dtype (float32, or float64)
    n_rows, n_cols,
    HAS_EPS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    acc_dtype = kl_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    row_mask = rows < n_rows
    if not HAS_EPS:
        seed = tl.load(seed_ptr)
    kl = tl.zeros([BLOCK_ROWS], dtype=acc_dtype)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS).to(tl.int64)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        mu = tl.load(mu_ptr + rows[:, None] * mu_row_stride + cols[None, :] * mu_col_stride,
                     mask=mask, other=0.0).to(acc_dtype)
        lv = tl.load(lv_ptr + rows[:, None] * lv_row_stride + cols[None, :] * lv_col_stride,
                     mask=mask, other=0.0).to(acc_dtype)
        flat = rows[:, None] * n_cols + cols[None, :]
        if HAS_EPS:
            eps = tl.load(eps_ptr + rows[:, None] * eps_row_stride + cols[None, :] * eps_col_stride,
                          mask=mask, other=0.0).to(acc_dtype)
        else:
            eps = tl.randn(seed, first + flat).to(acc_dtype)
        std = tl.exp(0.5 * lv)
        tl.store(z_ptr + flat, (mu + std * eps).to(z_ptr.dtype.element_ty), mask=mask)
        kl += tl.sum(tl.where(mask, mu * mu + std * std - 1.0 - lv, 0.0), axis=1)
    tl.store(kl_ptr + rows, 0.5 * kl, mask=row_mask)


@triton.jit
def latent_head_backward_kernel(
    mu_ptr, mu_row_stride, mu_col_stride,  # (N, Z)
    lv_ptr, lv_row_stride, lv_col_stride,  # (N, Z)
    eps_ptr, eps_row_stride, eps_col_stride,  # (N, Z), read only if HAS_EPS
    seed_ptr,  # (1,) int64, the forward's seed
    first,  # the forward's stream offset
    gz_ptr, gz_row_stride, gz_col_stride,  # (N, Z) upstream grad of z, read only if HAS_GRAD_Z
    gkl_ptr, gkl_stride,  # (N,) upstream grad of kl, read only if HAS_GRAD_KL
    dmu_ptr, dlv_ptr,  # (N, Z) contiguous outputs, in mu's / logvar's dtype
    n_rows, n_cols,
    HAS_EPS: tl.constexpr,
    HAS_GRAD_Z: tl.constexpr,
    HAS_GRAD_KL: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    acc_dtype = tl.float64 if dmu_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    row_mask = rows < n_rows
    if HAS_GRAD_KL:
        gkl = tl.load(gkl_ptr + rows * gkl_stride, mask=row_mask, other=0.0).to(acc_dtype)[:, None]
    if not HAS_EPS:
        seed = tl.load(seed_ptr)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS).to(tl.int64)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        flat = rows[:, None] * n_cols + cols[None, :]
        mu = tl.load(mu_ptr + rows[:, None] * mu_row_stride + cols[None, :] * mu_col_stride,
                     mask=mask, other=0.0).to(acc_dtype)
        lv = tl.load(lv_ptr + rows[:, None] * lv_row_stride + cols[None, :] * lv_col_stride,
                     mask=mask, other=0.0).to(acc_dtype)
        dmu = tl.zeros([BLOCK_ROWS, BLOCK_COLS], dtype=acc_dtype)
        dlv = tl.zeros([BLOCK_ROWS, BLOCK_COLS], dtype=acc_dtype)
        if HAS_GRAD_Z:
            gz = tl.load(gz_ptr + rows[:, None] * gz_row_stride + cols[None, :] * gz_col_stride,
                         mask=mask, other=0.0).to(acc_dtype)
            if HAS_EPS:
                eps = tl.load(eps_ptr + rows[:, None] * eps_row_stride + cols[None, :] * eps_col_stride,
                              mask=mask, other=0.0).to(acc_dtype)
            else:
                eps = tl.randn(seed, first + flat).to(acc_dtype)
            dmu += gz
            dlv += 0.5 * gz * tl.exp(0.5 * lv) * eps
        if HAS_GRAD_KL:
            dmu += gkl * mu
            dlv += 0.5 * gkl * (tl.exp(lv) - 1.0)
        tl.store(dmu_ptr + flat, dmu.to(dmu_ptr.dtype.element_ty), mask=mask)
        tl.store(dlv_ptr + flat, dlv.to(dlv_ptr.dtype.element_ty), mask=mask)


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    return (t.stride(0), t.stride(1)) if t is not None else (0, 0)


def latent_head_forward(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: torch.Tensor, first: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward on 2-D (N, Z) inputs; returns z (N, Z) contiguous and kl (N,)."""
    n_rows, n_cols = mu.shape
    acc = torch.float64 if torch.float64 in (mu.dtype, logvar.dtype) else torch.float32
    z = torch.empty((n_rows, n_cols), dtype=mu.dtype, device=mu.device)
    kl = torch.empty((n_rows,), dtype=acc, device=mu.device)
    if n_rows == 0:
        return z, kl
    tiling = row_tiling(n_cols)
    latent_head_forward_kernel[tiling.grid(n_rows)](
        mu, *_strides(mu), logvar, *_strides(logvar),
        eps if eps is not None else mu, *_strides(eps), seed, first,
        z, kl, n_rows, n_cols,
        HAS_EPS=eps is not None, BLOCK_ROWS=tiling.block_rows, BLOCK_COLS=tiling.block_cols,
        num_warps=tiling.num_warps,
    )
    return z, kl


def latent_head_backward(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None,
    seed: torch.Tensor,
    first: int,
    grad_z: torch.Tensor | None,
    grad_kl: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward; returns (dmu, dlogvar), each (N, Z) contiguous in its input's dtype."""
    n_rows, n_cols = mu.shape
    dmu = torch.empty((n_rows, n_cols), dtype=mu.dtype, device=mu.device)
    dlv = torch.empty((n_rows, n_cols), dtype=logvar.dtype, device=mu.device)
    if n_rows == 0:
        return dmu, dlv
    tiling = row_tiling(n_cols)
    latent_head_backward_kernel[tiling.grid(n_rows)](
        mu, *_strides(mu), logvar, *_strides(logvar),
        eps if eps is not None else mu, *_strides(eps), seed, first,
        grad_z if grad_z is not None else mu, *_strides(grad_z),
        grad_kl if grad_kl is not None else mu, grad_kl.stride(0) if grad_kl is not None else 0,
        dmu, dlv, n_rows, n_cols,
        HAS_EPS=eps is not None, HAS_GRAD_Z=grad_z is not None, HAS_GRAD_KL=grad_kl is not None,
        BLOCK_ROWS=tiling.block_rows, BLOCK_COLS=tiling.block_cols, num_warps=tiling.num_warps,
    )
    return dmu, dlv
