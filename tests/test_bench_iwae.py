"""CI smoke test of the IWAE / DReG benchmark (bench/iwae.py): it runs from ``python -m bench``,
checks every contender's loss and gradient, and writes its CSV and markdown files. No timing is
asserted, ever."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "bench" / "iwae.py").exists(), reason="bench/ not in this checkout")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_iwae_run_writes_tables(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from bench import iwae
    finally:
        sys.path.remove(str(ROOT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "FASTVAE_BACKEND": "auto"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--only", "iwae", "--device", "cpu", "--threads", "1", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    slug = next(n for n in names if n.endswith("-iwae.csv"))[: -len("-iwae.csv")]
    paths = iwae.paths(tmp_path, slug)
    assert all(p.exists() for p in paths.values()) and not [n for n in names if n.endswith(".tmp")]

    timing = _rows(paths["timing"])
    assert list(timing[0]) == iwae.TIMING_COLUMNS
    seen = {(r["estimator"], r["contender"]) for r in timing}
    assert seen == {("iwae", c) for c in iwae.CONTENDERS} | {("dreg", c) for c in iwae.CONTENDERS if c != "fastvae+compile"}
    for r in timing:
        assert float(r["median_ms"]) > 0
        # every contender computes the same loss and encoder gradient as float64 eager
        assert float(r["rel_err"]) < 1e-4 and float(r["grad_err"]) < 1e-3, r
        if r["contender"] == "fastvae":
            assert r["speedup_vs_eager"] and r["speedup_vs_compile"]

    variance = _rows(paths["variance"])
    assert list(variance[0]) == iwae.VARIANCE_COLUMNS and {r["K"] for r in variance} == {"5", "50"}
    assert all(float(r["variance_ratio"]) > 1 for r in variance)  # the toy problem near its optimum

    md = paths["md"].read_text()
    for header in (iwae.TIMING_SUMMARY, iwae.VARIANCE_SUMMARY):
        assert "| " + " | ".join(header) + " |" in md
    assert "variance_ratio" in proc.stdout and "x_vs_compile" in proc.stdout


FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FASHION.exists(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_experiment_runs_and_reports(tmp_path):
    """bench/iwae_experiment.py on a sliver of the budget: two models, their table and figure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.iwae_experiment", "--epochs", "0.01", "--eval-examples", "10", "--eval-samples",
         "20", "--device", "cpu", "--threads", "1", "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
         "--only", "VAE (K=1)", "--only", "IWAE-DReG (K=50)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(out / "results.csv")
    assert [r["model"] for r in rows] == ["VAE (K=1)", "IWAE-DReG (K=50)"]
    for r in rows:
        assert float(r["log_px"]) < 0 and float(r["log_px_se"]) > 0 and 0 <= int(r["active_units"]) <= 50
        assert float(r["log_px"]) > float(r["test_elbo"]) - 5.0  # 20 importance samples: tighter than the ELBO
    assert rows[0]["vs_vae"] == "" and rows[1]["vs_vae"] != ""
    assert "| model | test log p(x) |" in (out / "report.md").read_text()
    assert (out / "iwae.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
