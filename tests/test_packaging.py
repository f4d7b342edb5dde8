"""The kernels ship as ``fastvae.kernels`` and import from a source checkout too.

``kernels/`` sits at the top of the repository (the project's layout) and the wheel maps it to
``fastvae/kernels``. Python run from the repository root imports the checkout's ``fastvae/``
ahead of an installed (non-editable) copy; that directory has no ``kernels/``, so
``fastvae/__init__.py`` maps the subpackage to the checkout's ``kernels/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run from the repository root as a regular install would: without the editable install's
# import hook (an installed wheel has none), so only the checkout's own files can provide
# fastvae.kernels; then a kernel actually runs (under the interpreter).
SOURCE_TREE_RUN = """
import sys
sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
import torch, fastvae, fastvae.kernels
z, kl = fastvae.reparameterize(torch.zeros(3, 4), torch.zeros(3, 4), seed=1)
ll = fastvae.bernoulli_log_likelihood(torch.zeros(2, 5), torch.ones(2, 5))
print(fastvae.__file__)
print(fastvae.kernels.__file__)
print(sorted(name for name in sys.modules if name == "kernels" or name.startswith("kernels.")))
"""


@pytest.mark.skipif(not (ROOT / "kernels" / "__init__.py").exists(), reason="not a source checkout")
def test_a_source_checkout_imports_its_kernels():
    env = {**os.environ, "TRITON_INTERPRET": "1", "FASTVAE_BACKEND": "triton"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", SOURCE_TREE_RUN], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    package, kernels, top_level = proc.stdout.strip().splitlines()[-3:]
    assert Path(package) == ROOT / "fastvae" / "__init__.py"
    assert Path(kernels) == ROOT / "kernels" / "__init__.py"
    assert top_level == "[]"  # no generic top-level "kernels" module was imported


def _build_wheel(tmp_path: Path) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel without network needs setuptools installed")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("fastvae", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fastvae-*.whl")
    return wheel


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="not a source checkout")
def test_the_wheel_ships_fastvae_kernels_and_no_top_level_kernels(tmp_path):
    wheel = zipfile.ZipFile(_build_wheel(tmp_path))
    names = wheel.namelist()
    kernel_files = {p.name for p in (ROOT / "kernels").glob("*.py")}
    assert {f"fastvae/kernels/{name}" for name in kernel_files} <= set(names)
    assert not [n for n in names if n.startswith("kernels/")]
    top_levels = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    for top_level in top_levels:  # setuptools writes it; it must name fastvae alone
        assert wheel.read(top_level).decode().split() == ["fastvae"]
