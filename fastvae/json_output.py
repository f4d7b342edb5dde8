"""JSON that every JSON reader accepts: what fastvae prints (``fastvae train``'s summary,
``fastvae eval``) and writes (``config.json``, the weights' metadata, the paper's ``results.json``).

Python's ``json`` writes a non-finite float as a bare ``NaN`` / ``Infinity``, which is not
JSON (RFC 8259): ``jq``, JavaScript's ``JSON.parse`` and strict parsers reject the whole
document. Here a non-finite number is ``null`` (a value that could not be measured, such as
the standard error of one example), numpy and 0-d torch scalars are plain numbers, paths are
strings, and ``json.dumps(..., allow_nan=False)`` guards the result.

>>> to_json({"log_px_se": float("nan"), "steps": 20})
'{"log_px_se": null, "steps": 20}'
>>> to_json({"x": float("inf")}, strict=True)
Traceback (most recent call last):
ValueError: x is inf: not a JSON number
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any


def jsonable(value: Any, strict: bool = False, where: str = "") -> Any:
    """``value`` with non-finite floats as None (``strict``: a ``ValueError`` naming where),
    numpy / 0-d torch scalars as Python numbers, tuples as lists, paths as strings; anything
    else that JSON cannot hold is a ``TypeError`` naming where it is."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number):
            return number
        if strict:
            raise ValueError(f"{where or 'the value'} is {number}: not a JSON number")
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where or 'a'} key {key!r} is a {type(key).__name__}, not a string")
            out[key] = jsonable(item, strict, f"{where}.{key}" if where else key)
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(item, strict, f"{where}[{i}]") for i, item in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a 0-d torch tensor / numpy array
        return jsonable(value.item(), strict, where)
    raise TypeError(f"{where or 'the value'} has type {type(value).__name__}, which JSON cannot hold")


def to_json(value: Any, indent: int | None = None, strict: bool = False) -> str:
    """``value`` as strict JSON text (see :func:`jsonable`)."""
    return json.dumps(jsonable(value, strict), indent=indent, allow_nan=False)


__all__ = ["jsonable", "to_json"]
