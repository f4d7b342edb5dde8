"""CI smoke test of the benchmark code (bench/): it runs, prints its tables and writes its
CSV and markdown files with the expected columns. No timing is asserted, ever."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "bench" / "__main__.py").exists(), reason="bench/ not in this checkout")


def _bench_modules():
    sys.path.insert(0, str(ROOT))
    try:
        from bench import common, loss_head, report, training
    finally:
        sys.path.remove(str(ROOT))
    return common, loss_head, report, training


def _more_bench_modules():
    sys.path.insert(0, str(ROOT))
    try:
        from bench import architectures, contention, streaming
    finally:
        sys.path.remove(str(ROOT))
    return architectures, contention, streaming


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_tables(tmp_path):
    common, loss_head, report, training = _bench_modules()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TRITON_INTERPRET": "1", "FASTVAE_BACKEND": "auto"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--device", "cpu", "--threads", "1", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    files = sorted(p.name for p in tmp_path.iterdir())
    slug = next(name for name in files if name.endswith("-loss.csv"))[: -len("-loss.csv")]
    paths = report.paths(tmp_path, slug)
    assert all(p.exists() for p in paths.values()), files
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing behind

    # the loss CSV: long form, every contender and pass of every tiny case
    assert _header(paths["loss"]) == loss_head.LONG_COLUMNS
    loss_rows = _rows(paths["loss"])
    seen = {(r["likelihood"], r["dtype"], r["pass"], r["contender"]) for r in loss_rows}
    for case in loss_head.tiny_grid():
        for pass_ in loss_head.PASSES:
            for contender in loss_head.CONTENDERS:
                assert (case.likelihood, case.dtype, pass_, contender) in seen
    for r in loss_rows:
        assert r["device"] and r["torch"] and r["date"]
        if r["contender"] in loss_head.CONTENDERS:
            assert float(r["median_ms"]) > 0 and float(r["gbps"]) > 0 and float(r["pct_copy_bw"]) > 0
            assert float(r["rel_err"]) < 1e-2  # every contender computed the same loss
        if r["contender"] == "fastvae":
            assert r["speedup_vs_eager"] and r["speedup_vs_compile"]
    # the Triton kernels ran once under the interpreter, labelled as such
    interp = [r for r in loss_rows if r["contender"] == loss_head.INTERP]
    assert interp and all("not a speed claim" in r["flag"] for r in interp)
    assert all(float(r["rel_err"]) < 1e-4 for r in interp)

    # the training CSV: every model x contender, none failed
    assert _header(paths["train"]) == training.COLUMNS
    train_rows = _rows(paths["train"])
    assert {(r["model"], r["contender"]) for r in train_rows} == {
        (m, c) for m in training.MODELS for c in ("examples-loop", "fastvae")}
    for r in train_rows:
        assert not r["flag"].startswith("ERROR"), r["flag"]
        assert float(r["samples_per_s"]) > 0 and float(r["test_elbo"]) < 0

    # threads beside a busy process, streaming vs resident, conv vs mlp: one row each, measured
    architectures, contention, streaming = _more_bench_modules()
    assert _header(paths["threads"]) == contention.COLUMNS
    (threads,) = _rows(paths["threads"])
    assert threads["config"] == "fastvae default" and float(threads["alone_s"]) > 0 and float(threads["slowdown"]) > 0
    assert _header(paths["streaming"]) == streaming.COLUMNS
    by_source = {r["source"]: r for r in _rows(paths["streaming"])}
    assert set(by_source) == {"resident", "streaming"} and float(by_source["resident"]["vs_resident"]) == 1.0
    assert float(by_source["streaming"]["budget_mb"]) * 4 == pytest.approx(float(by_source["streaming"]["data_mb"]))
    assert _header(paths["arch"]) == architectures.COLUMNS
    assert {r["arch"] for r in _rows(paths["arch"])} == {"mlp", "conv"}
    assert all(float(r["test_elbo"]) < 0 for r in _rows(paths["arch"]))

    # the markdown and the printed tables
    md = paths["md"].read_text()
    assert "| " + " | ".join(loss_head.SUMMARY_COLUMNS) + " |" in md
    assert "| " + " | ".join(training.SUMMARY_COLUMNS) + " |" in md
    for word in ("torch / triton", "x_vs_compile", "time_to_target_s", "beside_busy_s", "vs_resident",
                 "## Architectures: conv vs MLP"):
        assert word in md
    assert "x_vs_compile" in proc.stdout and "samples_per_s" in proc.stdout


def test_min_bytes_formula():
    _, loss_head, _, _ = _bench_modules()
    b, d, z = 10, 7, 3
    fp32 = loss_head.Case("bernoulli", "fp32", b, d, z)
    assert loss_head.min_bytes(fp32, "fwd") == 4 * (2 * b * d + 3 * b * z)
    assert loss_head.min_bytes(fp32, "fwd+bwd") == 4 * (2 * b * d + 3 * b * z + 3 * b * d + 5 * b * z)
    gauss_bf16 = loss_head.Case("gaussian", "bf16", b, d, z)
    assert loss_head.min_bytes(gauss_bf16, "fwd") == 2 * (3 * b * d + 3 * b * z)
    assert loss_head.min_bytes(gauss_bf16, "fwd+bwd") == 2 * (3 * b * d + 3 * b * z + 5 * b * d + 5 * b * z)


def test_ratios_flag_losses_and_merge_keeps_other_rows(tmp_path):
    common, loss_head, _, _ = _bench_modules()
    base = {"device": "d", "likelihood": "bernoulli", "dtype": "fp32", "B": 1, "D": 2, "Z": 3, "pass": "fwd"}
    rows = loss_head.add_ratios([
        {**base, "contender": "eager", "median_ms": 1.0},
        {**base, "contender": "compile", "median_ms": 3.0},
        {**base, "contender": "fastvae", "median_ms": 2.0, "rel_err": 0.0},
    ])
    fastvae = rows[-1]
    assert fastvae["speedup_vs_eager"] == pytest.approx(0.5)
    assert fastvae["speedup_vs_compile"] == pytest.approx(1.5)
    assert fastvae["flag"] == "LOSES vs eager"

    old = [{**base, "contender": "eager", "median_ms": 9.0}, {**base, "pass": "fwd+bwd", "contender": "eager"}]
    merged = common.merge_rows(old, rows, loss_head.KEY_COLUMNS)
    assert len(merged) == 4 and {r.get("median_ms") for r in merged if r["pass"] == "fwd"} == {1.0, 3.0, 2.0}

    path = tmp_path / "t.csv"
    common.atomic_write_text(path, common.csv_text(merged, loss_head.LONG_COLUMNS))
    back = common.read_csv(path)
    assert [r["contender"] for r in back] == [r["contender"] for r in merged]
    assert back[-1]["speedup_vs_compile"] == pytest.approx(1.5)


def test_cuda_request_without_gpu_fails_cleanly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, "-m", "bench", "--device", "cuda", "--tiny", "--out", "/nonexistent"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "cuda" in proc.stderr.lower()
