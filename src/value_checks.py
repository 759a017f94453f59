"""The type checker of config values: does a value fit a type annotation (`matches`), how a type and a value
are shown in a message (`describe`, `show`), and the one way a config value is refused: `check_value` for a
type and a range, `require` for a range a constructor checks itself. Every refusal reads
`key=value is invalid: it must be ...`."""
from __future__ import annotations

import collections.abc
import inspect
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings"), type(None): ("null", "nulls")}


def matches(value: Any, hint: Any) -> bool:
    """Whether a plain config value (None, bool, int, float, str, list, dict) fits a type annotation.

    int excludes bool and float; float takes ints but not bools, NaN or infinity. Annotations this cannot
    judge (classes of other libraries, callables) accept any value."""
    if hint is None or hint is Any or hint is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arm) for arm in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    container = origin or hint
    if container in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if container in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return False
        return not args or all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def describe(hint: Any, plural: bool = False) -> str:
    """`an integer`, `a number or null`, `a list of integers`: what a hint accepts, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [describe(arm, plural) for arm in args if arm is not type(None)]
        arms = list(dict.fromkeys(arm for arm in arms if arm))
        return " or ".join(arms + (["null"] if type(None) in args else []))
    if hint in _NAMES:
        return _NAMES[hint][plural]
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    container = origin or hint
    if container in (list, tuple, collections.abc.Sequence):
        items = [a for a in args if a is not Ellipsis]
        if container is tuple and items and len(items) == len(args) and len(set(items)) == 1:
            return f"a list of {len(items)} {describe(items[0], plural=True)}"
        return f"a list of {describe(items[0], plural=True)}" if items else "a list"
    if container in (dict, collections.abc.Mapping):
        return "mappings" if plural else "a mapping"
    return ""  # accepted by matches() without a check: nothing to say


def show(value: Any) -> str:
    """A value as the user would write it in an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


INT64 = (-2**63, 2**63 - 1)
# The largest image side the runner decodes to, for a config (data.image_size) and a checkpoint (its meta) alike:
# one 4096x4096 RGB image is 50 MB decoded; past that a dataset or a batch no longer fits any machine's memory.
MAX_IMAGE_SIZE = 4096


def _outside_int64(value: Any) -> bool:
    """Whether an integer of `value` (or of its lists and mappings) does not fit 64 bits: torch, numpy and the
    random generators take nothing larger, and would fail with an overflow deep inside."""
    if isinstance(value, int) and not isinstance(value, bool):
        return not INT64[0] <= value <= INT64[1]
    if isinstance(value, list | tuple):
        return any(_outside_int64(v) for v in value)
    if isinstance(value, dict):
        return any(_outside_int64(v) for v in value.values())
    return False


def check_value(key: str, value: Any, hint: Any, rule: Callable[[Any], bool] | None = None,
                rule_text: str = "") -> None:
    """Raises ConfigError `key=value is invalid: it must be ...` when value does not fit hint (or rule)."""
    if _outside_int64(value):
        raise ConfigError(f"{key}={show(value)} is invalid: its integers must fit 64 bits "
                          f"(from {INT64[0]} to {INT64[1]})")
    if not matches(value, hint):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        quote = (f" (Hydra read {show(value)} as a number; quote it to pass text: {key}='{show(value)}')"
                 if number and matches(str(value), hint) else "")
        raise ConfigError(f"{key}={show(value)} is invalid: it must be {describe(hint)}{quote}")
    if rule is None or value is None:
        return
    try:
        ok = rule(value)
    except (TypeError, ValueError):  # a value of a type the rule does not compare (when no type was given)
        ok = False
    if not ok:
        raise ConfigError(f"{key}={show(value)} is invalid: it must be {rule_text}")


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Refuses `key=value` unless `ok`: a constructor's range check, `require(lr > 0, "optim.lr", lr, "must be > 0")`
    (the rule says what the value must be, or what it needs)."""
    if not ok:
        raise ConfigError(f"{key}={show(value)} is invalid: it {rule}")
