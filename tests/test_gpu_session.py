"""CI smoke test of the one-command GPU session (bench/gpu_session.py), on the CPU.

The tiny run goes through every stage that has a tiny form (the GPU test suite, which skips
here, a loss-head slice, a training slice, a paper experiment) by its real command line, and
checks the files a device call brings back; the budget logic (stages skipped when time runs
out, a stage killed at its budget with its output kept) is checked without running stages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "bench" / "gpu_session.py").exists(), reason="bench/ not in this checkout")


def _session_module():
    sys.path.insert(0, str(ROOT))
    try:
        from bench import common, gpu_session
    finally:
        sys.path.remove(str(ROOT))
    return common, gpu_session


def _run_session(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "bench.gpu_session", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_tiny_session_runs_every_stage_and_packs_its_files(tmp_path):
    common, gpu_session = _session_module()
    slug = common.device_info("cpu").slug
    out, packed = tmp_path / "out", tmp_path / "device-out"
    proc = _run_session("--device", "cpu", "--tiny", "--part", "all", "--out", out, "--archive", packed,
                        "--seed-from", tmp_path / "nothing")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    records = []
    for part in (1, 2):
        records += json.loads((out / f"{slug}-gpu-session-part{part}.json").read_text())["stages"]
    status = {r["name"]: r["status"] for r in records}
    tiny_stages = {"environment", "tests-gpu", "loss-bernoulli-fp32", "train-paper", "paper-manifolds"}
    assert {name for name, s in status.items() if s == "ok"} == tiny_stages, status
    assert all(s.startswith("skipped (not in a tiny run)") for n, s in status.items() if n not in tiny_stages)
    # every file named after the device; the benchmarks' own files; versions and date in the logs
    for name in ("environment.txt", "tests-gpu.log", "loss.csv", "train.csv", "paper-exp3/report.md", "gpu-session.md"):
        assert (out / f"{slug}-{name}").is_file(), name
    assert "passed" in (out / f"{slug}-tests-gpu.log").read_text() or "skipped" in (out / f"{slug}-tests-gpu.log").read_text()
    log_header = (out / f"{slug}-loss-bernoulli-fp32.log").read_text().splitlines()[0]
    assert "torch " in log_header and "triton " in log_header and common.device_info("cpu").date in log_header
    summary = (out / f"{slug}-gpu-session.md").read_text()
    assert all(f"| {name} | ok |" in summary for name in tiny_stages - {"environment"})
    # what a device call brings back: one archive per part and the summary (its $OUT takes 8 files)
    assert sorted(p.name for p in packed.iterdir()) == [f"{slug}-gpu-session-part1.tar.gz",
                                                       f"{slug}-gpu-session-part2.tar.gz", f"{slug}-gpu-session.md"]
    with tarfile.open(packed / f"{slug}-gpu-session-part2.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"{slug}-train.csv", f"{slug}-paper-exp3/report.md", f"{slug}-gpu-session-part1.json"} <= names
    # the summary re-renders from the part records alone
    (out / f"{slug}-gpu-session.md").unlink()
    assert _run_session("--render", out).returncode == 0
    assert (out / f"{slug}-gpu-session.md").read_text() == summary


def test_stages_past_the_budget_are_skipped_and_results_seeded(tmp_path):
    common, _ = _session_module()
    slug = common.device_info("cpu").slug
    seed = tmp_path / "results"
    seed.mkdir()
    (seed / f"{slug}-loss.csv").write_text("rows of part 1\n")
    (seed / "cuda-other-gpu-loss.csv").write_text("another device\n")
    out = tmp_path / "out"
    proc = _run_session("--device", "cpu", "--tiny", "--part", "1", "--budget-s", "1", "--out", out, "--seed-from", seed)
    assert proc.returncode == 1  # stages were left out
    records = json.loads((out / f"{slug}-gpu-session-part1.json").read_text())["stages"]
    assert [r["status"] for r in records if r["name"] == "tests-gpu"][0].startswith("skipped (out of time")
    assert (out / f"{slug}-loss.csv").read_text() == "rows of part 1\n"  # merged into, not replaced
    assert not (out / "cuda-other-gpu-loss.csv").exists()


def test_a_stage_is_killed_at_its_budget_and_keeps_its_output(tmp_path):
    _, gpu_session = _session_module()
    log = tmp_path / "stage.log"
    child = tmp_path / "child.pid"
    script = (f"import os, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(child)!r}, 'w').write(str(p.pid)); print('partial result', flush=True); time.sleep(120)")
    status, seconds = gpu_session._run([sys.executable, "-c", script], dict(os.environ), log, timeout_s=3)
    assert status == "timeout" and seconds < 60
    text = log.read_text()
    assert "partial result" in text and "killed at its budget of 3 s" in text
    # the stage's own child got the signal too (its process group): it ends (or is a zombie
    # awaiting its reaper) within seconds, not after its two minutes of sleep
    assert _ends_within(int(child.read_text()), seconds=20)


def _ends_within(pid: int, seconds: float) -> bool:
    status_file = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = [line.split()[1] for line in status_file.read_text().splitlines() if line.startswith("State:")]
        except FileNotFoundError:
            return True
        if state and state[0] in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False
