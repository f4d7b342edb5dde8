"""The likelihood head: per-example ``log p(x | decoder output)``.

``bernoulli_log_likelihood``, ``continuous_bernoulli_log_likelihood`` and
``gaussian_log_likelihood`` take inputs of shape (..., D) (leading dims broadcast against
each other) and return one value per row, in float32 (float64 for float64 inputs). CUDA
tensors go to the fused Triton kernel through the ``fastvae::log_likelihood`` custom op;
other tensors take the plain-torch reference path.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from . import reference
from .backend import use_triton
from .func_transforms import FuncFunction, batch_first, fold_rows, unfold_rows
from .input_checks import broadcast_rows, require_float_tensor, require_rows, require_same_device

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")

_REFERENCE = {
    "bernoulli": reference.bernoulli_log_likelihood_ref,
    "continuous_bernoulli": reference.continuous_bernoulli_log_likelihood_ref,
}


@torch.library.custom_op("fastvae::log_likelihood", mutates_args=())
def _log_likelihood(
    likelihood: str, out: torch.Tensor, logvar: Optional[torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    from .kernels.likelihood_head import log_likelihood_forward

    return log_likelihood_forward(likelihood, out, logvar, x)


@_log_likelihood.register_fake
def _log_likelihood_fake(likelihood, out, logvar, x):
    acc = reference.accumulation_dtype(out, x, *([] if logvar is None else [logvar]))
    return out.new_empty(x.shape[:1], dtype=acc)


@torch.library.custom_op("fastvae::log_likelihood_backward", mutates_args=())
def _log_likelihood_backward(
    likelihood: str,
    out: torch.Tensor,
    logvar: Optional[torch.Tensor],
    x: torch.Tensor,
    grad_ll: torch.Tensor,
    needs_grad: list[bool],
) -> list[torch.Tensor]:
    from .kernels.likelihood_head import log_likelihood_backward

    grads = log_likelihood_backward(likelihood, out, logvar, x, grad_ll, tuple(needs_grad))
    # custom ops return tensors only: an empty tensor stands for "not computed"
    return [g if g is not None else out.new_empty(0) for g in grads]


@_log_likelihood_backward.register_fake
def _log_likelihood_backward_fake(likelihood, out, logvar, x, grad_ll, needs_grad):
    # the kernels write contiguous gradients whatever the inputs' strides
    need_o, need_lv, need_x = needs_grad
    contiguous = torch.contiguous_format
    return [
        torch.empty_like(out, memory_format=contiguous) if need_o else out.new_empty(0),
        torch.empty_like(logvar, memory_format=contiguous) if need_lv and logvar is not None else out.new_empty(0),
        torch.empty_like(x, memory_format=contiguous) if need_x else out.new_empty(0),
    ]


def _setup_context(ctx, inputs, output) -> None:
    likelihood, out, logvar, x = inputs
    ctx.likelihood = likelihood
    ctx.save_for_backward(out, logvar, x)


def _backward(ctx, grad_ll):
    out, logvar, x = ctx.saved_tensors
    needs = [ctx.needs_input_grad[1], ctx.needs_input_grad[2] and logvar is not None, ctx.needs_input_grad[3]]
    args = (ctx.likelihood, out, logvar, x, grad_ll, needs)
    # create_graph=True (or torch.func): the backward op as a differentiable function
    backward = _LogLikelihoodBackward.apply if torch.is_grad_enabled() else _log_likelihood_backward
    grad_out, grad_logvar, grad_x = backward(*args)
    return (
        None,
        grad_out if needs[0] else None,
        grad_logvar if needs[1] else None,
        grad_x if needs[2] else None,
    )


_log_likelihood.register_autograd(_backward, setup_context=_setup_context)


def _logvar_rows(logvar: torch.Tensor, lv_dim: int | None, batch_size: int, out_rows: torch.Tensor) -> torch.Tensor:
    """A logvar of V instances ((N, D), (D,) or 0-d each) as (V * N, D) rows like ``out_rows``
    (a view where it can be), so each instance's rows see their own logvar."""
    lv = batch_first(logvar, lv_dim, batch_size)  # (V, N, D), (V, D) or (V,)
    lv = lv.reshape(batch_size, -1, lv.shape[-1]) if lv.dim() == 3 else lv.reshape(batch_size, 1, -1)
    return lv.expand(batch_size, out_rows.shape[0] // batch_size, out_rows.shape[1]).reshape(out_rows.shape)


@_log_likelihood.register_vmap
def _log_likelihood_vmap(info, in_dims, likelihood, out, logvar, x):
    v = info.batch_size
    _, out_dim, lv_dim, x_dim = in_dims
    out, x = fold_rows(out, out_dim, v), fold_rows(x, x_dim, v)
    if logvar is not None and not (lv_dim is None and logvar.dim() < 2):  # else one logvar shared by all rows
        logvar = _logvar_rows(logvar, lv_dim, v, out)
    return unfold_rows(_log_likelihood(likelihood, out, logvar, x), v), 0


@_log_likelihood_backward.register_vmap
def _log_likelihood_backward_vmap(info, in_dims, likelihood, out, logvar, x, grad_ll, needs):
    v = info.batch_size
    _, out_dim, lv_dim, x_dim, g_dim, _ = in_dims
    out, x, grad_ll = fold_rows(out, out_dim, v), fold_rows(x, x_dim, v), fold_rows(grad_ll, g_dim, v)
    # each instance gets the gradient of its own logvar: computed per row, then summed per instance
    lv_rows = None if logvar is None else _logvar_rows(logvar, lv_dim, v, out)
    grads = _log_likelihood_backward(likelihood, out, lv_rows, x, grad_ll, needs)
    grads = [unfold_rows(g, v) if need else g for g, need in zip(grads, needs)]  # (V, N, D) or empty
    if needs[1] and logvar.dim() - (lv_dim is not None) < 2:  # (D,) or 0-d per instance
        grads[1] = grads[1].sum(1) if logvar.dim() - (lv_dim is not None) == 1 else grads[1].sum((1, 2))
    return grads, [0 if need else None for need in needs]


class _LogLikelihood(FuncFunction):
    """The likelihood op under autograd and ``torch.func`` (grad, vmap, jacrev): the custom op's
    own autograd registration cannot serve torch.func (it defines no ``setup_context`` there;
    pytorch#170834), so the public functions apply the op through this Function."""

    generate_vmap_rule = True

    @staticmethod
    def forward(likelihood, out, logvar, x):
        return _log_likelihood(likelihood, out, logvar, x)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


def _first_order_grads(likelihood: str, needs: list[bool]):
    """What the backward op computes, in torch ops (``fastvae.reference``'s ``*_grads``), as a
    function of its tensor inputs (out, logvar, x, grad_ll): the gradients it was asked for,
    each in its input's dtype."""
    need_out, need_lv, need_x = needs

    def grads(out, logvar, x, grad_ll):
        acc = reference.accumulation_dtype(out, logvar, x)
        o, lv, xx, g = out.to(acc), logvar.to(acc), x.to(acc), grad_ll.to(acc)
        if likelihood == "gaussian":
            grad_r, grad_lv = reference.gaussian_grads(o - xx, lv, g, (need_out or need_x, need_lv))
            wanted = [(grad_r, out, need_out), (grad_lv, logvar, need_lv), (None if grad_r is None else -grad_r, x, need_x)]
        else:
            continuous = likelihood == "continuous_bernoulli"
            grad_o, grad_x = reference.logit_likelihood_grads(o, xx, g, continuous, (need_out, need_x))
            wanted = [(grad_o, out, need_out), (grad_x, x, need_x)]
        return tuple(grad.to(t.dtype) for grad, t, need in wanted if need)

    return grads


class _LogLikelihoodBackward(FuncFunction):
    """The backward op, differentiable: the kernel computes the gradients; their own derivatives
    (double backward) are those of the same closed form in ``fastvae.reference``, in torch ops,
    differentiated by ``torch.func.vjp`` (so third and higher orders follow)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(likelihood, out, logvar, x, grad_ll, needs):
        return tuple(_log_likelihood_backward(likelihood, out, logvar, x, grad_ll, needs))

    @staticmethod
    def setup_context(ctx, inputs, output):
        likelihood, out, logvar, x, grad_ll, needs = inputs
        ctx.likelihood, ctx.needs = likelihood, needs
        ctx.save_for_backward(out, logvar, x, grad_ll)

    @staticmethod
    def backward(ctx, *grad_grads):
        out, logvar, x, grad_ll = ctx.saved_tensors
        lv = logvar if logvar is not None else out.new_zeros(())  # the Bernoulli grads ignore it
        _, vjp = torch.func.vjp(_first_order_grads(ctx.likelihood, ctx.needs), out, lv, x, grad_ll)
        # the op returns an empty tensor for each gradient it did not compute
        d_out, d_logvar, d_x, d_grad_ll = vjp(tuple(gg for gg, need in zip(grad_grads, ctx.needs) if need))
        return None, d_out, d_logvar if logvar is not None else None, d_x, d_grad_ll, None


def _flatten_rows(t: torch.Tensor, shape: torch.Size, acc: torch.dtype) -> torch.Tensor:
    """Broadcast ``t`` to ``shape`` (..., D) and view it as (N, D); copies only if it must.

    An input narrower than the accumulation dtype ``acc`` (half precision; float32 beside a
    float64 input) that is broadcast and requires grad is upcast first: its gradient is then
    summed over the broadcast copies in ``acc`` and rounded once, as on the torch path (not
    rounded per copy, then summed in its own precision).
    """
    if t.requires_grad and t.dtype != acc and t.numel() < shape.numel():
        t = t.to(acc)
    return t.expand(shape).reshape(-1, shape[-1])


def _log_likelihood_rows(
    likelihood: str, out: torch.Tensor, logvar: torch.Tensor | None, x: torch.Tensor
) -> torch.Tensor:
    named = {"mean" if likelihood == "gaussian" else "logits": out, "x": x}
    for name, t in named.items():
        require_float_tensor(name, t)
        require_rows(name, t)
    if logvar is not None:
        require_float_tensor("logvar", logvar)
        named["logvar"] = logvar
    device = require_same_device(**named)
    rows = {k: v for k, v in named.items() if k != "logvar" or v.dim() > 0}
    shape = broadcast_rows(**rows)

    if not use_triton(device):
        if logvar is None:
            return _REFERENCE[likelihood](out, x)
        return reference.gaussian_log_likelihood_ref(out, logvar, x)

    acc = reference.accumulation_dtype(*named.values())
    if logvar is not None and not (logvar.dim() == 0 or logvar.shape == shape[-1:]):
        logvar = _flatten_rows(logvar, shape, acc)  # full or partially broadcast: per element
    ll = _LogLikelihood.apply(likelihood, _flatten_rows(out, shape, acc), logvar, _flatten_rows(x, shape, acc))
    return ll.reshape(shape[:-1])


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Bernoulli(logits=logits).log_prob(x).sum(-1)``, computed as ``sum(x*l - softplus(l))``.

    Finite for any finite logits; x in [0, 1] (continuous values allowed, as with BCE).

    >>> bernoulli_log_likelihood(torch.zeros(2, 3), torch.ones(2, 3))
    tensor([-2.0794, -2.0794])
    """
    return _log_likelihood_rows("bernoulli", logits, None, x)


def continuous_bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``ContinuousBernoulli(logits=logits).log_prob(x).sum(-1)``: the Bernoulli term plus
    the normaliser ``log C(lambda)`` (Loaiza-Ganem & Cunningham, 2019), stable near lambda = 1/2.

    >>> continuous_bernoulli_log_likelihood(torch.zeros(1, 3), torch.full((1, 3), 0.5))
    tensor([0.])
    """
    return _log_likelihood_rows("continuous_bernoulli", logits, None, x)


def gaussian_log_likelihood(
    mean: torch.Tensor, logvar: torch.Tensor | float, x: torch.Tensor
) -> torch.Tensor:
    """``Normal(mean, exp(logvar/2)).log_prob(x).sum(-1)``.

    ``logvar`` may be shaped like ``x``, ``(D,)`` (one learned variance per feature), a
    0-d tensor or a Python float (one shared variance, taken in float32 / float64 whatever
    the mean's dtype).

    >>> gaussian_log_likelihood(torch.zeros(2, 1), 0.0, torch.zeros(2, 1))
    tensor([-0.9189, -0.9189])
    """
    if isinstance(logvar, numbers.Real) and not isinstance(logvar, bool):
        # A Python number takes the accumulation dtype (float32, or float64), never a half
        # mean's: bf16 would round 0.1 to 0.10009765625, 0.03 nats per example at D = 784.
        require_float_tensor("mean", mean)
        require_float_tensor("x", x)
        if not math.isfinite(logvar):
            raise ValueError(f"logvar must be finite, got {logvar!r}")
        logvar = torch.tensor(float(logvar), dtype=reference.accumulation_dtype(mean, x), device=mean.device)
    elif logvar is None:  # else taken for "no logvar" further on (KeyError 'gaussian' on the torch path)
        require_float_tensor("logvar", logvar)
    return _log_likelihood_rows("gaussian", mean, logvar, x)


def log_likelihood(
    likelihood: str, decoder_out: torch.Tensor | tuple[torch.Tensor, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Dispatch on the likelihood's name; ``decoder_out`` is logits, or (mean, logvar) for Gaussian."""
    if likelihood == "gaussian":
        if not isinstance(decoder_out, (tuple, list)) or len(decoder_out) != 2:
            raise TypeError(
                "decoder_out must be a (mean, logvar) pair for likelihood='gaussian', "
                f"got {type(decoder_out).__name__}"
            )
        return gaussian_log_likelihood(decoder_out[0], decoder_out[1], x)
    if likelihood not in _REFERENCE:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
    if isinstance(decoder_out, (tuple, list)):
        raise TypeError(f"decoder_out must be a logits tensor for likelihood={likelihood!r}, got a {type(decoder_out).__name__}")
    return _log_likelihood_rows(likelihood, decoder_out, None, x)
