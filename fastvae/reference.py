"""Readable pure-torch definitions of the ELBO's heads.

This is the oracle the Triton kernels are tested against, the path CPU tensors take
with the ``auto`` backend, and the baseline the benchmarks import. Every function
upcasts half-precision inputs to float32 (float64 stays float64), so results are
accumulated exactly as the kernels accumulate them. The heads are autograd.Functions
with the kernels' closed-form backward (float64 gradcheck in tests/test_gradients.py).

>>> mu, logvar = torch.zeros(3, 2), torch.zeros(3, 2)
>>> kl_standard_normal_ref(mu, logvar)
tensor([0., 0., 0.])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .func_transforms import FuncFunction

LOG_2PI = math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)
# F.softplus(l) returns l itself above its threshold (default 20): off by log1p(e^-l) ~ 2e-9
# there, far below float32's resolution but 1e6 float64 ulps. Above 40, e^-l < 4.3e-18 is below
# an ulp of l in float64 too.
SOFTPLUS_LINEAR_ABOVE = 40.0
# Below these |logit|s the continuous-Bernoulli normaliser uses its Taylor series (the closed
# form is 0/0 at logit 0, and its value and gradient lose digits to cancellation near 0).
# With the terms through u^8 (u = l/2) the first omitted term, 146 u^10 / 66825, is < 3e-16
# below 0.1 (float64) and < 3e-9 below 0.5 (float32 and half precision, which accumulate in
# float32); the same cut-offs as the kernels in fastvae.kernels.likelihood_head.
CB_TAYLOR_CUTOFF_F64 = 0.1
CB_TAYLOR_CUTOFF_F32 = 0.5


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half precision to float32; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype results are accumulated and returned in: float64 if any input is, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011), the
# counter-based generator of the latent-head kernels (via tl.philox), in plain int64 torch ops.
PHILOX_ROUND_A, PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
PHILOX_KEY_A, PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
_U32 = 0xFFFFFFFF


def _mulhilo32(k: int, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``k * c`` (k a 32-bit constant, c int64 in [0, 2^32)).

    The product is formed from 16-bit halves of c, so no int64 ever overflows.
    """
    low = k * (c & 0xFFFF)  # < 2^48
    high = k * (c >> 16)  # < 2^48; the product is high * 2^16 + low
    middle = low + ((high & 0xFFFF) << 16)  # < 2^49
    return (high >> 16) + (middle >> 32), middle & _U32


def _uint32_to_uniform(i: torch.Tensor) -> torch.Tensor:
    """As Triton's uint_to_uniform_float: the int32 bit pattern, folded to >= 0, times 2^-31 (float32)."""
    signed = torch.where(i >= 2**31, i - 2**32, i)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * 4.6566127342e-10


def _philox4x32(seed: torch.Tensor, counters: torch.Tensor) -> list[torch.Tensor]:
    """The four 32-bit outputs (int64 tensors) of Philox4x32-10 with key (seed low word, seed
    high word) at counters (counter low word, counter high word, 0, 0)."""
    seed = seed.reshape(())
    k0, k1 = seed & _U32, (seed >> 32) & _U32
    c0, c1 = counters & _U32, (counters >> 32) & _U32
    c2 = c3 = torch.zeros_like(counters)
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + PHILOX_KEY_A) & _U32, (k1 + PHILOX_KEY_B) & _U32
    return [c0, c1, c2, c3]


def _normal_quads(seed: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Four float32 normals per counter, stacked on a new last dim: Box-Muller on the uniform
    pairs (u0, u1) and (u2, u3), cosine then sine branch (the kernels' ``_normal_quads``)."""
    u0, u1, u2, u3 = (_uint32_to_uniform(c) for c in _philox4x32(seed, counters))
    r01 = torch.sqrt(-2.0 * torch.log(u0.clamp_min(1.0e-7)))
    r23 = torch.sqrt(-2.0 * torch.log(u2.clamp_min(1.0e-7)))
    t1, t3 = 6.283185307179586 * u1, 6.283185307179586 * u3
    return torch.stack([r01 * torch.cos(t1), r01 * torch.sin(t1), r23 * torch.cos(t3), r23 * torch.sin(t3)], dim=-1)


def philox_randn_ref(seed: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Standard-normal float32 noise at stream positions ``offsets``, exactly as the kernels draw it.

    Position p is output p % 4 of Philox4x32-10 at counter p // 4 (key: the seed's low and high
    words; counter: (low word, high word, 0, 0)); the four outputs become uniforms u0..u3 in
    [0, 1) and Box-Muller maps (u0, u1) to the normals of positions 4k, 4k+1 (cosine, sine) and
    (u2, u3) to 4k+2, 4k+3. Every element depends only on (seed, its position), so any slice of
    a stream can be drawn on its own. Agrees with the kernels bit for bit in the integers and
    to float32 rounding of log / sqrt / cos / sin in the normals. :func:`latent_noise_ref` gives
    the positions of the latent head's (S, N, Z) draws.

    Args:
        seed: int64 tensor with one element.
        offsets: int64 tensor of non-negative positions; the result has its shape.
    """
    quads = _normal_quads(seed, offsets // 4)
    return torch.gather(quads, -1, (offsets % 4).unsqueeze(-1)).squeeze(-1)


def latent_noise_ref(
    seed: torch.Tensor, n_rows: int, n_cols: int, samples: int = 1, first_row: int = 0
) -> torch.Tensor:
    """The latent head's noise, (samples, n_rows, n_cols) float32: draw s of row r is the stream's
    row (first_row + r) * samples + s, rows padded to a multiple of 4 columns, so element
    (s, r, c) is at position ((first_row + r) * samples + s) * 4 * ceil(n_cols / 4) + c (that is
    ((first_row + r) * samples + s) * n_cols + c when n_cols % 4 == 0).

    >>> latent_noise_ref(torch.tensor([7]), 2, 3, samples=2).shape
    torch.Size([2, 2, 3])
    """
    quads_per_row = -(-n_cols // 4)
    device = seed.device
    rows = first_row + torch.arange(n_rows, dtype=torch.int64, device=device)  # first_row may be near 2**63
    draws = rows[None, :] * samples + torch.arange(samples, dtype=torch.int64, device=device)[:, None]  # (S, N)
    counters = draws[..., None] * quads_per_row + torch.arange(quads_per_row, dtype=torch.int64, device=device)
    return _normal_quads(seed, counters).reshape(samples, n_rows, 4 * quads_per_row)[..., :n_cols]


def kl_standard_normal_ref(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row: -0.5 * sum(1 + lv - mu^2 - exp(lv))."""
    mu, logvar = upcast(mu), upcast(logvar)
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


# The heads below are torch.autograd.Functions whose backward is the closed-form gradient
# (the same math as the kernels in fastvae.kernels): autograd through the elementwise chain
# would save a full-size temporary per op and replay each op backward. Half-precision inputs
# are upcast once, before the Function (float32; float64 stays), so the Functions compute in
# the accumulation dtype and autograd rounds each gradient once to its input's dtype. Each
# Function saves only its inputs, and its backward is one of the ``*_grads`` functions: plain
# torch ops, so a backward with ``create_graph=True`` (gradient penalties, Hessian-vector
# products) is recorded by autograd and differentiates correctly to any order (they work in
# place only where nothing records them), and the kernel path's backward ops take their own
# derivatives from the same functions. ``setup_context`` and ``generate_vmap_rule`` make the
# Functions work under ``torch.func`` (grad, vmap, jacrev, per-example gradients).


def _recording() -> bool:
    """Whether autograd records the ops now: a backward with create_graph=True, or torch.func."""
    return torch.is_grad_enabled()


def _scaled(t: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``t * factor``, into ``t`` (a temporary of the caller's) unless autograd records the ops."""
    return t * factor if _recording() else t.mul_(factor)


def _shifted(t: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
    """``t + shift``, into ``t`` (a temporary of the caller's) unless autograd records the ops."""
    return t + shift if _recording() else t.add_(shift)


def reparameterize_grads(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor,
    grad_z: torch.Tensor,
    grad_kl: torch.Tensor,
    needs: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of (z, kl) = reparameterize(mu, logvar, eps) w.r.t. (mu, logvar, eps) for the
    upstream ``grad_z`` (like z) and ``grad_kl`` (one per row), all in one (accumulation)
    dtype; None where ``needs`` says so.

        dL/dmu  = gz + gkl * mu
        dL/dlv  = 0.5 * gz * exp(lv/2) * eps + 0.5 * gkl * (exp(lv) - 1)
        dL/deps = gz * exp(lv/2)
    """
    gkl = grad_kl.unsqueeze(-1)
    need_mu, need_lv, need_eps = needs
    grad_mu = grad_lv = grad_eps = None
    if need_mu:
        grad_mu = torch.addcmul(grad_z, gkl, mu)
    if need_lv or need_eps:
        std = torch.exp(0.5 * logvar)
        gz_std = grad_z * std
        if need_lv:
            # 0.5 * (gz_std * eps + gkl * (std^2 - 1))
            grad_lv = _scaled(torch.addcmul(_scaled(_shifted(std.square(), -1.0), gkl), gz_std, eps), 0.5)
        if need_eps:
            grad_eps = gz_std
    return grad_mu, grad_lv, grad_eps


class _Reparameterize(FuncFunction):
    """z = mu + exp(lv/2) * eps,  kl = 0.5 * sum(mu^2 + exp(lv) - 1 - lv) per row."""

    generate_vmap_rule = True

    @staticmethod
    def forward(mu, logvar, eps):
        return torch.addcmul(mu, torch.exp(0.5 * logvar), eps), kl_standard_normal_ref(mu, logvar)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        return reparameterize_grads(*ctx.saved_tensors, grad_z, grad_kl, ctx.needs_input_grad)


def reparameterize_ref(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = mu + exp(logvar/2) * eps (in mu's dtype) and the per-row analytic KL.

    mu and logvar are upcast once, so that in half precision their gradients from z and
    from the KL are summed in float32 and rounded once (as the kernel does).
    """
    acc = accumulation_dtype(mu, logvar)
    z, kl = _Reparameterize.apply(mu.to(acc), logvar.to(acc), eps.to(acc))
    return z.to(mu.dtype), kl


def latent_head_ref(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, sampled_kl: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent-head op in plain (differentiable) torch ops, for (N, Z) mu/logvar and
    (S, N, Z) noise: z (S, N, Z) in mu's dtype, and the analytic KL (N,) or, if ``sampled_kl``,
    the per-draw ``log q(z|x) - log p(z) = 0.5 * sum(z^2 - eps^2 - lv)`` (S, N), accumulated
    in float32 (float64). The kernel path differentiates it for its double backward.
    """
    acc = accumulation_dtype(mu, logvar)
    m, lv, e = mu.to(acc), logvar.to(acc), eps.to(acc)
    z = m + torch.exp(0.5 * lv) * e
    kl = 0.5 * (z.square() - e.square() - lv).sum(-1) if sampled_kl else kl_standard_normal_ref(m, lv)
    return z.to(mu.dtype), kl


def reparameterize_draws_grads(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor,
    grad_z: torch.Tensor,
    grad_kl: torch.Tensor,
    sampled: bool,
    needs: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of (z, kl) = reparameterize_draws_ref(mu, logvar, eps) w.r.t. (mu, logvar, eps),
    in one (accumulation) dtype, plain torch ops (differentiable); None where ``needs`` says so.

    With gz_s = dL/dz_s and gkl_s = dL/dkl_s (per row), summed over the draws s:
        sampled:  t_s     = gz_s + gkl_s * z_s
                  dL/dmu  = sum_s t_s
                  dL/dlv  = sum_s 0.5 * std * eps_s * t_s - 0.5 * gkl_s
                  dL/deps_s = std * t_s - gkl_s * eps_s
        analytic: dL/dmu  = sum_s gz_s + gkl * mu
                  dL/dlv  = sum_s 0.5 * std * eps_s * gz_s + 0.5 * gkl * (exp(lv) - 1)
                  dL/deps_s = std * gz_s
    """
    std = torch.exp(0.5 * logvar)
    gkl = grad_kl.unsqueeze(-1)
    if sampled:
        t = torch.addcmul(grad_z, gkl, torch.addcmul(mu, std, eps))  # gz_s + gkl_s * z_s
        grad_mu = t.sum_to_size(mu.shape)
        grad_lv = (0.5 * std * eps * t - 0.5 * gkl).sum_to_size(logvar.shape)
        grad_eps = std * t - gkl * eps
    else:
        grad_mu = grad_z.sum_to_size(mu.shape) + gkl * mu
        grad_lv = (0.5 * std * eps * grad_z).sum_to_size(logvar.shape) + 0.5 * gkl * (std.square() - 1.0)
        grad_eps = std * grad_z
    return tuple(g if need else None for g, need in zip((grad_mu, grad_lv, grad_eps.sum_to_size(eps.shape)), needs))


class _ReparameterizeDraws(FuncFunction):
    """S draws per row, z_s = mu + std * eps_s (std = exp(lv/2)), with the analytic KL or the
    sampled one, kl_s = log q(z_s|x) - log p(z_s) = sum_c 0.5 * (z_s^2 - eps_s^2 - lv).

    eps is (S, ..., Z) for S draws, or shaped like mu for one draw without a sample dim. The
    analytic KL is returned once per row (the caller broadcasts it over the draws). Backward:
    :func:`reparameterize_draws_grads`, or with DReG (sampled only; ``ctx.dreg``: set by
    ``IWAELoss(estimator="dreg")``, or from ``gradient``, see ``SCORE_FREE_GRADIENTS``) the kl's
    score term dropped and the draws reweighted, gz'_s = w_s * (gz_s + gkl_s * (z_s - eps_s / std))
    (``dreg_grad_z_ref``; ``gradient="path"``: no reweighting); then dL/dmu = sum_s gz'_s,
    dL/dlv = sum_s 0.5 * std * eps_s * gz'_s.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(mu, logvar, eps, sampled: bool, gradient: str):
        std = torch.exp(0.5 * logvar)
        z = torch.addcmul(mu, std, eps)
        kl = 0.5 * (z.square() - eps.square() - logvar).sum(-1) if sampled else kl_standard_normal_ref(mu, logvar)
        return z, kl

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, logvar, eps, sampled, gradient = inputs
        ctx.save_for_backward(mu, logvar, eps)
        ctx.fastvae_kl = "sampled" if sampled else "analytic"  # what IWAELoss looks for
        # IWAELoss(estimator="dreg") attaches its link here; or set now by gradient="dreg" / "path"
        ctx.dreg = SCORE_FREE_GRADIENTS.get(gradient)

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        m, lv, e = ctx.saved_tensors
        if ctx.dreg is None:
            return (*reparameterize_draws_grads(m, lv, e, grad_z, grad_kl, ctx.fastvae_kl == "sampled",
                                                ctx.needs_input_grad[:3]), None, None)
        require_first_order_dreg()
        std = torch.exp(0.5 * lv)
        z = torch.addcmul(m, std, e)
        gz = dreg_grad_z_ref(grad_z, grad_kl.unsqueeze(-1), ctx.dreg.weights_for(grad_kl), z - e / std)
        need_mu, need_lv, need_eps = ctx.needs_input_grad[:3]
        return (
            gz.sum_to_size(m.shape) if need_mu else None,
            (0.5 * std * e * gz).sum_to_size(m.shape) if need_lv else None,
            (std * gz).sum_to_size(e.shape) if need_eps else None,
            None,
            None,
        )


def require_first_order_dreg() -> None:
    """DReG's encoder gradient is an estimator, not the derivative of the loss: nothing to
    differentiate again. A backward that records (create_graph=True, torch.func) is refused."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "IWAELoss(estimator='dreg') gives a first-order gradient estimator, which has no derivative: "
            "backward with create_graph=True (or torch.func transforms) is not supported through it; "
            "use estimator='iwae' for higher-order gradients"
        )


def reparameterize_draws_ref(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, kl: str = "sampled", gradient: str = "full"
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = mu + exp(logvar/2) * eps for each draw of eps, and the KL per draw.

    Args:
        mu, logvar: (..., Z).
        eps: (S, ..., Z) for S draws, or shaped like mu for one draw.
        kl: ``"sampled"``: log q(z|x) - log p(z) of each draw; ``"analytic"``: the closed form,
            broadcast over the draws.
        gradient: (sampled only) ``"full"``, or a score-free gradient (``SCORE_FREE_GRADIENTS``):
            ``"dreg"``, DReG with the weights read off kl's gradient (only right when an IWAE
            bound over the draws, dim 0, is the only consumer of z and kl); ``"path"``, the
            score term dropped, no reweighting ("sticking the landing", for the ELBO).

    Returns:
        z shaped like eps in mu's dtype; kl shaped eps.shape[:-1] in the accumulation dtype.
    """
    acc = accumulation_dtype(mu, logvar)
    z, kl_value = _ReparameterizeDraws.apply(mu.to(acc), logvar.to(acc), eps.to(acc), kl == "sampled", gradient)
    z = z.to(mu.dtype)
    if kl == "analytic":
        kl_value = kl_value.expand(eps.shape[:-1])
    return z, kl_value  # the sampled kl is the node's own output: IWAELoss(estimator="dreg") finds it there


def dreg_grad_z_ref(
    grad_z: torch.Tensor, grad_kl: torch.Tensor, weights: torch.Tensor, path: torch.Tensor
) -> torch.Tensor:
    """The gradient DReG (Tucker et al., 2018) sends back through z_k to the encoder.

    With an IWAE loss as the only consumer of z and kl, grad_kl_k = g * w_k and grad_z_k =
    -g * w_k * dlog p(x|z_k)/dz_k; DReG wants -g * w_k^2 * dlog w_k/dz_k at fixed encoder
    parameters, where dkl_k/dz_k without the score term is the path derivative
    ``path = z_k - eps_k / std``. So every draw's gradient is reweighted by its w_k:
        gz'_k = w_k * (grad_z_k + grad_kl_k * path_k)
    and kl sends nothing further. ``grad_kl`` comes with a trailing unit dim, ``weights`` like grad_kl
    without it. ``weights=None``: the score term dropped, no reweighting (the "sticking the
    landing" gradient of Roeder et al., 2017, what DReG is at K = 1).
    """
    path_grad = torch.addcmul(grad_z, grad_kl, path)
    return path_grad if weights is None else weights.unsqueeze(-1) * path_grad


def dreg_weights_from_grad_kl(grad_kl: torch.Tensor) -> torch.Tensor:
    """The normalised importance weights, read off kl's gradient: when an IWAE bound over the
    draws (dim 0) is the only consumer of kl, grad_kl_k = c * w_k per example (c = -g, or
    -beta * g), so w_k = grad_kl_k / sum_j grad_kl_j; 0 where an example's gradient is 0."""
    total = grad_kl.sum(0, keepdim=True)
    return grad_kl / torch.where(total == 0, torch.ones_like(total), total)


class _WeightsFromGradKl:
    """``ctx.dreg`` of draws made for a DReG objective that consumes z and kl alone (no link to
    check: traceable under torch.compile)."""

    @staticmethod
    def weights_for(grad_kl: torch.Tensor) -> torch.Tensor:
        return dreg_weights_from_grad_kl(grad_kl)


class _PathOnly:
    """``ctx.dreg`` of draws whose kl gradient loses its score term without reweighting."""

    @staticmethod
    def weights_for(grad_kl: torch.Tensor) -> None:
        return None


#: The sampling node's score-free backward modes, by ``gradient=`` name ("full": none of them).
SCORE_FREE_GRADIENTS = {"dreg": _WeightsFromGradKl(), "path": _PathOnly()}


def importance_weighted_bound_grads(
    ll: torch.Tensor, kl: torch.Tensor, grad_bound: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dll, dL/dkl, w) of the bound below for the upstream ``grad_bound`` (per example), in
    plain torch ops (differentiable), with the normalised importance weights
    w_k = softmax_k(ll_k - kl_k) computed once: dL/dll_k = g * w_k, dL/dkl_k = -g * w_k.
    The weights are exp(log_w_k - max) / sum_j exp(log_w_j - max), not exp(log_w_k - bound):
    at |log_w| ~ 1e8 and beyond, float32 absorbs log sum_j exp(...) into the max and the
    latter would no longer sum to 1.
    """
    weights = torch.softmax(ll - kl, 0)
    grad_ll = grad_bound * weights
    return grad_ll, -grad_ll, weights


class _ImportanceWeightedBound(FuncFunction):
    """bound = logsumexp_k(ll_k - kl_k) - log K per example, the draws k along dim 0;
    backward :func:`importance_weighted_bound_grads`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(ll, kl, observer):
        log_w = ll - kl
        return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])  # max-shifted: stable for any K

    @staticmethod
    def setup_context(ctx, inputs, output):
        ll, kl, observer = inputs
        ctx.observer = observer
        ctx.save_for_backward(ll, kl)

    @staticmethod
    def backward(ctx, grad_bound):
        ll, kl = ctx.saved_tensors
        if ctx.observer is not None:
            require_first_order_dreg()
        grad_ll, grad_kl, weights = importance_weighted_bound_grads(ll, kl, grad_bound)
        if ctx.observer is not None:
            ctx.observer(weights, grad_kl)
        return grad_ll, grad_kl, None


def importance_weighted_bound_ref(
    ll: torch.Tensor, kl: torch.Tensor, observer=None
) -> torch.Tensor:
    """Burda et al.'s bound, ``logsumexp_k(ll_k - kl_k) - log K`` per example (draws along dim 0).

    ``ll`` and ``kl`` are (K, ...) log p(x|z_k) and log q(z_k|x) - log p(z_k), accumulated in
    float32 (float64 for float64 inputs). ``observer(weights, grad_kl)``, if given, is called in
    the backward with the normalised weights and the gradient sent to kl (DReG uses it).

    >>> importance_weighted_bound_ref(torch.zeros(4, 2), torch.zeros(4, 2))
    tensor([0., 0.])
    """
    acc = accumulation_dtype(ll, kl)
    return _ImportanceWeightedBound.apply(ll.to(acc), kl.to(acc), observer)


def logit_likelihood_grads(
    logits: torch.Tensor,
    x: torch.Tensor,
    grad_ll: torch.Tensor,
    continuous: bool,
    needs: tuple[bool, bool] = (True, True),
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the (continuous) Bernoulli per-row ll w.r.t. (logits, x) for the upstream
    ``grad_ll`` (one per row), all in one (accumulation) dtype, summed to each input's shape
    (x may be broadcast); None where ``needs`` says so.

        dL/dl = g * (x - sigmoid(l))   [continuous Bernoulli: + g * (1/l - 1/sinh(l))]
        dL/dx = g * l
    """
    g = grad_ll.unsqueeze(-1)
    grad_logits = grad_x = None
    if needs[0]:
        dl = x - torch.sigmoid(logits)
        if continuous:
            dl = _shifted(dl, continuous_bernoulli_log_norm_grad_ref(logits))
        grad_logits = _scaled(dl, g).sum_to_size(logits.shape)
    if needs[1]:
        grad_x = (g * logits).sum_to_size(x.shape)
    return grad_logits, grad_x


class _LogitLikelihood(FuncFunction):
    """ll = sum(x*l - softplus(l)) per row (Bernoulli), plus sum(log C(l)) if continuous."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, x, continuous: bool):
        # sum(x*l) as a dot product: no full-size temporary
        ll = torch.linalg.vecdot(x, logits) - F.softplus(logits, threshold=SOFTPLUS_LINEAR_ABOVE).sum(-1)
        if continuous:
            ll = ll + continuous_bernoulli_log_norm_ref(logits).sum(-1)
        return ll

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, x, continuous = inputs
        ctx.continuous = continuous
        ctx.save_for_backward(logits, x)

    @staticmethod
    def backward(ctx, grad_ll):
        logits, x = ctx.saved_tensors
        return (*logit_likelihood_grads(logits, x, grad_ll, ctx.continuous, ctx.needs_input_grad[:2]), None)


def _logit_likelihood_ref(logits: torch.Tensor, x: torch.Tensor, continuous: bool) -> torch.Tensor:
    acc = accumulation_dtype(logits, x)
    return _LogitLikelihood.apply(logits.to(acc), x.to(acc), continuous)


def bernoulli_log_likelihood_ref(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum(x * l - softplus(l)) per row: Bernoulli(logits=l).log_prob(x).sum(-1), stable for any finite l."""
    return _logit_likelihood_ref(logits, x, False)


def gaussian_grads(
    residual: torch.Tensor,
    logvar: torch.Tensor,
    grad_ll: torch.Tensor,
    needs: tuple[bool, bool] = (True, True),
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the Gaussian per-row ll w.r.t. (r, logvar), r = mean - x, for the upstream
    ``grad_ll`` (one per row), in one (accumulation) dtype; the logvar's summed to its shape
    ((D,), 0-d: broadcast); None where ``needs`` says so. With w = exp(-lv):

        dL/dr  = -g * r * w          (= dL/dmean = -dL/dx)
        dL/dlv = 0.5 * g * (r^2 * w - 1)
    """
    g = grad_ll.unsqueeze(-1)
    rw = residual * torch.exp(-logvar)
    grad_lv = None
    if needs[1]:
        grad_lv = _scaled(_shifted(residual * rw, -1.0), 0.5 * g).sum_to_size(logvar.shape)
    grad_residual = _scaled(rw, -g) if needs[0] else None
    return grad_residual, grad_lv


class _GaussianLikelihood(FuncFunction):
    """ll = sum(-0.5 * (log 2pi + lv + r^2 exp(-lv))) per row, r = mean - x."""

    generate_vmap_rule = True

    @staticmethod
    def forward(residual, logvar):
        # lv + r^2 w broadcasts lv ((D,), 0-d or like x) to the rows
        return -0.5 * (torch.addcmul(logvar, residual.square(), torch.exp(-logvar)).sum(-1) + residual.shape[-1] * LOG_2PI)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad_ll):
        return gaussian_grads(*ctx.saved_tensors, grad_ll, ctx.needs_input_grad)


def gaussian_log_likelihood_ref(
    mean: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """sum(-0.5 * (log 2pi + lv + (x - m)^2 exp(-lv))) per row: Normal(m, exp(lv/2)).log_prob(x).sum(-1).

    The residual is formed outside the Function, so autograd hands its gradient to the mean
    as is and negated to x only if x needs one."""
    acc = accumulation_dtype(mean, logvar, x)
    return _GaussianLikelihood.apply(mean.to(acc) - x.to(acc), logvar.to(acc))


def continuous_bernoulli_log_norm_ref(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) elementwise, lambda = sigmoid(l): log(l / tanh(l/2)), an even function of l.

    For a = |l| >= cutoff: log(a) - log(1 - e^-a) + log(1 + e^-a).
    Near 0 (s = (l/2)^2): log 2 + s/3 - 7 s^2/90 + 62 s^3/2835 - 127 s^4/18900.
    """
    a = upcast(logits).abs()
    cutoff = CB_TAYLOR_CUTOFF_F64 if a.dtype == torch.float64 else CB_TAYLOR_CUTOFF_F32
    small = a < cutoff
    safe = torch.where(small, torch.ones_like(a), a)
    exact = torch.log(safe) - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))
    s = (0.5 * a).square()
    taylor = LOG_2 + s * (1.0 / 3.0 + s * (-7.0 / 90.0 + s * (62.0 / 2835.0 + s * (-127.0 / 18900.0))))
    return torch.where(small, taylor, exact)


def continuous_bernoulli_log_norm_grad_ref(logits: torch.Tensor) -> torch.Tensor:
    """d/dl log C(l) elementwise: 1/l - 1/sinh(l), an odd function of l.

    For a = |l| >= cutoff: sign(l) (1/a - 2e^-a / (1 - e^-2a)), which stays finite, and so do
    its own derivatives under autograd, for any finite l (1/sinh(a) would make 0 * inf).
    Near 0 (t = l^2): l (1/6 - 7t/360 + 31t^2/15120 - 127t^3/604800 + 73t^4/3421440).
    """
    l = upcast(logits)
    cutoff = CB_TAYLOR_CUTOFF_F64 if l.dtype == torch.float64 else CB_TAYLOR_CUTOFF_F32
    a = l.abs()
    small = a < cutoff
    safe = torch.where(small, torch.ones_like(a), a)
    e = torch.exp(-safe)
    exact = safe.reciprocal() - 2.0 * e / -torch.expm1(-2.0 * safe)
    exact = torch.where(l < 0, -exact, exact)
    t = l.square()
    taylor = l * (1.0 / 6.0 + t * (-7.0 / 360.0 + t * (31.0 / 15120.0 + t * (-127.0 / 604800.0 + t * (73.0 / 3421440.0)))))
    return torch.where(small, taylor, exact)


def continuous_bernoulli_log_likelihood_ref(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ContinuousBernoulli(logits=l).log_prob(x).sum(-1) = sum(x*l - softplus(l) + log C(l))."""
    return _logit_likelihood_ref(logits, x, True)
