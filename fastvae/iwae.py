"""``IWAELoss``: the importance-weighted bound (Burda et al., 2015) as a drop-in loss, with
the IWAE or the doubly-reparameterised (DReG; Tucker et al., 2018) gradient estimator.

    z, kl = fastvae.reparameterize(mu, logvar, samples=K, kl="sampled")   # (K, B, Z), (K, B)
    loss = fastvae.IWAELoss("bernoulli", estimator="dreg")(decoder(z), x, kl)
    loss.backward()

How DReG reaches the encoder. The loss sees only (decoder output, x, kl); DReG changes what the
encoder receives through z: every draw's gradient reweighted by its normalised weight w_k, and
the score term of log q (its derivative at fixed z) dropped from the kl's gradient. Both happen
in the backward of the node that drew z and kl (``reparameterize``), which needs the weights.
So, in eager mode, ``IWAELoss(estimator="dreg")`` finds that node through ``kl.grad_fn``
(refusing any kl that is not the sampled kl straight from ``reparameterize``) and attaches a
``DregLink`` to it; the loss's backward records there the weights it computed and the exact
gradient tensor it sent to kl, and the sampling node's backward checks that this tensor is the
gradient it received (anything else also used kl, and the weights would not be w_k: it raises)
before applying ``reference.dreg_grad_z_ref``.

Limits (documented in the README):
- z and kl must feed only this loss (through the decoder). A second gradient into kl is
  detected and raises; a second gradient into z (a penalty on z, a second decoder) cannot be
  told apart from the decoder's and would be reweighted by w_k: don't combine them with DReG.
- Eager mode only: under ``torch.compile`` autograd nodes do not exist while tracing, so the
  loss raises there. Compile the encoder and decoder and keep ``reparameterize`` + the loss
  eager, use ``estimator="iwae"``, which compiles with ``fullgraph=True``, or use the step
  objective :class:`IWAE` below, which owns z and kl and so compiles DReG without a link.
- One DReG loss per draw of kl (a second one on the same kl raises).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import reference
from .input_checks import require_float_tensor, require_positive_int, require_same_device
from .latent import draw_latents
from .likelihood import LIKELIHOODS, log_likelihood
from .loss import REDUCTIONS
from .step import Noise, StepOutput

ESTIMATORS = ("iwae", "dreg")

# Autograd nodes that only reshape kl (same elements, same order): the sampling node may sit
# behind them (the Triton path returns a reshaped view of the kernel's flat output).
_RESHAPE_NODES = frozenset({"ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "AliasBackward0"})


class IWAELoss(nn.Module):
    """Negative importance-weighted bound ``-(logsumexp_k(log p(x|z_k) - kl_k) - log K)`` per
    example, then reduced. With K = 1 it is ``ELBOLoss`` on the same (sampled) kl.

    Args:
        likelihood: ``"bernoulli"`` (decoder_out = logits), ``"continuous_bernoulli"`` (logits)
            or ``"gaussian"`` (decoder_out = (mean, logvar)).
        reduction: ``"mean"`` over the examples, ``"sum"``, or ``"none"`` (one loss per example).
        estimator: ``"iwae"``: the gradient of the bound (decoder and encoder weight draw k by
            w_k); ``"dreg"``: the same value and decoder gradient, and the doubly-reparameterised
            encoder gradient (weights w_k^2, no score term), which needs kl from
            ``reparameterize(..., kl="sampled")`` and eager mode (see the module docstring).

    >>> mu, logvar = torch.zeros(3, 2, requires_grad=True), torch.zeros(3, 2, requires_grad=True)
    >>> z, kl = fastvae.reparameterize(mu, logvar, samples=5, kl="sampled")   # (5, 3, 2), (5, 3)
    >>> loss = IWAELoss("bernoulli", estimator="dreg")(z.sum(-1, keepdim=True), torch.ones(3, 1), kl)
    >>> loss.backward()
    """

    def __init__(self, likelihood: str = "bernoulli", reduction: str = "mean", estimator: str = "iwae"):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        self.likelihood = likelihood
        self.reduction = reduction
        self.estimator = estimator

    def forward(
        self,
        decoder_out: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        x: torch.Tensor,
        kl: torch.Tensor,
    ) -> torch.Tensor:
        """``decoder_out`` (K, ..., D) with the K draws first; ``x`` (..., D), broadcast over the
        draws; ``kl`` (K, ...) from ``reparameterize(..., samples=K)``."""
        require_float_tensor("kl", kl)
        require_same_device(x=x, kl=kl)
        _check_draw_shapes(self.likelihood, decoder_out, x, kl)
        ll = log_likelihood(self.likelihood, decoder_out, x)
        if ll.shape != kl.shape:
            raise ValueError(
                f"kl has shape {tuple(kl.shape)} but the draws have shape {tuple(ll.shape)} (K first, then "
                f"the examples: decoder output and x broadcast, without the last dim); pass the per-draw kl "
                f"from fastvae.reparameterize(..., samples=K)"
            )
        _refuse_analytic_kl(kl)
        observer = None
        if self.estimator == "dreg" and torch.is_grad_enabled() and kl.requires_grad:
            observer = _attach_dreg_link(kl).record
        loss = -reference.importance_weighted_bound_ref(ll, kl, observer)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, reduction={self.reduction!r}, estimator={self.estimator!r}"


def _check_draw_shapes(likelihood: str, decoder_out, x: torch.Tensor, kl: torch.Tensor) -> None:
    """The draws must come first in decoder_out and kl, and x must not carry them."""
    out = decoder_out[0] if likelihood == "gaussian" and isinstance(decoder_out, (tuple, list)) else decoder_out
    if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
        return  # log_likelihood names the wrong type
    name = "decoder_out" if out is decoder_out else "decoder_out's mean"
    if kl.dim() == 0:
        raise ValueError("kl is 0-d; pass the per-draw kl (K, ...) from fastvae.reparameterize(..., samples=K), "
                         "not its sum or mean")
    if out.dim() <= x.dim():
        raise ValueError(
            f"{name} has shape {tuple(out.shape)} and x {tuple(x.shape)}: {name} must have the K draws as an "
            f"extra first dim, (K, *x.shape[:-1], D) (decode z from reparameterize(..., samples=K)); x broadcasts "
            f"over the draws"
        )
    if out.shape[0] != kl.shape[0]:
        raise ValueError(
            f"{name} has {out.shape[0]} draws (dim 0 of {tuple(out.shape)}) but kl has {kl.shape[0]} "
            f"(dim 0 of {tuple(kl.shape)}); both come from the same reparameterize(..., samples=K)"
        )
    if out.shape[0] == 0:
        raise ValueError(f"{name} has 0 draws (dim 0 of {tuple(out.shape)}): the bound averages K >= 1 "
                         "importance weights; draw them with reparameterize(..., samples=K)")


def _refuse_analytic_kl(kl: torch.Tensor) -> None:
    """``ValueError`` for a kl that is the same for every draw: the analytic KL broadcast over the
    K draws (``reparameterize(..., samples=K)`` with its default ``kl="analytic"``). With it the loss
    is ``-(logmeanexp_k log p(x|z_k) - KL)``, which is no bound on log p(x) (it can pass it), and
    was returned without a word. Told apart by its stride 0 along the draws (an expanded view), or
    by the node that drew it (eager mode)."""
    if kl.dim() == 0 or kl.shape[0] < 2 or kl.numel() == 0:
        return  # K = 1: the analytic KL gives the ELBO, a bound
    analytic = kl.stride(0) == 0
    if not analytic and not torch.compiler.is_compiling():
        node = kl.grad_fn
        while node is not None and type(node).__name__ in _RESHAPE_NODES | {"ExpandBackward0"}:
            node = node.next_functions[0][0]
        analytic = getattr(node, "fastvae_kl", None) == "analytic"
    if analytic:
        raise ValueError(
            f"kl holds the same value for each of its {kl.shape[0]} draws (the analytic KL broadcast over them, "
            f"from reparameterize(..., samples=K) with its default kl='analytic'), so the loss would be no bound on "
            f"log p(x); the importance-weighted bound needs kl='sampled' (log q(z_k|x) - log p(z_k) of each draw): "
            f"call reparameterize(..., samples=K, kl='sampled')"
        )


class DregLink:
    """What ``IWAELoss(estimator="dreg")`` hands to the node that drew z and kl.

    The loss's backward ``record``s the normalised weights and the gradient tensor it sent to
    kl; the sampling node's backward asks ``weights_for(the gradient it received)``, which
    raises unless that gradient is exactly the recorded one (same storage: no other use of kl
    added to it).
    """

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None
        self.grad_kl: torch.Tensor | None = None

    def record(self, weights: torch.Tensor, grad_kl: torch.Tensor) -> None:
        """Keep the loss's normalised ``weights`` and the gradient ``grad_kl`` it sends to kl."""
        self.weights, self.grad_kl = weights, grad_kl

    def weights_for(self, grad_kl: torch.Tensor) -> torch.Tensor:
        """The recorded weights, shaped and typed like ``grad_kl``; ``RuntimeError`` unless ``grad_kl`` is
        the recorded gradient itself (same storage and size)."""
        sent = self.grad_kl
        if sent is None or grad_kl.data_ptr() != sent.data_ptr() or grad_kl.numel() != sent.numel():
            raise RuntimeError(
                "IWAELoss(estimator='dreg'): the sampled kl received a gradient that is not (only) the DReG "
                "loss's; DReG needs kl and z to feed only that loss. Detach other uses of kl (e.g. kl.detach() "
                "for logging), or use estimator='iwae'"
            )
        return self.weights.reshape(grad_kl.shape).to(grad_kl.dtype)


def _attach_dreg_link(kl: torch.Tensor) -> DregLink:
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "IWAELoss(estimator='dreg') runs in eager mode only (it reaches reparameterize's autograd node, "
            "which does not exist while torch.compile traces); compile the encoder and decoder and keep "
            "reparameterize and the loss outside, or use estimator='iwae'"
        )
    node, reshaped_only = kl.grad_fn, True
    while node is not None and type(node).__name__ in _RESHAPE_NODES | {"ExpandBackward0"}:
        reshaped_only &= type(node).__name__ != "ExpandBackward0"
        node = node.next_functions[0][0]
    mode = getattr(node, "fastvae_kl", None)
    if mode == "analytic":
        raise ValueError("IWAELoss(estimator='dreg') needs kl='sampled' (log q(z_k|x) - log p(z_k) of each draw): "
                         "the analytic KL has no per-draw path derivative; call reparameterize(..., kl='sampled')")
    if mode != "sampled" or not reshaped_only:
        producer = type(kl.grad_fn).__name__ if kl.grad_fn is not None else "a leaf tensor"
        if producer.startswith("Compiled"):
            producer += " (a torch.compile'd region: DReG runs in eager mode only, keep reparameterize outside it)"
        raise ValueError(
            f"IWAELoss(estimator='dreg') needs kl straight from fastvae.reparameterize(..., kl='sampled') "
            f"(DReG changes the gradient reparameterize sends to mu and logvar), but kl comes from {producer}; "
            f"pass it unmodified, or use estimator='iwae'"
        )
    if node.dreg is not None:
        raise ValueError("this kl was already passed to an IWAELoss(estimator='dreg'); DReG needs one loss per "
                         "draw of z and kl")
    node.dreg = DregLink()
    return node.dreg


@dataclass(frozen=True)
class IWAE:
    """The importance-weighted bound as a training objective for :func:`fastvae.step.aevb_objective`
    (and so for ``fastvae train --objective iwae``): ``-mean_i(logsumexp_k(ll_ik - kl_ik) - log K)``
    over K = ``samples`` draws of z per example, with the IWAE or the DReG gradient.

    Here the step owns z and kl (z goes only to ``model.decode``, kl only to the bound), so DReG
    needs no link: the sampling node reads the weights off kl's gradient
    (``reference.dreg_weights_from_grad_kl``), and the step compiles (``torch.compile``,
    ``fullgraph=True``, CUDA graphs) with either estimator. Draw k of example i is global noise
    row ``i * K + k``, as with :class:`fastvae.step.ELBO`'s L draws.

    The per-example metrics it reports are the ELBO's terms averaged over the K draws (the ELBO
    stays the comparable metric); the optimizer minimises the negative bound. There is no KL
    weight: ``beta`` must be 1 (the trainer refuses ``--beta`` / ``--kl-warmup`` with it).

    >>> out = aevb_objective(model, x, Noise.from_int(0), objective=IWAE(samples=5, estimator="dreg"))
    """

    samples: int = 5
    estimator: str = "iwae"

    def __post_init__(self) -> None:
        require_positive_int("samples", self.samples)
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")

    @property
    def draws(self) -> int:
        return self.samples

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor, noise: Noise) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, Z) posteriors -> z (M, K, Z) and the sampled kl (M, K)."""
        z, kl = draw_latents(mu, logvar, noise.seed, None, noise.first_row, self.samples, "sampled",
                             gradient="dreg" if self.estimator == "dreg" else "full")
        return z.transpose(0, 1), kl.transpose(0, 1)

    def combine(self, log_likelihood: torch.Tensor, kl: torch.Tensor, beta: float | torch.Tensor) -> StepOutput:
        """(M, K) per-draw terms -> the negative bound, averaged over the batch."""
        if not isinstance(beta, torch.Tensor) and beta != 1:
            raise ValueError(f"the IWAE objective has no KL weight: beta must be 1, got {beta!r}")
        bound = reference.importance_weighted_bound_ref(log_likelihood.transpose(0, 1), kl.transpose(0, 1))
        return StepOutput(-bound.mean(), log_likelihood.mean(1), kl.mean(1))
