"""Streaming from a memory map vs resident data: samples/s and resident memory, same run.

The training data (``--data``: synthetic binary images or Fashion-MNIST thresholded at 0.5) is
written as a uint8 ``.npy`` file, which fastvae memory-maps. Two ``fastvae train`` processes
train pytorch/examples' model (784-400-20 ReLU, B=128, Adam) on it for the same samples:

- ``resident``: no memory budget: the file fits, so it is copied into memory once and every
  batch is an index-select;
- ``streaming``: ``--memory-budget-mb`` = a quarter of the file: the data is 4x larger than the
  budget, so batches are read from the memory map by the prefetch thread (``os.preadv``, rows in
  file order, into reused buffers).

They alternate (resident, streaming, streaming, resident, ...). Reported: steady samples/s (median
over runs; from metrics.csv, start-up excluded), streaming's share of resident's (the goal:
>= 90 %), the peak resident set size (resident holds the data, streaming does not), and how much
it grew during the training loop (between the first and the last metrics rows; ~0 MB is flat). The file stays in the page cache: this measures the pipeline's
cost, not a disk's.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import common, training
from .processes import load_average, train_process

COLUMNS = ["device", "torch", "triton", "date", "source", "threads", "samples", "runs", "data_mb", "budget_mb",
           "samples_per_s", "samples_per_s_runs", "vs_resident", "peak_rss_mb", "rss_growth_mb", "load_avg", "flag"]
KEY_COLUMNS = ["device", "source"]
SUMMARY_COLUMNS = ["source", "threads", "data_mb", "budget_mb", "samples_per_s", "vs_resident", "peak_rss_mb",
                   "rss_growth_mb", "load_avg", "flag"]
GOAL = 0.9


@dataclass(frozen=True)
class Settings:
    mode: str  # "full", "quick" or "tiny"
    data: str = "synthetic"
    threads: int = 1

    def sizes(self) -> tuple[int, int, int, int]:
        """(training rows, samples per run, runs per source, log_every)."""
        return {"full": (60000, 180_000, 3, 20), "quick": (60000, 60_000, 1, 20), "tiny": (2000, 4000, 1, 5)}[self.mode]


def run(info: common.DeviceInfo, settings: Settings, log=print) -> list[dict]:
    n_train, samples, runs, log_every = settings.sizes()
    spec = training.EXAMPLES
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastvae-stream-") as tmp:
        work = Path(tmp)
        data = training.make_data(settings.data, n_train, max(200, n_train // 6), work / "data")
        data_mb = data.train_path.stat().st_size / 2**20
        budget_mb = data_mb / 4
        common_args = ["--data", str(data.train_path), "--test-data", str(data.test_path), "--binarize", "none",
                       "--latent", str(spec.latent), "--hidden", str(spec.hidden), "--activation", spec.activation,
                       "--init", spec.init, "--optimizer", spec.optimizer, "--lr", str(spec.lr), "--weight-decay", "0",
                       "--batch-size", str(spec.batch), "--samples", str(samples), "--threads", str(settings.threads),
                       "--device", "cpu", "--log-every", str(log_every), "--eval-every", str(10**9),
                       "--checkpoint-every", str(10**9)]
        sources = {"resident": [], "streaming": ["--memory-budget-mb", f"{budget_mb:.3f}"]}
        results: dict[str, list] = {name: [] for name in sources}
        loads = []
        for rep in range(runs):
            order = list(sources) if rep % 2 == 0 else list(sources)[::-1]
            for name in order:
                out = work / f"{name}-{rep}"
                loads.append(load_average())
                result = train_process([*common_args, *sources[name], "--out", str(out)])
                trajectory = training.read_metrics(out / "metrics.csv")
                rate = training.steady_samples_per_s(trajectory)
                growth = result.rss_growth
                results[name].append((rate, result, growth))
                log(f"[streaming] {name} run {rep + 1}/{runs}: {rate:,.0f} samples/s, peak RSS "
                    f"{result.peak_rss / 2**20:.0f} MB, grew {growth / 2**20:+.1f} MB between the first and last "
                    f"metrics rows (load {loads[-1]})")
        load = statistics.mean(v for v in loads if v is not None) if any(v is not None for v in loads) else None
        resident_rate = statistics.median(r for r, _, _ in results["resident"])
        for name in sources:
            rates = [r for r, _, _ in results[name]]
            rate = statistics.median(rates)
            ratio = rate / resident_rate
            flag = f"BELOW the {GOAL:.0%} goal" if name == "streaming" and ratio < GOAL else ""
            rows.append({**info.tags(), "source": name, "threads": settings.threads, "samples": samples,
                         "runs": runs, "data_mb": data_mb, "budget_mb": budget_mb if name == "streaming" else None,
                         "samples_per_s": rate, "samples_per_s_runs": ";".join(f"{r:.0f}" for r in rates),
                         "vs_resident": ratio,
                         "peak_rss_mb": max(res.peak_rss for _, res, _ in results[name]) / 2**20,
                         "rss_growth_mb": max(growth for _, _, growth in results[name]) / 2**20,
                         "load_avg": load, "flag": flag})
    return rows
