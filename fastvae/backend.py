"""Which implementation runs: the Triton kernels or the plain-torch reference path.

``FASTVAE_BACKEND`` = ``auto`` (default: CUDA tensors -> Triton, others -> torch),
``torch`` (the reference path everywhere) or ``triton`` (the kernels always; on CPU
tensors that needs ``TRITON_INTERPRET=1``, Triton's interpreter).
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "triton")


def selected_backend() -> str:
    """The value of ``FASTVAE_BACKEND``, validated."""
    name = os.environ.get("FASTVAE_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"FASTVAE_BACKEND={name!r} is not one of {', '.join(BACKENDS)}")
    return name


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(device: torch.device) -> bool:
    """True when tensors on ``device`` should go to the Triton kernels."""
    backend = selected_backend()
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and triton_installed()
    if not triton_installed():
        raise RuntimeError("FASTVAE_BACKEND=triton but the triton package is not installed")
    if device.type == "cpu" and not interpreter_enabled():
        raise ValueError(
            "FASTVAE_BACKEND=triton was given CPU tensors: Triton runs on CPU tensors only under its "
            "interpreter; set TRITON_INTERPRET=1 before the first fastvae call, move the tensors to "
            "CUDA, or use FASTVAE_BACKEND=auto"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"FASTVAE_BACKEND=triton does not support {device.type} tensors; use FASTVAE_BACKEND=auto or torch")
    return True
