"""Writing results: per-device CSV files (long form, one row per measurement) and a markdown
report rendered from them. Every file is written atomically (temporary file + ``os.replace``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Sequence

from . import architectures, common, contention, loss_head, streaming, training


#: Each benchmark's rows: its CSV's columns and the columns that identify a row (for merging).
GROUPS = {
    "loss": (loss_head.LONG_COLUMNS, loss_head.KEY_COLUMNS),
    "train": (training.COLUMNS, training.KEY_COLUMNS),
    "threads": (contention.COLUMNS, contention.KEY_COLUMNS),
    "streaming": (streaming.COLUMNS, streaming.KEY_COLUMNS),
    "arch": (architectures.COLUMNS, architectures.KEY_COLUMNS),
}


def paths(out_dir: Path, slug: str) -> dict[str, Path]:
    return {**{group: out_dir / f"{slug}-{group}.csv" for group in GROUPS}, "md": out_dir / f"{slug}.md"}


def save(out_dir: Path, info: common.DeviceInfo, rows: dict[str, Sequence[dict] | None], fresh: bool = False,
         command: str | None = None) -> dict[str, Path]:
    """Merge the new rows of each benchmark into the device's CSV files (a partial run replaces only
    what it measured, unless ``fresh``), then re-render the markdown from the CSVs."""
    p = paths(Path(out_dir), info.slug)
    for group, new in rows.items():
        if new is None:
            continue
        columns, key_cols = GROUPS[group]
        old = [] if fresh else common.read_csv(p[group])
        merged = common.merge_rows(old, new, key_cols)
        common.atomic_write_text(p[group], common.csv_text(merged, columns))
    command = command or "python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = render_markdown(info, {group: common.read_csv(p[group]) for group in GROUPS}, command)
    common.atomic_write_text(p["md"], md)
    return p


CPU_LOSS_NOTE = """\
**Where fastvae loses on the CPU.** With `FASTVAE_BACKEND=auto`, CPU tensors take fastvae's
torch path (`fastvae/reference.py`), not a CPU kernel: each head is an `autograd.Function`
whose forward is a few ATen ops (Bernoulli: `vecdot(x, l) - softplus(l).sum(-1)`) and whose
backward is the kernels' closed-form gradient, so fp32 at large B is on par with or faster
than eager. It still loses where: bf16 inputs are upcast to fp32 (a full copy each) and
computed in fp32, as the contract requires, while eager computes in bf16; at B=100 the input
checks and Python autograd.Function calls (tens of microseconds) show; and `torch.compile`
fuses the whole loss into one or two C++ loops (the `kernels` column: ATen ops dispatched per
call; a compiled region counts only the ops left outside its generated code). The fused
single-pass kernels are what fastvae ships for CUDA; these CPU rows measure the torch path."""

GPU_LOSS_NOTE = """\
**Reading the GPU rows.** `fastvae` runs the fused Triton kernels: the latent head reads
`mu, logvar` once and writes `z` and the per-row KL with the noise drawn in registers; the
likelihood head reads the decoder output and `x` once per pass. Any `LOSES` row is listed
below with bytes moved and kernel launches for each contender."""


def render_markdown(info: common.DeviceInfo, rows: dict[str, Sequence[dict]], command: str) -> str:
    lines = [f"# fastvae benchmarks: {info.name}", ""]
    every = [r for group in rows.values() for r in group]
    dates = sorted({str(r.get("date")) for r in every if r.get("date")})
    versions = sorted({(str(r.get("torch")), str(r.get("triton"))) for r in every})
    lines += [
        f"- device: **{info.name}** ({info.kind})",
        "- torch / triton: " + (", ".join(f"{t} / {tr}" for t, tr in versions) or f"{info.torch} / {info.triton}"),
        f"- date(s): {', '.join(dates) or info.date}",
        f"- last command: `{command}` (torch threads: {info.threads})",
        "- raw rows (one per measurement): " + ", ".join(f"`{info.slug}-{group}.csv`" for group in GROUPS if rows[group]),
        "",
    ]
    if rows["loss"]:
        lines += _loss_section(info, rows["loss"])
    if rows["train"]:
        lines += _train_section(rows["train"])
    if rows["threads"]:
        lines += ["## CPU threads beside a busy process", "", contention.__doc__.split("\n\n", 1)[1].strip(), "",
                  common.markdown_table(rows["threads"], contention.SUMMARY_COLUMNS), ""]
    if rows["streaming"]:
        lines += ["## Streaming from a memory map vs resident data", "", streaming.__doc__.split("\n\n", 1)[1].strip(),
                  "", common.markdown_table(rows["streaming"], streaming.SUMMARY_COLUMNS), ""]
    if rows["arch"]:
        lines += ["## Architectures: conv vs MLP", "", architectures.__doc__.split("\n\n", 1)[1].strip(), "",
                  common.markdown_table(rows["arch"], architectures.SUMMARY_COLUMNS), ""]
    return "\n".join(lines) + "\n"


def _loss_section(info: common.DeviceInfo, rows: Sequence[dict]) -> list[str]:
    copy = sorted({round(float(r["copy_gbps"]), 1) for r in rows if r.get("copy_gbps")})
    timer = "triton.testing.do_bench (median, L2 flushed)" if info.kind == "cuda" else \
        "interleaved perf_counter repeats, warm-up excluded (median)"
    out = [
        "## Loss head: z, negative ELBO (sum) from mu, logvar, decoder output, x",
        "",
        "Times in ms (" + timer + "). `x_vs_eager` / `x_vs_compile` = the other's time / fastvae's "
        "(> 1: fastvae faster). GB/s on the minimum bytes the pass must move (formula in "
        "`bench/loss_head.py:min_bytes`); `%copy` = that as a share of the copy bandwidth measured in "
        f"the same run ({', '.join(f'{c} GB/s' for c in copy) or 'n/a'}). Peak memory: allocated above the inputs "
        "(CUDA only). `kernels`: CUDA kernels launched per call (CPU: ATen ops dispatched).",
        "",
    ]
    summary = loss_head.summarize(rows)
    out.append(common.markdown_table(summary, loss_head.SUMMARY_COLUMNS))
    out.append("")
    f_rows = [r for r in rows if r.get("contender") == "fastvae" and r.get("median_ms")]
    for pass_ in loss_head.PASSES:
        sel = [r for r in f_rows if r["pass"] == pass_]
        ge = common.geomean(r.get("speedup_vs_eager") for r in sel)
        gc = common.geomean(r.get("speedup_vs_compile") for r in sel)
        if sel:
            out.append(f"- **{pass_}**: fastvae vs eager geomean x{common.format_value(ge)} "
                       f"(range x{common.format_value(min(r.get('speedup_vs_eager') or 0 for r in sel))}"
                       f"-x{common.format_value(max(r.get('speedup_vs_eager') or 0 for r in sel))}), "
                       f"vs compile geomean x{common.format_value(gc)} "
                       f"(range x{common.format_value(min(r.get('speedup_vs_compile') or 0 for r in sel))}"
                       f"-x{common.format_value(max(r.get('speedup_vs_compile') or 0 for r in sel))}) "
                       f"over {len(sel)} cases")
    out.append("")
    out.append(common.markdown_table(compact_summary(rows), COMPACT_COLUMNS))
    out.append("")
    losing = [r for r in f_rows if "LOSES" in str(r.get("flag") or "")]
    out.append(f"- fastvae loses in {len(losing)} of {len(f_rows)} (case, pass) rows")
    interp = [r for r in rows if r.get("contender") == loss_head.INTERP]
    if interp:
        out.append(f"- `{loss_head.INTERP}` rows (CSV only): the Triton kernels under the interpreter on "
                   f"{len(interp)} tiny case/passes, to exercise the kernel code on CPU; never a speed claim. "
                   f"Largest relative error vs the reference: {common.format_value(max(r.get('rel_err') or 0 for r in interp))}")
    out.append("")
    out.append(CPU_LOSS_NOTE if info.kind == "cpu" else GPU_LOSS_NOTE)
    out.append("")
    if losing:
        out += ["### Losing rows: bytes and kernels", "",
                "| case | pass | min MB | fastvae ms | eager ms | compile ms | kernels e/c/f | flag |",
                "|---|---|---|---|---|---|---|---|"]
        by_key = {}
        for r in rows:
            by_key.setdefault(loss_head._case_key(r), {})[r["contender"]] = r
        for r in losing:
            g = by_key[loss_head._case_key(r)]
            e, c = g.get("eager", {}), g.get("compile", {})
            out.append(f"| {r['likelihood']} {r['dtype']} B={r['B']} D={r['D']} Z={r['Z']} | {r['pass']} | "
                       f"{common.format_value(r['min_bytes'] / 1e6)} | {common.format_value(r['median_ms'])} | "
                       f"{common.format_value(e.get('median_ms'))} | {common.format_value(c.get('median_ms'))} | "
                       f"{common.format_value(e.get('kernels'))}/{common.format_value(c.get('kernels'))}/"
                       f"{common.format_value(r.get('kernels'))} | {r['flag']} |")
        out.append("")
    return out


COMPACT_COLUMNS = ["likelihood", "dtype", "cases", "fwd x_vs_eager", "fwd x_vs_compile",
                   "fwd+bwd x_vs_eager", "fwd+bwd x_vs_compile"]


def compact_summary(rows: Sequence[dict]) -> list[dict]:
    """Geometric-mean speed-ups of fastvae per (likelihood, dtype) over the batch/feature sizes."""
    out = []
    f_rows = [r for r in rows if r.get("contender") == "fastvae" and r.get("median_ms")]
    for lik in loss_head.LIKELIHOODS:
        for dt in loss_head.DTYPES:
            sel = [r for r in f_rows if r.get("likelihood") == lik and r.get("dtype") == dt]
            if not sel:
                continue
            row = {"likelihood": lik, "dtype": dt, "cases": len({loss_head._case_key(r)[:-1] for r in sel})}
            for pass_ in loss_head.PASSES:
                for other in ("eager", "compile"):
                    row[f"{pass_} x_vs_{other}"] = common.geomean(
                        r.get(f"speedup_vs_{other}") for r in sel if r["pass"] == pass_)
            out.append(row)
    return out


def _train_section(rows: Sequence[dict]) -> list[str]:
    out = [
        "## Training: samples/s and time to the same ELBO",
        "",
        "Same data (binary 784-D), model, optimiser and number of samples for every contender; run r of "
        "every contender uses seed r. `samples_per_s`: steady state, first logging window to the last "
        "(start-up and compilation excluded), the best of `runs` runs (each run's in the CSV); "
        "`end_to_end_s`: the whole call (fastest run). `train_elbo` (last logging window) and `test_elbo` "
        "(one fixed-seed single-sample estimate, the same code for every contender): means over the runs. "
        "`time_to_target_s`: wall time from the loop's start until the windowed train ELBO first reached "
        "the target, the lowest final train ELBO of any run of the model (so every run reaches it), median "
        "over runs; `time_to_target_speedup` = the loop's / this one's. Compilation counts in it.",
        "",
    ]
    archs = sorted({(r.get("model"), r.get("arch"), r.get("data")) for r in rows}, key=lambda t: str(t))
    for model, arch, data in archs:
        out.append(f"- `{model}`: {arch}, data: {data}")
    out.append("")
    out.append(common.markdown_table(rows, training.SUMMARY_COLUMNS))
    out.append("")
    return out
