"""Shared benchmark machinery: device tags, timers, copy bandwidth, peak memory, output files.

Every number the benchmarks report comes from one of the timers here:
- CUDA: ``triton.testing.do_bench`` (warm-up excluded, L2 flushed between calls), quantiles
  0.5 / 0.2 / 0.8 of the per-call time.
- CPU: ``cpu_bench`` below, a warm-up-excluded ``time.perf_counter`` timer over repeats (each
  repeat runs enough calls to last >= ~200 us), same quantiles.
Nothing here queries a GPU at import time.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from fastvae.checkpoint import atomic_write

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUANTILES = (0.5, 0.2, 0.8)


# --------------------------------------------------------------------------- device tags
@dataclass(frozen=True)
class DeviceInfo:
    """What a result row is tagged with."""

    kind: str  # "cpu" or "cuda"
    name: str  # e.g. "NVIDIA H100 80GB HBM3" or "AMD EPYC"
    slug: str  # file stem, e.g. "cuda-nvidia-h100-80gb-hbm3" or "cpu-amd-epyc"
    torch: str
    triton: str
    date: str  # ISO date of the run
    threads: int

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.kind)

    def tags(self) -> dict:
        return {"device": self.name, "torch": self.torch, "triton": self.triton, "date": self.date}


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else the platform's)."""
    from fastvae.models.linear import cpuinfo_field

    return cpuinfo_field("model name") or platform.processor() or platform.machine() or "cpu"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional on CPU-only machines
        return "n/a"


def resolve_device(name: str | None) -> str:
    """``None``/"auto" -> "cuda" when available, else "cpu"; an explicit "cuda" must exist."""
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or auto, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
    return name


def device_info(kind: str) -> DeviceInfo:
    if kind == "cuda":
        name = torch.cuda.get_device_name(torch.cuda.current_device())
    else:
        name = cpu_model_name()
    return DeviceInfo(
        kind=kind,
        name=name,
        slug=f"{kind}-{slugify(name)}",
        torch=torch.__version__,
        triton=triton_version(),
        date=_dt.date.today().isoformat(),
        threads=torch.get_num_threads(),
    )


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- timers
@dataclass(frozen=True)
class Timing:
    median_ms: float
    q20_ms: float
    q80_ms: float
    repeats: int


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def cpu_bench(
    fn: Callable[[], object],
    budget_s: float = 0.5,
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 200,
    min_repeat_s: float = 2e-4,
) -> Timing:
    """Per-call time of ``fn`` on the CPU: warm-up calls excluded, then repeats.

    Each repeat runs ``inner`` calls back to back (``inner`` chosen so that a repeat lasts
    at least ``min_repeat_s``) and records their mean; quantiles are over the repeats.
    Stops after ``budget_s`` seconds of repeats (but at least ``min_repeats``).
    """
    for _ in range(max(1, warmup)):
        fn()
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_repeat_s / one))
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() < deadline):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    times.sort()
    ms = [t * 1e3 for t in times]
    return Timing(_quantile(ms, 0.5), _quantile(ms, 0.2), _quantile(ms, 0.8), len(ms))


def cpu_bench_interleaved(
    fns: dict[str, Callable[[], object]],
    budget_s: float = 0.5,
    warmup: int = 2,
    min_rounds: int = 5,
    max_rounds: int = 200,
    min_repeat_s: float = 2e-4,
) -> dict[str, Timing]:
    """``cpu_bench`` for several contenders at once, taking turns: round r times one repeat of
    each. Load from other processes then hits all contenders alike instead of whichever
    happened to run at the time. ``budget_s`` is per contender."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(max(1, warmup)):
            fn()
        start = time.perf_counter()
        fn()
        inner[name] = max(1, int(min_repeat_s / max(time.perf_counter() - start, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    deadline = time.perf_counter() + budget_s * len(fns)
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() < deadline):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - start) / inner[name])
        rounds += 1
    out = {}
    for name, ts in times.items():
        ms = sorted(t * 1e3 for t in ts)
        out[name] = Timing(_quantile(ms, 0.5), _quantile(ms, 0.2), _quantile(ms, 0.8), len(ms))
    return out


def cuda_bench(
    fn: Callable[[], object],
    grad_to_none: Sequence[torch.Tensor] | None = None,
    warmup_ms: int = 25,
    rep_ms: int = 100,
) -> Timing:
    """``triton.testing.do_bench``: CUDA-event timing, warm-up excluded, L2 flushed per call."""
    from triton.testing import do_bench

    median, q20, q80 = do_bench(
        fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(grad_to_none) if grad_to_none else None,
        quantiles=list(QUANTILES),
    )
    return Timing(float(median), float(q20), float(q80), -1)


def bench(
    fn: Callable[[], object],
    device: torch.device | str,
    grads: Sequence[torch.Tensor] = (),
    quick: bool = False,
) -> Timing:
    """Time ``fn`` on ``device``; ``grads`` are tensors whose ``.grad`` is reset between calls."""
    if torch.device(device).type == "cuda":
        if quick:
            return cuda_bench(fn, grad_to_none=grads or None, warmup_ms=5, rep_ms=20)
        return cuda_bench(fn, grad_to_none=grads or None)

    def call():
        for t in grads:
            t.grad = None
        fn()

    if quick:
        return cpu_bench(call, budget_s=0.02, warmup=1, min_repeats=3, max_repeats=10)
    return cpu_bench(call)


def bench_many(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str,
    grads: Sequence[torch.Tensor] = (),
    quick: bool = False,
    quick_names: Sequence[str] = (),
) -> dict[str, Timing]:
    """Time several contenders on the same inputs: one after another with ``do_bench`` on CUDA,
    interleaved on the CPU. Contenders in ``quick_names`` get the quick budget whatever ``quick``."""
    if torch.device(device).type == "cuda":
        return {name: bench(fn, device, grads, quick or name in quick_names) for name, fn in fns.items()}

    def with_reset(fn):
        def call():
            for t in grads:
                t.grad = None
            fn()
        return call

    slow = {n: with_reset(f) for n, f in fns.items() if n in quick_names}
    main = {n: with_reset(f) for n, f in fns.items() if n not in quick_names}
    out = {}
    if main:
        if quick:
            out.update(cpu_bench_interleaved(main, budget_s=0.02, warmup=1, min_rounds=3, max_rounds=10))
        else:
            out.update(cpu_bench_interleaved(main))
    for n, f in slow.items():
        out[n] = cpu_bench(f, budget_s=0.02, warmup=1, min_repeats=3, max_repeats=5)
    return out


def copy_bandwidth_gbps(device: torch.device | str, nbytes: int | None = None, quick: bool = False) -> float:
    """Device copy bandwidth measured now: GB/s of ``dst.copy_(src)`` (read + write = 2 * nbytes).

    The reference for "% of copy bandwidth": the best an elementwise op that reads and writes
    memory can hope for on this device, measured in the same run as the other numbers.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
        if quick:
            nbytes = 16 << 20
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timing = bench(lambda: dst.copy_(src), device, quick=quick)
    del src, dst
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9


def peak_memory_mib(fn: Callable[[], object], device: torch.device | str) -> float | None:
    """Memory ``fn`` allocates above what was allocated before it (CUDA caching allocator), MiB.

    ``None`` on the CPU: there is no allocator-level peak counter for CPU tensors.
    """
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def count_kernels(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Device kernels one call of ``fn`` launches (CUDA), or ATen ops it dispatches (CPU).

    On the CPU a torch.compile'd region runs as generated C++ that the profiler does not
    split into kernels, so there the count covers only the ATen ops left outside the
    generated code. Returns ``None`` if the profiler is unavailable.
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with _quiet_stderr(), profile(activities=activities) as prof:
            fn()
            synchronize(device)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - profiling is best effort
        return None
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                   and not e.name.lower().startswith(("memcpy", "memset")))
    # top-level ATen ops only (an op's own sub-ops are not extra passes over memory by themselves)
    return sum(1 for e in events if e.name.startswith("aten::") and _top_level_aten(e))


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines (written straight to fd 2)."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _top_level_aten(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


# --------------------------------------------------------------------------- output
def format_value(value: object, digits: int = 3) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.{digits - 1}f}"
        return f"{value:.{digits}g}"
    return str(value)


def _cell(row: dict, column: str) -> str:
    if column == "flag":
        return str(row.get(column) or "")
    return format_value(row.get(column))


def text_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A fixed-width text table for the terminal."""
    cells = [[_cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_cell(r, c).replace("|", "/") for c in columns) + " |")
    return "\n".join(out)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (fastvae's temp file + fsync + rename)."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def csv_text(rows: Iterable[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


def read_csv(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return [_parse_row(r) for r in csv.DictReader(f)]


def _parse_row(row: dict) -> dict:
    parsed = {}
    for k, v in row.items():
        if v is None or v == "":
            parsed[k] = None
            continue
        try:
            parsed[k] = int(v)
            continue
        except ValueError:
            pass
        try:
            parsed[k] = float(v)
        except ValueError:
            parsed[k] = v
    return parsed


def merge_rows(old: Sequence[dict], new: Sequence[dict], key: Sequence[str]) -> list[dict]:
    """``new`` rows plus the ``old`` rows whose key no ``new`` row has (a partial re-run
    replaces only the cases it measured)."""
    def k(r):
        return tuple(str(r.get(c)) for c in key)

    fresh = {k(r) for r in new}
    return [r for r in old if k(r) not in fresh] + list(new)


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    if not vals:
        return None
    return statistics.geometric_mean(vals)
