"""Settings declared once: a dataclass field carries its help text, its allowed values and
whether a resumed run may change it; validation, the CLI's flags and ``--resume``'s
comparison are all derived from that one declaration.

>>> @dataclass
... class Demo:
...     width: int = setting(500, "hidden units per layer", minimum=1, flag="--hidden")
...     act: str = setting("tanh", "activation", choices=("tanh", "relu"))
>>> validate(Demo(width=0))
Traceback (most recent call last):
ValueError: --hidden (width) must be an integer >= 1, got 0

Every number is checked where it is declared, whoever sets it (the CLI parses a flag's text and
calls the same check, so ``fastvae train --hidden 0`` and ``Demo(width=0)`` give one message):
integers are ``int`` (not ``bool``, not ``float``; numpy integers become ``int``) and fit in
int64, floats are finite numbers (numpy floats become ``float``), both within ``minimum`` /
``above`` / ``maximum``; strings are non-empty without NUL characters; ``choices`` are exact.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import MISSING, dataclass, field  # noqa: F401 (dataclass: the doctest)
from typing import Any, Callable, Sequence

from .json_output import jsonable

#: The largest integer a setting may hold unless it declares a smaller ``maximum``: the int64
#: range that checkpoints, torch generators and counters on the device hold.
INT64_MAX = 2**63 - 1

#: ``resume=`` values: "same" (a resumed run must keep it: it changes what is computed) or
#: "free" (how long, how often, where and how fast: a resumed run may change it).
RESUME_POLICIES = ("same", "free")


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    flag: str | None = None,
    resume: str = "same",
    default_factory: Callable[[], Any] | Any = MISSING,
    cli: bool = True,
) -> Any:
    """A dataclass field with its metadata.

    Args:
        default: the default value (or ``default_factory``).
        help: one line for ``--help`` (the default is appended by the CLI).
        choices: the allowed values.
        minimum: numbers must be >= it; ``above``: numbers must be > it; ``maximum``: numbers
            must be <= it (integers: at most :data:`INT64_MAX` in any case).
        flag: the CLI flag (default ``--`` + the name with dashes).
        resume: ``"same"`` or ``"free"`` (see :data:`RESUME_POLICIES`).
        cli: False keeps the field off the command line.
    """
    if resume not in RESUME_POLICIES:
        raise ValueError(f"resume must be one of {RESUME_POLICIES}, got {resume!r}")
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "minimum": minimum,
                "above": above, "maximum": maximum, "flag": flag, "resume": resume, "cli": cli}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_of(f: dataclasses.Field) -> str:
    """The CLI flag of a field: its ``flag=``, or ``--`` + the name with dashes."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def value_type(f: dataclasses.Field, owner: type) -> tuple[type, bool]:
    """(the field's value type, whether None is allowed) from its annotation."""
    hint = typing.get_type_hints(owner)[f.name]
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else hint
    origin = typing.get_origin(hint)
    return (origin or hint), optional


def label(f: dataclasses.Field, prefix: str = "") -> str:
    """How errors name a setting: its flag and its (dotted) field name, ``--latent (model.latent_dim)``."""
    name = prefix + f.name
    return f"{flag_of(f)} ({name})" if f.metadata.get("cli", True) else name


def check_value(name: str, value: Any, f: dataclasses.Field, owner: type) -> Any:
    """The value of field ``f`` as stored (numpy scalars as Python numbers), or a ``TypeError``
    (wrong type) / ``ValueError`` (not allowed) whose one-line message starts with ``name``."""
    kind, optional = value_type(f, owner)
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name} must not be None")
    meta = f.metadata
    shown = f"{type(value).__name__} {value!r}"
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {shown}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            hint = f" (write {int(value):_})" if isinstance(value, float) and value.is_integer() else ""
            raise TypeError(f"{name} must be an integer, got {shown}{hint}")
        value = int(value)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {shown}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {shown}")
        if not value or "\x00" in value:
            raise ValueError(f"{name} must be a non-empty string without NUL characters, got {value!r}")
    elif kind is dict:  # saved in config.json and checkpoints: JSON values only
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TypeError(f"{name} must be a dict with string keys, got {value!r}")
        try:
            value = jsonable(value, strict=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must hold JSON values (strings, finite numbers, lists, dicts, "
                             f"true/false/null): {exc}") from None
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if kind in (int, float):
        noun = "an integer" if kind is int else "a number"
        maximum = meta.get("maximum")
        if kind is int:
            maximum = INT64_MAX if maximum is None else min(maximum, INT64_MAX)
        if meta.get("minimum") is not None and not value >= meta["minimum"]:
            raise ValueError(f"{name} must be {noun} >= {_number(meta['minimum'])}, got {value!r}")
        if meta.get("above") is not None and not value > meta["above"]:
            raise ValueError(f"{name} must be {noun} > {_number(meta['above'])}, got {value!r}")
        if maximum is not None and not value <= maximum:
            raise ValueError(f"{name} must be {noun} <= {_number(maximum)}, got {value!r}")
    return value


def _number(bound: float) -> str:
    """A limit as people write it: 0, 1, 2**63 - 1, 8.8e+12."""
    if bound == INT64_MAX:
        return "2**63 - 1"
    if float(bound).is_integer() and abs(bound) >= 2**20 and 2 ** round(math.log2(abs(bound))) == abs(bound):
        return f"2**{round(math.log2(abs(bound)))}"
    return f"{bound:g}"


def validate(instance: Any, prefix: str = "") -> None:
    """Check every field declared with :func:`setting` (a nested dataclass is checked by its own
    ``__post_init__``), storing numpy scalars as Python numbers; the error names the setting."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            continue  # validated by its own __post_init__
        if "resume" in f.metadata:
            checked = check_value(label(f, prefix), value, f, type(instance))
            if checked is not value:
                setattr(instance, f.name, checked)


def settings_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`setting`."""
    return [f for f in dataclasses.fields(cls) if "resume" in f.metadata]


def computation_settings(instance: Any, prefix: str = "") -> dict[str, Any]:
    """Every ``resume="same"`` setting of ``instance`` as ``{dotted name: value}``, nested configs
    included (under ``model.``): what a resumed run must keep."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out[prefix + f.name + ".arch"] = getattr(value, "arch", type(value).__name__)
            out.update(computation_settings(value, prefix + f.name + "."))
        elif f.metadata.get("resume", "same") == "same":
            out[prefix + f.name] = value
    return out


def free_settings(cls: type) -> list[dataclasses.Field]:
    """The ``resume="free"`` fields of ``cls``: what a resumed run may change."""
    return [f for f in settings_fields(cls) if f.metadata["resume"] == "free"]


__all__ = ["INT64_MAX", "RESUME_POLICIES", "setting", "flag_of", "label", "value_type", "check_value", "validate", "settings_fields",
           "computation_settings", "free_settings"]
