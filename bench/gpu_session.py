"""One command for a GPU session: tests, benchmarks and a slice of the paper, in two device calls.

    python -m bench.gpu_session --part 1 --out /tmp/session --archive $OUT   # first device call (<= 10 min)
    python -m bench.gpu_session --part 2 --out /tmp/session --archive $OUT   # second device call (<= 10 min)
    python -m bench.gpu_session --device cpu --tiny --part all --out /tmp/s    # CI smoke test, ~1 minute
    python -m bench.gpu_session --render bench/results    # re-render the summary from both parts' records

A GPU is lent to some sessions only, for at most two commands of 10 minutes inside a 30-minute
budget, on a bare machine (torch and triton preinstalled, no network). This runs everything a
GPU session should measure, each stage as a separate process with its own time budget, in
priority order:

- part 1: the environment (GPU, driver, versions); the GPU test suite (``TRITON_INTERPRET=0
  pytest -m gpu``); the loss-head grid, float32 (``python -m bench --only loss``, a slice per
  likelihood so that a slice cut off by its budget loses only its own rows);
- part 2: the loss-head grid, bfloat16; the training throughput runs (``python -m bench --only
  train``, one model per slice); a slice of ``fastvae paper --budget full`` (the PPCA check,
  experiment 4, and the manifolds, experiment 3); the rest of the test suite (``pytest -m "not gpu"``) with the time left.

Benchmarks are called through their command lines, so their own flags and output stay theirs.
Each stage writes its files into ``--out`` as it goes (a stage killed at its budget keeps what
it wrote, and the next stage starts), every file named after the device (``cuda-nvidia-h100-...``,
the benchmarks' device slug), and the logs and the summary carry the torch / triton versions
and the date. The summary, ``<slug>-gpu-session.md``, is rewritten after every stage from the
per-part records ``<slug>-gpu-session-part<N>.json`` found in ``--out``. Result files of this
device already in ``--seed-from`` (default bench/results) are copied into ``--out`` first, so the
benchmarks merge part 2's rows into part 1's. With ``--archive DIR`` (the device tool returns at
most 8 files from its $OUT) every stage also refreshes ``DIR/<slug>-gpu-session-part<N>.tar.gz``
(all of ``--out``) and ``DIR/<slug>-gpu-session.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PART_BUDGET_S = 540  # of a 600 s device call: the rest is for the install and copying results back
MIN_STAGE_S = 15  # a stage with less time left than this is skipped, not started
TAIL_LINES = 25  # output lines kept in the summary per stage
SMOKE_TEST = "tests/test_gpu_session.py"  # the rest-of-suite stage must not run this session again


@dataclass(frozen=True)
class Context:
    out: Path
    slug: str
    device: str  # "cuda" or "cpu"
    tiny: bool


@dataclass(frozen=True)
class Stage:
    name: str
    part: int
    budget_s: float
    command: Callable[[Context], list[str] | None]  # None: not run in this mode
    env: dict = field(default_factory=dict)


@dataclass
class StageRecord:
    name: str
    part: int
    status: str  # ok, failed (exit N), timeout, skipped (...)
    seconds: float
    command: str
    log: str
    files: list[str]
    tail: list[str]


def _python() -> list[str]:
    return [sys.executable]


def _pytest(marker: str, *extra: str) -> Callable[[Context], list[str] | None]:
    def command(ctx: Context) -> list[str] | None:
        paths = ["tests/test_gpu.py"] if ctx.tiny else []
        return _python() + ["-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-m", marker, *extra, *paths]

    return command


def _rest_of_suite(ctx: Context) -> list[str] | None:
    if ctx.tiny:
        return None  # CI runs the suite itself
    import importlib.util

    # the GPU machines have 16 cores and pytest-xdist: 8 workers (ports are picked free per test)
    workers = ["-n", "8"] if importlib.util.find_spec("xdist") is not None else []
    return _pytest("not gpu", "--deselect", SMOKE_TEST, *workers)(ctx)


def _bench(only: str, *flags: str, tiny_ok: bool = True) -> Callable[[Context], list[str] | None]:
    def command(ctx: Context) -> list[str] | None:
        if ctx.tiny and not tiny_ok:
            return None
        mode = ["--tiny", "--threads", "1"] if ctx.tiny else []
        return _python() + ["-m", "bench", "--only", only, "--device", ctx.device, *mode, *flags, "--out", str(ctx.out)]

    return command


def _paper(experiment: int, tiny_ok: bool) -> Callable[[Context], list[str] | None]:
    def command(ctx: Context) -> list[str] | None:
        if ctx.tiny and not tiny_ok:
            return None
        budget = "tiny" if ctx.tiny else "full"
        return _python() + ["-m", "fastvae", "paper", "--budget", budget, "--device", ctx.device,
                            "--experiments", str(experiment), "--out", str(ctx.out / f"{ctx.slug}-paper-exp{experiment}")]

    return command


COMPILED = {"TRITON_INTERPRET": "0"}  # run the compiled kernels, never the interpreter
STAGES = [
    Stage("tests-gpu", 1, 240, _pytest("gpu"), COMPILED),
    Stage("loss-bernoulli-fp32", 1, 130, _bench("loss", "--likelihood", "bernoulli", "--dtype", "fp32"), COMPILED),
    Stage("loss-gaussian-fp32", 1, 130, _bench("loss", "--likelihood", "gaussian", "--dtype", "fp32", tiny_ok=False),
          COMPILED),
    Stage("loss-bernoulli-bf16", 2, 110, _bench("loss", "--likelihood", "bernoulli", "--dtype", "bf16", tiny_ok=False),
          COMPILED),
    Stage("loss-gaussian-bf16", 2, 110, _bench("loss", "--likelihood", "gaussian", "--dtype", "bf16", tiny_ok=False),
          COMPILED),
    Stage("train-paper", 2, 100, _bench("train", "--models", "paper"), COMPILED),
    Stage("train-examples", 2, 100, _bench("train", "--models", "examples", tiny_ok=False), COMPILED),
    Stage("paper-ppca", 2, 60, _paper(4, tiny_ok=False), COMPILED),
    Stage("paper-manifolds", 2, 60, _paper(3, tiny_ok=True), COMPILED),
    Stage("tests-rest", 2, 600, _rest_of_suite, COMPILED),
]


# --------------------------------------------------------------------------- running a stage
def _run(command: list[str], env: dict, log: Path, timeout_s: float) -> tuple[str, float]:
    """Run ``command`` with its output going to ``log`` (written as it goes); kill its whole
    process group at ``timeout_s``. Returns (status, seconds)."""
    started = time.perf_counter()
    with open(log, "a", buffering=1) as f:
        f.write(f"$ {' '.join(command)}\n")
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            f.write(f"\n[gpu_session] killed at its budget of {timeout_s:.0f} s\n")
            return "timeout", time.perf_counter() - started
    return ("ok" if rc == 0 else f"failed (exit {rc})"), time.perf_counter() - started


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the stage's own process group (it was started in a new session), SIGKILL after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


def _files(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime for p in out.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- environment
def environment(ctx: Context, info) -> str:
    """Versions, date, the device and the machine, as text."""
    import platform

    import torch

    lines = [f"date: {info.date}", f"device: {info.name} ({ctx.device})", f"torch: {info.torch}",
             f"triton: {info.triton}", f"python: {platform.python_version()}", f"cpus: {os.cpu_count()}"]
    if ctx.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        lines += [f"gpus: {torch.cuda.device_count()}", f"compute capability: {p.major}.{p.minor}",
                  f"SMs: {p.multi_processor_count}", f"memory: {p.total_memory / 2**30:.1f} GiB",
                  f"cuda (torch): {torch.version.cuda}"]
    for cmd in (["nvidia-smi"], ["git", "-C", str(ROOT), "log", "-1", "--format=commit: %H %s"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                lines += ["", *out.stdout.strip().splitlines()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- summary
def records_in(out: Path, slug: str) -> list[dict]:
    """The stage records of every part's ``<slug>-gpu-session-part*.json`` in ``out``, parts in file-name order."""
    records = []
    for path in sorted(out.glob(f"{slug}-gpu-session-part*.json")):
        records += json.loads(path.read_text())["stages"]
    return records


def summary_markdown(out: Path, slug: str, header: str) -> str:
    """The session's Markdown summary: ``header``, a table of every stage, then each stage's command and log tail."""
    records = records_in(out, slug)
    lines = [f"# GPU session: {slug}", "", header, "",
             "Written by `python -m bench.gpu_session` (bench/README.md, *GPU session*); the files sit beside "
             "this one.", "", "| part | stage | status | seconds | files written |", "|---|---|---|---|---|"]
    for r in records:
        files = ", ".join(f"`{f}`" for f in r["files"][:6]) + (" ..." if len(r["files"]) > 6 else "")
        lines.append(f"| {r['part']} | {r['name']} | {r['status']} | {r['seconds']:.0f} | {files} |")
    for r in records:
        lines += ["", f"## {r['name']} ({r['status']}, {r['seconds']:.0f} s)", "", f"`{r['command']}`", "",
                  "```", *r["tail"], "```"]
    return "\n".join(lines) + "\n"


def archive(out: Path, dest: Path, slug: str, part: int) -> None:
    """Pack every file of ``out`` into ``dest/<slug>-gpu-session-part<part>.tar.gz`` (atomically) and
    copy the summary beside it."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{slug}-gpu-session-part{part}.tar.gz"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=dest)
    os.close(fd)
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(out.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(out)))
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    shutil.copy2(out / f"{slug}-gpu-session.md", dest / f"{slug}-gpu-session.md")


# --------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_session", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for every file of the session (e.g. $OUT on the device)")
    p.add_argument("--part", default="all", choices=("1", "2", "all"), help="which device call this is (default: all)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cuda (default), or cpu for the smoke test")
    p.add_argument("--tiny", action="store_true", help="the smallest run of every stage (the CI smoke test)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_PART_BUDGET_S,
                   help=f"seconds per part, all stages together (default: {DEFAULT_PART_BUDGET_S})")
    p.add_argument("--seed-from", type=Path, default=ROOT / "bench" / "results",
                   help="copy this device's result files from here into --out first (default: bench/results)")
    p.add_argument("--archive", type=Path, metavar="DIR",
                   help="after every stage, pack --out into DIR/<slug>-gpu-session-part<N>.tar.gz (+ the summary)")
    p.add_argument("--render", type=Path, metavar="DIR",
                   help="run nothing: rewrite DIR/<slug>-gpu-session.md from the part records in DIR")
    args = p.parse_args(argv)
    if args.render is None and args.out is None:
        p.error("--out is required (unless --render)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench import common

    if args.render is not None:
        out = args.render
        slugs = sorted({p.name.split("-gpu-session-part")[0] for p in out.glob("*-gpu-session-part*.json")})
        for slug in slugs:
            header = json.loads(sorted(out.glob(f"{slug}-gpu-session-part*.json"))[-1].read_text())["header"]
            common.atomic_write_text(out / f"{slug}-gpu-session.md", summary_markdown(out, slug, header))
            print(f"rendered {out / f'{slug}-gpu-session.md'}")
        return 0 if slugs else 1

    try:
        kind = common.resolve_device(args.device)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    info = common.device_info(kind)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, info.slug, kind, args.tiny)
    header = (f"{info.name} | torch {info.torch} | triton {info.triton} | {info.date} | "
              f"{'tiny' if args.tiny else 'full'} run")
    print(f"gpu_session: {header} | part {args.part} | out {out}", flush=True)
    if args.seed_from.resolve() != out and args.seed_from.is_dir():
        for src in args.seed_from.glob(f"{info.slug}*"):
            if src.is_file() and not (out / src.name).exists():
                shutil.copy2(src, out / src.name)

    parts = [1, 2] if args.part == "all" else [int(args.part)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    failed = False
    for part in parts:
        deadline = time.perf_counter() + args.budget_s
        record_path = out / f"{info.slug}-gpu-session-part{part}.json"
        records: list[StageRecord] = []

        def save() -> None:
            common.atomic_write_text(record_path, json.dumps({"header": header, "stages": [asdict(r) for r in records]},
                                                             indent=1))
            common.atomic_write_text(out / f"{info.slug}-gpu-session.md", summary_markdown(out, info.slug, header))
            if args.archive is not None:
                archive(out, args.archive.resolve(), info.slug, part)

        env_file = out / f"{info.slug}-environment.txt"
        common.atomic_write_text(env_file, environment(ctx, info))
        records.append(StageRecord("environment", part, "ok", 0.0, "(in process)", env_file.name, [env_file.name],
                                   _tail(env_file, 12)))
        save()
        for stage in (s for s in STAGES if s.part == part):
            command = stage.command(ctx)
            log = out / f"{info.slug}-{stage.name}.log"
            left = deadline - time.perf_counter()
            if command is None:
                records.append(StageRecord(stage.name, part, "skipped (not in a tiny run)", 0.0, "", "", [], []))
            elif left < MIN_STAGE_S:
                records.append(StageRecord(stage.name, part, f"skipped (out of time: {left:.0f} s left)", 0.0,
                                           " ".join(command), "", [], []))
                failed = True
            else:
                before = _files(out)
                budget = min(stage.budget_s, left)
                log.write_text(f"# {header} | stage {stage.name} | budget {budget:.0f} s\n")
                status, seconds = _run(command, {**env, **stage.env}, log, budget)
                written = sorted(f for f, t in _files(out).items() if before.get(f) != t and f != log.name)
                records.append(StageRecord(stage.name, part, status, seconds, " ".join(command), log.name,
                                           [log.name] + written, _tail(log)))
                failed |= status != "ok"
            last = records[-1]
            print(f"[part {part}] {last.name}: {last.status} ({last.seconds:.0f} s)", flush=True)
            save()
    print()
    print(summary_markdown(out, info.slug, header).split("\n## ")[0])
    print(f"files in {out}: {', '.join(sorted(_files(out)))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
