"""Test-session set-up.

Triton decides between compiled and interpreted kernels when the kernels are first
imported, so the interpreter is switched on here, before anything imports them, unless
the caller chose: on a GPU machine run ``TRITON_INTERPRET=0 pytest`` so the CUDA tests
run the compiled kernels (the interpreter tests then skip).
"""

import os
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
# data-file checks cache into a throwaway directory, not the user's ~/.cache
os.environ.setdefault("FASTVAE_CACHE_DIR", tempfile.mkdtemp(prefix="fastvae-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRETER = os.environ["TRITON_INTERPRET"] == "1"


@pytest.fixture
def backend(monkeypatch):
    """Set FASTVAE_BACKEND for one test: ``backend("triton")``."""

    def select(name: str) -> None:
        monkeypatch.setenv("FASTVAE_BACKEND", name)

    return select


@pytest.fixture
def one_torch_thread():
    """Small ops: one intra-op thread (2-thread OpenMP on a busy 2-core box is ~7x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    cuda = torch.cuda.is_available()
    run_slow = "slow" in (config.getoption("-m") or "")  # e.g. pytest -m slow
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow (exhaustive) test: select it with -m slow"))
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "interpreter" in item.keywords and not INTERPRETER:
            item.add_marker(pytest.mark.skip(reason="needs TRITON_INTERPRET=1 (run the GPU tests with TRITON_INTERPRET=0)"))
