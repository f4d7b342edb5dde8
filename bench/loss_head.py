"""Loss-head benchmark: the hand-written VAE loss (eager, torch.compile) vs fastvae, same inputs.

Contenders, each computing ``z`` (the reparameterised sample) and the summed negative ELBO
from the encoder's ``mu, logvar`` and the decoder's output:

- ``eager``: the loss as people write it (pytorch/examples' VAE, with logits):
  ``mu + std * randn_like``, ``F.binary_cross_entropy_with_logits(..., reduction="sum")``
  (Gaussian: the Normal log-density written by hand) plus the analytic KL;
- ``compile``: the same Python function under ``torch.compile(dynamic=False)``;
- ``fastvae``: ``fastvae.reparameterize`` + ``fastvae.ELBOLoss(reduction="sum")`` with
  ``FASTVAE_BACKEND=auto`` (CUDA: the Triton kernels; CPU: the plain-torch path);
- ``fastvae-interp`` (CPU only, one tiny case): the Triton kernels under Triton's
  interpreter, to exercise the kernel code on machines without a GPU. Never a speed claim.

Passes: ``fwd`` (inputs require grad, no backward) and ``fwd+bwd`` (backward from the loss
and from an upstream ``dL/dz``, as a decoder would send it).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import fastvae
from fastvae import reference

from . import common

LIKELIHOODS = ("bernoulli", "gaussian")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PASSES = ("fwd", "fwd+bwd")
CONTENDERS = ("eager", "compile", "fastvae")
INTERP = "fastvae-interp"


@dataclass(frozen=True)
class Case:
    likelihood: str
    dtype: str
    B: int
    D: int
    Z: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def full_grid() -> list[Case]:
    """The GPU grid: B x D x Z x dtype x likelihood (144 cases)."""
    return [Case(lik, dt, b, d, z) for lik, dt, b, d, z in itertools.product(
        LIKELIHOODS, DTYPES, (100, 4096, 65536), (784, 3072, 12288), (20, 200))]


def cpu_grid() -> list[Case]:
    """The CPU subset: small, mid and one large batch; both dtypes and likelihoods."""
    shapes = [(100, 784, 20), (4096, 784, 20), (4096, 3072, 200), (65536, 784, 20)]
    return [Case(lik, dt, *s) for lik, dt, s in itertools.product(LIKELIHOODS, DTYPES, shapes)]


def quick_grid(device_kind: str) -> list[Case]:
    shapes = [(100, 784, 20), (4096, 784, 20)] + ([(65536, 3072, 200)] if device_kind == "cuda" else [])
    return [Case(lik, dt, *s) for lik, dt, s in itertools.product(LIKELIHOODS, DTYPES, shapes)]


def tiny_grid() -> list[Case]:
    """Seconds: for the CI smoke test of the benchmark code itself."""
    return [Case("bernoulli", "fp32", 32, 96, 4), Case("gaussian", "bf16", 32, 96, 4)]


INTERP_CASES = {Case("bernoulli", "fp32", 100, 784, 20), Case("gaussian", "fp32", 100, 784, 20),
                Case("bernoulli", "fp32", 32, 96, 4)}


# --------------------------------------------------------------------------- contenders
def eager_bernoulli(mu, logvar, logits, x):
    """The usual hand-written VAE loss (pytorch/examples' ``loss_function``, with logits)."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std)
    z = mu + eps * std
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return z, bce + kld


def eager_gaussian(mu, logvar, mean, dec_logvar, x):
    """The same with a Gaussian decoder: the Normal log-density written out by hand."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std)
    z = mu + eps * std
    nll = 0.5 * torch.sum(math.log(2 * math.pi) + dec_logvar + (x - mean).pow(2) / dec_logvar.exp())
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return z, nll + kld


_BERNOULLI_SUM = fastvae.ELBOLoss("bernoulli", reduction="sum")
_GAUSSIAN_SUM = fastvae.ELBOLoss("gaussian", reduction="sum")


def fastvae_bernoulli(mu, logvar, logits, x):
    z, kl = fastvae.reparameterize(mu, logvar)
    return z, _BERNOULLI_SUM(logits, x, kl)


def fastvae_gaussian(mu, logvar, mean, dec_logvar, x):
    z, kl = fastvae.reparameterize(mu, logvar)
    return z, _GAUSSIAN_SUM((mean, dec_logvar), x, kl)


EAGER = {"bernoulli": eager_bernoulli, "gaussian": eager_gaussian}
FASTVAE = {"bernoulli": fastvae_bernoulli, "gaussian": fastvae_gaussian}


def _raise_recompile_limits() -> None:
    """One compiled function serves every shape of the grid (dynamic=False): allow the recompiles."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4096))


_COMPILED: dict[tuple[str, str], Callable] = {}


def compiled(likelihood: str, backend: str = "inductor") -> Callable:
    key = (likelihood, backend)
    if key not in _COMPILED:
        _raise_recompile_limits()
        _COMPILED[key] = torch.compile(EAGER[likelihood], dynamic=False, backend=backend)
    return _COMPILED[key]


@contextlib.contextmanager
def fastvae_backend(name: str):
    """Run with ``FASTVAE_BACKEND=name`` (read by fastvae at every call)."""
    old = os.environ.get("FASTVAE_BACKEND")
    os.environ["FASTVAE_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTVAE_BACKEND", None)
        else:
            os.environ["FASTVAE_BACKEND"] = old


def interpreter_available() -> bool:
    """The Triton interpreter can run fastvae's kernels in this process (CPU runs)."""
    from fastvae.backend import interpreter_enabled, triton_installed

    return triton_installed() and interpreter_enabled()


@dataclass
class Contender:
    name: str
    impl: str  # what actually ran
    fn: Callable
    backend: str  # FASTVAE_BACKEND for the call ("auto" for the non-fastvae contenders)


def contenders_for(case: Case, device: torch.device, compile_backend: str) -> list[Contender]:
    out = [
        Contender("eager", "torch eager", EAGER[case.likelihood], "auto"),
        Contender("compile", f"torch.compile({compile_backend}, dynamic=False)",
                  compiled(case.likelihood, compile_backend), "auto"),
        Contender("fastvae", "fastvae[triton]" if device.type == "cuda" else "fastvae[torch path]",
                  FASTVAE[case.likelihood], "auto"),
    ]
    if device.type == "cpu" and case in INTERP_CASES and interpreter_available():
        out.append(Contender(INTERP, "fastvae[triton interpreter] (exercises kernels; not a speed claim)",
                             FASTVAE[case.likelihood], "triton"))
    return out


# --------------------------------------------------------------------------- inputs and bytes
def make_inputs(case: Case, device: torch.device, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(mu, logvar, decoder outputs..., x) and the upstream dL/dz. Decoder outputs and the
    encoder's outputs require grad; x does not."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    dt = case.torch_dtype

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=g) * scale).to(dt)

    mu, logvar = randn(case.B, case.Z), randn(case.B, case.Z, scale=0.5)
    if case.likelihood == "bernoulli":
        logits = randn(case.B, case.D, scale=2.0)
        x = (torch.rand(case.B, case.D, device=device, generator=g) > 0.5).to(dt)
        leaves = [mu, logvar, logits]
    else:
        mean, dec_logvar = randn(case.B, case.D), randn(case.B, case.D, scale=0.5)
        x = randn(case.B, case.D)
        leaves = [mu, logvar, mean, dec_logvar]
    for t in leaves:
        t.requires_grad_(True)
    grad_z = randn(case.B, case.Z)
    return leaves + [x], grad_z


def min_bytes(case: Case, pass_: str) -> int:
    """The bytes the op must move at the least, s = element size, N = B*D, M = B*Z:

    fwd      read the decoder side once: k*N*s   (k = 2: logits, x; Gaussian k = 3: mean, logvar, x)
             read mu, logvar and write z: 3*M*s   (the noise need not touch memory)
    fwd+bwd  fwd, then a backward that cannot start before the upstream gradient exists:
             read the decoder side again and write its gradients: (k + g)*N*s
             (g = 1: dlogits; Gaussian g = 2: dmean, dlogvar),
             read dz, mu, logvar and write dmu, dlogvar: 5*M*s
    O(B) per-row values and scalars are left out.
    """
    s = torch.finfo(case.torch_dtype).bits // 8
    n, m = case.B * case.D, case.B * case.Z
    k, g = (2, 1) if case.likelihood == "bernoulli" else (3, 2)
    fwd = k * n * s + 3 * m * s
    if pass_ == "fwd":
        return fwd
    return fwd + (k + g) * n * s + 5 * m * s


def reference_loss(case: Case, inputs: Sequence[torch.Tensor]) -> float:
    """The summed negative ELBO from fastvae.reference (fp32 rows, summed in fp64)."""
    with torch.no_grad():
        mu, logvar = inputs[0], inputs[1]
        if case.likelihood == "bernoulli":
            ll = reference.bernoulli_log_likelihood_ref(inputs[2], inputs[3])
        else:
            ll = reference.gaussian_log_likelihood_ref(inputs[2], inputs[3], inputs[4])
        kl = reference.kl_standard_normal_ref(mu, logvar)
        return float((kl.double() - ll.double()).sum())


# --------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Settings:
    mode: str  # "full", "quick" or "tiny"
    compile_backend: str = "inductor"

    @property
    def quick(self) -> bool:
        return self.mode != "full"


LONG_COLUMNS = [
    "device", "torch", "triton", "date", "likelihood", "dtype", "B", "D", "Z", "pass", "contender", "impl",
    "median_ms", "q20_ms", "q80_ms", "min_bytes", "gbps", "pct_copy_bw", "copy_gbps",
    "speedup_vs_eager", "speedup_vs_compile", "peak_mem_mib", "kernels", "first_call_s", "rel_err", "flag",
]
KEY_COLUMNS = ["device", "likelihood", "dtype", "B", "D", "Z", "pass", "contender"]


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_case(case: Case, device: torch.device, info: common.DeviceInfo, copy_gbps: float,
             settings: Settings) -> list[dict]:
    """Every contender on one case, both passes: long-form result rows."""
    import time

    inputs, grad_z = make_inputs(case, device)
    leaves = [t for t in inputs if t.requires_grad]
    ref = reference_loss(case, inputs)
    rows: list[dict] = []
    for pass_ in PASSES:
        calls: dict[str, Callable] = {}
        pass_rows: dict[str, dict] = {}
        backends: dict[str, str] = {}
        for c in contenders_for(case, device, settings.compile_backend):
            row = {**info.tags(), **asdict(case), "pass": pass_, "contender": c.name, "impl": c.impl,
                   "min_bytes": min_bytes(case, pass_), "copy_gbps": copy_gbps}
            rows.append(row)
            call = _make_call(c, pass_, inputs, grad_z)
            try:
                with fastvae_backend(c.backend):
                    for t in leaves:
                        t.grad = None
                    start = time.perf_counter()
                    z, loss = c.fn(*inputs)  # first call: compiles / JITs, and the correctness check
                    if pass_ == "fwd+bwd":
                        torch.autograd.backward((loss, z), (None, grad_z))
                    common.synchronize(device)
                    row["first_call_s"] = time.perf_counter() - start
                    row["rel_err"] = abs(float(loss.detach().double()) - ref) / max(abs(ref), 1e-30)
                    del z, loss
                    row["peak_mem_mib"] = common.peak_memory_mib(call, device)
            except torch.cuda.OutOfMemoryError:
                row["flag"] = "OOM"
                _free(device)
                continue
            calls[c.name], pass_rows[c.name], backends[c.name] = call, row, c.backend
        # the backend is set once around the timing: only the interpreter contender (timed on its
        # own) switches it per call, so no contender's time includes setting an environment variable
        timed = {name: call if backends[name] == "auto" else _with_backend(call, backends[name])
                 for name, call in calls.items()}
        try:
            with fastvae_backend("auto"):
                timings = common.bench_many(timed, device, grads=leaves, quick=settings.quick, quick_names=(INTERP,))
        except torch.cuda.OutOfMemoryError:
            timings = {}
            _free(device)
            for row in pass_rows.values():
                row["flag"] = "OOM"
        for name, timing in timings.items():
            row = pass_rows[name]
            row.update(median_ms=timing.median_ms, q20_ms=timing.q20_ms, q80_ms=timing.q80_ms)
            row["gbps"] = row["min_bytes"] / (timing.median_ms * 1e-3) / 1e9
            row["pct_copy_bw"] = 100.0 * row["gbps"] / copy_gbps
        for t in leaves:
            t.grad = None
    del inputs, grad_z, leaves
    _free(device)
    return add_ratios(rows)


def _make_call(c: Contender, pass_: str, inputs, grad_z) -> Callable[[], None]:
    fn = c.fn
    if pass_ == "fwd":
        def call():
            fn(*inputs)
    else:
        def call():
            z, loss = fn(*inputs)
            torch.autograd.backward((loss, z), (None, grad_z))
    return call


def _with_backend(call: Callable[[], None], backend: str) -> Callable[[], None]:
    def run():
        with fastvae_backend(backend):
            call()
    return run


def count_case_kernels(case: Case, device: torch.device, rows: list[dict], settings: Settings) -> None:
    """Fill ``kernels`` of ``rows`` (this case's): one profiled call per contender and pass.

    Runs after all timings: a profiler session can leave the process slower for a while.
    """
    inputs, grad_z = make_inputs(case, device)
    by_key = {(r["pass"], r["contender"]): r for r in rows}
    for pass_ in PASSES:
        for c in contenders_for(case, device, settings.compile_backend):
            row = by_key.get((pass_, c.name))
            if row is None or row.get("flag") == "OOM":
                continue

            call = _make_call(c, pass_, inputs, grad_z)
            with fastvae_backend(c.backend):
                try:
                    row["kernels"] = common.count_kernels(call, device)
                except torch.cuda.OutOfMemoryError:
                    row["kernels"] = None
            for t in inputs:
                t.grad = None
    del inputs, grad_z
    _free(device)


def add_ratios(rows: list[dict]) -> list[dict]:
    """speed-up vs eager and vs compile (time of the other / own time) and the LOSES flags."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(_case_key(r), {})[r["contender"]] = r
    for by_name in groups.values():
        for r in by_name.values():
            for other in ("eager", "compile"):
                o = by_name.get(other)
                if o and o.get("median_ms") and r.get("median_ms"):
                    r[f"speedup_vs_{other}"] = o["median_ms"] / r["median_ms"]
            if r.get("flag") == "OOM":
                continue
            flags = []
            if r["contender"] == "fastvae":
                losers = [o for o in ("eager", "compile") if (r.get(f"speedup_vs_{o}") or 1.0) < 1.0]
                if losers:
                    flags.append("LOSES vs " + "+".join(losers))
                tol = 1e-3
                if r.get("rel_err") is not None and r["rel_err"] > tol:
                    flags.append("CHECK rel_err")
            if r["contender"] == INTERP:
                flags.append("interpreter: not a speed claim")
            r["flag"] = "; ".join(flags)
    return rows


def _case_key(r: dict) -> tuple:
    return tuple(str(r.get(k)) for k in ("device", "likelihood", "dtype", "B", "D", "Z", "pass"))


SUMMARY_COLUMNS = [
    "likelihood", "dtype", "B", "D", "Z", "pass", "eager_ms", "compile_ms", "fastvae_ms",
    "fastvae_GB/s", "fastvae_%copy", "x_vs_eager", "x_vs_compile", "peak_MiB e/c/f", "kernels e/c/f", "flag",
]


def summarize(rows: Sequence[dict]) -> list[dict]:
    """One line per (case, pass): the three contenders side by side (the interpreter row is left
    to the CSV)."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(_case_key(r), {})[r["contender"]] = r
    out = []
    for by_name in groups.values():
        any_row = next(iter(by_name.values()))
        e, c, f = (by_name.get(n, {}) for n in CONTENDERS)

        def triple(col):
            return "/".join(common.format_value(x.get(col)) for x in (e, c, f))

        out.append({
            **{k: any_row.get(k) for k in ("likelihood", "dtype", "B", "D", "Z", "pass")},
            "eager_ms": e.get("median_ms"), "compile_ms": c.get("median_ms"), "fastvae_ms": f.get("median_ms"),
            "fastvae_GB/s": f.get("gbps"), "fastvae_%copy": f.get("pct_copy_bw"),
            "x_vs_eager": f.get("speedup_vs_eager"), "x_vs_compile": f.get("speedup_vs_compile"),
            "peak_MiB e/c/f": triple("peak_mem_mib"), "kernels e/c/f": triple("kernels"),
            "flag": "; ".join(x.get("flag") for x in (e, c, f) if x.get("flag")),
        })
    return out


def select_cases(device_kind: str, mode: str, likelihoods: Sequence[str] | None = None,
                 dtypes: Sequence[str] | None = None, batches: Sequence[int] | None = None) -> list[Case]:
    if mode == "tiny":
        cases = tiny_grid()
    elif mode == "quick":
        cases = quick_grid(device_kind)
    else:
        cases = full_grid() if device_kind == "cuda" else cpu_grid()
    if likelihoods:
        cases = [c for c in cases if c.likelihood in likelihoods]
    if dtypes:
        cases = [c for c in cases if c.dtype in dtypes]
    if batches:
        cases = [c for c in cases if c.B in batches]
    return cases


def run(info: common.DeviceInfo, settings: Settings, cases: Sequence[Case], log=print) -> tuple[list[dict], float]:
    """All ``cases``; returns the long-form rows and the copy bandwidth (GB/s) they are measured against."""
    device = info.torch_device
    copy_gbps = common.copy_bandwidth_gbps(device, quick=settings.mode == "tiny")
    log(f"[loss] {info.name}: copy bandwidth {copy_gbps:.1f} GB/s; {len(cases)} cases")
    rows: list[dict] = []
    for i, case in enumerate(cases):
        case_rows = run_case(case, device, info, copy_gbps, settings)
        rows += case_rows
        f = [r for r in case_rows if r["contender"] == "fastvae"]
        ratios = ", ".join(f"{r['pass']}: x{common.format_value(r.get('speedup_vs_eager'))} eager, "
                           f"x{common.format_value(r.get('speedup_vs_compile'))} compile" for r in f)
        log(f"[loss] {i + 1}/{len(cases)} {case.likelihood} {case.dtype} B={case.B} D={case.D} Z={case.Z}: {ratios}")
    log("[loss] counting kernels (one profiled call per contender)")
    for case in cases:
        count_case_kernels(case, device, [r for r in rows if _case_matches(r, case)], settings)
    return rows, copy_gbps


def _case_matches(row: dict, case: Case) -> bool:
    return all(row.get(k) == v for k, v in asdict(case).items())
