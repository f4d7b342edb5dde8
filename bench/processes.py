"""Training runs as separate processes: the ``fastvae train`` command, its wall time, its resident
memory over time, and a busy neighbour process.

Used by the thread-contention and streaming benchmarks, which need what one process measures
about itself to be undisturbed by the benchmark's own memory (RSS) and threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastvae.data.memory import rss_bytes

ROOT = Path(__file__).resolve().parents[1]
#: A neighbour that keeps one core busy: a pure-Python spin (no threads of its own).
BUSY_CODE = "x = 0\nwhile True:\n    x += 1\n"


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)  # CPU training takes the torch path; no interpreter needed
    return env


@dataclass
class TrainRun:
    """One ``fastvae train`` process: its summary JSON, wall time and sampled resident memory."""

    summary: dict
    wall_s: float
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)

    @property
    def peak_rss(self) -> int:
        return max((r for _, r in self.rss_samples), default=0)

    #: (step, RSS bytes) at every logging step of the training loop, read inside the process
    loop_rss: list[tuple[int, int]] = field(default_factory=list)

    @property
    def rss_growth(self) -> int:
        """How much RSS grew from the loop's first logging step to its last: ~0 when memory stays flat
        while batches are read."""
        return self.loop_rss[-1][1] - self.loop_rss[0][1] if len(self.loop_rss) >= 2 else 0


def train_process(args: list[str], timeout_s: float = 1800.0, sample_every_s: float = 0.05) -> TrainRun:
    """Run ``fastvae train ARGS`` in its own process (through :func:`main`, which also records the
    RSS at each logging step); sample its RSS from outside every ``sample_every_s``; return its summary."""
    start = time.perf_counter()
    probe = tempfile.NamedTemporaryFile(prefix="fastvae-rss-", suffix=".json", delete=False)
    probe.close()
    env = {**_env(), RSS_PROBE_ENV: probe.name}
    proc = subprocess.Popen([sys.executable, "-m", "bench.processes", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    samples: list[tuple[float, int]] = []
    while proc.poll() is None:
        samples.append((time.perf_counter() - start, rss_bytes(proc.pid)))
        if time.perf_counter() - start > timeout_s:
            proc.kill()
            raise TimeoutError(f"fastvae train {' '.join(args)} ran past {timeout_s:.0f} s")
        time.sleep(sample_every_s)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"fastvae train {' '.join(args)} failed ({proc.returncode}): {err.strip()[-500:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    with open(probe.name) as f:
        loop_rss = [tuple(pair) for pair in json.load(f)] if os.path.getsize(probe.name) else []
    os.unlink(probe.name)
    return TrainRun(summary, wall, [(t, r) for t, r in samples if r > 0], loop_rss)


RSS_PROBE_ENV = "FASTVAE_BENCH_RSS_PROBE"


def main(argv: list[str]) -> int:
    """``fastvae train ARGV``, recording (step, RSS) at every logging step into the file named by
    ``$FASTVAE_BENCH_RSS_PROBE`` (benchmark instrumentation: the trainer itself is unchanged)."""
    from fastvae import trainer
    from fastvae.cli import main as fastvae_main

    seen: list[tuple[int, int]] = []
    log = trainer.Trainer._log

    def logging_step(self, evaluate: bool, loss_sum: float) -> None:
        seen.append((self.step, rss_bytes()))
        log(self, evaluate, loss_sum)

    trainer.Trainer._log = logging_step
    try:
        return fastvae_main(["train", *argv])
    finally:
        with open(os.environ[RSS_PROBE_ENV], "w") as f:
            json.dump(seen, f)


class BusyNeighbour:
    """A process spinning on one core while the ``with`` block runs."""

    def __enter__(self) -> "BusyNeighbour":
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY_CODE])
        time.sleep(0.5)  # let it get going
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
