"""CPU thread contention: the README's default run, alone and beside a busy process.

``fastvae train`` with no model flags (the paper's model on the embedded digits), shortened to
``samples`` examples, runs as its own process alone and beside one busy neighbour (a
single-threaded spin on one core), in alternation (alone, beside, beside, alone, ...):

- ``fastvae default``: fastvae's own thread choice (:mod:`fastvae.threads`);
- ``one thread per core``: ``--threads`` = the cores (torch's default, what every PyTorch loop
  gets unless it says otherwise), for contrast, twice, on an eighth of the samples (it can be
  ten times slower); compare the configurations by samples/s.

Reported per configuration: the run's time (the trainer's wall time: the loop and its final
evaluation, not the Python start-up), median over the runs, alone and beside the neighbour;
their ratio (the claim: fastvae's default stays within 2x); the threads used and the machine's
load average around the runs (the machine may be shared: "alone" then means beside whatever
else runs, and the ratio is what to read).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import common
from .processes import BusyNeighbour, load_average, train_process
from fastvae.threads import available_cores

COLUMNS = ["device", "torch", "triton", "date", "config", "threads", "samples", "runs", "alone_s", "beside_busy_s",
           "slowdown", "alone_samples_per_s", "beside_samples_per_s", "alone_runs", "beside_runs", "load_avg", "flag"]
KEY_COLUMNS = ["device", "config"]
SUMMARY_COLUMNS = ["config", "threads", "samples", "alone_s", "beside_busy_s", "slowdown", "alone_samples_per_s",
                   "beside_samples_per_s", "load_avg", "flag"]
#: The claim: fastvae's default run beside one busy process takes at most this times its time alone.
MAX_SLOWDOWN = 2.0


@dataclass(frozen=True)
class Settings:
    mode: str  # "full", "quick" or "tiny"

    def sizes(self) -> tuple[int, int]:
        """(samples per run, runs per condition)."""
        return {"full": (400_000, 3), "quick": (100_000, 1), "tiny": (3_000, 1)}[self.mode]


def run(info: common.DeviceInfo, settings: Settings, log=print) -> list[dict]:
    samples, runs = settings.sizes()
    cores = available_cores()
    # (name, extra flags, samples, runs): the thrashing contrast is shorter and measured once
    configs = [("fastvae default", [], samples, runs),
               ("one thread per core", ["--threads", str(cores)], samples // 8, min(runs, 2))]
    if settings.mode == "tiny":
        configs = configs[:1]
    rows = []
    loads = []
    with tempfile.TemporaryDirectory(prefix="fastvae-threads-") as tmp:
        times: dict[tuple[str, bool], list[float]] = {}
        threads: dict[str, int] = {}
        for rep in range(runs):
            order = [(name, extra, n, busy) for name, extra, n, reps in configs for busy in (False, True) if rep < reps]
            for name, extra, n, busy in (order if rep % 2 == 0 else order[::-1]):
                loads.append(load_average())
                args = ["--samples", str(n), "--device", "cpu", "--eval-every", str(10**9),
                        "--checkpoint-every", str(10**9), "--out", str(Path(tmp) / f"{len(loads)}"), *extra]
                if busy:
                    with BusyNeighbour():
                        result = train_process(args)
                else:
                    result = train_process(args)
                seconds = float(result.summary["wall_time_s"])
                times.setdefault((name, busy), []).append(seconds)
                threads[name] = int(result.summary.get("threads", 0))
                log(f"[threads] {name} {'beside a busy process' if busy else 'alone'}: {seconds:.1f} s for {n} samples "
                    f"({threads[name]} threads, load {loads[-1]})")
        load = statistics.mean(v for v in loads if v is not None) if any(v is not None for v in loads) else None
        for name, _, n, reps in configs:
            alone, beside = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
            slowdown = beside / alone
            flag = ""
            if name == "fastvae default" and slowdown > MAX_SLOWDOWN:
                flag = f"OVER {MAX_SLOWDOWN:g}x"
            rows.append({**info.tags(), "config": name, "threads": threads[name], "samples": n, "runs": reps,
                         "alone_s": alone, "beside_busy_s": beside, "slowdown": slowdown,
                         "alone_samples_per_s": n / alone, "beside_samples_per_s": n / beside,
                         "alone_runs": ";".join(f"{t:.1f}" for t in times[(name, False)]),
                         "beside_runs": ";".join(f"{t:.1f}" for t in times[(name, True)]),
                         "load_avg": load, "flag": flag})
    return rows
