"""``ELBOLoss``: the negative ELBO as a drop-in ``nn.Module`` loss."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from .input_checks import require_float_tensor, require_same_device
from .likelihood import LIKELIHOODS, log_likelihood

REDUCTIONS = ("mean", "sum", "none")


class ELBOLoss(nn.Module):
    """Negative ELBO ``-(log p(x|z) - beta * KL(q(z|x) || p(z)))`` per example, then reduced.

    Replaces the usual hand-written VAE loss::

        # before
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        # after
        z, kl = fastvae.reparameterize(mu, logvar)
        logits = decoder(z)
        loss = fastvae.ELBOLoss(reduction="sum")(logits, x, kl)

    Args:
        likelihood: ``"bernoulli"`` (decoder_out = logits), ``"continuous_bernoulli"``
            (logits) or ``"gaussian"`` (decoder_out = (mean, logvar)).
        reduction: ``"mean"`` over all leading (example) dims, ``"sum"``, or ``"none"``.
        beta: weight of the KL term (beta-VAE, KL warm-up); a finite float >= 0 or a 0-d
            floating tensor holding one. Checked wherever it is set (here, or ``crit.beta = ...``
            later); a tensor's value is read once there (a host-device sync for a CUDA tensor;
            assigning the same tensor again is free). A tensor can then be refilled in place
            every step (``crit.beta.fill_(w)``, as KL warm-up does) without a sync or a
            recompile; values written that way are the caller's to keep valid.
    """

    def __init__(self, likelihood: str = "bernoulli", reduction: str = "mean", beta: float | torch.Tensor = 1.0):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.likelihood = likelihood
        self.reduction = reduction
        self.beta = beta

    @property
    def beta(self) -> float | torch.Tensor:
        return self._beta

    @beta.setter
    def beta(self, value: float | torch.Tensor) -> None:
        if "_beta" not in self.__dict__ or value is not self._beta:  # the same tensor again: checked already
            value = checked_beta(value)
        self._beta = value

    def forward(
        self,
        decoder_out: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        x: torch.Tensor,
        kl: torch.Tensor,
    ) -> torch.Tensor:
        """``decoder_out`` (..., D) and ``x`` (..., D); ``kl`` shaped like the examples (...)."""
        ll = log_likelihood(self.likelihood, decoder_out, x)
        require_float_tensor("kl", kl)
        require_same_device(x=x, kl=kl)
        # kl is per example: shaped like the examples, or like their trailing dims (one kl
        # shared by S samples of each example). A summed (0-d) or size-1 kl would broadcast
        # silently into a wrong loss, so it is refused.
        trailing = ll.shape[ll.dim() - kl.dim():] if kl.dim() <= ll.dim() else None
        if kl.shape != trailing or (kl.dim() == 0 and ll.dim() > 0):
            raise ValueError(
                f"kl has shape {tuple(kl.shape)} but the examples have shape {tuple(ll.shape)} "
                f"(decoder output / x broadcast, without the last dim); pass the per-example kl "
                f"from fastvae.reparameterize, not its sum or mean"
            )
        # beta * kl in the likelihood's accumulation dtype (or kl's, if wider): a half kl (or a
        # float32 kl with a float64 likelihood) would round the product to its own precision
        kl = kl.to(torch.promote_types(kl.dtype, ll.dtype))
        if isinstance(self.beta, torch.Tensor) and self.beta.device != kl.device and self.beta.device.type != "cpu":
            raise ValueError(f"beta is on {self.beta.device} but kl is on {kl.device}: move beta to kl's device")
        loss = self.beta * kl - ll
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, reduction={self.reduction!r}, beta={self.beta}"


def checked_beta(beta: object, read_value: bool = True) -> float | torch.Tensor:
    """``beta`` if it is a valid KL weight (a finite number >= 0, or a 0-d floating tensor
    holding one), as a float or the same tensor; ``TypeError``/``ValueError`` otherwise.

    A tensor's value is read here if ``read_value``: one host-device sync for a CUDA tensor
    (not for meta or fake tensors, which hold no value, nor while torch.compile traces).
    """
    if isinstance(beta, bool) or not isinstance(beta, (numbers.Real, torch.Tensor)):
        raise TypeError(f"beta must be a float or a 0-d tensor, got {type(beta).__name__}")
    if not isinstance(beta, torch.Tensor):
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite, non-negative weight of the KL term, got {beta!r}")
        return float(beta)
    if not beta.is_floating_point():
        raise TypeError(f"beta must be a floating-point tensor, got {beta.dtype}")
    if beta.dim() != 0:
        raise ValueError(f"beta must be a 0-d tensor, got shape {tuple(beta.shape)}")
    # No value to read for meta/fake tensors, and under torch.compile reading it would break the graph
    if read_value and beta.device.type != "meta" and not isinstance(beta, FakeTensor) and not torch.compiler.is_compiling():
        value = beta.detach().item()  # the host-device sync for a CUDA tensor
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"beta must be a finite, non-negative weight of the KL term, got tensor({value!r})")
    return beta
