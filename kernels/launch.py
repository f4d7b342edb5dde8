"""Every kernel launch goes through :func:`launch`: on the tensors' device, and observable.

Triton launches on torch's *current* CUDA device, not on the device of the tensors it is
given: tensors on ``cuda:1`` launched while ``cuda:0`` is current run on GPU 0 with pointers
into GPU 1 (wrong results or an illegal-address fault). ``launch`` therefore checks that all
tensor arguments of a launch share one device and enters ``torch.cuda.device(that device)``
around the launch, as flash-attention's ``layer_norm`` does.

:func:`capture_launches` records launches instead of running them (outputs stay unwritten):
the ahead-of-time compile check (``python -m bench.kernel_compile``) uses it to learn which
specialisations the launchers really produce, on a machine without a GPU.

>>> with capture_launches() as launches:
...     pass  # call launchers here; each launch becomes a Launch in ``launches``
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``kernel[grid](*args, **meta)`` on ``device``."""

    kernel: Any  # a triton JITFunction (or InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    meta: dict[str, Any]  # constexpr arguments and launch options (num_warps)
    device: torch.device


_recording: list[Launch] | None = None


def launch_device(kernel: Any, args: tuple[Any, ...]) -> torch.device:
    """The one device of the launch's tensor arguments; ``ValueError`` naming them if there are two."""
    names = getattr(kernel, "arg_names", None) or [f"argument {i}" for i in range(len(args))]
    first_name, device = None, None
    for name, arg in zip(names, args):
        if isinstance(arg, torch.Tensor):
            if device is None:
                first_name, device = name, arg.device
            elif arg.device != device:
                raise ValueError(
                    f"{_kernel_name(kernel)}: {name} is on {arg.device} but {first_name} is on {device}; "
                    "all tensors of a call must be on one device"
                )
    if device is None:
        raise ValueError(f"{_kernel_name(kernel)}: a launch needs at least one tensor argument")
    return device


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(device)`` for CUDA tensors (the launch then targets their GPU); a no-op otherwise."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """``kernel[grid](*args, **meta)`` inside a device guard for the tensors' device (or recorded)."""
    device = launch_device(kernel, args)
    with device_guard(device):
        if _recording is not None:
            _recording.append(Launch(kernel, tuple(grid), args, meta, device))
            return
        kernel[grid](*args, **meta)


@contextlib.contextmanager
def capture_launches(into: list | None = None) -> Iterator[list]:
    """Within the block, launches are appended to ``into`` (a fresh list by default) and not run."""
    global _recording
    previous, _recording = _recording, ([] if into is None else into)
    try:
        yield _recording
    finally:
        _recording = previous


def _kernel_name(kernel: Any) -> str:
    fn = getattr(kernel, "fn", kernel)
    return getattr(fn, "__name__", type(kernel).__name__)
