"""``ELBOLoss``: the negative ELBO as a drop-in ``nn.Module`` loss."""

from __future__ import annotations

import math

import torch
from torch import nn

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
        beta: weight of the KL term (beta-VAE, KL warm-up); a float or a 0-d tensor
            (a tensor can change every step without recompiling a compiled step).
    """

    def __init__(self, likelihood: str = "bernoulli", reduction: str = "mean", beta: float | torch.Tensor = 1.0):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float, torch.Tensor)):
            raise TypeError(f"beta must be a float or a 0-d tensor, got {type(beta).__name__}")
        if isinstance(beta, torch.Tensor) and beta.dim() != 0:
            raise ValueError(f"beta must be a 0-d tensor, got shape {tuple(beta.shape)}")
        if not isinstance(beta, torch.Tensor) and not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite, non-negative weight of the KL term, got {beta!r}")
        self.likelihood = likelihood
        self.reduction = reduction
        self.beta = beta

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
        loss = self.beta * kl - ll
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, reduction={self.reduction!r}, beta={self.beta}"

