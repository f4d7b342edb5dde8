"""The decoder's output head shared by the built-in VAEs, and E[x|z] from any decoder output.

A decoder's last layer produces ``1`` (Bernoulli / continuous-Bernoulli logits, or a
Gaussian mean with one learned logvar per feature) or ``2`` (a Gaussian mean and logvar per
example) values per feature; :class:`DecoderHead` turns them into what the likelihood takes.

>>> head = DecoderHead(likelihood="gaussian", decoder_variance="per_feature", squash_mean=False)
>>> logvar = torch.zeros(4) if head.learned_logvar else None     # the decoder's own parameter
>>> mean, logvar = head(torch.zeros(3, head.outputs_per_feature * 4), logvar)
>>> tuple(mean.shape), tuple(logvar.shape)
((3, 4), (4,))
"""

from __future__ import annotations

import torch

from ..likelihood import LIKELIHOODS



class DecoderHead:
    """Raw decoder outputs (..., k * D) -> logits, or (mean, logvar) for a Gaussian.

    Args:
        likelihood: one of ``fastvae.likelihood.LIKELIHOODS``.
        decoder_variance: Gaussian only: ``per_example`` (the decoder outputs a logvar per
            feature and example) or ``per_feature`` (one learned logvar per feature: the
            decoder owns it as a (D,) parameter and passes it in; ``learned_logvar`` says so).
        squash_mean: Gaussian only: a sigmoid on the mean (the paper's Frey Face model).
    """

    def __init__(self, likelihood: str, decoder_variance: str = "per_example", squash_mean: bool = False):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
        self.likelihood, self.squash_mean = likelihood, squash_mean
        gaussian = likelihood == "gaussian"
        self.per_example = gaussian and decoder_variance == "per_example"
        self.learned_logvar = gaussian and not self.per_example

    @property
    def outputs_per_feature(self) -> int:
        """How many values per feature the layer before this head must produce."""
        return 2 if self.per_example else 1

    def __call__(
        self, raw: torch.Tensor, logvar: torch.Tensor | None = None, dim: int = -1
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``raw`` holds the per-example logvar after the means along ``dim`` (``per_example``)."""
        if self.likelihood != "gaussian":
            return raw
        if self.per_example:
            mean, logvar = raw.chunk(2, dim=dim)
        else:
            mean = raw
        return (torch.sigmoid(mean) if self.squash_mean else mean), logvar


def decoded_mean(likelihood: str, decoder_out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """E[x|z] from a decoder output: sigmoid(logits) (Bernoulli), the mean (Gaussian), or the
    continuous Bernoulli's mean (logits)."""
    if likelihood == "gaussian":
        return decoder_out[0]
    if likelihood == "bernoulli":
        return torch.sigmoid(decoder_out)
    if likelihood == "continuous_bernoulli":
        return torch.distributions.ContinuousBernoulli(logits=decoder_out.float()).mean
    raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
