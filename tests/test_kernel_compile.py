"""Every kernel compiles for real GPUs (sm_90 Hopper, sm_80 Ampere), in CI, without a GPU.

``python -m bench.kernel_compile`` captures the launches fastvae's launchers make on a covering
set of inputs, binds each with Triton's own JIT specialisation rules and compiles it with the
ptxas shipped in the triton wheel (the interpreter is more lenient than the compiler, so this
catches what the interpreter tests cannot). It runs in a fresh process: the kernels must be
JIT functions there, not the interpreted ones this test session uses. CI compiles a sample
(the core training specialisations plus a greedy cover of every constexpr value, argument
type, divisibility attribute and warp count); ``-m slow`` compiles every specialisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"latent_head_forward_kernel", "latent_head_backward_kernel", "log_likelihood_forward_kernel",
           "log_likelihood_backward_kernel"}
UNSUPPORTED_EXIT = 3

pytestmark = pytest.mark.skipif(not (ROOT / "bench" / "kernel_compile.py").exists(), reason="bench/ not in this checkout")


def _compile(tmp_path, *flags, timeout=600):
    out = tmp_path / "result.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bench.kernel_compile", "--json", str(out), "--out",
                           str(tmp_path / "report.md"), *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode == UNSUPPORTED_EXIT:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    return json.loads(out.read_text()), proc.stdout


def _check(result, stdout, tmp_path):
    compiled = result["results"]
    assert {r["spec"]["kernel"] for r in compiled} == KERNELS
    assert {r["capability"] for r in compiled} == {90, 80}
    assert all(r["error"] is None for r in compiled)
    hot = [r for r in compiled if r["spec"]["hot"]]
    assert hot and all(r["spill_bytes"] == 0 for r in hot), [
        (r["capability"], r["spec"]["summary"]) for r in hot if r["spill_bytes"]]
    assert all(r["registers"] > 0 and r["instructions"] > 0 for r in compiled)
    # the sample still compiles every feature (constexpr value, argument type, attribute, warps) seen
    assert result["uncovered_features"] == []
    # what the core of the sample must contain: drawn noise at S = 1 (training) and the vector path
    latent = [r["spec"]["summary"] for r in compiled if r["spec"]["kernel"] == "latent_head_forward_kernel"]
    assert any("ROW_UNIT=4" in s and "HAS_EPS=0" in s for s in latent)
    assert any("SAMPLED_KL=1" in s for s in latent) and any("CHUNKED=1" in s for s in latent)
    assert "max regs (hot)" in stdout and (tmp_path / "report.md").read_text().startswith("# Kernels compiled")


def test_kernels_compile_for_sm90_and_sm80(tmp_path):
    result, stdout = _compile(tmp_path)
    assert result["specs_compiled"] < result["specs_captured"]  # a sample, not everything
    _check(result, stdout, tmp_path)


@pytest.mark.slow
def test_every_specialisation_compiles(tmp_path):
    result, stdout = _compile(tmp_path, "--all", timeout=3600)
    assert result["specs_compiled"] == result["specs_captured"]
    _check(result, stdout, tmp_path)
