"""Likelihood head of the ELBO: per-row log p(x | decoder output), one pass over memory.

Per element, with decoder output o (logits l, or Gaussian mean m) and data x:
    bernoulli:            ll = x*l - softplus(l)
                          dll/dl = x - sigmoid(l),            dll/dx = l
    continuous_bernoulli: ll = x*l - softplus(l) + log C(l),  log C(l) = log(l / tanh(l/2))
                          dll/dl = x - sigmoid(l) + 1/l - 1/sinh(l),   dll/dx = l
    gaussian:             ll = -0.5 * (log 2pi + lv + (x - m)^2 exp(-lv))
                          dll/dm = (x - m) exp(-lv),  dll/dlv = 0.5 ((x - m)^2 exp(-lv) - 1),
                          dll/dx = -(x - m) exp(-lv)
and ll_row = sum over the row. The backward scales each row's element gradients by the
upstream grad g_row. The Gaussian lv may be broadcast (row stride 0: one lv per feature, or
both strides 0: a scalar); its gradient is then a sum over rows.

Forward: one program per block of whole rows (the row sum stays in the program), fewer rows
per program while that leaves fewer programs than the GPU has room for (N = 100, D = 784: one
row per program, 100 programs of 4 warps, rather than 50 of 8).

Continuous Bernoulli, forward: with a = |l| and e = exp(-a), softplus(l) = max(l, 0) + log(1 + e)
and, for a >= the series cut-off, log C(l) = log a - log(1 - e) + log(1 + e): the log(1 + e)
terms cancel, so
    ll = x*l - max(l, 0) + log(a / (1 - e))                         (a >= cut-off)
    ll = x*l - max(l, 0) + log(1 / (1 + e)) + series(l)             (a < cut-off)
that is one exp, one division and ONE log per element for both branches (the log's argument is
chosen by the branch), where the previous kernel took two exps and four logs and evaluated
both branches in full: 1136 -> 584 SASS instructions per thread for 8 elements (sm_90; the
logs are libdevice polynomials, not MUFU). The cancelled terms were each rounded, so this is
at least as accurate; x*l - max(l, 0) is added first, so that the large terms cancel before
the small log is added (float64 at |l| > 20: the row sum to 4e-16, tests/test_extremes.py).
The backward shares e between sigmoid(l) and 1/l - 1/sinh(l): one exp per element, not two.

Backward: elementwise, on a grid of row blocks x column blocks, so that small batches still
fill the GPU (N = 100, D = 784: 175 programs of 4 x 128; the row-block grid it replaces had
50). A broadcast lv's gradient is summed over the rows each program walks, in registers, and
written once per program into a (row programs, D) float32 buffer, at most REDUCE_PROGRAMS /
column blocks rows tall (N = 65536, D = 3072: 22 x 3072 floats, 270 KB, where the previous
kernel zero-filled and wrote an (N/2) x D buffer, 403 MB and ~6 extra bytes per element); the
launcher sums those few rows (torch.sum: deterministic; no atomics anywhere).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .launch import launch
from .launch_config import accumulation_dtype, elementwise_tiling, row_tiling

BERNOULLI = tl.constexpr(0)
CONTINUOUS_BERNOULLI = tl.constexpr(1)
GAUSSIAN = tl.constexpr(2)
LIKELIHOOD_CODES = {"bernoulli": BERNOULLI.value, "continuous_bernoulli": CONTINUOUS_BERNOULLI.value,
                    "gaussian": GAUSSIAN.value}

LOG_2PI = tl.constexpr(math.log(2.0 * math.pi))
LOG_2 = tl.constexpr(math.log(2.0))
# Below these |logit|s log C and its gradient use their Taylor series (same cut-offs as
# fastvae.reference): float64 below 0.1, float32 below 0.5, where the closed forms would lose
# digits to cancellation (1 - e^-a, 1/a - 1/sinh a); the omitted terms are < 3e-16 / 3e-9.
CB_TAYLOR_CUTOFF_F64 = 0.1
CB_TAYLOR_CUTOFF_F32 = 0.5


@triton.jit
def _softplus(l):
    # max(l, 0) + log(1 + exp(-|l|)): finite for any finite l
    return tl.maximum(l, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(l)))


@triton.jit
def _sigmoid(l, e):
    # e = exp(-|l|) <= 1, given: no overflow for any finite l
    return tl.where(l >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _cb_log_norm_minus_log1p(l, cutoff):
    # log C(l) - log(1 + e) with e = e^-|l|, one exp and one log (derivation in the module
    # docstring): a = |l| >= cutoff: log(a / (1 - e)); below: log(1 / (1 + e)) + the Taylor
    # series of log C in s = (l/2)^2, log 2 + s/3 - 7s^2/90 + 62s^3/2835 - 127s^4/18900.
    a = tl.abs(l)
    small = a < cutoff
    e = tl.exp(-a)
    s = 0.25 * a * a
    taylor = LOG_2 + s * (1.0 / 3.0 + s * (-7.0 / 90.0 + s * (62.0 / 2835.0 + s * (-127.0 / 18900.0))))
    ratio = tl.where(small, 1.0, a) / tl.where(small, 1.0 + e, 1.0 - e)  # no 0/0 at l = 0
    return tl.log(ratio) + tl.where(small, taylor, 0.0)


@triton.jit
def _cb_log_norm_grad(l, e, cutoff):
    # d/dl log C(l) = 1/l - 1/sinh(l), odd in l; 1/sinh(a) = 2e^-a / (1 - e^-2a), e = e^-|l| given.
    # Below the cut-off (t = l^2): l (1/6 - 7t/360 + 31t^2/15120 - 127t^3/604800 + 73t^4/3421440).
    a = tl.abs(l)
    small = a < cutoff
    safe = tl.where(small, 1.0, a)
    e = tl.where(small, 0.5, e)  # the closed form is discarded there; keep it finite
    exact = 1.0 / safe - 2.0 * e / (1.0 - e * e)
    exact = tl.where(l < 0, -exact, exact)
    t = l * l
    taylor = l * (1.0 / 6.0 + t * (-7.0 / 360.0 + t * (31.0 / 15120.0 + t * (-127.0 / 604800.0 + t * (73.0 / 3421440.0)))))
    return tl.where(small, taylor, exact)


@triton.jit
def log_likelihood_forward_kernel(
    o_ptr, o_row_stride, o_col_stride,  # (N, D) decoder output: logits, or Gaussian mean
    lv_ptr, lv_row_stride, lv_col_stride,  # (N, D) Gaussian logvar (strides 0 when broadcast)
    x_ptr, x_row_stride, x_col_stride,  # (N, D) data
    ll_ptr,  # (N,) output in the accumulation dtype
    n_rows, n_cols,
    LIKELIHOOD: tl.constexpr,
    CB_CUTOFF: tl.constexpr,  # |logit| below which log C uses its series (by accumulation dtype)
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    acc_dtype = ll_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    row_mask = rows < n_rows
    ll = tl.zeros([BLOCK_ROWS], dtype=acc_dtype)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS).to(tl.int64)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        o = tl.load(o_ptr + rows[:, None] * o_row_stride + cols[None, :] * o_col_stride,
                    mask=mask, other=0.0).to(acc_dtype)
        x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :] * x_col_stride,
                    mask=mask, other=0.0).to(acc_dtype)
        if LIKELIHOOD == GAUSSIAN:
            lv = tl.load(lv_ptr + rows[:, None] * lv_row_stride + cols[None, :] * lv_col_stride,
                         mask=mask, other=0.0).to(acc_dtype)
            r = x - o
            term = -0.5 * (LOG_2PI + lv + r * r * tl.exp(-lv))
        elif LIKELIHOOD == CONTINUOUS_BERNOULLI:
            # x*l - softplus(l) + log C(l), the two large terms (x*l and max(l, 0)) first:
            # they cancel to the term's size before the small log is added
            term = (x * o - tl.maximum(o, 0.0)) + _cb_log_norm_minus_log1p(o, CB_CUTOFF)
        else:
            term = x * o - _softplus(o)
        ll += tl.sum(tl.where(mask, term, 0.0), axis=1)
    tl.store(ll_ptr + rows, ll, mask=row_mask)


@triton.jit
def log_likelihood_backward_kernel(
    o_ptr, o_row_stride, o_col_stride,  # (N, D) decoder output
    lv_ptr, lv_row_stride, lv_col_stride,  # (N, D) Gaussian logvar (strides 0 when broadcast)
    x_ptr, x_row_stride, x_col_stride,  # (N, D) data
    g_ptr, g_stride,  # (N,) upstream grad of ll
    do_ptr,  # (N, D) contiguous grad of o, written if NEED_GRAD_O
    dlv_ptr,  # (N, D) contiguous, or (row programs, D) float32/64 partial sums if LV_BROADCAST
    dx_ptr,  # (N, D) contiguous grad of x, written if NEED_GRAD_X
    n_rows, n_cols,
    rows_per_program,  # a multiple of BLOCK_ROWS: program (i, j) covers rows [i, i + 1) * rows_per_program
    LIKELIHOOD: tl.constexpr,
    ACC_F64: tl.constexpr,  # accumulate in float64 (any float64 input) rather than float32
    CB_CUTOFF: tl.constexpr,
    NEED_GRAD_O: tl.constexpr,
    NEED_GRAD_LV: tl.constexpr,
    NEED_GRAD_X: tl.constexpr,
    LV_BROADCAST: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,  # program (i, j) covers columns [j, j + 1) * BLOCK_COLS
):
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    row_program = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_COLS + tl.arange(0, BLOCK_COLS).to(tl.int64)
    col_mask = cols < n_cols
    first = row_program * rows_per_program
    if LV_BROADCAST and NEED_GRAD_LV:
        lv_sum = tl.zeros([BLOCK_COLS], dtype=acc_dtype)
    for start in range(0, rows_per_program, BLOCK_ROWS):
        rows = first + start + tl.arange(0, BLOCK_ROWS).to(tl.int64)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        flat = rows[:, None] * n_cols + cols[None, :]
        g = tl.load(g_ptr + rows * g_stride, mask=row_mask, other=0.0).to(acc_dtype)[:, None]
        o = tl.load(o_ptr + rows[:, None] * o_row_stride + cols[None, :] * o_col_stride,
                    mask=mask, other=0.0).to(acc_dtype)
        x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :] * x_col_stride,
                    mask=mask, other=0.0).to(acc_dtype)
        if LIKELIHOOD == GAUSSIAN:
            lv = tl.load(lv_ptr + rows[:, None] * lv_row_stride + cols[None, :] * lv_col_stride,
                         mask=mask, other=0.0).to(acc_dtype)
            scaled_residual = (x - o) * tl.exp(-lv)
            grad_o = g * scaled_residual
            grad_x = -grad_o
            if NEED_GRAD_LV:
                grad_lv = tl.where(mask, 0.5 * g * ((x - o) * scaled_residual - 1.0), 0.0)
                if LV_BROADCAST:
                    lv_sum += tl.sum(grad_lv, axis=0)
                else:
                    tl.store(dlv_ptr + flat, grad_lv.to(dlv_ptr.dtype.element_ty), mask=mask)
        else:
            e = tl.exp(-tl.abs(o))
            dll_do = x - _sigmoid(o, e)
            if LIKELIHOOD == CONTINUOUS_BERNOULLI:
                dll_do += _cb_log_norm_grad(o, e, CB_CUTOFF)
            grad_o = g * dll_do
            grad_x = g * o
        if NEED_GRAD_O:
            tl.store(do_ptr + flat, grad_o.to(do_ptr.dtype.element_ty), mask=mask)
        if NEED_GRAD_X:
            tl.store(dx_ptr + flat, grad_x.to(dx_ptr.dtype.element_ty), mask=mask)
    if LV_BROADCAST and NEED_GRAD_LV:
        tl.store(dlv_ptr + row_program * n_cols + cols, lv_sum, mask=col_mask)


def _strides(t: torch.Tensor) -> tuple[int, int]:
    return t.stride(0), t.stride(1)


def _cb_cutoff(acc: torch.dtype) -> float:
    return CB_TAYLOR_CUTOFF_F64 if acc == torch.float64 else CB_TAYLOR_CUTOFF_F32


def _logvar_2d(logvar: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """View a (N, D), (D,) or 0-d logvar as (N, D), with stride 0 along broadcast dims."""
    if logvar is None:
        return like  # never read: the Bernoulli kernels take no logvar
    return logvar.expand(like.shape) if logvar.dim() < 2 else logvar


def log_likelihood_forward(
    likelihood: str, out: torch.Tensor, logvar: torch.Tensor | None, x: torch.Tensor
) -> torch.Tensor:
    """Per-row log-likelihood of 2-D (N, D) inputs, in float32 (float64 for float64 inputs)."""
    n_rows, n_cols = x.shape
    acc = accumulation_dtype(out, logvar, x)
    ll = torch.empty((n_rows,), dtype=acc, device=x.device)
    if n_rows == 0:
        return ll
    tiling = row_tiling(n_cols, n_rows)
    lv = _logvar_2d(logvar, out)
    launch(
        log_likelihood_forward_kernel, tiling.grid(n_rows),
        out, *_strides(out), lv, *_strides(lv), x, *_strides(x), ll, n_rows, n_cols,
        LIKELIHOOD=LIKELIHOOD_CODES[likelihood], CB_CUTOFF=_cb_cutoff(acc),
        BLOCK_ROWS=tiling.block_rows, BLOCK_COLS=tiling.block_cols, num_warps=tiling.num_warps,
    )
    return ll


def log_likelihood_backward(
    likelihood: str,
    out: torch.Tensor,
    logvar: torch.Tensor | None,
    x: torch.Tensor,
    grad_ll: torch.Tensor,
    needs_grad: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. (out, logvar, x) given the upstream grad of the per-row ll.

    ``needs_grad`` says which of the three to compute; the others come back as None. A
    broadcast logvar gets a gradient of its own shape ((D,) or 0-d).
    """
    need_o, need_lv, need_x = needs_grad
    need_lv = need_lv and logvar is not None
    n_rows, n_cols = x.shape
    lv = _logvar_2d(logvar, out)
    lv_broadcast = logvar is not None and logvar.dim() < 2
    tiling = elementwise_tiling(n_rows, n_cols, reduce_rows=need_lv and lv_broadcast)
    d_out = torch.empty_like(out, memory_format=torch.contiguous_format) if need_o else None
    d_x = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else None
    acc = accumulation_dtype(out, logvar, x)
    d_lv = None
    if need_lv:
        if lv_broadcast:  # every program writes its row of partial sums: no zero-fill
            d_lv = torch.empty((tiling.row_programs, n_cols), dtype=acc, device=x.device)
        else:
            d_lv = torch.empty_like(logvar, memory_format=torch.contiguous_format)
    if n_rows > 0 and (need_o or need_lv or need_x):
        placeholder = d_out if d_out is not None else (d_x if d_x is not None else lv)
        launch(
            log_likelihood_backward_kernel, tiling.grid(n_cols),
            out, *_strides(out), lv, *_strides(lv), x, *_strides(x), grad_ll, grad_ll.stride(0),
            d_out if d_out is not None else placeholder,
            d_lv if d_lv is not None else placeholder,
            d_x if d_x is not None else placeholder,
            n_rows, n_cols, tiling.rows_per_program,
            LIKELIHOOD=LIKELIHOOD_CODES[likelihood], ACC_F64=acc == torch.float64, CB_CUTOFF=_cb_cutoff(acc),
            NEED_GRAD_O=need_o, NEED_GRAD_LV=need_lv, NEED_GRAD_X=need_x, LV_BROADCAST=lv_broadcast,
            BLOCK_ROWS=tiling.block_rows, BLOCK_COLS=tiling.block_cols, num_warps=tiling.num_warps,
        )
    if need_lv and lv_broadcast:
        d_lv = (d_lv.sum(0) if logvar.dim() == 1 else d_lv.sum()).to(logvar.dtype)
    return d_out, d_lv, d_x
