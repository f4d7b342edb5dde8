"""``python -m bench``: run the benchmarks, print tables, write CSV + markdown under bench/results/.

    python -m bench                      # everything, on CUDA when available
    python -m bench --device cpu --threads 1
    python -m bench --quick --only loss  # a small subset, short timings
    python -m bench --only iwae          # the IWAE / DReG loss step and DReG's variance reduction
    python -m bench --device cuda --only loss --likelihood bernoulli --dtype fp32   # one slice of the grid
    python -m bench --device cpu --threads 1 --data fashion-mnist --only train,threads,streaming,arch

Benchmarks (``--only``, comma-separated): ``loss`` (the fused loss heads), ``train`` (the trainer
vs a pytorch/examples loop), ``threads`` (the default run beside a busy process), ``streaming``
(a memory-mapped dataset 4x the memory budget vs resident), ``arch`` (conv vs MLP test ELBO),
``iwae`` (the IWAE / DReG loss step, DReG's variance reduction).
Full runs write ``bench/results/<device>.md`` and ``<device>-<benchmark>.csv``;
``--quick`` and ``--tiny`` runs write under ``bench/results/scratch/`` unless ``--out`` is given.
A run that measures only part of the grid replaces only those rows of an existing CSV
(``--fresh`` starts the files over).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

#: The benchmarks, in the order a full run takes them.
BENCHMARKS = ("train", "threads", "streaming", "arch", "loss", "iwae")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run (auto: cuda when available)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="a small subset of cases with short timings")
    speed.add_argument("--tiny", action="store_true",
                       help="seconds: tiny shapes, compile with the 'eager' backend; checks the benchmark code runs")
    p.add_argument("--only", help="comma-separated benchmarks to run: loss, train, threads, streaming, arch, iwae "
                                  "(default: all)")
    p.add_argument("--likelihood", action="append", choices=("bernoulli", "gaussian"),
                   help="loss head: only these likelihoods (repeatable)")
    p.add_argument("--dtype", action="append", choices=("fp32", "bf16"), help="loss head: only these dtypes (repeatable)")
    p.add_argument("--batch", action="append", type=int, metavar="B",
                   help="loss head: only cases with this batch size (repeatable)")
    p.add_argument("--models", default="paper,examples", help="training: comma-separated models (paper, examples)")
    p.add_argument("--data", default="synthetic", choices=("synthetic", "fashion-mnist"),
                   help="training data: synthetic binary images (default) or Fashion-MNIST thresholded at 0.5")
    p.add_argument("--train-runs", type=int, help="training: runs per contender, the fastest reported "
                   "(default: 2 for full CPU runs, else 1)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU runs; default: torch's choice)")
    p.add_argument("--out", type=Path, help="output folder (default: bench/results, or bench/results/scratch for --quick/--tiny)")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: re-render the device's markdown from its CSV files")
    p.add_argument("--fresh", action="store_true", help="replace the device's result files instead of merging into them")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from . import common

    try:
        kind = common.resolve_device(args.device)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    if kind == "cpu":
        # lets the loss benchmark run fastvae's Triton kernels once under the interpreter
        # (a labelled, tiny case); must be set before the kernels are first imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1 would run the CUDA kernels in the interpreter; unset it for GPU runs", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from . import architectures, contention, iwae, loss_head, report, streaming, training

    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    info = common.device_info(kind)
    out_dir = args.out or (common.RESULTS_DIR if mode == "full" else common.RESULTS_DIR / "scratch")
    print(f"fastvae bench: {info.name} | torch {info.torch} | triton {info.triton} | {info.date} | "
          f"mode {mode} | threads {info.threads}")
    started = time.perf_counter()
    if args.render_only:
        files = report.save(out_dir, info, {}, command=_last_command(out_dir, info))
        print(f"rendered {files['md']}")
        return 0
    chosen = [b.strip() for b in (args.only or ",".join(BENCHMARKS)).split(",") if b.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        print(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if set(models) - set(training.MODELS):
        print(f"--models: unknown {', '.join(sorted(set(models) - set(training.MODELS)))}; choose from "
              f"{', '.join(training.MODELS)}", file=sys.stderr)
        return 2
    pinned = args.threads or 1  # the subprocess benchmarks always pin (default 1)
    all_rows: dict[str, list[dict]] = {}
    for name in BENCHMARKS:
        if name not in chosen:
            continue
        if name == "iwae":  # writes its own files (bench/iwae.py)
            rows, variance = iwae.run(info, iwae.Settings(mode, compile_backend="eager" if mode == "tiny" else "inductor"),
                                      Path(out_dir), "python -m bench " + " ".join(sys.argv[1:]), fresh=args.fresh)
            all_rows[name] = rows
            print()
            print(common.text_table(iwae.summarize(rows), iwae.TIMING_SUMMARY))
            print(common.text_table(variance, iwae.VARIANCE_SUMMARY))
            print()
            continue
        if name == "train":
            settings = training.Settings(mode, data=args.data, runs=args.train_runs, threads=args.threads)
            rows, summary = training.run(info, settings, models), training.SUMMARY_COLUMNS
        elif name == "loss":
            settings = loss_head.Settings(mode, compile_backend="eager" if mode == "tiny" else "inductor")
            cases = loss_head.select_cases(kind, mode, args.likelihood, args.dtype, args.batch)
            rows, _ = loss_head.run(info, settings, cases)
            rows, summary = rows, None
        elif name == "threads":
            rows, summary = contention.run(info, contention.Settings(mode)), contention.SUMMARY_COLUMNS
        elif name == "streaming":
            rows = streaming.run(info, streaming.Settings(mode, data=args.data, threads=pinned))
            summary = streaming.SUMMARY_COLUMNS
        else:
            rows, summary = architectures.run(info, architectures.Settings(mode, threads=args.threads)), \
                architectures.SUMMARY_COLUMNS
        all_rows[name] = rows
        report.save(out_dir, info, {name: rows}, fresh=args.fresh)
        print()
        print(common.text_table(loss_head.summarize(rows), loss_head.SUMMARY_COLUMNS) if name == "loss"
              else common.text_table(rows, summary))
        print()
    files = report.paths(Path(out_dir), info.slug) | (iwae.paths(Path(out_dir), info.slug) if "iwae" in all_rows else {})
    print(f"wrote {', '.join(str(p) for p in files.values() if p.exists())} in {time.perf_counter() - started:.0f} s")
    errors = [r for rows in all_rows.values() for r in rows if str(r.get("flag") or "").startswith("ERROR")]
    if errors:
        print(f"{len(errors)} contender run(s) failed; see the ERROR flags above", file=sys.stderr)
        return 1
    return 0


def _last_command(out_dir: Path, info) -> str | None:
    """The command recorded in the existing markdown (a re-render keeps it)."""
    md = Path(out_dir) / f"{info.slug}.md"
    if md.exists():
        for line in md.read_text().splitlines():
            if line.startswith("- last command: `"):
                return line.split("`")[1]
    return None


if __name__ == "__main__":
    sys.exit(main())
