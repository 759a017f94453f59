"""The keys that are not constructor arguments, checked before any work: the rule tables of each command
(`seed`, `loss.*`, `tta.*`, the keys of evaluate / predict / demo / export) and `check_values`, plus the checks
that build a piece early so that what it refuses stops the run before the data is decoded (model on the meta
device, optimizer on one parameter)."""
from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from .config import build, check_node, plain_value
from .data.inputs import TTA_MODES
from .errors import ConfigError
from .progress import LOG_EVERY_S_RULE
from .value_checks import check_value

Rule = tuple[str, Any, Callable[[Any], bool] | None, str]  # key, type, range check, what the range is

_DEVICE_RUNTIME: list[Rule] = [
    ("trainer.device", str, None, ""),
    ("trainer.precision", str | None, None, ""),
    ("trainer.channels_last", bool | None, None, ""),
    ("trainer.log_every_s", float | None, *LOG_EVERY_S_RULE),
]
_TTA: list[Rule] = [
    ("tta.mode", str, lambda v: v in TTA_MODES, "one of " + ", ".join(TTA_MODES)),
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
BENCH_RULES: list[Rule] = [  # src.bench: a training config and the bench node (conf/bench.yaml)
    *TRAIN_RULES,
    ("bench.batches", int, lambda v: v >= 1, "at least 1"),
    ("bench.warmup", int, lambda v: v >= 0, ">= 0"),
    ("bench.rounds", int, lambda v: v >= 1, "at least 1"),
    ("bench.reference", str | None, None, ""),
    ("bench.reference_modes", list[str], lambda v: set(v) <= {"seed", "bare"}, "a list of seed and bare"),
    ("bench.decode", bool, None, ""),
    ("bench.startup", bool, None, ""),
    ("bench.eval", bool, None, ""),
    ("bench.eval_images", int, lambda v: v >= 1, "at least 1"),
    ("bench.augment", bool, None, ""),
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


# Keys of a command's config that no rule table lists and no constructor checks, read all the same: `plugins`
# (the modules entry.run_or_exit imports first), and two open namespaces: `paths` (folders that other keys
# interpolate, ${paths.data_dir}: a user may add their own) and `hydra` (Hydra's node, which Hydra checks).
_READ_BY_THE_ENTRY = ("plugins",)
_OPEN_NAMESPACES = ("paths", "hydra")


def check_values(cfg: DictConfig, rules: list[Rule]) -> None:
    """Checks that every value of cfg resolves, that cfg holds no key the command does not read
    (`check_known_keys`), then the keys of `rules` (a missing key is null)."""
    plain_value(cfg, "the config")  # every interpolation resolves: no loop, no unset environment variable
    check_known_keys(cfg, rules)
    for key, hint, rule, rule_text in rules:
        try:
            node = OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            raise ConfigError(f"{key} is not set: pass {key}=...") from None
        check_value(key, plain_value(node, key), hint, rule, rule_text)


def check_known_keys(cfg: DictConfig, rules: list[Rule]) -> None:
    """Every key of cfg is one the command reads: a key of its rule table, a setting of the class a node with a
    `_target_` builds (config.check_node), or one of the few read elsewhere. A misspelt key, from the command
    line, an experiment or a --config-dir file, would otherwise be carried along and ignored: the run would
    train without the setting its author believes it has."""
    tree = OmegaConf.to_container(cfg, resolve=False)  # the keys only: nothing is resolved yet
    built = [str(top) for top, value in tree.items() if isinstance(value, dict) and "_target_" in value]
    known = [rule[0] for rule in rules] + [*_READ_BY_THE_ENTRY, *_OPEN_NAMESPACES, *built]
    for top, value in tree.items():
        if top in _OPEN_NAMESPACES:
            continue
        if top in built:
            check_node(cfg[top])
            continue
        for path in _leaf_keys(str(top), value):
            if not any(path == k or path.startswith(k + ".") or k.startswith(path + ".") for k in known):
                raise ConfigError(f"{path} is not a setting this command reads{_closest(path, known)}")


def _leaf_keys(prefix: str, value: Any):
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaf_keys(f"{prefix}.{key}", item)
    else:
        yield prefix


def _closest(path: str, known: list[str]) -> str:
    """` (did you mean trainer.max_epochs?)` for `trainr.max_epochs`: the first part of the path that no known key
    has, replaced by the closest one that is there."""
    parts = path.split(".")
    candidates = [k.split(".") for k in known]
    for depth in range(1, len(parts) + 1):
        here = {".".join(c[:depth]) for c in candidates if len(c) >= depth and c[:depth - 1] == parts[:depth - 1]}
        prefix = ".".join(parts[:depth])
        if prefix not in here:
            close = difflib.get_close_matches(prefix, sorted(here), n=1, cutoff=0.6)
            return f" (did you mean {'.'.join([close[0], *parts[depth:]])}?)" if close else ""
    return ""


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
