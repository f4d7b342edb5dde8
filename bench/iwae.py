"""Importance-weighted training benchmark: the IWAE / DReG loss step, and DReG's variance reduction.

**Step timing.** One training step's loss part, forward + backward, from the encoder's
``mu, logvar`` (B, Z) through K draws, a linear decoder (Z -> D logits) and the Bernoulli
IWAE loss (mean over the batch), on the same inputs:

- ``eager``: the loss as people write it (pythae's / Burda et al.'s IWAE): ``mu + std * randn``
  for K draws, ``F.binary_cross_entropy_with_logits``, log q and log p written out,
  ``torch.logsumexp`` over the draws. DReG: the usual one-pass implementation — q's parameters
  detached in log q, the normalised weights w detached, a hook on z that turns its gradient's
  w into w^2, the surrogate ``-sum_k w_k log w_k`` (Tucker et al., 2018);
- ``compile``: the same Python function under ``torch.compile(dynamic=False)``;
- ``fastvae``: ``fastvae.reparameterize(mu, logvar, samples=K, kl="sampled")`` + ``fastvae.IWAELoss``
  (CUDA: the Triton kernels; CPU: the torch path);
- ``fastvae+compile`` (IWAE only; DReG is eager-only): the fastvae step under ``torch.compile``.

Every contender's loss value and encoder gradient (d/dmu) are checked against a float64 eager
computation on one shared draw of the noise (``rel_err``, ``grad_err``).

**Variance reduction.** The encoder gradient over repeated draws (fixed seeds), IWAE vs DReG,
for K in {5, 50}: the total variance (trace of its covariance over draws) and the mean
signal-to-noise ratio |E g| / std g over its coordinates, on (a) Rainforth et al.'s (2018)
Gaussian toy problem with the encoder near its optimum, and (b) the paper's MLP VAE on the
embedded digits, at initialisation and after a short IWAE training run.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import fastvae

from . import common
from .loss_head import Settings, _raise_recompile_limits, fastvae_backend

ESTIMATORS = ("iwae", "dreg")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CONTENDERS = ("eager", "compile", "fastvae", "fastvae+compile")
TIMING_COLUMNS = [
    "device", "torch", "triton", "date", "estimator", "dtype", "K", "B", "D", "Z", "contender", "impl",
    "median_ms", "q20_ms", "q80_ms", "speedup_vs_eager", "speedup_vs_compile", "peak_mem_mib",
    "first_call_s", "rel_err", "grad_err", "flag",
]
TIMING_KEY = ["device", "estimator", "dtype", "K", "B", "D", "Z", "contender"]
VARIANCE_COLUMNS = [
    "device", "torch", "date", "problem", "K", "draws", "var_iwae", "var_dreg", "variance_ratio",
    "snr_iwae", "snr_dreg", "z_score",
]
VARIANCE_KEY = ["device", "problem", "K"]


@dataclass(frozen=True)
class Case:
    estimator: str
    dtype: str
    K: int
    B: int
    D: int
    Z: int


def cases_for(device_kind: str, mode: str) -> list[Case]:
    if mode == "tiny":
        return [Case(est, "fp32", 5, 16, 32, 4) for est in ESTIMATORS]
    if device_kind == "cuda":
        shapes = [(5, 100), (50, 100), (500, 100), (5, 1000), (50, 1000)] if mode == "full" else [(5, 100), (50, 1000)]
        return [Case(est, dt, k, b, 784, 50) for est, dt, (k, b) in itertools.product(ESTIMATORS, DTYPES, shapes)]
    shapes = [(5, 100), (50, 100), (5, 1000)] if mode == "full" else [(5, 100)]
    return [Case(est, "fp32", k, b, 784, 50) for est, (k, b) in itertools.product(ESTIMATORS, shapes)]


# --------------------------------------------------------------------------- contenders
LOG_2PI = math.log(2.0 * math.pi)


def eager_iwae(mu, logvar, weight, bias, x, K: int, eps=None):
    """The IWAE loss as usually written (K draws, log-densities by hand, logsumexp)."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn((K, *mu.shape), dtype=mu.dtype, device=mu.device) if eps is None else eps
    z = mu + std * eps
    logits = F.linear(z, weight, bias)
    ll = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_q = (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / logvar.exp())).sum(-1)
    log_p = (-0.5 * (LOG_2PI + z ** 2)).sum(-1)
    log_w = ll + log_p - log_q
    return -(torch.logsumexp(log_w, 0) - math.log(K)).mean()


def eager_dreg(mu, logvar, weight, bias, x, K: int, eps=None):
    """DReG in one backward: log q with q's parameters detached (no score term), detached
    weights w, a hook turning z's gradient w into w^2, the surrogate -sum_k w_k log w_k."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn((K, *mu.shape), dtype=mu.dtype, device=mu.device) if eps is None else eps
    z = mu + std * eps
    logits = F.linear(z, weight, bias)
    ll = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    mu_sg, logvar_sg = mu.detach(), logvar.detach()
    log_q = (-0.5 * (LOG_2PI + logvar_sg + (z - mu_sg) ** 2 / logvar_sg.exp())).sum(-1)
    log_p = (-0.5 * (LOG_2PI + z ** 2)).sum(-1)
    log_w = ll + log_p - log_q
    w = torch.softmax(log_w, 0).detach()
    z.register_hook(lambda g: g * w.unsqueeze(-1).to(g.dtype))
    surrogate = -(w * log_w).sum(0).mean()
    value = -(torch.logsumexp(log_w, 0) - math.log(K)).mean()
    return surrogate + (value - surrogate).detach()


EAGER = {"iwae": eager_iwae, "dreg": eager_dreg}
_CRITERIA = {est: fastvae.IWAELoss("bernoulli", "mean", estimator=est) for est in ESTIMATORS}


def fastvae_step(estimator: str):
    crit = _CRITERIA[estimator]

    def step(mu, logvar, weight, bias, x, K: int, eps=None):
        z, kl = fastvae.reparameterize(mu, logvar, samples=K, kl="sampled", eps=eps)
        return crit(F.linear(z, weight, bias), x, kl)

    step.__name__ = f"fastvae_{estimator}"
    return step


_COMPILED: dict[tuple, Callable] = {}


def compiled(name: str, fn: Callable, backend: str) -> Callable:
    key = (name, backend)
    if key not in _COMPILED:
        _raise_recompile_limits()
        _COMPILED[key] = torch.compile(fn, dynamic=False, backend=backend)
    return _COMPILED[key]


def contenders_for(case: Case, device: torch.device, compile_backend: str) -> dict[str, tuple[str, Callable]]:
    eager = EAGER[case.estimator]
    out = {
        "eager": ("torch eager", eager),
        "compile": (f"torch.compile({compile_backend}, dynamic=False)", compiled(f"eager_{case.estimator}", eager, compile_backend)),
        "fastvae": ("fastvae[triton]" if device.type == "cuda" else "fastvae[torch path]", fastvae_step(case.estimator)),
    }
    if case.estimator == "iwae":
        out["fastvae+compile"] = (f"fastvae under torch.compile({compile_backend}, dynamic=False)",
                                  compiled("fastvae_iwae", fastvae_step("iwae"), compile_backend))
    return out


def make_inputs(case: Case, device: torch.device, seed: int = 0):
    """mu, logvar (B, Z) and the decoder's weight (D, Z), bias (D,) requiring grad; binary x (B, D)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    dt = DTYPES[case.dtype]

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device=device, generator=g)).to(dt).requires_grad_()

    mu, logvar = randn(case.B, case.Z), randn(case.B, case.Z, scale=0.3)
    weight, bias = randn(case.D, case.Z, scale=1.0 / math.sqrt(case.Z)), randn(case.D, scale=0.1)
    x = (torch.rand(case.B, case.D, device=device, generator=g) < 0.3).to(dt)
    return [mu, logvar, weight, bias], x


def check_errors(fn: Callable, case: Case, leaves, x, eps) -> tuple[float, float]:
    """(relative error of the loss, of d loss/d mu) of ``fn`` on the shared noise ``eps``, against
    the same estimator written eagerly in float64."""
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = EAGER[case.estimator](*ref_leaves, x.double(), case.K, eps=eps.double())
    (ref_grad,) = torch.autograd.grad(ref, ref_leaves[:1])
    for t in leaves:
        t.grad = None
    loss = fn(*leaves, x, case.K, eps=eps.to(leaves[0].dtype))
    loss.backward()
    ref = ref.item()
    rel = abs(loss.item() - ref) / max(abs(ref), 1e-30)
    grad = leaves[0].grad.double()
    grad_err = float((grad - ref_grad).abs().max() / ref_grad.abs().max().clamp_min(1e-30))
    for t in leaves:
        t.grad = None
    return rel, grad_err


# --------------------------------------------------------------------------- running
def run_case(case: Case, info: common.DeviceInfo, settings: Settings) -> list[dict]:
    device = info.torch_device
    leaves, x = make_inputs(case, device)
    eps = torch.randn((case.K, case.B, case.Z), device=device, generator=torch.Generator(device=device).manual_seed(1))
    rows, calls = [], {}
    for name, (impl, fn) in contenders_for(case, device, settings.compile_backend).items():
        row = {**info.tags(), **asdict(case), "contender": name, "impl": impl}
        rows.append(row)

        def call(fn=fn):
            fn(*leaves, x, case.K).backward()

        try:
            start = time.perf_counter()
            call()  # first call: compiles
            common.synchronize(device)
            row["first_call_s"] = time.perf_counter() - start
            row["rel_err"], row["grad_err"] = check_errors(fn, case, leaves, x, eps)
            row["peak_mem_mib"] = common.peak_memory_mib(call, device)
        except torch.cuda.OutOfMemoryError:
            row["flag"] = "OOM"
            continue
        calls[name] = call
    with fastvae_backend("auto"):
        timings = common.bench_many(calls, device, grads=leaves, quick=settings.quick)
    for row in rows:
        t = timings.get(row["contender"])
        if t is not None:
            row.update(median_ms=t.median_ms, q20_ms=t.q20_ms, q80_ms=t.q80_ms)
    return add_ratios(rows)


def add_ratios(rows: list[dict]) -> list[dict]:
    by_name = {r["contender"]: r for r in rows}
    for r in rows:
        for other in ("eager", "compile"):
            o = by_name.get(other)
            if o and o.get("median_ms") and r.get("median_ms"):
                r[f"speedup_vs_{other}"] = o["median_ms"] / r["median_ms"]
        flags = [r["flag"]] if r.get("flag") else []
        if r["contender"].startswith("fastvae") and any((r.get(f"speedup_vs_{o}") or 1.0) < 1.0 for o in ("eager", "compile")):
            flags.append("LOSES vs " + "+".join(o for o in ("eager", "compile") if (r.get(f"speedup_vs_{o}") or 1.0) < 1.0))
        tol = 2e-2 if r.get("dtype") == "bf16" else 1e-4
        if (r.get("rel_err") or 0.0) > tol or (r.get("grad_err") or 0.0) > 10 * tol:
            flags.append("CHECK error")
        r["flag"] = "; ".join(flags)
    return rows


# --------------------------------------------------------------------------- variance reduction
def _toy_problem(device: torch.device, dim: int = 5, batch: int = 8, perturbation: float = 0.01):
    """Rainforth et al. (2018), sec. 4: p(z) = N(0, I), p(x|z) = N(z, I); the optimal encoder is
    mu = x/2, logvar = log(1/2); here at the optimum plus N(0, perturbation^2) noise."""
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(2.0) * torch.randn(batch, dim, generator=g)
    encoder = torch.nn.Linear(dim, 2 * dim)
    with torch.no_grad():
        weight = torch.zeros(2 * dim, dim)
        weight[:dim] = 0.5 * torch.eye(dim)
        bias = torch.cat([torch.zeros(dim), torch.full((dim,), math.log(0.5))])
        encoder.weight.copy_(weight + perturbation * torch.randn(weight.shape, generator=g))
        encoder.bias.copy_(bias + perturbation * torch.randn(bias.shape, generator=g))
    encoder, x = encoder.to(device), x.to(device)
    unit = torch.zeros((), device=device)

    def loss(crit, K, seed):
        mu, logvar = encoder(x).chunk(2, dim=-1)
        z, kl = fastvae.reparameterize(mu, logvar, seed=seed, samples=K, kl="sampled")
        return crit((z, unit), x, kl)

    return list(encoder.parameters()), loss, "gaussian"


def _digits_vae(device: torch.device, train_steps: int):
    """The paper's MLP VAE (64-200-20, tanh) on the embedded 8x8 digits (binarised at 0.5),
    after ``train_steps`` Adam steps of IWAE (K = 5) from a fixed initialisation."""
    from fastvae.data.digits import load_digits

    x_all = (torch.from_numpy(load_digits("train")) > 0.5).float().to(device)
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(64, 200), torch.nn.Tanh(), torch.nn.Linear(200, 40)).to(device)
    decoder = torch.nn.Sequential(torch.nn.Linear(20, 200), torch.nn.Tanh(), torch.nn.Linear(200, 64)).to(device)

    def loss(crit, K, seed, x=x_all[:100]):
        mu, logvar = encoder(x).chunk(2, dim=-1)
        z, kl = fastvae.reparameterize(mu, logvar, seed=seed, samples=K, kl="sampled")
        return crit(decoder(z), x, kl)

    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    train = fastvae.IWAELoss("bernoulli")
    for step in range(train_steps):
        batch = x_all[torch.randint(0, x_all.shape[0], (100,), generator=torch.Generator().manual_seed(step))]
        opt.zero_grad()
        loss(train, 5, 10_000 + step, batch).backward()
        opt.step()
    return list(encoder.parameters()), loss, "bernoulli"


def variance_rows(info: common.DeviceInfo, mode: str, log=print) -> list[dict]:
    device = info.torch_device
    draws = {"tiny": 20, "quick": 100, "full": 400}[mode]
    problems = {"toy Gaussian, encoder near optimum": lambda: _toy_problem(device)}
    if mode != "tiny":
        steps = 2000 if mode == "full" else 300
        problems["MLP VAE on digits, at init"] = lambda: _digits_vae(device, 0)
        problems[f"MLP VAE on digits, after {steps} IWAE steps"] = lambda: _digits_vae(device, steps)
    rows = []
    for problem, build in problems.items():
        params, loss_fn, likelihood = build()
        crits = {est: fastvae.IWAELoss(likelihood, "mean", estimator=est) for est in ESTIMATORS}
        for K in (5, 50):
            grads = {est: [] for est in ESTIMATORS}
            for i in range(draws):
                for est in ESTIMATORS:
                    g = torch.autograd.grad(loss_fn(crits[est], K, i), params)
                    grads[est].append(torch.cat([t.flatten() for t in g]).double().cpu())
            iwae, dreg = torch.stack(grads["iwae"]), torch.stack(grads["dreg"])
            # squared deviations from each estimator's own mean (a pooled mean would add
            # IWAE's sampling error to DReG's spread); their means are the total variances
            var_i = (iwae - iwae.mean(0)).square().sum(1) * draws / (draws - 1)
            var_d = (dreg - dreg.mean(0)).square().sum(1) * draws / (draws - 1)
            d = var_i - var_d
            rows.append({
                "device": info.name, "torch": info.torch, "date": info.date, "problem": problem, "K": K, "draws": draws,
                "var_iwae": float(var_i.mean()), "var_dreg": float(var_d.mean()),
                "variance_ratio": float(var_i.mean() / var_d.mean()),
                "snr_iwae": _snr(iwae), "snr_dreg": _snr(dreg),
                "z_score": float(d.mean() / (d.std() / math.sqrt(draws))),
            })
            r = rows[-1]
            log(f"[iwae] variance: {problem}, K={K}: IWAE/DReG = {r['variance_ratio']:.3g} "
                f"(SNR {r['snr_iwae']:.3g} -> {r['snr_dreg']:.3g})")
    return rows


def _snr(grads: torch.Tensor) -> float:
    """Mean over coordinates of |mean| / std across draws."""
    return float((grads.mean(0).abs() / grads.std(0).clamp_min(1e-30)).mean())


# --------------------------------------------------------------------------- output
TIMING_SUMMARY = ["estimator", "dtype", "K", "B", "eager_ms", "compile_ms", "fastvae_ms", "x_vs_eager",
                  "x_vs_compile", "fastvae+compile_ms", "max_rel_err", "flag"]
VARIANCE_SUMMARY = ["problem", "K", "draws", "variance_ratio", "snr_iwae", "snr_dreg", "z_score"]


def summarize(rows: Sequence[dict]) -> list[dict]:
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r.get(k)) for k in TIMING_KEY[:-1]), {})[r["contender"]] = r
    out = []
    for by_name in groups.values():
        f = by_name.get("fastvae", {})
        any_row = next(iter(by_name.values()))
        errors = [r.get(c) for r in by_name.values() for c in ("rel_err", "grad_err") if r.get(c) is not None]
        out.append({
            **{k: any_row.get(k) for k in ("estimator", "dtype", "K", "B")},
            "eager_ms": by_name.get("eager", {}).get("median_ms"),
            "compile_ms": by_name.get("compile", {}).get("median_ms"),
            "fastvae_ms": f.get("median_ms"),
            "x_vs_eager": f.get("speedup_vs_eager"), "x_vs_compile": f.get("speedup_vs_compile"),
            "fastvae+compile_ms": by_name.get("fastvae+compile", {}).get("median_ms"),
            "max_rel_err": max(errors) if errors else None,
            "flag": "; ".join(f"{name}: {r['flag']}" for name, r in by_name.items() if r.get("flag")),
        })
    return out


def paths(out_dir: Path, slug: str) -> dict[str, Path]:
    return {"timing": out_dir / f"{slug}-iwae.csv", "variance": out_dir / f"{slug}-iwae-variance.csv",
            "md": out_dir / f"{slug}-iwae.md"}


def save(out_dir: Path, info: common.DeviceInfo, timing_rows, variance_rows_, command: str, fresh: bool = False) -> dict[str, Path]:
    """Merge into the device's CSV files (a partial run replaces only what it measured), then
    render the markdown from them."""
    p = paths(Path(out_dir), info.slug)
    for key, rows, columns, key_cols in (("timing", timing_rows, TIMING_COLUMNS, TIMING_KEY),
                                         ("variance", variance_rows_, VARIANCE_COLUMNS, VARIANCE_KEY)):
        if rows is None:
            continue
        merged = common.merge_rows([] if fresh else common.read_csv(p[key]), rows, key_cols)
        common.atomic_write_text(p[key], common.csv_text(merged, columns))
    timing, variance = common.read_csv(p["timing"]), common.read_csv(p["variance"])
    lines = [
        f"# fastvae IWAE / DReG benchmark: {info.name}", "",
        f"- device: **{info.name}** ({info.kind}); torch {info.torch}, triton {info.triton}; {info.date}",
        f"- last command: `{command}` (torch threads: {info.threads})",
        f"- raw rows: `{p['timing'].name}`, `{p['variance'].name}`", "",
        "## Loss step (forward + backward): mu, logvar -> K draws -> linear decoder -> Bernoulli IWAE loss", "",
        "Median ms per step; `x_vs_*` = the other's time / fastvae's (> 1: fastvae faster); `max_rel_err`: the "
        "largest relative error of any contender's loss or d/dmu against float64 eager on one shared noise draw. "
        "D = 784, Z = 50.", "",
        common.markdown_table(summarize(timing), TIMING_SUMMARY), "",
        "## DReG variance reduction: encoder gradient over repeated draws", "",
        "`variance_ratio` = total variance (trace of the covariance over draws) of the IWAE encoder gradient / "
        "DReG's; `snr_*` = mean over coordinates of |E g| / std g; `z_score`: the paired difference of squared "
        "deviations in standard errors (> 5: a reduction well beyond noise; < -5: an increase).", "",
        common.markdown_table(variance, VARIANCE_SUMMARY), "",
    ]
    common.atomic_write_text(p["md"], "\n".join(lines))
    return p


def run(info: common.DeviceInfo, settings: Settings, out_dir: Path, command: str, fresh: bool = False,
        log=print) -> tuple[list[dict], list[dict]]:
    """Time every case, measure the variance table, write the files; returns both row lists."""
    timing: list[dict] = []
    cases = cases_for(info.kind, settings.mode)
    for i, case in enumerate(cases):
        rows = run_case(case, info, settings)
        timing += rows
        f = next((r for r in rows if r["contender"] == "fastvae"), {})
        log(f"[iwae] {i + 1}/{len(cases)} {case.estimator} {case.dtype} K={case.K} B={case.B}: "
            f"x{common.format_value(f.get('speedup_vs_eager'))} eager, x{common.format_value(f.get('speedup_vs_compile'))} compile")
    variance = variance_rows(info, settings.mode, log)
    save(out_dir, info, timing, variance, command, fresh)
    return timing, variance
