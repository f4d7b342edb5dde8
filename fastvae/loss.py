"""``ELBOLoss``: the negative ELBO as a drop-in ``nn.Module`` loss."""

from __future__ import annotations

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
        if not _broadcasts(kl.shape, ll.shape) or torch.broadcast_shapes(kl.shape, ll.shape) != ll.shape:
            raise ValueError(
                f"kl has shape {tuple(kl.shape)} but the examples have shape {tuple(ll.shape)} "
                f"(x.shape[:-1]); pass the per-example kl from fastvae.reparameterize"
            )
        loss = self.beta * kl - ll
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, reduction={self.reduction!r}, beta={self.beta}"


def _broadcasts(a: torch.Size, b: torch.Size) -> bool:
    try:
        torch.broadcast_shapes(a, b)
        return True
    except RuntimeError:
        return False
