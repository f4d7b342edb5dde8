"""``Linear``: ``nn.Linear`` whose float32 CPU matmuls go through oneDNN on AMD CPUs.

PyTorch's x86 CPU wheels send a float32 ``nn.Linear`` to MKL's sgemm. MKL picks its code path
by CPU vendor: on an AMD CPU it takes the AVX2 one, while oneDNN (also inside PyTorch: its
convolutions and ``torch.compile``'s CPU linears use it) takes AVX-512 where the CPU has it.
On a 2-core AMD EPYC (Zen 5) a 128x784 @ 784x400 product takes 0.35 ms through oneDNN and
0.74 ms through MKL; on a 2-core Intel Xeon (AVX-512) it is the other way round, 0.95 ms
through oneDNN and 0.58 ms through MKL (one thread each). So :data:`ONEDNN_MATMULS` is set
where MKL is the BLAS and the CPU is not Intel's, and ``Linear`` is ``F.linear`` elsewhere.
The three products of a linear layer's step are

    y = x W^T + b,     dL/dx = g W,     dL/dW = g^T x,     dL/db = sum_rows g

and with :data:`ONEDNN_MATMULS` each is one ``torch.ops.mkldnn._linear_pointwise`` call (the
op reads transposed operands in place). Everything else — other devices and dtypes (float64 for gradcheck,
autocast), or a PyTorch built without oneDNN — takes ``F.linear``. The parameters and the
state dict are ``nn.Linear``'s.

>>> layer = Linear(784, 400)
>>> layer(torch.rand(128, 784)).shape
torch.Size([128, 400])
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.flop_counter import register_flop_formula

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpuinfo_field(name: str) -> str:
    """The first ``name : value`` of ``/proc/cpuinfo`` (e.g. ``"vendor_id"``, ``"model name"``);
    ``""`` where it cannot be read (not Linux, or no such field)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU's vendor id (``"GenuineIntel"``, ``"AuthenticAMD"``, ...); ``""`` where unknown."""
    return cpuinfo_field("vendor_id")


#: Whether float32 CPU linears go to oneDNN (see the module docs): where PyTorch's BLAS is MKL
#: and the CPU is AMD's (or Hygon's, the same cores), whose AVX-512 MKL does not use.
ONEDNN_MATMULS = _ONEDNN and torch.backends.mkl.is_available() and cpu_vendor() in ("AuthenticAMD", "HygonGenuine")


@torch.library.custom_op("fastvae::onednn_matmul_t", mutates_args=())
def _onednn_matmul_t_op(a: torch.Tensor, b: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


@_onednn_matmul_t_op.register_fake
def _(a, b, bias):
    return a.new_empty((*a.shape[:-1], b.shape[0]))


def _matmul_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b^T (+ bias)`` through oneDNN (``a``: (..., k), ``b``: (n, k), either may be a transposed view).

    Under ``torch.compile`` it is a custom op (inductor's own lowering of the oneDNN op wants
    frozen weights); eagerly the op is called directly (no custom-op dispatch per call).
    """
    if torch.compiler.is_compiling():
        return _onednn_matmul_t_op(a, b, bias)
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _matmul_t(x, weight, bias)

    @staticmethod
    @once_differentiable  # as the loss heads: a closed-form backward, double backward raises
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        rows = grad.reshape(-1, grad.shape[-1])
        if need_x:
            grad_x = _matmul_t(grad, weight.t())  # g W
        if need_w:
            grad_w = _matmul_t(rows.t(), x.reshape(-1, x.shape[-1]).t())  # g^T x
        if need_b and ctx.has_bias:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when ``Linear`` sends this product to oneDNN (:data:`ONEDNN_MATMULS`; float32 on the
    CPU, no autocast)."""
    return (
        ONEDNN_MATMULS
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN for float32 CPU tensors on AMD CPUs (see the module docs)."""
    if uses_onednn(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` with :func:`linear` as its forward (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _matmul_t_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """Multiply-adds x 2 of ``a @ b^T``: what ``torch.utils.flop_counter`` counts for ``F.linear``."""
    rows = 1
    for s in a_shape[:-1]:
        rows *= s
    return 2 * rows * a_shape[-1] * b_shape[0]


if _ONEDNN:
    register_flop_formula(torch.ops.mkldnn._linear_pointwise)(_matmul_t_flops)
