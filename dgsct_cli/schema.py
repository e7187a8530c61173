"""Typed settings: dataclasses built from mappings, with every value's type and range checked once.

A field states its allowed values in its annotation, ``Annotated[int, Range(1)]`` or
``Annotated[str, OneOf("step", "none")]``; :func:`build_dataclass` coerces a mapping into the
dataclass and :func:`check_ranges` walks a built object. Every error names where the values came
from (a recipe file, an override), the full key and the allowed range. This module imports nothing
from the rest of the package, so every layer can declare its settings with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

__all__ = [
    "Annotated",
    "OneOf",
    "Range",
    "RecipeError",
    "build_dataclass",
    "check_ranges",
    "to_dict",
]


class RecipeError(ValueError):
    """A recipe (or override) that cannot be used; the message names the source and the key."""


@dataclass(frozen=True)
class Range:
    """Numeric bounds (inclusive unless ``open_low``/``open_high``); NaN and inf are refused."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def describe(self) -> str:
        lo = "" if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.open_high else '<='} {self.high:g}"
        return " and ".join(p for p in (lo, hi) if p) or "a finite number"

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.open_high else value > self.high))


@dataclass(frozen=True)
class OneOf:
    """A string field's allowed values."""

    choices: tuple[str, ...]

    def __init__(self, *choices: str) -> None:
        object.__setattr__(self, "choices", tuple(choices))

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def admits(self, value: str) -> bool:
        return value in self.choices


def _split_annotated(tp: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        return base, [m for m in meta if isinstance(m, Range | OneOf)]
    return tp, []


def _check(value: Any, rules: list[Any], key: str, where: str) -> None:
    if value is None:
        return
    for rule in rules:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not rule.admits(v):
                raise RecipeError(f"{where}: {key}: {v!r} is out of range (allowed: {rule.describe()})")


# YAML 1.1 (PyYAML) reads on/off and yes/no as booleans: a word field that offers one of these
# words takes it back (``model.recompute=on`` is the word "on", not true).
_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    tp, rules = _split_annotated(tp)
    if isinstance(value, bool) and tp is str:
        words = [w for r in rules if isinstance(r, OneOf) for w in r.choices if w in _BOOL_WORDS[value]]
        value = words[0] if len(words) == 1 else value
    out = _coerce_plain(value, tp, key, where)
    _check(out, rules, key, where)
    return out


def _coerce_plain(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if errors else f"{where}: {key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: {key}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, key, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where}: {key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "5e-4" as a string
            try:
                number = float(value)
            except ValueError:
                raise RecipeError(f"{where}: {key}: expected a number, got {value!r}") from None
        else:
            raise RecipeError(f"{where}: {key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise RecipeError(f"{where}: {key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise RecipeError(f"{where}: {key}: expected a string, got {value!r}")
    return value


def build_dataclass(cls: type, values: dict[str, Any] | None, prefix: str = "", where: str = "recipe") -> Any:
    """Build ``cls`` from a mapping, rejecting unknown keys (with a suggestion), wrong types and
    out-of-range values; ``prefix`` is the key path of ``values`` (for messages)."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: {prefix or 'recipe'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" (did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?)" if close else ""
            valid = ", ".join(names)
            raise RecipeError(f"{where}: unknown key '{full}'{hint}; valid keys here: {valid}")
        kwargs[key] = _coerce(value, hints[key], full, where)
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        text = str(exc)
        # A check that names its field ("num_heads[1] = 3 ...") gets the full key.
        field_name = re.split(r"[:\[ .]", text, maxsplit=1)[0]
        if prefix and field_name in names:
            raise RecipeError(f"{where}: {prefix}.{text}") from exc
        raise RecipeError(f"{where}: {prefix or 'recipe'}: {text}") from exc
    check_ranges(obj, prefix, where)
    return obj


def check_ranges(obj: Any, prefix: str = "", where: str = "recipe") -> None:
    """Check every annotated field of ``obj`` (defaults included), recursing into dataclasses."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        _, rules = _split_annotated(hints.get(f.name, Any))
        _check(value, rules, key, where)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, key, where)


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a dataclass tree, for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
