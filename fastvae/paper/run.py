"""``run_paper``: run the four experiments at a budget and write the report.

>>> run_paper("quick", Path("out/paper"))       # -> out/paper/report.md (+ fig*.png, results.json)
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .budgets import BUDGETS, Budget
from .experiments import binary_data, lower_bound_sweep, manifolds, marginal_likelihood, ppca_experiment, real_data
from .report import write_report

EXPERIMENTS = (1, 2, 3, 4)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load_average() -> list[float] | None:
    """The 1/5/15-minute load averages at the end of the run (other work on the machine slows it)."""
    try:
        import os

        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def run_paper(
    budget: str | Budget,
    out_dir: Path,
    device: str = "cpu",
    data: str | None = None,
    real: str | None = None,
    experiments: tuple[int, ...] = EXPERIMENTS,
    threads: int | None = None,
    log: Callable[[str], None] = _stderr,
) -> Path:
    """Run the paper's experiments and write ``out_dir/report.md``; returns its path.

    Args:
        budget: ``"tiny"`` (CI: seconds), ``"quick"`` (~15 min on 2 CPU cores) or ``"full"``
            (paper-sized, for a GPU), or a :class:`Budget`.
        out_dir: where report.md, the PNG figures and results.json go.
        device: torch device for the models and data (``"cpu"``, ``"cuda"``).
        data: binary dataset for experiments 1-3 — ``"fashion-mnist"``, ``"digits"``, an MNIST-format
            IDX directory (e.g. real MNIST), or an array file; default: the budget's (Fashion-MNIST
            when installed, else the embedded digits).
        real: real-valued dataset (e.g. a Frey Face .npy scaled to [0, 1]); default the embedded
            digits, dequantised.
        experiments: which of 1-4 to run.
        threads: torch intra-op threads (None: leave torch's setting).
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
        budget = BUDGETS[budget]
    bad = [e for e in experiments if e not in EXPERIMENTS]
    if bad:
        raise ValueError(f"experiments must be among {EXPERIMENTS}, got {bad}")
    if not experiments:
        # an empty list ran nothing and wrote a report of 0 checks, over any report already in out_dir
        raise ValueError(f"experiments must name at least one of {EXPERIMENTS}, got none")
    # a dataset no asked experiment reads was accepted and ignored without a word
    ignored = []
    if data is not None and not {1, 2, 3} & set(experiments):
        ignored.append(f"--data (data) {data}")
    if real is not None and not {1, 3} & set(experiments):
        ignored.append(f"--real-data (real) {real}")
    if ignored:
        raise ValueError(f"{' and '.join(ignored)} would be ignored: --data is read by experiments 1-3 and "
                         f"--real-data by experiments 1 and 3, and experiments {','.join(map(str, experiments))} "
                         "were asked; drop the flag or add the experiments")
    if threads is not None:
        torch.set_num_threads(threads)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    seconds: dict[str, float] = {}
    results: dict = {"budget": budget.to_dict()}

    binary = real_split = None  # loaded (and checked) before out_dir is made: a refused file leaves nothing
    if {1, 2, 3} & set(experiments):
        binary = binary_data(data, budget, device)
        real_split = real_data(real, device)
        log(f"data: binary {binary.name} {tuple(binary.train.shape)}, real {real_split.name} {tuple(real_split.train.shape)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real_nz2 = None
    if 1 in experiments:
        t = time.perf_counter()
        log("experiment 1: lower bound, AEVB vs wake-sleep")
        results["exp1_binary"] = lower_bound_sweep(binary, "bernoulli", budget.binary_nz, budget.binary_hidden,
                                                   budget.binary_samples, budget, device, log)
        results["exp1_real"] = lower_bound_sweep(real_split, "gaussian", budget.real_nz, budget.real_hidden,
                                                 budget.real_samples, budget, device, log)
        real_nz2 = results["exp1_real"]["models"].get(("AEVB", 2))
        seconds["1: lower bound vs wake-sleep"] = time.perf_counter() - t
    if 2 in experiments:
        t = time.perf_counter()
        log("experiment 2: marginal likelihood, AEVB vs wake-sleep vs MCEM")
        results["exp2"] = marginal_likelihood(binary, budget, device, log)
        seconds["2: marginal likelihood"] = time.perf_counter() - t
    if 3 in experiments:
        t = time.perf_counter()
        log("experiment 3: 2-D manifolds")
        results["exp3"] = manifolds(binary, real_split, budget, device, log, real_model=real_nz2)
        seconds["3: manifolds"] = time.perf_counter() - t
    if 4 in experiments:
        t = time.perf_counter()
        log("experiment 4: PPCA exact check")
        results["exp4"] = ppca_experiment(budget, log)
        seconds["4: PPCA"] = time.perf_counter() - t
    results["run"] = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "device": device, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "wall_seconds": time.perf_counter() - t_start,
        "cpu_seconds": time.process_time() - cpu_start, "load_average": _load_average(), "seconds": seconds,
    }
    path = write_report(results, out_dir)
    log(f"wrote {path} ({results['run']['wall_seconds']:.0f}s)")
    return path
