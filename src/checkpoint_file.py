"""Checkpoints are plain data: tensors, numbers, strings, lists and dicts, loaded with weights_only=True.

A checkpoint holds everything to resume training (model, optimizer, scheduler, epoch, RNG states,
the selection state) and everything evaluate/predict need (the resolved config, class names,
image size, channels and normalization), but no pickled code.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, UserError
from .fileio import NotRegularFileError, atomic_torch_save, open_regular
from .value_checks import check_value

FORMAT = 1

# What evaluate / predict / export / resume read from a checkpoint's meta, checked on every load: a
# checkpoint may come from anyone ("here is my best.pt"), so nothing in it is trusted to be well-formed.
# (key, type, range, what the range is); a missing key is null and left to the code that needs it.
_META_RULES: list[tuple[str, Any, Any, str]] = [
    ("data", dict | None, None, ""),
    ("data.classes", list[str] | None, lambda v: len(v) >= 1 and len(set(v)) == len(v) and all(v),
     "a non-empty list of distinct, non-empty class names"),
    ("data.channels", int | None, lambda v: v in (1, 3), "1 or 3"),
    ("data.image_size", int | None, lambda v: 8 <= v <= 4096, "in [8, 4096]"),
    ("data.mean", list[float] | None, None, ""),
    ("data.std", list[float] | None, lambda v: all(s > 0 for s in v), "a list of positive numbers"),
    ("input_size", int | None, lambda v: v >= 1, "at least 1"),
    ("config", dict | None, None, ""),
    ("config.model", dict | None, None, ""),
    ("config.data", dict | None, None, ""),
    ("config.trainer", dict | None, None, ""),
    ("config.trainer.precision", str | None, None, ""),
    ("config.trainer.channels_last", bool | None, None, ""),
    ("config.data.eval_batch_size", int | None, lambda v: v >= 1, "at least 1"),
]


def save_checkpoint(path: str | os.PathLike, content: dict) -> None:
    """Writes atomically; a failed write (a full disk) leaves the previous checkpoint in place."""
    try:
        atomic_torch_save({"format": FORMAT, **content}, path)
    except OSError as exc:
        kept = "the previous one is kept" if Path(path).exists() else "there is no previous one"
        raise UserError(f"could not write checkpoint {path}: {exc.strerror or exc}; {kept}") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Loads a checkpoint without executing code from it; errors name the file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with open_regular(path) as f:
            ckpt = torch.load(f, map_location=map_location, weights_only=True)
    except (NotRegularFileError, PermissionError) as exc:
        raise UserError(f"checkpoint {exc.filename or path} cannot be read: {exc.strerror or exc}") from None
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):  # a pickle naming classes or functions: refuse it
            raise UserError(f"checkpoint {path} was refused: it holds objects other than plain data and "
                            "tensors, which could run code on load") from None
        raise UserError(f"checkpoint {path} is not a readable PyTorch checkpoint: {exc}") from None
    except Exception as exc:  # torch.load raises many types for files that are not checkpoints
        raise UserError(f"checkpoint {path} is not a readable PyTorch checkpoint: {exc}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise UserError(f"checkpoint {path} was not written by this runner (no model/meta entries)")
    check_checkpoint(ckpt, path)
    return ckpt


def _lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def check_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """The weights are a mapping of names to tensors and the meta has the types and ranges evaluation
    relies on (see _META_RULES); otherwise the checkpoint is refused with the first value at fault."""
    weights = ckpt["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise UserError(f"checkpoint {path} was refused: its model entry is not a mapping of names to tensors")
    meta = ckpt["meta"]
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint {path} was refused: its meta entry is not a mapping")
    try:
        for key, hint, rule, rule_text in _META_RULES:
            check_value(f"meta.{key}", _lookup(meta, key), hint, rule, rule_text)
        data = meta.get("data") or {}
        for key in ("mean", "std"):
            if data.get(key) is not None and data.get("channels") is not None and len(data[key]) != data["channels"]:
                raise ConfigError(f"meta.data.{key}={data[key]} is invalid: it needs one value per channel "
                                  f"({data['channels']})")
        if meta.get("input_size") and data.get("image_size") and meta["input_size"] > data["image_size"]:
            raise ConfigError(f"meta.input_size={meta['input_size']} is invalid: it must not exceed the image "
                              f"size ({data['image_size']})")
    except ConfigError as exc:
        raise UserError(f"checkpoint {path} was refused: its {exc}") from None
