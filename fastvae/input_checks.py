"""Argument validation for the public loss API: errors that name the culprit.

Checks look only at metadata (type, dtype, shape, device), never at values, so they cost
no host-device synchronisation.
"""

from __future__ import annotations

import numbers

import torch


def require_positive_int(name: str, value: object, accepts: str = "") -> int:
    """``value`` as an int if it is a positive integer (a count: draws, rows, steps; a bool is not
    one); else ``ValueError`` naming ``name`` (``accepts``: what else the caller takes, e.g. " or None").

    >>> require_positive_int("samples", 5)
    5
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer{accepts}, got {value!r}")
    return int(value)


def require_float_tensor(name: str, value: object) -> torch.Tensor:
    """``value`` must be a floating-point tensor; returns it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        # uint8 is most often 8-bit pixels: plain .float() would hand on 0..255 as the values
        pixels = f" ({name}.float() / 255 for 8-bit pixels in 0..255)" if value.dtype == torch.uint8 else ""
        raise TypeError(
            f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {value.dtype}; "
            f"convert it with {name}.float(){pixels}"
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
    """The shape (..., D) of the rows that a decoder output and ``x`` (the first two tensors)
    pair up into, checked so that broadcasting never changes what the loss means.

    Rows pair one to one: the two may differ only in leading dims that one of them is
    broadcast over (dims it lacks, or of size 1), e.g. a decoder output (S, B, D) for S
    samples of each example against x (B, D). So the result has the shape of one of them;
    an outer pairing ((B, 1, D) against (B, D) is (B, B, D): every example scored under
    every other's output) is refused, as ``F.binary_cross_entropy_with_logits`` refuses
    mismatched shapes. Further tensors (a Gaussian logvar: (..., D), (D,), (1, D), (..., 1)...)
    must broadcast to that shape without enlarging it. The rule is in the README's API section.
    """
    names = list(tensors)
    sizes = {name: t.shape[-1] for name, t in tensors.items()}
    first = names[0]
    for name in names[1:]:
        if sizes[name] != sizes[first] and not (name in names[2:] and sizes[name] == 1):
            raise ValueError(
                f"{name} has last dimension {sizes[name]} but {first} has {sizes[first]} "
                f"(shapes {tuple(tensors[name].shape)} and {tuple(tensors[first].shape)})"
            )
    shapes = [t.shape for t in tensors.values()]
    if all(shape == shapes[0] for shape in shapes[1:]):
        return shapes[0]  # the common case, without torch.broadcast_shapes' ~10 us per call
    try:
        torch.broadcast_shapes(*shapes)
    except RuntimeError:
        listed = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"shapes do not broadcast: {listed}") from None
    (out_name, x_name), (out_shape, x_shape) = names[:2], shapes[:2]
    paired = torch.broadcast_shapes(out_shape, x_shape)
    if paired != out_shape and paired != x_shape:
        raise ValueError(
            f"{out_name} {tuple(out_shape)} and {x_name} {tuple(x_shape)} would broadcast to {tuple(paired)}, "
            f"larger than both: every row of one would be scored against every row of the other. Leading "
            f"dims may broadcast one way only (e.g. {out_name} (S, B, D) for S samples against {x_name} (B, D)); "
            "expand them explicitly if you mean an outer pairing"
        )
    for name, t in list(tensors.items())[2:]:
        if torch.broadcast_shapes(paired, t.shape) != paired:
            raise ValueError(
                f"{name} {tuple(t.shape)} would enlarge the rows of {out_name} {tuple(out_shape)} and "
                f"{x_name} {tuple(x_shape)} to {tuple(torch.broadcast_shapes(paired, t.shape))}; it must broadcast to {tuple(paired)} "
                "(shaped like them, like their trailing dims, (D,), or with dims of size 1)"
            )
    return paired
