"""Argument validation for the public loss API: errors that name the culprit.

Checks look only at metadata (type, dtype, shape, device), never at values, so they cost
no host-device synchronisation.
"""

from __future__ import annotations

import torch


def require_float_tensor(name: str, value: object) -> torch.Tensor:
    """``value`` must be a floating-point tensor; returns it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {value.dtype}; "
            f"convert it with {name}.float()"
        )
    return value


def require_rows(name: str, value: torch.Tensor) -> None:
    """``value`` must have a last (feature) dimension of positive length."""
    if value.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (..., D), got a 0-d tensor")
    if value.shape[-1] == 0:
        raise ValueError(f"{name} has an empty last dimension: shape {tuple(value.shape)}")


def require_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; returns it."""
    devices = {name: t.device for name, t in tensors.items()}
    first_name, first = next(iter(devices.items()))
    for name, device in devices.items():
        if device != first:
            raise ValueError(f"{name} is on {device} but {first_name} is on {first}: move them to one device")
    return first


def require_same_shape(name: str, value: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if value.shape != other.shape:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but {other_name} has shape {tuple(other.shape)}; they must match"
        )


def broadcast_rows(**tensors: torch.Tensor) -> torch.Size:
    """The broadcast shape of tensors that must share their last dimension D."""
    names = list(tensors)
    sizes = {name: t.shape[-1] for name, t in tensors.items()}
    first = names[0]
    for name in names[1:]:
        if sizes[name] != sizes[first]:
            raise ValueError(
                f"{name} has last dimension {sizes[name]} but {first} has {sizes[first]} "
                f"(shapes {tuple(tensors[name].shape)} and {tuple(tensors[first].shape)})"
            )
    shapes = [t.shape for t in tensors.values()]
    if all(shape == shapes[0] for shape in shapes[1:]):
        return shapes[0]  # the common case, without torch.broadcast_shapes' ~10 us per call
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"shapes do not broadcast: {shapes}") from None
