"""VAE vs IWAE vs IWAE-DReG on dynamically binarised Fashion-MNIST (Burda et al. 2015's comparison).

    python -m bench.iwae_experiment --epochs 10 --eval-examples 1000 --out docs/iwae   # the committed run (CPU, ~30 min)
    python -m bench.iwae_experiment --epochs 100 --device cuda --out docs/iwae-gpu

The model is Burda et al.'s one-stochastic-layer architecture: two hidden layers of 200 tanh units
in the encoder and the decoder, 50 latent dimensions, a Bernoulli decoder. Every run trains for
the same number of training examples (``--epochs`` passes, batch 100, Adam 1e-3, the same seed,
data order and binarisation draws) with ``fastvae train``'s trainer and one objective:

- VAE: the ELBO, K = 1 (``--objective elbo``);
- IWAE, K = 5 and K = 50 (``--objective iwae --samples-per-example K``);
- IWAE-DReG, K = 50 (``--estimator dreg``).

Each is evaluated as in Burda et al.: test log p(x) with K = 5,000 importance samples per example
(on the first ``--eval-examples`` test images, with its standard errors), the test ELBO, and the
active units (Var_x E_q[z_j] > 0.01). Writes ``results.csv``, ``report.md`` and ``iwae.png``
(log p(x) and KL per latent dimension) under ``--out``; runs already in ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

RUNS = {  # name: (objective, K, estimator)
    "VAE (K=1)": ("elbo", 1, "iwae"),
    "IWAE (K=5)": ("iwae", 5, "iwae"),
    "IWAE (K=50)": ("iwae", 50, "iwae"),
    "IWAE-DReG (K=50)": ("iwae", 50, "dreg"),
}
COLUMNS = ["model", "objective", "K", "estimator", "epochs", "train_examples", "log_px", "log_px_se", "log_px_mc_se",
           "log_px_min_ess", "vs_vae", "vs_vae_se", "test_elbo", "active_units", "train_time_s", "samples_per_s",
           "eval_examples", "eval_samples", "device"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.iwae_experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=float, default=3.0, help="training passes per model (default: %(default)s)")
    p.add_argument("--eval-examples", type=int, default=500, help="test images for log p(x) (default: %(default)s)")
    p.add_argument("--eval-samples", type=int, default=5000, help="importance samples per image (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the trainer's choice)")
    p.add_argument("--only", action="append", choices=list(RUNS), help="run only these models (repeatable)")
    p.add_argument("--out", type=Path, default=Path("docs/iwae"), help="results, report and figure (default: %(default)s)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/iwae-fashion-mnist"),
                   help="the training runs' directories (default: %(default)s)")
    return p.parse_args(argv)


def train_and_evaluate(name: str, args: argparse.Namespace) -> dict:
    from fastvae.evaluation import (EVAL_SEED, dataset_elbo, importance_sampled_log_px_and_variance,
                                    posterior_diagnostics)
    from fastvae.models import MLPConfig
    from fastvae.runs import load_run
    from fastvae.train_config import TrainConfig
    from fastvae.trainer import train

    objective, k, estimator = RUNS[name]
    run_dir = args.runs_dir / f"{name.split(' ')[0].lower()}-k{k}"
    cfg = TrainConfig(data="fashion-mnist", model=MLPConfig(latent_dim=50, hidden_dim=200, depth=2, activation="tanh",
                                                            init="torch"),
                      objective=objective, samples_per_example=k, estimator=estimator, optimizer="adam", lr=1e-3,
                      batch_size=100, epochs=args.epochs, seed=0, device=args.device, threads=args.threads,
                      log_every=100, eval_every=10**9, checkpoint_every=600, eval_examples=1000, out=str(run_dir),
                      overwrite=True)  # a rerun trains afresh (fastvae refuses an existing run otherwise)
    result = train(cfg)
    run = load_run(run_dir, args.device)
    x = run.test_tensor()
    estimates, variances = [], []
    with torch.no_grad(), torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        torch.manual_seed(EVAL_SEED)
        for xb in x[:args.eval_examples].split(100):
            log_px, variance = importance_sampled_log_px_and_variance(run.model, xb, args.eval_samples)
            estimates += log_px.double().cpu().tolist()
            variances += variance.cpu().tolist()
    per_example = torch.tensor(estimates, dtype=torch.float64)
    n, k_eval = per_example.numel(), args.eval_samples
    stats = {"log_px": per_example.mean().item(), "log_px_se": (per_example.std() / math.sqrt(n)).item(),
             "log_px_mc_se": math.sqrt(sum(variances)) / n,
             "log_px_min_ess": min(k_eval / ((k_eval - 1) * v + 1.0) for v in variances)}
    diagnostics = posterior_diagnostics(run.model, x)
    elbo = dataset_elbo(run.model, x)
    return {
        "model": name, "objective": objective, "K": k, "estimator": estimator, "epochs": args.epochs,
        "train_examples": result.samples_seen, **stats, "test_elbo": elbo,
        "active_units": diagnostics["active_units"], "kl_per_dim": diagnostics["kl_per_dim"],
        "train_time_s": result.wall_time_s, "samples_per_s": result.samples_per_s,
        "eval_examples": min(args.eval_examples, x.shape[0]), "eval_samples": args.eval_samples,
        "device": str(run.device), "log_px_per_example": estimates,
    }


def add_paired_differences(results: list[dict]) -> None:
    """Each model's log p(x) minus the VAE's on the same test images, with the paired standard
    error (the images' own spread cancels, so model differences are resolved far better than
    the absolute values' standard errors suggest)."""
    base = next((r for r in results if r["model"] == "VAE (K=1)"), None)
    for r in results:
        if base is None or r is base:
            r["vs_vae"] = r["vs_vae_se"] = None
            continue
        diff = torch.tensor(r["log_px_per_example"]) - torch.tensor(base["log_px_per_example"])
        r["vs_vae"], r["vs_vae_se"] = diff.mean().item(), (diff.std() / math.sqrt(diff.numel())).item()


def write_outputs(out: Path, results: list[dict], command: str) -> None:
    from bench import common
    from fastvae.plots import plt, save_figure

    add_paired_differences(results)
    rows = [{c: r.get(c) for c in COLUMNS} for r in results]
    common.atomic_write_text(out / "results.csv", common.csv_text(rows, COLUMNS))
    common.atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    table = [{"model": r["model"], "test log p(x)": f"{r['log_px']:.2f} ± {r['log_px_se']:.2f} (MC ± {r['log_px_mc_se']:.2f})",
              "vs VAE (paired)": "" if r["vs_vae"] is None else f"{r['vs_vae']:+.2f} ± {r['vs_vae_se']:.2f}",
              "test ELBO": f"{r['test_elbo']:.2f}", "active units": f"{r['active_units']} / 50",
              "train time": f"{r['train_time_s'] / 60:.1f} min"}
             for r in results]
    lines = [
        "# VAE vs IWAE vs IWAE-DReG on Fashion-MNIST", "",
        f"Command: `{command}`. Burda et al.'s architecture (784-200-200-50 tanh, Bernoulli decoder), "
        f"dynamically binarised Fashion-MNIST, {results[0]['epochs']:g} epochs each ({results[0]['train_examples']:,} "
        f"training examples), Adam 1e-3, batch 100, seed 0. log p(x): K = {results[0]['eval_samples']:,} importance "
        f"samples on the first {results[0]['eval_examples']:,} test images (± its standard error over those images; "
        "MC: the importance-sampling error); test ELBO over all 10,000; active units: Var_x E_q[z_j] > 0.01 over "
        f"the test set. Train time: wall time of the whole run (on a CPU shared with other jobs: read it as ±30%). "
        f"Device: {results[0]['device']}.", "",
        common.markdown_table(table, list(table[0])), "",
        "![log p(x) and KL per latent dimension](iwae.png)", "",
    ]
    common.atomic_write_text(out / "report.md", "\n".join(lines))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["model"] for r in results]
    paired = [(r["vs_vae"] or 0.0, r["vs_vae_se"] or 0.0) for r in results]
    left.errorbar(range(len(results)), [d for d, _ in paired], yerr=[e for _, e in paired], fmt="o", capsize=4)
    left.axhline(0.0, color="gray", lw=0.5)
    left.set_xticks(range(len(results)), names, rotation=15)
    left.set_ylabel("test log p(x) - the VAE's, nats")
    left.set_title(f"log p(x) (K = {results[0]['eval_samples']:,}) vs the VAE, paired ± s.e.")
    left.grid(alpha=0.3)
    for r in results:
        kl = sorted(r["kl_per_dim"], reverse=True)
        right.plot(range(1, len(kl) + 1), kl, marker=".", label=f"{r['model']}: {r['active_units']} active")
    right.set_yscale("log")
    right.set_xlabel("latent dimension, sorted by KL")
    right.set_ylabel("KL(q(z_j|x) || N(0, 1)), nats")
    right.set_title("KL per latent dimension")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    save_figure(fig, out / "iwae.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "results.json"
    settings = {"epochs": args.epochs, "eval_examples": args.eval_examples, "eval_samples": args.eval_samples}
    # reuse only the runs made with these settings; the others are redone
    done = {r["model"]: r for r in json.loads(cache.read_text()) if cache.exists()
            and all(r.get(k) == v for k, v in settings.items())} if cache.exists() else {}
    command = "python -m bench.iwae_experiment " + shlex.join(sys.argv[1:] if argv is None else argv)
    for name in args.only or RUNS:
        if name in done:
            print(f"{name}: reused from {cache}")
            continue
        started = time.perf_counter()
        done[name] = train_and_evaluate(name, args)
        r = done[name]
        print(f"{name}: log p(x) {r['log_px']:.2f} ± {r['log_px_se']:.2f}, ELBO {r['test_elbo']:.2f}, "
              f"{r['active_units']} active units, {time.perf_counter() - started:.0f} s", flush=True)
        write_outputs(args.out, [done[n] for n in RUNS if n in done], command)  # after each run: partial results
    if done:
        write_outputs(args.out, [done[n] for n in RUNS if n in done], command)
    return 0


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    sys.exit(main())
