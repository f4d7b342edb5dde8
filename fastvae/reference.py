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
from torch.autograd.function import once_differentiable

LOG_2PI = math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)
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
# would save a full-size temporary per op and replay each op backward. Each forward computes
# in the accumulation dtype (half precision upcast once to float32) and returns results in
# it; each backward computes the input gradients in that dtype, sums them over broadcast
# dims, and rounds them once to the input's dtype.


def _to_input(grad: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A gradient computed at the broadcast shape, summed to an input's shape and rounded once to its dtype."""
    return grad.sum_to_size(shape).to(dtype)


class _Reparameterize(torch.autograd.Function):
    """z = mu + exp(lv/2) * eps,  kl = 0.5 * sum(mu^2 + exp(lv) - 1 - lv) per row.

    Backward, with gz = dL/dz, gkl = dL/dkl (per row):
        dL/dmu  = gz + gkl * mu
        dL/dlv  = 0.5 * gz * (z - mu) + 0.5 * gkl * (exp(lv) - 1),   z - mu = exp(lv/2) * eps
        dL/deps = gz * exp(lv/2)
    """

    @staticmethod
    def forward(ctx, mu, logvar, eps):
        acc = accumulation_dtype(mu, logvar)
        m, lv, e = mu.to(acc), logvar.to(acc), eps.to(acc)
        std = torch.exp(0.5 * lv)
        z = torch.addcmul(m, std, e)
        kl = kl_standard_normal_ref(m, lv)
        ctx.save_for_backward(m, std, e)
        ctx.inputs = [(t.shape, t.dtype) for t in (mu, logvar, eps)]
        return z.to(mu.dtype), kl

    @staticmethod
    @once_differentiable  # double backward raises instead of differentiating the closed form wrongly
    def backward(ctx, grad_z, grad_kl):
        m, std, e = ctx.saved_tensors
        gz, gkl = grad_z.to(m.dtype), grad_kl.unsqueeze(-1)
        need_mu, need_lv, need_eps = ctx.needs_input_grad
        grad_mu = grad_lv = grad_eps = None
        if need_mu:
            grad_mu = _to_input(torch.addcmul(gz, gkl, m), *ctx.inputs[0])
        if need_lv or need_eps:
            gz_std = gz * std
            if need_lv:
                grad_lv = _to_input(0.5 * (gz_std * e + gkl * (std.square() - 1.0)), *ctx.inputs[1])
            if need_eps:
                grad_eps = _to_input(gz_std, *ctx.inputs[2])
        return grad_mu, grad_lv, grad_eps


def reparameterize_ref(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = mu + exp(logvar/2) * eps (in mu's dtype) and the per-row analytic KL.

    mu and logvar are upcast once, so that in half precision their gradients from z and
    from the KL are summed in float32 and rounded once (as the kernel does).
    """
    return _Reparameterize.apply(mu, logvar, eps)


class _ReparameterizeDraws(torch.autograd.Function):
    """S draws per row, z_s = mu + std * eps_s (std = exp(lv/2)), with the analytic KL or the
    sampled one, kl_s = log q(z_s|x) - log p(z_s) = sum_c 0.5 * (z_s^2 - eps_s^2 - lv).

    eps is (S, ..., Z) for S draws, or shaped like mu for one draw without a sample dim. The
    analytic KL is returned once per row (the caller broadcasts it over the draws).
    Backward, with gz_s = dL/dz_s and gkl_s = dL/dkl_s (per row), summed over the draws:
        sampled:  t_s     = gz_s + gkl_s * z_s
                  dL/dmu  = sum_s t_s
                  dL/dlv  = sum_s 0.5 * std * eps_s * t_s - 0.5 * gkl_s
                  dL/deps_s = std * t_s - gkl_s * eps_s
        analytic: dL/dmu  = sum_s gz_s + gkl * mu
                  dL/dlv  = sum_s 0.5 * std * eps_s * gz_s + 0.5 * gkl * (exp(lv) - 1)
                  dL/deps_s = std * gz_s
    DReG (sampled only; ``ctx.dreg``: set by ``IWAELoss(estimator="dreg")``, or from
    ``gradient``, see ``SCORE_FREE_GRADIENTS``): the kl's score term is dropped and the draws
    are reweighted, gz'_s = w_s * (gz_s + gkl_s * (z_s - eps_s / std)) (``dreg_grad_z_ref``;
    ``gradient="path"``: no reweighting); then dL/dmu = sum_s gz'_s, dL/dlv = sum_s 0.5 * std * eps_s * gz'_s.
    """

    @staticmethod
    def forward(ctx, mu, logvar, eps, sampled: bool, gradient: str = "full"):
        acc = accumulation_dtype(mu, logvar)
        m, lv, e = mu.to(acc), logvar.to(acc), eps.to(acc)
        std = torch.exp(0.5 * lv)
        z = torch.addcmul(m, std, e)
        if sampled:
            kl = 0.5 * (z.square() - e.square() - lv).sum(-1)
        else:
            kl = kl_standard_normal_ref(m, lv)
        ctx.save_for_backward(m, std, e)
        ctx.inputs = [(t.shape, t.dtype) for t in (mu, logvar, eps)]
        ctx.fastvae_kl = "sampled" if sampled else "analytic"  # what IWAELoss looks for
        # IWAELoss(estimator="dreg") attaches its link here; or set now by gradient="dreg" / "path"
        ctx.dreg = SCORE_FREE_GRADIENTS.get(gradient)
        return z.to(mu.dtype), kl

    @staticmethod
    @once_differentiable  # double backward raises instead of differentiating the closed form wrongly
    def backward(ctx, grad_z, grad_kl):
        m, std, e = ctx.saved_tensors
        gz, gkl = grad_z.to(m.dtype), grad_kl.to(m.dtype).unsqueeze(-1)
        if ctx.fastvae_kl == "analytic":
            # per-draw terms summed over the draws, then the per-row KL terms
            grad_mu = gz.sum_to_size(m.shape) + gkl * m
            grad_lv = (0.5 * std * e * gz).sum_to_size(m.shape) + 0.5 * gkl * (std.square() - 1.0)
            grad_eps = std * gz
        elif ctx.dreg is not None:
            z = torch.addcmul(m, std, e)
            gz = dreg_grad_z_ref(gz, gkl, ctx.dreg.weights_for(grad_kl), z - e / std)
            grad_mu = gz.sum_to_size(m.shape)
            grad_lv = (0.5 * std * e * gz).sum_to_size(m.shape)
            grad_eps = std * gz
        else:
            t = torch.addcmul(gz, gkl, torch.addcmul(m, std, e))  # gz_s + gkl_s * z_s
            grad_mu = t.sum_to_size(m.shape)
            grad_lv = (0.5 * std * e * t - 0.5 * gkl).sum_to_size(m.shape)
            grad_eps = std * t - gkl * e
        need_mu, need_lv, need_eps = ctx.needs_input_grad[:3]
        return (
            grad_mu.to(ctx.inputs[0][1]) if need_mu else None,
            grad_lv.to(ctx.inputs[1][1]) if need_lv else None,
            _to_input(grad_eps, *ctx.inputs[2]) if need_eps else None,
            None,
            None,
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
    z, kl_value = _ReparameterizeDraws.apply(mu, logvar, eps, kl == "sampled", gradient)
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


class _ImportanceWeightedBound(torch.autograd.Function):
    """bound = logsumexp_k(ll_k - kl_k) - log K per example, the draws k along dim 0.

    Backward, with g = dL/dbound (per example) and the normalised importance weights
    w_k = softmax_k(ll_k - kl_k), computed once:
        dL/dll_k = g * w_k,    dL/dkl_k = -g * w_k
    The weights are exp(log_w_k - max) / sum_j exp(log_w_j - max), not exp(log_w_k - bound):
    at |log_w| ~ 1e8 and beyond, float32 absorbs log sum_j exp(...) into the max and the
    latter would no longer sum to 1.
    """

    @staticmethod
    def forward(ctx, ll, kl, observer):
        acc = accumulation_dtype(ll, kl)
        log_w = ll.to(acc) - kl.to(acc)
        bound = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])  # max-shifted: stable for any K
        ctx.save_for_backward(log_w)
        ctx.observer = observer
        ctx.inputs = [t.dtype for t in (ll, kl)]
        return bound

    @staticmethod
    @once_differentiable  # double backward raises instead of differentiating the closed form wrongly
    def backward(ctx, grad_bound):
        (log_w,) = ctx.saved_tensors
        weights = torch.softmax(log_w, 0)
        grad_ll = grad_bound * weights
        grad_kl = (-grad_ll).to(ctx.inputs[1])
        if ctx.observer is not None:
            ctx.observer(weights, grad_kl)
        return grad_ll.to(ctx.inputs[0]), grad_kl, None


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
    return _ImportanceWeightedBound.apply(ll, kl, observer)


class _LogitLikelihood(torch.autograd.Function):
    """ll = sum(x*l - softplus(l)) per row (Bernoulli), plus sum(log C(l)) if continuous.

    Backward, with g = dL/dll (per row):
        dL/dl = g * (x - sigmoid(l))   [continuous Bernoulli: + g * (1/l - 1/sinh(l))]
        dL/dx = g * l
    """

    @staticmethod
    def forward(ctx, logits, x, continuous: bool):
        acc = accumulation_dtype(logits, x)
        l, xa = logits.to(acc), x.to(acc)
        # sum(x*l) as a dot product: no full-size temporary
        ll = torch.linalg.vecdot(xa, l) - F.softplus(l).sum(-1)
        if continuous:
            ll = ll + continuous_bernoulli_log_norm_ref(l).sum(-1)
        ctx.continuous = continuous
        ctx.save_for_backward(l, xa)
        ctx.inputs = [(t.shape, t.dtype) for t in (logits, x)]
        return ll

    @staticmethod
    @once_differentiable  # double backward raises instead of differentiating the closed form wrongly
    def backward(ctx, grad_ll):
        l, xa = ctx.saved_tensors
        g = grad_ll.unsqueeze(-1)
        grad_logits = grad_x = None
        if ctx.needs_input_grad[0]:
            dl = xa - torch.sigmoid(l)
            if ctx.continuous:
                dl += continuous_bernoulli_log_norm_grad_ref(l)
            grad_logits = _to_input(dl.mul_(g), *ctx.inputs[0])
        if ctx.needs_input_grad[1]:
            grad_x = _to_input(g * l, *ctx.inputs[1])
        return grad_logits, grad_x, None


def bernoulli_log_likelihood_ref(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum(x * l - softplus(l)) per row: Bernoulli(logits=l).log_prob(x).sum(-1), stable for any finite l."""
    return _LogitLikelihood.apply(logits, x, False)


class _GaussianLikelihood(torch.autograd.Function):
    """ll = sum(-0.5 * (log 2pi + lv + (x - m)^2 exp(-lv))) per row.

    Backward, with g = dL/dll (per row), d = x - m, w = exp(-lv):
        dL/dm  = g * d * w
        dL/dlv = 0.5 * g * (d^2 * w - 1)
        dL/dx  = -dL/dm
    """

    @staticmethod
    def forward(ctx, mean, logvar, x):
        acc = accumulation_dtype(mean, logvar, x)
        m, lv, xa = mean.to(acc), logvar.to(acc), x.to(acc)
        d = xa - m
        w = torch.exp(-lv)
        # lv + d^2 w broadcasts lv ((D,), 0-d or like x) to the rows
        ll = -0.5 * (torch.addcmul(lv, d.square(), w).sum(-1) + d.shape[-1] * LOG_2PI)
        ctx.save_for_backward(d, w)
        ctx.inputs = [(t.shape, t.dtype) for t in (mean, logvar, x)]
        return ll

    @staticmethod
    @once_differentiable  # double backward raises instead of differentiating the closed form wrongly
    def backward(ctx, grad_ll):
        d, w = ctx.saved_tensors
        g = grad_ll.unsqueeze(-1)
        need_mean, need_lv, need_x = ctx.needs_input_grad
        grad_mean = grad_lv = grad_x = None
        dw = d * w
        if need_lv:
            grad_lv = _to_input((dw * d).sub_(1.0).mul_(0.5 * g), *ctx.inputs[1])
        dw.mul_(g)  # dL/dm
        if need_mean:
            grad_mean = _to_input(dw, *ctx.inputs[0])
        if need_x:
            grad_x = _to_input(-dw, *ctx.inputs[2])
        return grad_mean, grad_lv, grad_x


def gaussian_log_likelihood_ref(
    mean: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """sum(-0.5 * (log 2pi + lv + (x - m)^2 exp(-lv))) per row: Normal(m, exp(lv/2)).log_prob(x).sum(-1)."""
    return _GaussianLikelihood.apply(mean, logvar, x)


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

    Near 0 (t = l^2): l (1/6 - 7t/360 + 31t^2/15120 - 127t^3/604800 + 73t^4/3421440).
    """
    l = upcast(logits)
    cutoff = CB_TAYLOR_CUTOFF_F64 if l.dtype == torch.float64 else CB_TAYLOR_CUTOFF_F32
    small = l.abs() < cutoff
    safe = torch.where(small, torch.ones_like(l), l)
    exact = safe.reciprocal() - torch.sinh(safe).reciprocal()  # 1/sinh overflows to 0: fine
    t = l.square()
    taylor = l * (1.0 / 6.0 + t * (-7.0 / 360.0 + t * (31.0 / 15120.0 + t * (-127.0 / 604800.0 + t * (73.0 / 3421440.0)))))
    return torch.where(small, taylor, exact)


def continuous_bernoulli_log_likelihood_ref(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ContinuousBernoulli(logits=l).log_prob(x).sum(-1) = sum(x*l - softplus(l) + log C(l))."""
    return _LogitLikelihood.apply(logits, x, True)
