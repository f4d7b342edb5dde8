"""The latent head: ``z, kl = reparameterize(mu, logvar)``.

CUDA tensors (and CPU tensors under ``FASTVAE_BACKEND=triton`` with ``TRITON_INTERPRET=1``)
go to the fused Triton kernel through the ``fastvae::latent_head`` custom op, which
``torch.compile(fullgraph=True)`` traces without a graph break; other tensors take the
plain-torch reference path. The seed lives in a device tensor, so the op can be captured
in a CUDA graph.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import reference
from .backend import use_triton
from .data.seeding import derive_seed
from .func_transforms import FuncFunction, fold_rows, transforms_active, unfold_rows
from .input_checks import (require_float_tensor, require_positive_int, require_rows, require_same_device,
                           require_same_shape)

SEED_HIGH = 2**62
# Philox counters of the noise, ((first_row + r) * samples + s) * ceil(Z / 4) + quad, are int64
# in the kernels and in the torch path: all must be < 2**63.
NOISE_COUNTER_END = 2**63
KL_MODES = ("analytic", "sampled")


def last_first_row(n_rows: int, n_latent: int, samples: int = 1) -> int:
    """The largest ``first_row`` whose noise counters all stay below 2**63 (for n_rows rows of Z = n_latent)."""
    return NOISE_COUNTER_END // (samples * -(-n_latent // 4)) - n_rows


@torch.library.custom_op("fastvae::latent_head", mutates_args=())
def _latent_head(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: Optional[torch.Tensor],
    seed: torch.Tensor,
    first: int,
    samples: int = 1,
    sampled_kl: bool = False,
    gradient: str = "full",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused latent head on (N, Z) ``mu``/``logvar``: ``samples`` draws per row.

    Returns z (samples, N, Z) and kl: the per-draw ``log q(z|x) - log p(z)``, (samples, N), if
    ``sampled_kl``, else the analytic KL, (N,). ``eps`` (samples, N, Z) is used as the noise if
    given; otherwise draw s of row r is the Philox stream's row ``(first + r) * samples + s``
    for the int64 ``seed`` (``reference.latent_noise_ref``). ``first`` is the global index of
    row 0 (data-parallel shards). ``gradient`` changes only the backward: ``"full"``, or a
    score-free mode of ``reference.SCORE_FREE_GRADIENTS`` (``"dreg"``, ``"path"``).
    """
    from .kernels.latent_head import latent_head_forward

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    return latent_head_forward(mu, logvar, eps, seed, first, samples, sampled_kl)


@_latent_head.register_fake
def _latent_head_fake(mu, logvar, eps, seed, first, samples=1, sampled_kl=False, gradient="full"):
    acc = reference.accumulation_dtype(mu, logvar)
    n_rows, n_cols = mu.shape
    kl_shape = (samples, n_rows) if sampled_kl else (n_rows,)
    return mu.new_empty((samples, n_rows, n_cols)), mu.new_empty(kl_shape, dtype=acc)


@torch.library.custom_op("fastvae::latent_head_backward", mutates_args=())
def _latent_head_backward(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: Optional[torch.Tensor],
    seed: torch.Tensor,
    first: int,
    samples: int,
    sampled_kl: bool,
    grad_z: Optional[torch.Tensor],
    grad_kl: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    from .kernels.latent_head import latent_head_backward

    return latent_head_backward(mu, logvar, eps, seed, first, samples, sampled_kl, grad_z, grad_kl)


@_latent_head_backward.register_fake
def _latent_head_backward_fake(mu, logvar, eps, seed, first, samples, sampled_kl, grad_z, grad_kl):
    return (torch.empty_like(mu, memory_format=torch.contiguous_format),
            torch.empty_like(logvar, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output) -> None:
    mu, logvar, eps, seed, first, samples, sampled_kl, gradient = inputs
    ctx.first, ctx.samples, ctx.sampled_kl = first, samples, sampled_kl
    ctx.fastvae_kl = "sampled" if sampled_kl else "analytic"  # what IWAELoss looks for
    # IWAELoss(estimator="dreg") attaches its link here; or set now by gradient="dreg" / "path"
    ctx.dreg = reference.SCORE_FREE_GRADIENTS.get(gradient)
    ctx.save_for_backward(mu, logvar, eps, seed)


def _backward(ctx, grad_z, grad_kl):
    mu, logvar, eps, seed = ctx.saved_tensors
    if ctx.dreg is not None:
        reference.require_first_order_dreg()
        # DReG: every draw's gradient reweighted by its normalised weight, the kl's score term
        # dropped (reference.dreg_grad_z_ref); the kernel then backpropagates that through z only
        grad_z, grad_kl = _dreg_grad_z(ctx, mu, logvar, eps, seed, grad_z, grad_kl), None
    # create_graph=True (or torch.func): the backward op as a differentiable function
    backward = _LatentHeadGrad.apply if torch.is_grad_enabled() else _latent_head_backward
    grad_mu, grad_logvar = backward(mu, logvar, eps, seed, ctx.first, ctx.samples, ctx.sampled_kl, grad_z, grad_kl)
    grad_eps = None
    if eps is not None and ctx.needs_input_grad[2]:
        grad_eps = _explicit_noise_grad(mu, logvar, eps, grad_z, grad_kl if ctx.sampled_kl else None)
    return grad_mu, grad_logvar, grad_eps, None, None, None, None, None


def _explicit_noise_grad(mu, logvar, eps, grad_z, grad_kl_sampled):
    """dL/deps for caller-given noise that itself requires grad (rare: computed in torch).

    dz/deps = std; the sampled KL 0.5 * sum(z^2 - eps^2 - lv) adds gkl * (z * std - eps).
    """
    acc = reference.accumulation_dtype(mu, logvar, eps)
    std = torch.exp(0.5 * logvar.to(acc))
    grad = torch.zeros(eps.shape, dtype=acc, device=eps.device)
    if grad_z is not None:
        grad = grad + grad_z.to(acc) * std
    if grad_kl_sampled is not None:
        e = eps.to(acc)
        z = mu.to(acc) + std * e
        grad = grad + grad_kl_sampled.to(acc).unsqueeze(-1) * (z * std - e)
    return grad.to(eps.dtype)


def _dreg_grad_z(ctx, mu, logvar, eps, seed, grad_z, grad_kl) -> torch.Tensor:
    """gz'_s = w_s * (gz_s + gkl_s * (z_s - eps_s / std)), (S, N, Z) in the accumulation dtype
    (w_s = 1 for the "path" gradient).

    eps is the caller's, or the seed's stream redrawn exactly by the kernel (mu = 0, lv = 0 gives
    z = eps): recovering it as (z - mu) / std would lose the digits that z's rounding removed.
    """
    acc = reference.accumulation_dtype(mu, logvar)
    if grad_kl is None:  # kl unused: nothing to reweight by (a DReG link then refuses the gradient)
        grad_kl = torch.zeros((ctx.samples, mu.shape[0]), dtype=acc, device=mu.device)
    weights = ctx.dreg.weights_for(grad_kl)
    weights = None if weights is None else weights.to(acc)
    if eps is None:
        eps = _kernel_noise(seed, ctx.first, ctx.samples, mu)
    m, lv, e = mu.to(acc), logvar.to(acc), eps.to(acc)
    std = torch.exp(0.5 * lv)
    path = m + std * e - e / std  # d(log q - log p)/dz at fixed q: z - eps / std
    gz = grad_z.to(acc) if grad_z is not None else torch.zeros_like(path)
    return reference.dreg_grad_z_ref(gz, grad_kl.to(acc).unsqueeze(-1), weights, path)


_latent_head.register_autograd(_backward, setup_context=_setup_context)


def _kernel_noise(seed: torch.Tensor, first: int, samples: int, like: torch.Tensor) -> torch.Tensor:
    """The kernels' own noise for (seed, first), (samples, N, Z) for ``like`` (N, Z), float32:
    the forward op on mu = logvar = 0 writes z = 0 + exp(0) * eps = eps exactly."""
    zeros = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
    return _latent_head(zeros, zeros, None, seed, first, samples, False)[0]


def _noise_for_instances(info, seed: torch.Tensor, seed_dim: int | None, first: int, samples: int, like: torch.Tensor) -> torch.Tensor:
    """Under vmap, the noise each instance's own call would draw: the same for all (one seed),
    or per instance (a vmapped seed, e.g. ``seed=None`` under ``randomness="different"``); (V, S, N, Z)."""
    if seed_dim is None:
        return _kernel_noise(seed, first, samples, like).expand(info.batch_size, samples, *like.shape)
    return torch.stack([_kernel_noise(s, first, samples, like) for s in seed.movedim(seed_dim, 0)])


@_latent_head.register_vmap
def _latent_head_vmap(info, in_dims, mu, logvar, eps, seed, first, samples=1, sampled_kl=False, gradient="full"):
    # fold the instances into rows, with explicit noise: folded rows would draw other rows' noise
    v = info.batch_size
    mu_dim, lv_dim, eps_dim, seed_dim = in_dims[:4]
    if eps is None:
        like = mu.select(mu_dim, 0) if mu_dim is not None else mu
        eps, eps_dim = _noise_for_instances(info, seed, seed_dim, first, samples, like), 0
    z, kl = _latent_head(fold_rows(mu, mu_dim, v), fold_rows(logvar, lv_dim, v), fold_rows(eps, eps_dim, v, row_dim=1),
                         seed.new_empty(0), 0, samples, sampled_kl, gradient)
    kl_row_dim = 1 if sampled_kl else 0
    return (unfold_rows(z, v, row_dim=1), unfold_rows(kl, v, row_dim=kl_row_dim)), (1, kl_row_dim)


@_latent_head_backward.register_vmap
def _latent_head_backward_vmap(info, in_dims, mu, logvar, eps, seed, first, samples, sampled_kl, grad_z, grad_kl):
    v = info.batch_size
    mu_dim, lv_dim, eps_dim, seed_dim, _, _, _, gz_dim, gkl_dim = in_dims
    if eps is None:
        like = mu.select(mu_dim, 0) if mu_dim is not None else mu
        eps, eps_dim = _noise_for_instances(info, seed, seed_dim, first, samples, like), 0
    grad_mu, grad_logvar = _latent_head_backward(
        fold_rows(mu, mu_dim, v), fold_rows(logvar, lv_dim, v), fold_rows(eps, eps_dim, v, row_dim=1),
        seed.new_empty(0), 0, samples, sampled_kl,
        None if grad_z is None else fold_rows(grad_z, gz_dim, v, row_dim=1),
        None if grad_kl is None else fold_rows(grad_kl, gkl_dim, v, row_dim=1 if sampled_kl else 0),
    )
    return (unfold_rows(grad_mu, v), unfold_rows(grad_logvar, v)), (0, 0)


class _LatentHead(FuncFunction):
    """The latent-head op under autograd and ``torch.func`` (grad, vmap, jacrev): the custom op's
    own autograd registration cannot serve torch.func (it defines no ``setup_context`` there;
    pytorch#170834), so the public function applies the op through this Function."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mu, logvar, eps, seed, first, samples, sampled_kl, gradient):
        return _latent_head(mu, logvar, eps, seed, first, samples, sampled_kl, gradient)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


class _LatentHeadGrad(FuncFunction):
    """The backward op, differentiable: the kernel computes the gradients; their own derivatives
    (double backward) are those of the same map in torch ops, the vector-Jacobian product of
    ``reference.latent_head_ref``, differentiated by ``torch.func.vjp`` (so third and higher
    orders follow)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mu, logvar, eps, seed, first, samples, sampled_kl, grad_z, grad_kl):
        return _latent_head_backward(mu, logvar, eps, seed, first, samples, sampled_kl, grad_z, grad_kl)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, logvar, eps, seed, first, samples, sampled_kl, grad_z, grad_kl = inputs
        ctx.first, ctx.samples, ctx.sampled_kl = first, samples, sampled_kl
        ctx.save_for_backward(mu, logvar, eps, seed, grad_z, grad_kl)

    @staticmethod
    def backward(ctx, grad_grad_mu, grad_grad_logvar):
        mu, logvar, eps, seed, grad_z, grad_kl = ctx.saved_tensors
        noise = eps if eps is not None else _kernel_noise(seed, ctx.first, ctx.samples, mu)
        sampled_kl = ctx.sampled_kl
        # an absent upstream gradient is a zero one
        gz = grad_z if grad_z is not None else torch.zeros(noise.shape, dtype=mu.dtype, device=mu.device)
        gkl = grad_kl if grad_kl is not None else torch.zeros(
            noise.shape[:2] if sampled_kl else noise.shape[1:2], dtype=reference.accumulation_dtype(mu, logvar), device=mu.device)

        def first_order(m, lv, e, g_z, g_kl):  # what the backward op computes: the forward's VJP, in torch ops
            _, vjp = torch.func.vjp(lambda m_, lv_: reference.latent_head_ref(m_, lv_, e, sampled_kl), m, lv)
            return vjp((g_z, g_kl))

        _, vjp = torch.func.vjp(first_order, mu, logvar, noise, gz, gkl)
        d_mu, d_logvar, d_eps, d_grad_z, d_grad_kl = vjp((grad_grad_mu, grad_grad_logvar))
        d_grad_z, d_grad_kl = (d if g is not None else None for d, g in ((d_grad_z, grad_z), (d_grad_kl, grad_kl)))
        return d_mu, d_logvar, d_eps if eps is not None else None, None, None, None, None, d_grad_z, d_grad_kl


def draw_seed(device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Philox seed drawn from torch's generator for ``device``, kept on that device.

    No host-device synchronisation, and on CUDA safe inside graph capture.
    """
    return torch.randint(0, SEED_HIGH, (1,), device=device, dtype=torch.int64, generator=generator)


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    seed: int | torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
    *,
    first_row: int = 0,
    samples: int | None = None,
    kl: str = "analytic",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``z = mu + exp(logvar/2) * eps`` and the ``KL(q(z|x) || N(0, I))`` per row.

    Args:
        mu, logvar: the encoder's outputs, shape (..., Z), same dtype.
        seed: seed of the noise; ``None`` draws one from torch's generator (so
            ``torch.manual_seed`` makes runs reproducible). An int or a 1-element int64
            tensor (int64 range). The same seed gives the same z on a given device and
            backend, and eps of row r depends only on (seed, r). The Triton kernels (and the
            torch path on CUDA) draw Philox4x32-10 noise, row r from row ``first_row + r`` of
            the seed's stream (``reference.latent_noise_ref``); the torch path on the CPU
            draws a seeded ``torch.randn`` per block of rows (:func:`cpu_seeded_normal`), ~50x
            cheaper there than Philox in torch ops.
        eps: explicit standard-normal noise shaped like ``mu``; then nothing is drawn.
        first_row: the rows draw the noise of rows ``first_row, first_row + 1, ...`` of the
            seed's stream (rows counted over the flattened leading dims). Data-parallel ranks
            pass their shard's start, so a global batch gets the same noise as in one process.
            The stream's counters must stay below 2**63 (``first_row <= last_first_row(N, Z, K)``,
            N the number of rows, K = samples or 1); only with a seed (or ``seed=None``), not
            with ``eps``.
        samples: ``K`` draws per row (importance weighting, ``IWAELoss``; the paper's L > 1):
            z gets a leading dim of K, from one read of mu and logvar. Draw s of row r takes
            row ``(first_row + r) * K + s`` of the seed's noise stream, so K = 1 draws what
            ``samples=None`` draws. ``eps``, if given, is then (K, *mu.shape).
        kl: ``"analytic"`` (default): the closed form ``-0.5 * sum(1 + lv - mu^2 - exp(lv))``,
            broadcast over the draws; ``"sampled"``: ``log q(z|x) - log p(z)`` of each draw
            (its mean over draws is the analytic KL; ``IWAELoss`` needs it, DReG too).

    Returns:
        ``z`` typed like ``mu``, shaped like it (``(K, *mu.shape)`` with ``samples=K``), and
        ``kl`` of shape ``z.shape[:-1]`` in float32 (float64 for float64 inputs).

    >>> mu, logvar = torch.zeros(4, 2), torch.zeros(4, 2)
    >>> z, kl = reparameterize(mu, logvar, seed=0)
    >>> z.shape, kl.shape
    (torch.Size([4, 2]), torch.Size([4]))
    >>> z, kl = reparameterize(mu, logvar, seed=0, samples=5, kl="sampled")
    >>> z.shape, kl.shape
    (torch.Size([5, 4, 2]), torch.Size([5, 4]))
    """
    return draw_latents(mu, logvar, seed, eps, first_row, samples, kl)


def draw_latents(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    seed: int | torch.Tensor | None,
    eps: torch.Tensor | None,
    first_row: int,
    samples: int | None,
    kl: str,
    gradient: str = "full",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reparameterize``, with a score-free backward for objectives that own z and kl:
    ``gradient="dreg"`` (``fastvae.iwae.IWAE``: the weights read off kl's gradient, unchecked,
    so it also runs under torch.compile) or ``"path"`` (sticking the landing,
    ``fastvae.step.ELBO(path_gradient=True)``); both need ``kl="sampled"``."""
    if gradient != "full" and (gradient not in reference.SCORE_FREE_GRADIENTS or kl != "sampled"):
        raise ValueError(f"gradient={gradient!r} needs kl='sampled' and one of full, "
                         f"{', '.join(reference.SCORE_FREE_GRADIENTS)}")
    require_float_tensor("mu", mu)
    require_float_tensor("logvar", logvar)
    require_rows("mu", mu)
    require_same_shape("logvar", logvar, "mu", mu)
    if logvar.dtype != mu.dtype:
        raise TypeError(f"logvar has dtype {logvar.dtype} but mu has {mu.dtype}; they must match")
    if samples is not None:
        samples = require_positive_int("samples", samples, " (draws per row) or None")
    if kl not in KL_MODES:
        raise ValueError(f"kl must be one of {', '.join(KL_MODES)}, got {kl!r}")
    if samples is not None and samples * mu.numel() >= 2**63:
        raise ValueError(f"samples={samples} draws of mu of shape {tuple(mu.shape)} would make z of "
                         f"{samples * mu.numel()} elements, more than a tensor can index (2**63 - 1)")
    draws_shape = mu.shape if samples is None else torch.Size((samples, *mu.shape))
    tensors = {"mu": mu, "logvar": logvar}
    if eps is not None:
        require_float_tensor("eps", eps)
        if eps.shape != draws_shape:
            what = "mu" if samples is None else f"(samples, *mu.shape) with samples={samples}"
            raise ValueError(f"eps has shape {tuple(eps.shape)} but must be {tuple(draws_shape)}, like {what}")
        tensors["eps"] = eps
        if seed is not None:
            raise ValueError("pass either seed or eps, not both: eps is the noise itself")
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError(f"seed must be an int or a 1-element int64 tensor, got {seed.dtype} of shape {tuple(seed.shape)}")
        tensors["seed"] = seed
    elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int, a 1-element int64 tensor or None, got {type(seed).__name__}")
    elif seed is not None and not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must fit in int64 (-2**63 <= seed < 2**63), got {seed}")
    if isinstance(first_row, bool) or not isinstance(first_row, int) or first_row < 0:
        raise ValueError(f"first_row must be a non-negative int, got {first_row!r}")
    if first_row and eps is not None:
        raise ValueError("first_row selects rows of the seed's noise stream; with eps= nothing is drawn, so it would be ignored")
    draws = samples or 1
    last = last_first_row(mu.numel() // mu.shape[-1], mu.shape[-1], draws)
    if first_row > last:
        raise ValueError(
            f"first_row={first_row} is too large: the noise counters ((first_row + row) * {draws} (samples) + draw) "
            f"* ceil({mu.shape[-1]} / 4) + column // 4 would pass 2**63 - 1, the end of the int64 noise stream; "
            f"for mu of shape {tuple(mu.shape)} first_row can be at most {last}"
        )
    device = require_same_device(**tensors)

    if not use_triton(device):
        if eps is None:
            eps = _torch_noise(mu, seed, first_row, samples)
        if samples is None and kl == "analytic":
            return reference.reparameterize_ref(mu, logvar, eps)
        return reference.reparameterize_draws_ref(mu, logvar, eps, kl, gradient)

    batch_shape, n_latent = mu.shape[:-1], mu.shape[-1]
    if eps is None:
        seed_tensor = draw_seed(device) if seed is None else _seed_tensor(seed, device)
    else:
        seed_tensor = mu.new_empty(0, dtype=torch.int64)  # never read: the kernel reads eps
        eps = eps.reshape(draws, -1, n_latent)
    z, kl_out = _LatentHead.apply(mu.reshape(-1, n_latent), logvar.reshape(-1, n_latent), eps, seed_tensor, first_row,
                                  draws, kl == "sampled", gradient)
    if kl == "sampled":
        kl_out = kl_out.reshape(draws_shape[:-1])  # a view: IWAELoss(estimator="dreg") looks through it
    elif samples is not None:
        kl_out = kl_out.reshape(batch_shape).expand(draws_shape[:-1])
    else:
        kl_out = kl_out.reshape(batch_shape)
    return z.reshape(draws_shape), kl_out


def _seed_tensor(seed: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1)
    return torch.tensor([seed], dtype=torch.int64, device=device)


def _torch_noise(
    mu: torch.Tensor, seed: int | torch.Tensor | None, first_row: int, samples: int | None = None
) -> torch.Tensor:
    """Noise for the torch path, like mu, or (samples, *mu.shape).

    ``seed=None`` (and no ``first_row``): ``torch.randn``, the cheapest draw, reproducible
    under ``torch.manual_seed``. A seed on the CPU: :func:`cpu_seeded_normal`. A seed on another
    device: the kernel's own stream through the pure-torch Philox (``reference.latent_noise_ref``:
    no host-device sync, traceable). Either way draw s of row r is row ``(first_row + r) * S + s``
    of the seed's stream (S = samples or 1).
    """
    if seed is None and first_row == 0:
        if samples is None:
            return torch.randn_like(mu)
        return torch.randn((samples, *mu.shape), dtype=reference.accumulation_dtype(mu), device=mu.device)
    seed_tensor = draw_seed(mu.device) if seed is None else _seed_tensor(seed, mu.device)
    n_latent, draws = mu.shape[-1], samples or 1
    rows = mu.numel() // n_latent if n_latent else 0
    if mu.device.type == "cpu":
        # the stream's rows first_row * S ... in (r, s) order, then the draws moved to the front
        if torch.compiler.is_compiling() or transforms_active():  # the op reads the seed when it runs
            eps = _cpu_seeded_normal_op(seed_tensor, first_row * draws, rows * draws, n_latent)
        else:
            eps = cpu_seeded_normal(int(seed_tensor.reshape(())), first_row * draws, rows * draws, n_latent)
        eps = eps.reshape(rows, draws, n_latent).transpose(0, 1)
    else:
        eps = reference.latent_noise_ref(seed_tensor, rows, n_latent, samples=draws, first_row=first_row)  # float32
    return eps.reshape(mu.shape) if samples is None else eps.reshape(draws, *mu.shape)


#: Rows per independently seeded block of the CPU noise stream.
CPU_NOISE_BLOCK_ROWS = 64
_CPU_NOISE_PURPOSE = "reparameterize"


def cpu_seeded_normal(seed: int, first_row: int, rows: int, cols: int) -> torch.Tensor:
    """Rows ``first_row .. first_row + rows - 1`` of the CPU noise stream of ``seed``: (rows, cols) float32.

    The stream is cut into blocks of :data:`CPU_NOISE_BLOCK_ROWS` rows; block b is
    ``torch.randn((64, cols))`` from a CPU generator seeded with
    ``derive_seed(seed, "reparameterize", b)`` (SplitMix64). Row r is therefore a function of
    (seed, r) alone: a shard of a batch draws the rows the whole batch would. A call costs one
    seeding and one ``randn`` per block it touches (about 10 us for 64 x 20 values).
    """
    out = torch.empty((rows, cols), dtype=torch.float32)
    if rows == 0 or cols == 0:
        return out
    generator = torch.Generator()
    block = CPU_NOISE_BLOCK_ROWS
    first_block, last_block = first_row // block, (first_row + rows - 1) // block
    drawn = torch.empty((block, cols), dtype=torch.float32)
    for b in range(first_block, last_block + 1):
        generator.manual_seed(derive_seed(seed, _CPU_NOISE_PURPOSE, b))
        torch.randn((block, cols), generator=generator, out=drawn)
        lo, hi = max(first_row, b * block), min(first_row + rows, (b + 1) * block)
        out[lo - first_row:hi - first_row].copy_(drawn[lo - b * block:hi - b * block])
    return out


@torch.library.custom_op("fastvae::cpu_seeded_normal", mutates_args=())
def _cpu_seeded_normal_op(seed: torch.Tensor, first_row: int, rows: int, cols: int) -> torch.Tensor:
    # under torch.compile the seed's value is read here, at run time, not at trace time
    return cpu_seeded_normal(int(seed.reshape(())), first_row, rows, cols)


@_cpu_seeded_normal_op.register_fake
def _(seed, first_row, rows, cols):
    return seed.new_empty((rows, cols), dtype=torch.float32)


@_cpu_seeded_normal_op.register_vmap
def _cpu_seeded_normal_vmap(info, in_dims, seed, first_row, rows, cols):
    # a vmapped seed (seed=None under randomness="different"): each instance's own stream
    seeds = seed.movedim(in_dims[0], 0)
    return torch.stack([_cpu_seeded_normal_op(s, first_row, rows, cols) for s in seeds]), 0
