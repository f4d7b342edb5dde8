"""The fuzz suite's table (tests/test_fuzz.py): for each public loss function, how to draw its
inputs and its independent float64 oracle.

A :class:`Target` draws a :class:`Case` (the inputs as fastvae gets them: a dtype, shapes with
1, odd, non-power-of-two and 3-D leading dims, broadcasts, non-contiguous / transposed /
expanded layouts, extreme values), calls fastvae, and gives the oracle: ``torch.distributions``
in float64 on the same (rounded) values, each output with the magnitude of its terms (for a
principled tolerance: an fp32 sum of n terms is within ~n * eps32 * sum|terms| of the exact
one), and for each input the magnitude of its gradient's terms. To fuzz a new function, add a
Target to ``TARGETS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch.distributions import Bernoulli, Normal, kl_divergence

import fastvae

F64 = torch.float64
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOG_2PI = math.log(2 * math.pi)


def accumulation(dtype: torch.dtype) -> torch.dtype:
    return F64 if dtype == F64 else torch.float32


# ---- drawing inputs -------------------------------------------------------------------------------
# Value ranges per dtype: wide (extremes included) but such that a half-precision gradient stays
# finite (the half formats overflow at 65504 / 3.4e38 but round to 8 / 11 bits).
LOGIT_SCALES = {torch.float64: (1e-3, 1.0, 30.0, 1e4), torch.float32: (1e-3, 1.0, 30.0, 1e3),
                torch.bfloat16: (1e-2, 1.0, 30.0, 300.0), torch.float16: (1e-2, 1.0, 30.0, 300.0)}
LOGVAR_RANGE = {torch.float64: (-20.0, 20.0), torch.float32: (-12.0, 12.0), torch.bfloat16: (-6.0, 6.0),
                torch.float16: (-4.0, 4.0)}
# The continuous Bernoulli's logits: wide enough for its closed form's large-|l| regime
CB_LOGIT_CAP = 60.0


@st.composite
def lead_dims(draw, tiny: bool) -> tuple[int, ...]:
    sizes = st.sampled_from([1, 2, 3] if tiny else [1, 2, 3, 5, 7])
    return tuple(draw(st.lists(sizes, max_size=2 if tiny else 3)))


@st.composite
def feature_dim(draw, tiny: bool) -> int:
    return draw(st.sampled_from([1, 2, 3, 5] if tiny else [1, 2, 3, 5, 8, 17, 33]))


@st.composite
def values(draw, shape: tuple[int, ...], kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Float64 values of ``kind`` for ``shape``, rounded to ``dtype`` (then back to float64)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "unit":  # data x in [0, 1]: continuous, or binary
        v = torch.rand(shape, generator=g, dtype=F64)
        if draw(st.booleans()):
            v = (v > 0.5).to(F64)
    elif kind == "logits":
        v = draw(st.sampled_from(LOGIT_SCALES[dtype])) * torch.randn(shape, generator=g, dtype=F64)
    elif kind == "cb_logits":
        scale = draw(st.sampled_from([1e-3, 0.05, 1.0, 10.0, 40.0]))  # 0.05: around the series cut-off
        v = (scale * torch.randn(shape, generator=g, dtype=F64)).clamp(-CB_LOGIT_CAP, CB_LOGIT_CAP)
    elif kind == "logvar":
        lo, hi = LOGVAR_RANGE[dtype]
        v = lo + (hi - lo) * torch.rand(shape, generator=g, dtype=F64)
        if draw(st.booleans()):
            v = 0.3 * torch.randn(shape, generator=g, dtype=F64)  # the common regime
    else:  # "normal": means, data, noise
        v = draw(st.sampled_from([1e-3, 1.0, 10.0])) * torch.randn(shape, generator=g, dtype=F64)
    flat = v.view(-1)
    specials = {"logits": [0.0, 1e-30, -1e-30], "cb_logits": [0.0, 1e-8, 0.1, -0.1, 0.5, -0.5],
                "unit": [0.0, 1.0, 0.5], "logvar": [0.0], "normal": [0.0]}[kind]
    for position, special in draw(st.lists(st.tuples(st.integers(0, max(flat.numel() - 1, 0)),
                                                     st.sampled_from(specials)), max_size=3)):
        if flat.numel():
            flat[position] = special
    return v.to(dtype).to(F64)


@st.composite
def laid_out(draw, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``v`` (float64) in ``dtype`` with a drawn memory layout: contiguous, transposed (its last
    two dims), strided (every other element of a wider tensor), or expanded (stride 0 along a
    leading dim: its values repeated)."""
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"]))
    t = v.to(dtype)
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided" and t.dim() >= 1:
        wide = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]), dtype=dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "expanded" and t.dim() >= 2 and t.shape[0] > 1:
        return t[:1].expand_as(t)
    return t.contiguous()


@st.composite
def one_way_pair(draw, rows: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(decoder output shape, x shape) pairing into ``rows`` one way: one of them is ``rows``,
    the other lacks leading dims or has size-1 ones (fastvae's broadcasting contract)."""
    lead, d = rows[:-1], rows[-1]
    dropped = draw(st.integers(0, len(lead)))
    other = [1 if draw(st.booleans()) else s for s in lead[dropped:]]
    small = (*other, d)
    return (rows, small) if draw(st.booleans()) else (small, rows)


# ---- the table ----------------------------------------------------------------------------------
@dataclass
class Case:
    """One call: tensor inputs (as fastvae gets them), the shape each broadcasts to in the
    oracle, and other arguments."""

    dtype: torch.dtype
    tensors: dict[str, torch.Tensor]
    full: dict[str, tuple[int, ...]]
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """A public function: ``draw(tiny)`` -> Case strategy; ``call(case)`` -> fastvae's outputs;
    ``oracle(t, args)`` (t: the tensors in float64, each expanded to its full shape) -> the
    expected outputs, the magnitude of each output's terms, and the oracle's own absolute
    error (zeros where it is exact to float64 rounding); ``grad_scale(t, args, weights)`` ->
    for each tensor, the magnitude of its gradient's terms (elementwise, full shape) for the
    upstream ``weights`` (one per output), and the oracle gradients' own errors (by name)."""

    draw: Callable[[bool], st.SearchStrategy]
    call: Callable[[Case], tuple[torch.Tensor, ...]]
    oracle: Callable[[dict, dict], tuple[list[torch.Tensor], list[torch.Tensor]]]
    grad_scale: Callable[[dict, dict, list[torch.Tensor]], dict[str, torch.Tensor]]


def _rows_strategy(tiny):
    return st.tuples(lead_dims(tiny), feature_dim(tiny)).map(lambda p: (*p[0], p[1]))


@st.composite
def _logit_case(draw, tiny: bool, continuous: bool) -> Case:
    dtype = draw(st.sampled_from(DTYPES))
    rows = draw(_rows_strategy(tiny))
    out_shape, x_shape = draw(one_way_pair(rows))
    kind = "cb_logits" if continuous else "logits"
    logits = draw(laid_out(draw(values(out_shape, kind, dtype)), dtype))
    x = draw(laid_out(draw(values(x_shape, "unit", dtype)), draw(st.sampled_from([dtype, torch.float32]))))
    return Case(dtype, {"logits": logits, "x": x}, {"logits": rows, "x": rows})


def _bernoulli_terms(l, x):
    # torch's Bernoulli is binary_cross_entropy_with_logits: terms of size |l| cancel in it
    return Bernoulli(logits=l, validate_args=False).log_prob(x), (x * l).abs() + F.softplus(l) + l.abs()


class _ContinuousBernoulliLogNorm(torch.autograd.Function):
    """log C(l) = log(|l| / tanh(|l| / 2)) and its derivative 1/l - 1/sinh(l), evaluated in numpy's
    extended precision (64-bit mantissa) from the closed forms, with their two-term series
    below |l| = 1e-3 (truncation < 1e-19). torch's ContinuousBernoulli is the textbook formula but
    takes log C from 1 - 2 sigmoid(l), which in float64 loses ~eps64 / |l| near 0 and
    ~eps64 * e^|l| for large |l| (1e-11 at |l| = 15): too coarse an oracle for fastvae's float64."""

    @staticmethod
    def forward(ctx, logits):
        ctx.save_for_backward(logits)
        a = np.abs(logits.detach().numpy()).astype(np.longdouble)
        with np.errstate(divide="ignore", invalid="ignore"):
            exact = np.log(a) - np.log(np.tanh(a / 2))
        series = np.log(np.longdouble(2)) + a * a / 12 - 7 * a**4 / 1440
        return torch.from_numpy(np.where(a < 1e-3, series, exact).astype(np.float64))

    @staticmethod
    def backward(ctx, grad):
        (logits,) = ctx.saved_tensors
        l = logits.detach().numpy().astype(np.longdouble)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            exact = 1 / l - 1 / np.sinh(l)
        series = l / 6 - 7 * l**3 / 360
        return grad * torch.from_numpy(np.where(np.abs(l) < 1e-3, series, exact).astype(np.float64))


def _cb_terms(l, x):
    bernoulli, magnitude = _bernoulli_terms(l, x)
    log_norm = _ContinuousBernoulliLogNorm.apply(l)
    return bernoulli + log_norm, magnitude + log_norm.abs()


def _logit_oracle(terms):
    def oracle(t, args):
        value, magnitude = terms(t["logits"], t["x"])
        return [value.sum(-1)], [magnitude.sum(-1)], [torch.zeros_like(value.sum(-1))]
    return oracle


def _logit_grad_scale(t, args, weights):
    w = weights[0].abs().unsqueeze(-1)
    l, x = t["logits"].detach(), t["x"].detach()
    scales = {"logits": w * (x.abs() + torch.sigmoid(l) + 0.5), "x": w * l.abs()}
    return scales, {}


def _cb_grad_scale(t, args, weights):
    """As the Bernoulli's, plus the terms 1/l and 1/sinh(l) that the closed form of d log C/dl
    subtracts (above the series cut-off, |l| >= 0.1 in float64)."""
    scales, errors = _logit_grad_scale(t, args, weights)
    scales["logits"] = scales["logits"] + weights[0].abs().unsqueeze(-1) * 2 / t["logits"].detach().abs().clamp_min(0.1)
    return scales, errors


@st.composite
def _gaussian_case(draw, tiny: bool, through_loss: bool = False) -> Case:
    dtype = draw(st.sampled_from(DTYPES))
    rows = draw(_rows_strategy(tiny))
    mean_shape, x_shape = draw(one_way_pair(rows))
    mean = draw(laid_out(draw(values(mean_shape, "normal", dtype)), dtype))
    x = draw(laid_out(draw(values(x_shape, "normal", dtype)), draw(st.sampled_from([dtype, torch.float32]))))
    kinds = ["full", "like_x", "per_feature", "per_row", "scalar", "python"] + (["row1"] if len(rows) >= 2 else [])
    lv_kind = draw(st.sampled_from(kinds))
    lv_shape = {"full": rows, "like_x": x_shape, "per_feature": rows[-1:], "row1": (1, rows[-1]),
                "per_row": (*rows[:-1], 1), "scalar": (), "python": ()}[lv_kind]
    lv = draw(values(lv_shape, "logvar", dtype))
    tensors, args = {"mean": mean, "x": x}, {}
    if lv_kind == "python":
        args["logvar"] = float(draw(st.sampled_from([0.0, 0.1, -2.3, 1.7])))
    else:
        tensors["logvar"] = draw(laid_out(lv, dtype))
    return Case(dtype, tensors, {name: rows for name in tensors}, args)


def _gaussian_terms(t, args):
    lv = t["logvar"] if "logvar" in t else torch.tensor(args["logvar"], dtype=F64)
    value = Normal(t["mean"], torch.exp(0.5 * lv)).log_prob(t["x"])
    magnitude = 0.5 * (LOG_2PI + lv.abs() + (t["x"] - t["mean"]).square() * torch.exp(-lv))
    return value, magnitude.expand_as(value)


def _gaussian_oracle(t, args):
    value, magnitude = _gaussian_terms(t, args)
    return [value.sum(-1)], [magnitude.sum(-1)], [torch.zeros_like(value.sum(-1))]


def _gaussian_grad_scale(t, args, weights):
    w = weights[0].abs().unsqueeze(-1)
    lv = t["logvar"].detach() if "logvar" in t else torch.tensor(args["logvar"], dtype=F64)
    r = (t["x"] - t["mean"]).detach()
    scaled = r.abs() * torch.exp(-lv)
    out = {"mean": w * scaled, "x": w * scaled}
    if "logvar" in t:
        out["logvar"] = w * 0.5 * (r.square() * torch.exp(-lv) + 1.0)
    return out, {}


def _call_gaussian(case: Case):
    logvar = case.tensors.get("logvar", case.args.get("logvar"))
    return (fastvae.gaussian_log_likelihood(case.tensors["mean"], logvar, case.tensors["x"]),)


@st.composite
def _latent_case(draw, tiny: bool) -> Case:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(_rows_strategy(tiny))
    mu = draw(laid_out(draw(values(shape, "normal", dtype)), dtype))
    logvar = draw(laid_out(draw(values(shape, "logvar", dtype)), dtype))
    eps = draw(laid_out(draw(values(shape, "normal", dtype)), draw(st.sampled_from([dtype, torch.float32]))))
    return Case(dtype, {"mu": mu, "logvar": logvar, "eps": eps}, {n: shape for n in ("mu", "logvar", "eps")})


def _latent_oracle(t, args):
    mu, lv, eps = t["mu"], t["logvar"], t["eps"]
    std = torch.exp(0.5 * lv)
    z = mu + std * eps
    q, p = Normal(mu, std), Normal(torch.zeros((), dtype=F64), torch.ones((), dtype=F64))
    kl = kl_divergence(q, p).sum(-1)
    magnitudes = [mu.abs() + (std * eps).abs(), 0.5 * (mu.square() + std.square() + 1 + lv.abs()).sum(-1)]
    return [z, kl], magnitudes, [torch.zeros_like(z), torch.zeros_like(kl)]


def _latent_grad_scale(t, args, weights):
    wz, wkl = weights[0].abs(), weights[1].abs().unsqueeze(-1)
    mu, lv, eps = (t[n].detach() for n in ("mu", "logvar", "eps"))
    std = torch.exp(0.5 * lv)
    return {"mu": wz + wkl * mu.abs(), "logvar": 0.5 * (wz * std * eps.abs() + wkl * (std.square() + 1)),
            "eps": wz * std}, {}


@st.composite
def _elbo_case(draw, tiny: bool) -> Case:
    likelihood = draw(st.sampled_from(["bernoulli", "continuous_bernoulli", "gaussian"]))
    inner = draw(_gaussian_case(tiny) if likelihood == "gaussian" else _logit_case(tiny, likelihood != "bernoulli"))
    examples = inner.full["x"][:-1]
    kl_dims = draw(st.integers(0, len(examples))) if examples else 0  # kl like the examples, or their trailing dims
    kl_shape = examples[kl_dims:] if examples else ()
    if kl_shape == () and examples:
        kl_shape = examples[-1:]
    kl = draw(values(kl_shape, "normal", torch.float32)).abs().to(draw(st.sampled_from([torch.float32, inner.dtype])))
    inner.tensors["kl"], inner.full["kl"] = kl, examples
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    beta = draw(st.sampled_from([0.0, 0.5, 1.0, 3.25]))
    if draw(st.booleans()):
        inner.tensors["beta"], inner.full["beta"] = torch.tensor(beta, dtype=draw(st.sampled_from([torch.float32, F64]))), examples
    inner.args.update(likelihood=likelihood, reduction=reduction, beta=beta)
    return inner


def _call_elbo(case: Case):
    t, a = case.tensors, case.args
    out = (t["mean"], t.get("logvar", a.get("logvar"))) if a["likelihood"] == "gaussian" else t["logits"]
    crit = fastvae.ELBOLoss(a["likelihood"], a["reduction"], beta=t.get("beta", a["beta"]))
    return (crit(out, t["x"], t["kl"]),)


def _elbo_oracle(t, args):
    if args["likelihood"] == "gaussian":
        ll, ll_mag, ll_err = _gaussian_oracle(t, args)
    else:
        ll, ll_mag, ll_err = _logit_oracle(_bernoulli_terms if args["likelihood"] == "bernoulli" else _cb_terms)(t, args)
    beta = t["beta"] if "beta" in t else args["beta"]
    loss = beta * t["kl"] - ll[0]
    magnitude = (beta * t["kl"]).abs() + ll_mag[0]
    reduce = {"mean": torch.mean, "sum": torch.sum, "none": lambda v: v}[args["reduction"]]
    total = {"mean": torch.mean, "sum": torch.sum, "none": lambda v: v}[args["reduction"]]
    return [reduce(loss)], [total(magnitude)], [total(ll_err[0])]


def _elbo_grad_scale(t, args, weights):
    w = weights[0].abs()
    n = max(1, int(math.prod(t["kl"].shape))) if args["reduction"] == "mean" else 1
    per_example = (w / n).expand(t["kl"].shape) if args["reduction"] != "none" else w
    inner = {"gaussian": _gaussian_grad_scale, "bernoulli": _logit_grad_scale,
             "continuous_bernoulli": _cb_grad_scale}[args["likelihood"]]
    scales, oracle_errors = inner(t, args, [per_example])
    beta = t["beta"].detach() if "beta" in t else torch.tensor(args["beta"], dtype=F64)
    scales["kl"] = per_example * beta.abs()
    if "beta" in t:
        scales["beta"] = per_example * t["kl"].detach().abs()
    return scales, oracle_errors


@st.composite
def _draws_case(draw, tiny: bool) -> Case:
    """reparameterize(samples=K, kl=...) with explicit noise (K, *mu.shape)."""
    case = draw(_latent_case(tiny))
    k = draw(st.sampled_from([1, 2, 3] if tiny else [1, 2, 5, 17]))
    shape = case.full["mu"]
    case.tensors["eps"] = draw(laid_out(draw(values((k, *shape), "normal", case.dtype)), case.dtype))
    case.full.update(mu=(k, *shape), logvar=(k, *shape), eps=(k, *shape))
    case.args.update(samples=k, kl=draw(st.sampled_from(["analytic", "sampled"])))
    return case


def _draws_oracle(t, args):
    mu, lv, eps = t["mu"], t["logvar"], t["eps"]  # all (K, *shape): mu, lv expanded over the draws
    std = torch.exp(0.5 * lv)
    z = mu + std * eps
    if args["kl"] == "sampled":
        # log q(z) = log N(eps; 0, 1) - log std (the change of variables z = mu + std * eps):
        # Normal(mu, std).log_prob(z) would recover eps as (z - mu) / std, losing the digits of
        # std * eps that z's rounding removed when std << |mu|
        standard = Normal(torch.zeros((), dtype=F64), torch.ones((), dtype=F64))
        kl = (standard.log_prob(eps) - 0.5 * lv - standard.log_prob(z)).sum(-1)
        kl_mag = 0.5 * (eps.square() + z.square() + lv.abs() + 2 * LOG_2PI).sum(-1)
    else:
        kl = kl_divergence(Normal(mu, std), Normal(torch.zeros((), dtype=F64), torch.ones((), dtype=F64))).sum(-1)
        kl_mag = 0.5 * (mu.square() + std.square() + 1 + lv.abs()).sum(-1)
    return [z, kl], [mu.abs() + (std * eps).abs(), kl_mag], [torch.zeros_like(z), torch.zeros_like(kl)]


def _draws_grad_scale(t, args, weights):
    wz, wkl = weights[0].abs(), weights[1].abs().unsqueeze(-1)
    mu, lv, eps = (t[n].detach() for n in ("mu", "logvar", "eps"))
    std = torch.exp(0.5 * lv)
    z = (mu + std * eps).abs()
    if args["kl"] == "sampled":  # dkl/dmu = z, dkl/dlv = 0.5 (std eps z - 1), dkl/deps = z std - eps
        return {"mu": wz + wkl * z, "logvar": 0.5 * (wz * std * eps.abs() + wkl * (std * eps.abs() * z + 1)),
                "eps": wz * std + wkl * (z * std + eps.abs())}, {}
    return {"mu": wz + wkl * mu.abs(), "logvar": 0.5 * (wz * std * eps.abs() + wkl * (std.square() + 1)),
            "eps": wz * std}, {}


@st.composite
def _iwae_case(draw, tiny: bool) -> Case:
    """IWAELoss: decoder output (K, *x.shape[:-1], D), x, kl (K, ...)."""
    likelihood = draw(st.sampled_from(["bernoulli", "continuous_bernoulli", "gaussian"]))
    inner = draw(_gaussian_case(tiny) if likelihood == "gaussian" else _logit_case(tiny, likelihood != "bernoulli"))
    k = draw(st.sampled_from([1, 2, 3] if tiny else [1, 2, 5, 17]))
    out_name = "mean" if likelihood == "gaussian" else "logits"
    x = inner.tensors["x"]
    out = draw(values((k, *x.shape), "logits" if likelihood == "bernoulli" else
                      ("cb_logits" if likelihood == "continuous_bernoulli" else "normal"), inner.dtype))
    inner.tensors[out_name] = draw(laid_out(out, inner.dtype))
    rows = (k, *x.shape)
    inner.full = {name: rows for name in inner.tensors}
    if "logvar" in inner.tensors and inner.tensors["logvar"].dim() > len(rows):
        del inner.tensors["logvar"], inner.full["logvar"]
        inner.args["logvar"] = 0.25
    elif "logvar" in inner.tensors:
        try:
            if torch.broadcast_shapes(inner.tensors["logvar"].shape, rows) != rows:
                raise RuntimeError
        except RuntimeError:
            del inner.tensors["logvar"], inner.full["logvar"]
            inner.args["logvar"] = 0.25
    kl = draw(values(rows[:-1], "normal", torch.float32)).to(draw(st.sampled_from([torch.float32, inner.dtype])))
    inner.tensors["kl"], inner.full["kl"] = kl, rows[:-1]
    inner.args.update(likelihood=likelihood, reduction=draw(st.sampled_from(["mean", "sum", "none"])))
    return inner


def _call_iwae(case: Case):
    t, a = case.tensors, case.args
    out = (t["mean"], t.get("logvar", a.get("logvar"))) if a["likelihood"] == "gaussian" else t["logits"]
    return (fastvae.IWAELoss(a["likelihood"], a["reduction"])(out, t["x"], t["kl"]),)


def _iwae_oracle(t, args):
    """-(logsumexp_k(ll_k - kl_k) - log K) per example, written out with the max shift."""
    if args["likelihood"] == "gaussian":
        ll, ll_mag, ll_err = _gaussian_oracle(t, args)
    else:
        ll, ll_mag, ll_err = _logit_oracle(_bernoulli_terms if args["likelihood"] == "bernoulli" else _cb_terms)(t, args)
    log_w = ll[0] - t["kl"]
    top = log_w.max(0).values.detach()
    bound = top + torch.log(torch.exp(log_w - top).sum(0)) - math.log(log_w.shape[0])
    magnitude = (ll_mag[0] + t["kl"].abs()).max(0).values  # the bound is within the draws' range
    reduce = {"mean": torch.mean, "sum": torch.sum, "none": lambda v: v}[args["reduction"]]
    return [reduce(-bound)], [reduce(magnitude)], [reduce(ll_err[0].max(0).values)]


def _iwae_grad_scale(t, args, weights):
    w = weights[0].abs()
    examples = t["kl"].shape[1:]
    n = max(1, int(math.prod(examples))) if args["reduction"] == "mean" else 1
    per_example = (w / n).expand(examples) if args["reduction"] != "none" else w
    per_draw = per_example.expand(t["kl"].shape)  # the normalised weights are <= 1
    inner = {"gaussian": _gaussian_grad_scale, "bernoulli": _logit_grad_scale,
             "continuous_bernoulli": _cb_grad_scale}[args["likelihood"]]
    # The normalised weights come from log-weights ll_k - kl_k accumulated with an absolute error
    # ~ eps * (the magnitude of ll_k's terms + |kl_k|): each gradient carries that relative error.
    if args["likelihood"] == "gaussian":
        ll_mag = _gaussian_terms(t, args)[1].sum(-1)
    else:
        ll_mag = (_bernoulli_terms if args["likelihood"] == "bernoulli" else _cb_terms)(t["logits"], t["x"])[1].sum(-1)
    spread = 1 + 2 * (ll_mag + t["kl"].abs()).detach()
    scales, oracle_errors = inner(t, args, [per_draw * spread])
    scales["kl"] = per_draw * spread
    return scales, oracle_errors


TARGETS: dict[str, Target] = {
    "bernoulli_log_likelihood": Target(
        lambda tiny: _logit_case(tiny, False),
        lambda c: (fastvae.bernoulli_log_likelihood(c.tensors["logits"], c.tensors["x"]),),
        _logit_oracle(_bernoulli_terms), _logit_grad_scale),
    "continuous_bernoulli_log_likelihood": Target(
        lambda tiny: _logit_case(tiny, True),
        lambda c: (fastvae.continuous_bernoulli_log_likelihood(c.tensors["logits"], c.tensors["x"]),),
        _logit_oracle(_cb_terms), _cb_grad_scale),
    "gaussian_log_likelihood": Target(_gaussian_case, _call_gaussian, _gaussian_oracle, _gaussian_grad_scale),
    "log_likelihood(gaussian)": Target(
        _gaussian_case,
        lambda c: (fastvae.log_likelihood("gaussian", (c.tensors["mean"], c.tensors.get("logvar", c.args.get("logvar"))),
                                          c.tensors["x"]),),
        _gaussian_oracle, _gaussian_grad_scale),
    "log_likelihood(bernoulli)": Target(
        lambda tiny: _logit_case(tiny, False),
        lambda c: (fastvae.log_likelihood("bernoulli", c.tensors["logits"], c.tensors["x"]),),
        _logit_oracle(_bernoulli_terms), _logit_grad_scale),
    "reparameterize(eps=)": Target(
        _latent_case,
        lambda c: fastvae.reparameterize(c.tensors["mu"], c.tensors["logvar"], eps=c.tensors["eps"]),
        _latent_oracle, _latent_grad_scale),
    "ELBOLoss": Target(_elbo_case, _call_elbo, _elbo_oracle, _elbo_grad_scale),
    "reparameterize(samples=, eps=)": Target(
        _draws_case,
        lambda c: fastvae.reparameterize(c.tensors["mu"], c.tensors["logvar"], eps=c.tensors["eps"],
                                         samples=c.args["samples"], kl=c.args["kl"]),
        _draws_oracle, _draws_grad_scale),
    "IWAELoss": Target(_iwae_case, _call_iwae, _iwae_oracle, _iwae_grad_scale),
}
