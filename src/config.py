"""The one place where config values are checked, and where objects are built from config nodes.

Two kinds of config reach the runner:

- **The user's own** (conf/ and the command line). `build` checks every key of a node against the type
  annotations of the constructor it goes to (`data.batch_size=1.5`, `model.dropout=abc` and unknown keys
  are refused with the key and value), then instantiates it with Hydra; ranges are checked by the
  constructors, which raise ConfigError naming the key. Keys that are not constructor arguments (`seed`,
  `loss.*`, `tta.*` and the keys of evaluate / predict / export) are checked by `check_values` against
  the rule tables below. All of this runs before any dataset is decoded.
- **A config read back from a file** (a checkpoint's stored model and data config). It is data, not code:
  `build_stored` builds only registered classes (src/registry.py: the runner's own and the plugins the
  trusted side named, looked up by full name, never imported from the stored string), refuses any nested
  `_target_` or other `_underscore_` key and any value that is not plain data, and applies the same type
  checks. Hydra's `instantiate` never sees it.
"""
from __future__ import annotations

import collections.abc
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from . import registry
from .errors import ConfigError, UserError

# -- types ------------------------------------------------------------------------------------------------

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


def check_value(key: str, value: Any, hint: Any, rule: Callable[[Any], bool] | None = None,
                rule_text: str = "") -> None:
    """Raises ConfigError `key=value is invalid: it must be ...` when value does not fit hint (or rule)."""
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
        value = _plain(value, f"{key}.{arg}")
        if arg not in accepted:
            if open_ended:
                continue
            raise ConfigError(f"{key}.{arg} is not a setting of {name} (its settings: "
                              f"{', '.join(accepted) or 'none'})")
        check_value(f"{key}.{arg}", value, accepted[arg])


def _plain(node: DictConfig | ListConfig | Any, key: str) -> Any:
    """A config node as plain Python data, with interpolations resolved; `???` is an error naming the key."""
    if not isinstance(node, DictConfig | ListConfig):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except MissingMandatoryValue as exc:
        missing = exc.full_key or key
        raise ConfigError(f"{missing} is not set: pass {missing}=...") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{key} cannot be resolved: {str(exc).splitlines()[0]}") from None


def _config_key(node: DictConfig) -> str:
    """The node's key in its config (`model`, `data`), for messages."""
    try:
        return node._get_full_key(None) or "config"
    except Exception:  # noqa: BLE001 - a node without a parent
        return "config"


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate for the user's own config nodes, after their keys are checked against the
    target's constructor (`check_arguments`). A UserError raised by a constructor reaches the user as
    itself; any other failure of Hydra's becomes a ConfigError naming the node."""
    key = _config_key(node)
    plain = _plain(node, key)
    target_name = plain.get("_target_")
    try:
        target = get_object(target_name)
    except Exception as exc:  # noqa: BLE001 - Hydra raises ImportError, ValueError or its own types
        raise ConfigError(f"{key}._target_={target_name} cannot be found: {str(exc).splitlines()[0]}") from None
    check_arguments(target, {k: v for k, v in plain.items() if not k.startswith("_")}, key)
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


# -- keys that are not constructor arguments ------------------------------------------------------------------

Rule = tuple[str, Any, Callable[[Any], bool] | None, str]  # key, type, range check, what the range is

_TTA_MODES = ("none", "flip", "tencrop")
_DEVICE_RUNTIME: list[Rule] = [
    ("trainer.device", str, None, ""),
    ("trainer.precision", str | None, None, ""),
    ("trainer.channels_last", bool | None, None, ""),
    ("trainer.log_every_s", float | None, lambda v: v >= 0, ">= 0 seconds (0: no progress lines)"),
]
_TTA: list[Rule] = [
    ("tta.mode", str, lambda v: v in _TTA_MODES, "one of " + ", ".join(_TTA_MODES)),
    ("tta.crop_size", int | None, lambda v: v >= 1, "at least 1"),
]
_CKPT_PATHS = str | list[str]

TRAIN_RULES: list[Rule] = [
    ("seed", int, None, ""),
    ("ckpt_path", str | None, None, ""),
    ("resume", bool, None, ""),
    ("test", bool, None, ""),
    ("loss.label_smoothing", float | None, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("loss.class_weights", str | list[float] | None, lambda v: v == "balanced" if isinstance(v, str) else
     all(w >= 0 for w in v), "null, balanced or a list of one weight (>= 0) per class"),
    *_TTA,
]
EVAL_RULES: list[Rule] = [
    ("ckpt_path", _CKPT_PATHS, None, ""),
    ("data.split", str, lambda v: v in ("train", "val", "test"), "train, val or test"),
    ("data.root", str | None, None, ""),
    ("data.csv", str | None, None, ""),
    ("embed", bool, None, ""),
    ("misclassified", int, lambda v: v >= 0, ">= 0"),
    ("saliency", bool, None, ""),
    ("saliency_per_class", int, lambda v: v >= 1, "at least 1"),
    *_DEVICE_RUNTIME, *_TTA,
]
_FACE_DETECTION: list[Rule] = [
    ("faces", bool, None, ""),
    ("detector.name", str, lambda v: v in ("mtcnn", "haar"), "mtcnn or haar"),
    ("detector.min_size", int, lambda v: v >= 8, "at least 8 pixels"),
    ("detector.threshold", float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("detector.margin", float, lambda v: 0 <= v <= 1, "in [0, 1] (a fraction of the face's side)"),
]
PREDICT_RULES: list[Rule] = [
    ("ckpt_path", _CKPT_PATHS, None, ""),
    ("images", str | list[str] | None, None, ""),
    ("video", str | int | None, lambda v: v >= 0 if isinstance(v, int) else True, "a file or a camera index >= 0"),
    ("video_every", int, lambda v: v >= 1, "at least 1 (every frame)"),
    ("video_max_frames", int | None, lambda v: v >= 1, "at least 1"),
    ("top_k", int, lambda v: v >= 1, "at least 1"),
    ("output", str | None, lambda v: v.lower().endswith((".csv", ".json")), "a .csv or .json file name"),
    ("out_dir", str, None, ""),
    ("saliency", bool, None, ""),
    *_FACE_DETECTION, *_DEVICE_RUNTIME, *_TTA,
]
DEMO_RULES: list[Rule] = [
    ("ckpt_path", _CKPT_PATHS, None, ""),
    ("host", str, None, ""),
    ("port", int, lambda v: 0 < v < 65536, "a port number (1-65535)"),
    *_FACE_DETECTION, *_DEVICE_RUNTIME, *_TTA,
]
EXPORT_RULES: list[Rule] = [
    ("ckpt_path", str, None, ""),
    ("format", str, lambda v: v in ("onnx", "torchscript"), "onnx or torchscript"),
    ("output", str | None, None, ""),
]


def check_values(cfg: DictConfig, rules: list[Rule]) -> None:
    """Checks the keys of `rules` in cfg (a missing key is null)."""
    for key, hint, rule, rule_text in rules:
        try:
            node = OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            raise ConfigError(f"{key} is not set: pass {key}=...") from None
        check_value(key, _plain(node, key), hint, rule, rule_text)


def check_loss_config(loss_cfg: DictConfig) -> None:
    check_values(OmegaConf.create({"loss": loss_cfg}), [r for r in TRAIN_RULES if r[0].startswith("loss.")])


def check_model_config(model_cfg: DictConfig, in_channels: int) -> None:
    """Builds the model on the meta device (no memory, no weights loaded), so that invalid model values
    stop the run before the dataset is decoded."""
    import torch

    overrides = {"pretrained": False} if "pretrained" in model_cfg else {}
    with torch.device("meta"):
        build(model_cfg, num_classes=2, in_channels=in_channels, **overrides)


# Optimizer settings torch checks only when the optimizer is created, after the data is decoded.
_OPTIMIZER_RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("lr", lambda v: v > 0, "> 0"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("momentum", lambda v: v >= 0, ">= 0"),
    ("dampening", lambda v: v >= 0, ">= 0"),
    ("alpha", lambda v: v >= 0, ">= 0"),
    ("eps", lambda v: v > 0, "> 0"),
    ("betas", lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
]


def check_optimizer_config(optim_cfg: DictConfig):
    """Builds the optimizer (a partial taking the parameters) and tries it on one parameter, so that what
    torch itself refuses (Nesterov without momentum, say) is reported before the data is decoded.
    Returns the partial."""
    import torch

    if optim_cfg.get("lr") is None:
        raise ConfigError("optim.lr is not set: pass optim.lr=...")
    optimizer = build(optim_cfg)
    for name, rule, rule_text in _OPTIMIZER_RANGES:
        if name in optim_cfg:
            check_value(f"optim.{name}", optim_cfg[name] if not isinstance(optim_cfg[name], ListConfig)
                        else list(optim_cfg[name]), Any, rule, rule_text)
    try:
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except Exception as exc:  # noqa: BLE001 - whatever torch raises here, the settings caused it
        raise ConfigError(f"optim ({optim_cfg.get('_target_')}) refused its settings: {exc}") from None
    return optimizer


# -- resuming ---------------------------------------------------------------------------------------------------

def _flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


# Keys that may change between a run and its resumption: where the data lives, not what it is, and how
# the run reports and on which of the machine's devices it runs.
RESUME_MAY_CHANGE = ("data.root", "data.csv", "data.cache_dir", "trainer.device", "trainer.progress_bar",
                     "trainer.log_every_s", "trainer.warmup_batches")


def _effective(node: Any, group: str) -> dict:
    """A group's settings as its class sees them: for the registry's groups the keys the config leaves out at
    their defaults and the target as the class's own full name (a config file that stops repeating a default,
    or a class reached through another import path, changes nothing); sequences as lists."""
    if not isinstance(node, dict):
        return {}
    target = node.get("_target_")
    cls = registry.registered(group).get(target) if group in registry.GROUPS and isinstance(target, str) else None
    settings = {**(defaults(cls) if cls else {}), **node}
    if cls:
        settings["_target_"] = registry.full_name(cls)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def config_differences(saved: dict, current: DictConfig, groups: tuple[str, ...]) -> list[str]:
    """`key: saved → current` for every setting of `groups` (model, data, optim, ...) that a resumed run would
    change."""
    now = OmegaConf.to_container(current, resolve=True) if isinstance(current, DictConfig) else current
    before, after = (_flat({group: _effective(c.get(group), group) for group in groups}) for c in (saved, now))
    return [f"{key}: {before.get(key)} → {after.get(key)}" for key in sorted(set(before) | set(after))
            if key not in RESUME_MAY_CHANGE and before.get(key) != after.get(key)]
