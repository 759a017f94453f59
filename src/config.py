"""Objects built from config nodes, and the trust rule between the two kinds of config.

Two kinds of config reach the runner:

- **The user's own** (conf/ and the command line). `build` checks every key of a node against the type
  annotations of the constructor it goes to (`data.batch_size=1.5`, `model.dropout=abc` and unknown keys
  are refused with the key and value), then instantiates it with Hydra; ranges are checked by the
  constructors (value_checks.require), which raise ConfigError naming the key. Keys that are not constructor
  arguments (`seed`, `loss.*`, `tta.*` and the keys of evaluate / predict / export) are checked by
  `check_values` against the rule tables of command_rules.py. All of this runs before any dataset is decoded.
- **A config read back from a file** (a checkpoint's stored model and data config). It is data, not code:
  `build_stored` builds only registered classes (src/registry.py: the runner's own and the plugins the
  trusted side named, looked up by full name, never imported from the stored string), refuses any nested
  `_target_` or other `_underscore_` key and any value that is not plain data, and applies the same type
  checks. Hydra's `instantiate` never sees it.
"""
from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from . import registry
from .errors import ConfigError, UserError
from .value_checks import check_value, matches

# -- constructor arguments --------------------------------------------------------------------------------

def _hints(func: Callable) -> dict[str, Any]:
    """The evaluated annotations of func's parameters; one that cannot be evaluated is left unchecked."""
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - a forward reference the module cannot resolve: evaluate one by one
        hints = {}
        for name, annotation in getattr(func, "__annotations__", {}).items():
            try:
                hints[name] = eval(annotation, getattr(func, "__globals__", {})) if isinstance(annotation, str) \
                    else annotation
            except Exception:  # noqa: BLE001
                hints[name] = None
        return hints


def _keywords(target: Callable):
    """(function, its keyword parameters, whether it passes **kwargs on) for `target` (a function, or a
    class's __init__ and, while they pass **kwargs on, its bases' through the MRO: FolderData to ImageData)."""
    if isinstance(target, type):
        functions = [c.__dict__["__init__"] for c in target.__mro__ if "__init__" in c.__dict__ and c is not object]
    else:
        functions = [target]
    for func in functions:
        params = list(inspect.signature(func).parameters.values())
        named = [p for i, p in enumerate(params) if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                 and not (i == 0 and p.name == "self")]
        passes_on = any(p.kind is p.VAR_KEYWORD for p in params)
        yield func, named, passes_on
        if not passes_on:
            return


def parameters(target: Callable) -> tuple[dict[str, Any], bool]:
    """({keyword: type hint}, open_ended) of what `target` (a class or function) takes by keyword;
    open_ended is True when some **kwargs go nowhere this can see."""
    found: dict[str, Any] = {}
    open_ended = False
    for func, named, passes_on in _keywords(target):
        hints = _hints(func)
        for p in named:
            found.setdefault(p.name, hints.get(p.name))
        open_ended = passes_on  # the last one's: true only if the chain ends in **kwargs going nowhere known
    return found, open_ended


def defaults(target: Callable) -> dict[str, Any]:
    """{keyword: default} of what `target` takes by keyword (see parameters)."""
    found: dict[str, Any] = {}
    for _, named, _ in _keywords(target):
        for p in named:
            if p.default is not inspect.Parameter.empty:
                found.setdefault(p.name, p.default)
    return found


def check_arguments(target: Callable, kwargs: Mapping[str, Any], key: str) -> None:
    """Every keyword a config gives `target` must be one it takes, of the annotated type."""
    accepted, open_ended = parameters(target)
    name = getattr(target, "__name__", str(target))
    for arg, value in kwargs.items():
        value = plain_value(value, f"{key}.{arg}")
        if arg not in accepted:
            if open_ended:
                continue
            close = difflib.get_close_matches(arg, list(accepted), n=1)
            hint = f"did you mean {key}.{close[0]}? " if close else ""
            raise ConfigError(f"{key}.{arg} is not a setting of {name} ({hint}its settings: "
                              f"{', '.join(accepted) or 'none'})")
        if value is None and not matches(None, accepted[arg]):  # `root: null  # required` in a shipped config
            raise ConfigError(f"{key}.{arg} is not set: pass {key}.{arg}=...")
        check_value(f"{key}.{arg}", value, accepted[arg])


def plain_value(node: DictConfig | ListConfig | Any, key: str) -> Any:
    """A config node as plain Python data, with interpolations resolved; `???` is an error naming the key."""
    if not isinstance(node, DictConfig | ListConfig):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except MissingMandatoryValue as exc:
        missing = exc.full_key or key
        raise ConfigError(f"{missing} is not set: pass {missing}=...") from None
    except OmegaConfBaseException as exc:  # an interpolation loop, an unset ${oc.env:...}, a missing key
        raise ConfigError(f"{getattr(exc, 'full_key', None) or key} cannot be resolved: "
                          f"{str(exc).splitlines()[0]}") from None


def _config_key(node: DictConfig) -> str:
    """The node's key in its config (`model`, `data`), for messages."""
    try:
        return node._get_full_key(None) or "config"
    except Exception:  # noqa: BLE001 - a node without a parent
        return "config"


def check_node(node: DictConfig) -> None:
    """The checks `build` makes before it builds: the target exists, and every key is one of its settings, of
    the annotated type. The commands run it on every node with a `_target_` before any work, also on nodes
    built late (the logger) or not at all (a fast_dev_run's logger)."""
    key = _config_key(node)
    plain = plain_value(node, key)
    target_name = plain.get("_target_")
    try:
        target = get_object(target_name)
    except Exception as exc:  # noqa: BLE001 - Hydra raises ImportError, ValueError or its own types
        raise ConfigError(f"{key}._target_={target_name} cannot be found: {str(exc).splitlines()[0]}") from None
    check_arguments(target, {k: v for k, v in plain.items() if not k.startswith("_")}, key)


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate for the user's own config nodes, after their keys are checked against the
    target's constructor (`check_node`). A UserError raised by a constructor reaches the user as
    itself; any other failure of Hydra's becomes a ConfigError naming the node."""
    key = _config_key(node)
    check_node(node)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        detail = f"{type(cause).__name__}: {cause}" if cause else str(exc).splitlines()[0]
        raise ConfigError(f"{key} could not be built from its settings ({detail.splitlines()[0]})") from None


def build_stored(node: Any, group: str, source: str, **kwargs):
    """Builds a class of the registry's `group` (src/registry.py) from a config read back from `source`, a file
    the runner may not have written. The stored `_target_` only selects a registered class by its full name;
    nothing is imported from it. `kwargs` (what the caller knows better than the file) win over stored values."""
    if not isinstance(node, dict):
        raise UserError(f"{source} was refused: its stored {group} config is not a mapping")
    _check_plain_data(node, group, source, top=True)
    cls = registry.lookup(group, node.get("_target_"), source)
    settings = {k: v for k, v in node.items() if k != "_target_"} | kwargs
    try:
        check_arguments(cls, settings, group)
        return cls(**settings)
    except ConfigError as exc:
        raise UserError(f"{source} was refused: its stored {exc}") from None


_PLAIN_SCALARS = (type(None), bool, int, float, str)


def _check_plain_data(value: Any, key: str, source: str, top: bool = False) -> None:
    """Only None, booleans, numbers, strings, lists and string-keyed mappings, and no `_underscore_` keys
    below the top (a nested `_target_` would make Hydra call whatever it names)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain_data(item, f"{key}[{i}]", source)
    elif isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str) or (name.startswith("_") and not (top and name == "_target_")):
                raise UserError(f"{source} was refused: its stored config has the key {key}.{name}, which no "
                                "config written by this runner has (it could make a config library call code)")
            _check_plain_data(item, f"{key}.{name}", source)
    elif not isinstance(value, _PLAIN_SCALARS):
        raise UserError(f"{source} was refused: its stored {key} is a {type(value).__name__}, not plain data")
