"""Compile every kernel specialisation fastvae's launchers produce, for real GPUs, without a GPU.

    python -m bench.kernel_compile                 # the CI sample, sm_90 and sm_80: table on stdout
    python -m bench.kernel_compile --all --out bench/results/compile-sm90-sm80.md
    python -m bench.kernel_compile --targets 90 --jobs 2 --json specs.json

Triton's interpreter is more lenient than its compiler, so an interpreter-green kernel can
still fail to compile; and what the compiler makes of a kernel (registers, spills, vector
width of its loads, instruction count) decides its speed. This compiles ahead of time, with
the ptxas that ships in the triton wheel, exactly what a GPU run would compile:

1. The covering set (``covering_calls``) runs fastvae's public API and its private latent-head
   op, forward and backward, on small CPU tensors: every likelihood, every gradient-flag
   combination, float32/float16/bfloat16/float64 and mixed half/float32, per-feature and scalar
   logvar, row lengths that change the tiling, non-contiguous and broadcast (stride-0) inputs,
   the latent head's S draws and sampled KL. Every kernel launch is captured
   (``kernels.launch.capture_launches``) instead of run.
2. Each captured launch is bound by Triton's own JIT binder for the target (the function
   ``JITFunction`` builds to specialise a launch): an int argument equal to 1 becomes a
   constexpr, pointers and ints divisible by 16 get ``tt.divisibility``, ints are i32 or i64 by
   value, pointers are typed by their tensor's dtype. Duplicates are dropped.
3. ``triton.compile`` for each target; registers and local memory from ``cuobjdump
   -res-usage``, instruction mix from the SASS (``cuobjdump -sass``).

Without ``--all`` a sample is compiled: every specialisation the hot path uses plus a greedy
cover of the rest, so each constexpr value, argument type, divisibility attribute and warp
count any specialisation has is compiled at least once. The run fails (exit 1) on a compile
error or a hot-path specialisation (no float64 argument) that spills; exit 3 means this
triton has no API to do this (the reason is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

TARGETS = (90, 80)
UNSUPPORTED_EXIT = 3


class Unsupported(RuntimeError):
    """This triton lacks an API the ahead-of-time compilation needs."""


# --------------------------------------------------------------------------- the covering set
def _api_on_cpu() -> contextlib.AbstractContextManager:
    """Route CPU tensors to the Triton launchers (as FASTVAE_BACKEND=triton does under the
    interpreter) while the kernels stay JIT functions; launches are captured, never run."""
    from unittest import mock

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.dict(os.environ, {"FASTVAE_BACKEND": "triton"}))
    stack.enter_context(mock.patch("fastvae.backend.interpreter_enabled", return_value=True))
    return stack


def _tensor(shape, dtype, layout="contiguous", grad=True) -> torch.Tensor:
    """An uninitialised CPU tensor of ``shape`` laid out as a user's tensor may be."""
    if layout == "transposed" and len(shape) == 2:
        t = torch.empty(shape[::-1], dtype=dtype).t()
    elif layout == "sliced" and len(shape) == 2:  # e.g. mu, logvar = h.chunk(2, -1): row stride 2D, offset
        t = torch.empty(shape[0], 2 * shape[1], dtype=dtype)[:, shape[1]:]
    elif layout == "broadcast" and len(shape) == 2:  # stride-0 rows
        t = torch.empty(1, shape[1], dtype=dtype).expand(shape)
    else:
        t = torch.empty(shape, dtype=dtype)
    return t.requires_grad_(grad) if layout != "broadcast" else t.detach().requires_grad_(False)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
# decoder output dtype, data dtype, logvar dtype: one dtype, or mixed half/float32 as under autocast
LIKELIHOOD_DTYPES = {
    **{name: (d, d, d) for name, d in DTYPES.items()},
    "bf16-out/fp32-x": (torch.bfloat16, torch.float32, torch.bfloat16),
    "fp16-out/fp32-x,lv": (torch.float16, torch.float32, torch.float32),
}
LATENT_SHAPES = [(128, 20), (128, 200), (16384, 200), (16384, 20), (5, 7), (3, 1), (2, 4100)]
LIKELIHOOD_SHAPES = [(100, 784), (4096, 784), (3, 7), (5, 1), (2, 3072), (64, 12288)]
LIKELIHOOD_CASES = ["bernoulli", "continuous_bernoulli", "gaussian", "gaussian_per_feature", "gaussian_scalar"]
# The core of the CI sample: what training the paper's models in float32 or bfloat16 launches.
CORE_DTYPES = ("fp32", "bf16")
CORE_LATENT = {(128, 20), (16384, 200)}  # (N, Z), drawn noise, S = 1, analytic KL
CORE_LIKELIHOOD = {("bernoulli", 100, 784), ("gaussian_per_feature", 100, 784)}
GRAD_FLAGS = [(True, True, False), (True, True, True), (False, False, True), (True, False, False), (False, True, False)]


def _backward(outputs: tuple[torch.Tensor, ...], weights: tuple[str, ...]) -> None:
    """Backward from ``outputs``; a ``"sum"`` weight gives a stride-0 upstream gradient (as
    ``loss.sum().backward()`` does), ``"rows"`` a contiguous one, ``None`` no gradient."""
    loss = 0
    for out, weight in zip(outputs, weights):
        if weight == "sum":
            loss = loss + out.float().sum()
        elif weight == "rows":
            loss = loss + (out.float() * torch.empty(out.shape)).sum()
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        loss.backward()


def _latent_call(n_rows, n_cols, dtype, samples=1, sampled_kl=False, explicit_eps=False, layout="contiguous",
                 first_row=0, weights=("rows", "sum")) -> Callable[[], None]:
    def call():
        from fastvae.latent import _latent_head

        mu, logvar = _tensor((n_rows, n_cols), dtype, layout), _tensor((n_rows, n_cols), dtype, layout)
        eps = torch.empty(samples, n_rows, n_cols, dtype=dtype) if explicit_eps else None
        seed = torch.zeros(0 if explicit_eps else 1, dtype=torch.int64)
        _backward(_latent_head(mu, logvar, eps, seed, first_row, samples, sampled_kl), weights)

    return call


def _likelihood_call(case, n_rows, n_cols, dtypes, needs=(True, True, False), layout="contiguous",
                     weight="rows", leading=()) -> Callable[[], None]:
    def call():
        import fastvae

        out_dtype, x_dtype, lv_dtype = dtypes
        shape = (*leading, n_rows, n_cols)
        out = _tensor(shape, out_dtype, layout, grad=needs[0])
        x = _tensor((n_rows, n_cols) if leading else shape, x_dtype, layout, grad=needs[2])
        if case.startswith("gaussian"):
            lv_shape = {"gaussian": shape, "gaussian_per_feature": (n_cols,), "gaussian_scalar": ()}[case]
            lv = _tensor(lv_shape, lv_dtype, layout if case == "gaussian" else "contiguous", grad=needs[1])
            ll = fastvae.gaussian_log_likelihood(out, lv, x)
        else:
            ll = getattr(fastvae, f"{case}_log_likelihood")(out, x)
        _backward((ll,), (weight,))

    return call


def covering_calls() -> Iterator[tuple[str, Callable[[], None]]]:
    """(label, call) pairs: each runs the API forward and backward once on CPU tensors."""
    for dtype_name, dtype in DTYPES.items():
        for n_rows, n_cols in LATENT_SHAPES:
            for samples, sampled_kl in ((1, False), (1, True), (3, False), (3, True)):
                for explicit_eps in (False, True):
                    label = f"latent {dtype_name} N={n_rows} Z={n_cols} S={samples} sampled={sampled_kl} eps={explicit_eps}"
                    core = (dtype_name in CORE_DTYPES and (n_rows, n_cols) in CORE_LATENT and samples == 1
                            and not sampled_kl and not explicit_eps)
                    yield label + (CORE if core else ""), _latent_call(n_rows, n_cols, dtype, samples, sampled_kl,
                                                                      explicit_eps)
        for layout in ("transposed", "sliced"):
            yield f"latent {dtype_name} {layout}", _latent_call(128, 20, dtype, layout=layout)
        for weights in (("rows", None), (None, "rows"), ("sum", "sum")):
            for sampled_kl in (False, True):
                yield f"latent {dtype_name} grads {weights}", _latent_call(128, 20, dtype, 3, sampled_kl, weights=weights)
        yield f"latent {dtype_name} first_row=2**31", _latent_call(128, 20, dtype, first_row=2**31)
    for dtype_name, dtypes in LIKELIHOOD_DTYPES.items():
        for case in LIKELIHOOD_CASES:
            for n_rows, n_cols in LIKELIHOOD_SHAPES:
                core = dtype_name in CORE_DTYPES and (case, n_rows, n_cols) in CORE_LIKELIHOOD
                yield (f"{case} {dtype_name} N={n_rows} D={n_cols}" + (CORE if core else ""),
                       _likelihood_call(case, n_rows, n_cols, dtypes))
            for needs in GRAD_FLAGS:
                yield f"{case} {dtype_name} needs={needs}", _likelihood_call(case, 100, 784, dtypes, needs)
            for layout in ("transposed", "sliced"):
                yield f"{case} {dtype_name} {layout}", _likelihood_call(case, 100, 784, dtypes, layout=layout)
            yield f"{case} {dtype_name} loss.sum()", _likelihood_call(case, 100, 784, dtypes, weight="sum")
            yield f"{case} {dtype_name} (S, B, D) vs x (B, D)", _likelihood_call(case, 100, 784, dtypes, leading=(3,))


def captured_launches() -> list[tuple[str, Any]]:
    """Run the covering set with launches captured: [(label, Launch)].

    The kernels must have been imported as JIT functions (``TRITON_INTERPRET=0`` when
    ``fastvae.kernels`` is first imported; ``main`` sees to it).
    """
    from fastvae.kernels.launch import capture_launches

    captured = []
    with _api_on_cpu():
        for label, call in covering_calls():
            with capture_launches() as launches:
                call()
            captured += [(label, launch) for launch in launches]
    return captured


# --------------------------------------------------------------------------- specialisation
@dataclasses.dataclass(frozen=True)
class Spec:
    """One specialisation of one kernel, as Triton's JIT would compile it for a launch."""

    module: str
    kernel: str
    signature: tuple[tuple[str, str], ...]  # (argument, type) e.g. ("mu_ptr", "*fp32"), ("n_cols", "i32")
    constexprs: tuple[tuple[str, Any], ...]  # (argument, value): constexpr parameters and specialised ints
    attrs: tuple[tuple[str, str], ...]  # (argument, attributes) e.g. ("mu_ptr", "tt.divisibility=16")
    num_warps: int

    @property
    def hot(self) -> bool:
        """On the training hot path: every launch without a float64 argument."""
        return not any(t == "*fp64" for _, t in self.signature)

    def features(self) -> set[tuple]:
        out = {(self.kernel, "num_warps", self.num_warps)}
        out |= {(self.kernel, name, "type", t) for name, t in self.signature}
        out |= {(self.kernel, name, "value", repr(v)) for name, v in self.constexprs if not name.isupper()}
        out |= {(self.kernel, name, repr(v)) for name, v in self.constexprs if name.isupper()}
        out |= {(self.kernel, name, "attr", a) for name, a in self.attrs}
        return out

    def summary(self) -> str:
        """dtypes, constexpr flags and tile, warps: one cell of the report."""
        dtypes = sorted({t[1:] for _, t in self.signature if t.startswith("*") and t != "*i64"})
        flags = " ".join(f"{n}={int(v) if isinstance(v, bool) else v}" for n, v in self.constexprs if n.isupper())
        ones = ",".join(n for n, v in self.constexprs if not n.isupper())
        wide = ",".join(n for n, t in self.signature if t == "i64")
        aligned = {n for n, a in self.attrs if "divisibility" in a}
        unaligned = ",".join(n for n, t in self.signature if t.startswith("*") and n not in aligned)
        return (f"{'/'.join(dtypes)} {flags} w{self.num_warps}" + (f" [=1: {ones}]" if ones else "")
                + (f" [i64: {wide}]" if wide else "") + (f" [not 16 B aligned: {unaligned}]" if unaligned else ""))


@dataclasses.dataclass(frozen=True)
class Bound:
    """A specialisation with what ``triton.compile`` needs."""

    spec: Spec
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict


def _jit_binder(kernel, target):
    """Triton's own launch binder for ``target``: (args, kwargs) -> (signature, constexprs, attrs, options)."""
    import triton
    from triton.compiler import make_backend

    try:
        from triton.runtime.jit import create_function_from_signature
    except ImportError as exc:
        raise Unsupported(f"triton {triton.__version__} has no triton.runtime.jit.create_function_from_signature") from exc
    if len(inspect.signature(create_function_from_signature).parameters) != 3 or not hasattr(kernel, "_pack_args"):
        raise Unsupported(
            f"triton {triton.__version__}: the JIT's binder API differs from the one this check uses "
            "(create_function_from_signature(sig, params, backend) and JITFunction._pack_args, triton >= 3.3)"
        )
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)

    def bind(args, kwargs):
        bound_args, specialization, options = binder(*args, **kwargs)
        return kernel._pack_args(backend, kwargs, bound_args, specialization, options)

    return bind


def specialize(kernel, args: tuple, meta: dict, target) -> Bound:
    """Bind one launch ``kernel[grid](*args, **meta)`` as the JIT would for ``target``."""
    from triton.runtime.jit import JITFunction

    if not isinstance(kernel, JITFunction):
        raise Unsupported(f"{kernel!r} is not a JIT function: run with TRITON_INTERPRET=0")
    options, signature, constexprs, attrs = _jit_binder(kernel, target)(args, dict(meta))
    names = kernel.arg_names

    def name_of(path):
        return names[path[0]] if isinstance(path, tuple) else path

    spec = Spec(
        module=kernel.fn.__module__,
        kernel=kernel.fn.__name__,
        signature=tuple((k, str(v)) for k, v in signature.items() if v != "constexpr"),
        constexprs=tuple(sorted((name_of(k), v) for k, v in constexprs.items())),
        attrs=tuple(sorted((name_of(k), ",".join(f"{a}={b}" for a, b in v)) for k, v in attrs.items() if v)),
        num_warps=options.num_warps,
    )
    return Bound(spec, signature, constexprs, attrs, options.__dict__)


def bind_all(captured: list[tuple[str, Any]], capability: int) -> dict[Spec, tuple[Bound, list[str]]]:
    """Unique specialisations for one target, each with the labels of the calls that produced it."""
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", capability, 32)
    unique: dict[Spec, tuple[Bound, list[str]]] = {}
    for label, launch in captured:
        bound = specialize(launch.kernel, launch.args, launch.meta, target)
        unique.setdefault(bound.spec, (bound, []))[1].append(label)
    return unique


CORE = "[core]"  # label mark of the calls training in float32 / bfloat16 makes


def sample(unique: dict[Spec, tuple[Bound, list[str]]], cover: bool = True) -> list[Spec]:
    """The specialisations of the core training calls, plus a greedy cover of the features
    (constexpr values, argument types, divisibility attributes, warps) of all the others."""
    specs = list(unique)
    chosen = [s for s in specs if any(label.endswith(CORE) for label in unique[s][1])]
    covered = set().union(*(s.features() for s in chosen))
    rest = [s for s in specs if s not in chosen]
    while rest and cover:
        best_gain, best = max((len(s.features() - covered), i) for i, s in enumerate(rest))
        if best_gain == 0:
            break
        chosen.append(rest.pop(best))
        covered |= chosen[-1].features()
    return chosen


# --------------------------------------------------------------------------- compilation
@dataclasses.dataclass(frozen=True)
class Compiled:
    spec: Spec
    capability: int
    registers: int | None = None
    spill_bytes: int | None = None  # ptxas -v: bytes of register spill stores + loads per thread
    stack: int | None = None  # ptxas -v: bytes of stack frame (local arrays, e.g. sin/cos's argument reduction)
    local_ops: int | None = None  # STL + LDL in the SASS (spills, or a local array's accesses)
    shared: int | None = None  # bytes of shared memory (layout conversions, reductions, scans)
    instructions: int | None = None  # SASS instructions (static count: a loop body counts once)
    mufu: int | None = None  # special-function-unit instructions (exp2, log2, sin, cos, rcp, rsqrt)
    global_access: str = ""  # LDG/STG widths, e.g. "LDG.E.128x2 STG.E.128x1"
    error: str | None = None
    seconds: float = 0.0

    @property
    def spills(self) -> bool:
        return bool(self.spill_bytes)


def _cuobjdump() -> str:
    try:
        from triton import knobs

        return knobs.nvidia.cuobjdump.path
    except (ImportError, AttributeError):
        from triton.backends.nvidia.compiler import _path_to_binary

        return _path_to_binary("cuobjdump")[0]


SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")
USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_frame(ptx: str, capability: int, tmp: Path) -> tuple[int, int]:
    """(stack frame bytes, spill bytes) as ``ptxas -v`` reports them for this PTX: spills are
    registers that did not fit; a stack frame without spills holds local arrays."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    source = tmp / "kernel.ptx"
    source.write_text(ptx)
    log = subprocess.run([get_ptxas(capability).path, "-v", f"--gpu-name={sm_arch_from_capability(capability)}",
                          str(source), "-o", str(tmp / "kernel.o")], capture_output=True, text=True, check=True).stderr
    frame, stores, loads = (int(v) for v in PTXAS_FRAME.search(log).groups())
    return frame, stores + loads


def compile_bound(bound: Bound, capability: int) -> Compiled:
    """``triton.compile`` one specialisation for sm_<capability> and read what ptxas made of it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    started = time.perf_counter()
    kernel = getattr(importlib.import_module(bound.spec.module), bound.spec.kernel)
    try:
        compiled = triton.compile(ASTSource(kernel, bound.signature, bound.constexprs, bound.attrs),
                                  target=GPUTarget("cuda", capability, 32), options=bound.options)
    except Exception as exc:  # noqa: BLE001 - every compile error is reported, not raised
        return Compiled(bound.spec, capability, error=f"{type(exc).__name__}: {str(exc).strip()[:2000]}",
                        seconds=time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        tool = _cuobjdump()
        usage = subprocess.run([tool, "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
        stack, spill_bytes = _ptxas_frame(compiled.asm["ptx"], capability, Path(tmp))
    registers, _, shared, _ = (int(v) for v in USAGE.search(usage).groups())
    ops = SASS_LINE.findall(sass)
    widths: dict[str, int] = {}
    for op in ops:
        if op.startswith(("LDG", "STG")):
            widths[op] = widths.get(op, 0) + 1
    return Compiled(
        bound.spec, capability, registers=registers, spill_bytes=spill_bytes, stack=stack, shared=shared,
        local_ops=sum(op.startswith(("STL", "LDL")) for op in ops), instructions=len(ops),
        mufu=sum(op.startswith("MUFU") for op in ops),
        global_access=" ".join(f"{k}x{v}" for k, v in sorted(widths.items())),
        seconds=time.perf_counter() - started,
    )


def _compile_job(job):
    return compile_bound(*job)


def compile_all(jobs: list[tuple[Bound, int]], workers: int) -> list[Compiled]:
    if workers <= 1:
        return [compile_bound(*job) for job in jobs]
    import multiprocessing

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile_job, jobs))


# --------------------------------------------------------------------------- report
COLUMNS = ("target", "kernel", "specialisation", "regs", "spill B", "stack B", "local ops", "smem B", "SASS", "MUFU",
           "global access", "hot")


def report_rows(results: list[Compiled]) -> list[dict]:
    rows = []
    for r in sorted(results, key=lambda r: (-r.capability, r.spec.kernel, r.spec.summary())):
        rows.append({
            "target": f"sm_{r.capability}", "kernel": r.spec.kernel, "specialisation": r.spec.summary(),
            "regs": r.registers, "spill B": r.spill_bytes, "stack B": r.stack, "local ops": r.local_ops,
            "smem B": r.shared,
            "SASS": r.instructions, "MUFU": r.mufu, "global access": r.global_access,
            "hot": "hot" if r.spec.hot else "", "error": r.error,
        })
    return rows


def text_table(rows: list[dict]) -> str:
    cells = [[str(c) for c in COLUMNS]] + [["" if row[c] is None else str(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in cells)


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join("" if row[c] is None else str(row[c]).replace("|", "/") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def summary_by_kernel(results: list[Compiled]) -> list[dict]:
    """Per target and kernel: the worst hot-path registers and spills, and how many compiled."""
    out: dict[tuple, dict] = {}
    for r in results:
        row = out.setdefault((r.capability, r.spec.kernel), {
            "target": f"sm_{r.capability}", "kernel": r.spec.kernel, "compiled": 0, "errors": 0,
            "max regs (hot)": 0, "max regs (all)": 0, "spilling (hot)": 0, "spilling (all)": 0,
        })
        row["compiled"] += 1
        row["errors"] += r.error is not None
        if r.error is None:
            row["max regs (all)"] = max(row["max regs (all)"], r.registers)
            row["spilling (all)"] += r.spills
            if r.spec.hot:
                row["max regs (hot)"] = max(row["max regs (hot)"], r.registers)
                row["spilling (hot)"] += r.spills
    return [out[k] for k in sorted(out, key=lambda k: (-k[0], k[1]))]


# --------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.kernel_compile", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="compile every captured specialisation (not the CI sample)")
    p.add_argument("--targets", default=",".join(map(str, TARGETS)),
                   help="comma-separated compute capabilities (default: 90,80)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes (default: 2)")
    p.add_argument("--match", help="only specialisations whose 'kernel specialisation' text matches this regex")
    p.add_argument("--core", action="store_true", help="only the core training specialisations (no greedy cover)")
    p.add_argument("--out", type=Path, help="also write the table as markdown here")
    p.add_argument("--json", type=Path, help="also write every result as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "fastvae.kernels.latent_head" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1":
        print("the kernels were imported under TRITON_INTERPRET=1; run this in a fresh process", file=sys.stderr)
        return 2
    os.environ["TRITON_INTERPRET"] = "0"  # decorate the kernels as JIT functions (read at first import)
    import triton

    started = time.perf_counter()
    capabilities = [int(c) for c in args.targets.split(",") if c.strip()]
    try:
        captured = captured_launches()
        per_target = {c: bind_all(captured, c) for c in capabilities}
    except Unsupported as exc:
        print(f"skipped: {exc}")
        return UNSUPPORTED_EXIT
    unique = per_target[capabilities[0]]
    specs = list(unique)
    core = {s for s in specs if any(label.endswith(CORE) for label in unique[s][1])}
    chosen = specs if args.all else sample(unique, cover=not args.core)
    if args.match:
        chosen = [s for s in chosen if re.search(args.match, f"{s.kernel} {s.summary()}")]
    uncovered = set().union(*(s.features() for s in specs)) - set().union(*(s.features() for s in chosen))
    jobs = [(per_target[c][s][0], c) for c in capabilities for s in chosen if s in per_target[c]]
    results = compile_all(jobs, args.jobs)
    elapsed = time.perf_counter() - started
    # every row of a sample; of a full run, the core (training) rows and any that failed or spilled
    detail = [r for r in results if not args.all or r.spec in core or r.error is not None or r.spills]
    rows = report_rows(detail)
    scope = "every captured specialisation" if args.all else "the CI sample"
    header = (f"Compiled {len(chosen)} of {len(specs)} specialisations ({scope}; {len(captured)} captured launches) "
              f"for {', '.join(f'sm_{c}' for c in capabilities)} in {elapsed:.0f} s with triton {triton.__version__}, "
              f"torch {torch.__version__}")
    print(text_table(rows))
    print()
    summary = summary_by_kernel(results)
    print(_summary_text(summary))
    print(header)
    from .common import atomic_write_text

    if args.out:
        text = (f"# Kernels compiled ahead of time for sm_90 / sm_80\n\nGenerated by `python -m bench.kernel_compile "
                f"{' '.join(argv if argv is not None else sys.argv[1:])}`. {header}.\n\n"
                "Registers per thread (the cubin's), bytes of register spills (stores + loads) and of stack frame per "
                "thread (ptxas -v; a stack frame without spills holds local arrays, e.g. the large-argument reduction "
                "of libdevice's accurate sin/cos, a path these kernels never take), local ops the STL/LDL "
                "instructions in the SASS; SASS is the static instruction count (a loop body counts once), MUFU "
                "the special-function instructions, global access the LDG/STG widths. Hot: no float64 argument "
                "(training's specialisations); a hot specialisation that spills fails the check.\n\n"
                "## Per kernel\n\n" + _summary_markdown(summary) + "\n"
                + markdown(rows, "## Specialisations" if not args.all else
                           "## The core training specialisations (and any that failed or spilled)"))
        atomic_write_text(args.out, text)
    if args.json:
        payload = [{**dataclasses.asdict(r), "spec": {**dataclasses.asdict(r.spec), "hot": r.spec.hot,
                                                    "summary": r.spec.summary()}} for r in results]
        atomic_write_text(args.json, json.dumps({"header": header, "specs_captured": len(specs), "specs_compiled": len(chosen),
                                         "uncovered_features": sorted(map(repr, uncovered)), "results": payload},
                                        default=str, indent=1))
    failures = [r for r in results if r.error is not None]
    spilling = [r for r in results if r.error is None and r.spec.hot and r.spills]
    for r in failures:
        print(f"COMPILE ERROR sm_{r.capability} {r.spec.kernel} {r.spec.summary()}:\n{r.error}", file=sys.stderr)
    for r in spilling:
        print(f"SPILLS sm_{r.capability} {r.spec.kernel} {r.spec.summary()}: {r.spill_bytes} B of spill stores "
              f"and loads per thread", file=sys.stderr)
    return 1 if failures or spilling else 0


SUMMARY_COLUMNS = ("target", "kernel", "compiled", "errors", "max regs (hot)", "spilling (hot)", "max regs (all)",
                   "spilling (all)")


def _summary_text(summary: list[dict]) -> str:
    widths = [max(len(str(c)), *(len(str(r[c])) for r in summary)) for c in SUMMARY_COLUMNS]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(SUMMARY_COLUMNS, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(SUMMARY_COLUMNS, widths)) for r in summary]
    return "\n".join(lines)


def _summary_markdown(summary: list[dict]) -> str:
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in SUMMARY_COLUMNS) + " |" for r in summary]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
