"""One AEVB step's objective, for any model: the function every training loop in fastvae calls.

    out = aevb_objective(model, x, noise, beta, likelihood="bernoulli")   # ELBO, L = 1
    out.objective.backward()                  # what the optimizer minimises (a 0-d tensor)
    elbo = (out.log_likelihood - out.kl)      # per example: the metric, whatever beta is

Per example i of the batch, with z_il = mu_i + sigma_i * eps_il (l = 1..L draws):

    log_likelihood_i = mean_l log p(x_i | z_il)        kl_i = mean_l KL_il
    objective        = mean_i mean_l (beta * KL_il - log p(x_i | z_il))

``fastvae.trainer``, the paper's AEVB runs (``fastvae.paper``), evaluation's test ELBO and the
benchmarks all go through :func:`aevb_objective`; the trainer compiles it (``--compile``) and
captures it with the backward and the optimizer update (:mod:`fastvae.train_step`).

**The noise** is a :class:`Noise`: a seed (a one-element int64 tensor on the batch's device,
so the step has no host-side input and can be captured in a CUDA graph) and ``first_row``, the
batch's first row in the global batch of data-parallel training. ``fastvae.reparameterize``
decides how to draw it (in-kernel Philox on the Triton path, a seeded ``randn`` on the CPU);
either way eps of global row r depends only on (seed, r), so N ranks draw exactly the rows one
process would draw for the global batch, and a resumed run draws what the uninterrupted one did.

**Objectives plug in** as an object with ``draws`` (z samples per example), ``sample(mu, logvar,
noise)`` and ``combine(ll, kl, beta)`` (:class:`Objective`); :class:`ELBO` is the paper's,
with L >= 1 draws. An importance-weighted bound is another such object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from .data.seeding import derive_seed
from .input_checks import require_positive_int
from .latent import draw_latents
from .likelihood import LIKELIHOODS, log_likelihood
from .loss import checked_beta


@dataclass(frozen=True)
class Noise:
    """Where a step's eps comes from: ``seed`` (one-element int64 tensor on the batch's device)
    and ``first_row`` (this batch's first example in the global batch; 0 in one process).

    >>> Noise(torch.tensor([1234]))
    Noise(seed=tensor([1234]), first_row=0)
    """

    seed: torch.Tensor
    first_row: int = 0

    @staticmethod
    def from_int(seed: int, device: torch.device | str = "cpu", first_row: int = 0) -> "Noise":
        """A :class:`Noise` holding ``seed`` in a new device tensor."""
        return Noise(torch.tensor([seed], dtype=torch.int64, device=device), first_row)


def noise_seed(run_seed: int, step: int) -> int:
    """The noise seed of training step ``step`` (0-based): a pure function, so resuming needs no RNG state.

    >>> noise_seed(0, 3) == noise_seed(0, 3) != noise_seed(0, 4)
    True
    """
    return derive_seed(run_seed, "noise", step)


class StepOutput(NamedTuple):
    """What one step computes.

    Attributes:
        objective: 0-d tensor the optimizer minimises.
        log_likelihood: (M,) float32 log p(x_i | z) per example (mean over the draws).
        kl: (M,) float32 KL(q(z|x_i) || p(z)) per example (mean over the draws).
    """

    objective: torch.Tensor
    log_likelihood: torch.Tensor
    kl: torch.Tensor

    def negative_elbo(self) -> torch.Tensor:
        """The batch's mean negative ELBO (0-d, detached): the metric, whatever beta weighs the KL."""
        return (self.kl - self.log_likelihood).detach().mean()


class Objective(Protocol):
    """A training objective: how z is drawn per example, and how the per-draw terms combine."""

    draws: int

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor, noise: Noise) -> tuple[torch.Tensor, torch.Tensor]:
        """From (M, Z) posteriors: z (M, draws, Z) and the per-draw KL term (M, draws)."""

    def combine(self, log_likelihood: torch.Tensor, kl: torch.Tensor, beta: float | torch.Tensor) -> StepOutput:
        """From per-draw (M, draws) log p(x|z) and KL terms: the step's output."""


@dataclass(frozen=True)
class ELBO:
    """The AEVB objective: ``mean(beta * KL - log p(x|z))`` with ``samples`` draws of z per example
    (the paper's L) and the analytic KL. Draw l of example i is global noise row ``i * L + l``.

    ``path_gradient=True``: the "sticking the landing" gradient (Roeder et al., 2017; DReG at
    K = 1): the KL is the sampled ``log q(z|x) - log p(z)`` of each draw, and its gradient keeps
    only the path through z (the score term of log q, zero in expectation, is dropped).
    """

    samples: int = 1
    path_gradient: bool = False

    def __post_init__(self) -> None:
        require_positive_int("samples", self.samples)

    @property
    def draws(self) -> int:
        return self.samples

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor, noise: Noise) -> tuple[torch.Tensor, torch.Tensor]:
        m, z_dim = mu.shape[0], mu.shape[-1]
        shape = (m, self.samples, z_dim)
        kl, gradient = ("sampled", "path") if self.path_gradient else ("analytic", "full")
        return draw_latents(mu.unsqueeze(1).expand(shape), logvar.unsqueeze(1).expand(shape), noise.seed, None,
                            noise.first_row * self.samples, None, kl, gradient)

    def combine(self, log_likelihood: torch.Tensor, kl: torch.Tensor, beta: float | torch.Tensor) -> StepOutput:
        objective = (beta * kl - log_likelihood).mean()
        return StepOutput(objective, log_likelihood.mean(1), kl.mean(1))


def _rows(t: torch.Tensor, examples: int, draws: int, what: str) -> torch.Tensor:
    """A decoder output for examples x draws as (examples, draws, D)."""
    if t.dim() == 0 or t.shape[0] != examples * draws:
        raise ValueError(
            f"model.decode returned {what} of shape {tuple(t.shape)} for {examples * draws} latent rows; "
            "expected one row (or one example-shaped block) per row of z"
        )
    return t.reshape(examples, draws, -1)


def decoder_rows(decoder_out: torch.Tensor | tuple[torch.Tensor, torch.Tensor], examples: int, draws: int,
                 features: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``model.decode``'s output for (examples * draws) z rows, viewed as rows (examples, draws, D).

    A Gaussian's logvar may be shaped like the mean, like one example (or ``(D,)``), 0-d, or one
    per row ((rows, 1), broadcast over the row's features).
    """
    if isinstance(decoder_out, (tuple, list)):
        if len(decoder_out) != 2:
            raise TypeError(f"model.decode returned {len(decoder_out)} tensors; a Gaussian decoder returns (mean, logvar)")
        mean, logvar = decoder_out
        example = tuple(mean.shape[1:]) if isinstance(mean, torch.Tensor) else None
        mean = _rows(mean, examples, draws, "a mean")
        if isinstance(logvar, torch.Tensor) and logvar.dim() > 0:
            rows = examples * draws
            # one logvar per row, (rows, 1), holds D values when there are D rows: it is still per row
            per_row = (rows > 1 and logvar.numel() == rows and logvar.dim() > 1 and logvar.shape[0] == rows
                       and tuple(logvar.shape) != example)
            if logvar.numel() == features and not per_row:
                logvar = logvar.reshape(features)
            else:
                logvar = _rows(logvar, examples, draws, "a logvar")
        return mean, logvar
    return _rows(decoder_out, examples, draws, "an output")


def aevb_objective(
    model: torch.nn.Module,
    x: torch.Tensor,
    noise: Noise,
    beta: float | torch.Tensor = 1.0,
    *,
    likelihood: str = "bernoulli",
    objective: Objective = ELBO(),
) -> StepOutput:
    """One step's objective and per-example terms for a batch ``x`` (M, *example_shape).

    Args:
        model: any module with ``encode(x) -> (mu, logvar)`` and ``decode(z) -> decoder output``
            (see :mod:`fastvae.models.interface`).
        x: the batch as the data layer stores examples; the likelihood sees it as (M, D) rows.
        noise: the step's :class:`Noise`.
        beta: the KL weight (a float, or a 0-d tensor that may change between steps without
            recompiling a compiled step). It lives here and nowhere else. Checked: a number or a CPU
            tensor in full; a device tensor by dtype and shape (its value would cost a host sync).
        likelihood: ``"bernoulli"``, ``"continuous_bernoulli"`` or ``"gaussian"``.
        objective: :class:`ELBO` (default, L = 1) or another :class:`Objective`.

    Returns:
        :class:`StepOutput`.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
    # a number or a CPU tensor is checked in full; a device tensor's value is not read here (a
    # host sync every step): check it where it is made (TrainConfig.beta, ELBOLoss(beta=...))
    checked_beta(beta, read_value=not isinstance(beta, torch.Tensor) or beta.device.type == "cpu")
    m = x.shape[0]
    rows = x.reshape(m, 1, -1)
    mu, logvar = model.encode(x)
    z, kl = objective.sample(mu, logvar, noise)  # (M, L, Z), (M, L)
    draws = z.shape[1]
    out = decoder_rows(model.decode(z.reshape(m * draws, -1)), m, draws, rows.shape[-1])
    ll = log_likelihood(likelihood, out, rows)  # (M, L); x broadcasts over the draws
    return objective.combine(ll, kl, beta)
