"""Checkpoints are plain data: tensors, numbers, strings, lists and dicts, loaded with weights_only=True.

A checkpoint holds everything to resume training (model, optimizer, scheduler, epoch, RNG states,
the selection state) and everything evaluate/predict need (the resolved config, class names,
image size, channels and normalization), but no pickled code.

torch.load rebuilds whatever tensor layout the file describes, so a file that unpickles safely can still
hold tensors that cannot run: a stride-0 expansion of one number is a weight of any size that is tiny on
disk (and as large as its shape in every copy), a view may keep a larger storage alive, a meta or sparse
tensor has no values to copy, a weight may be NaN or of another dtype. `check_checkpoint` refuses every
tensor that is not a plain dense one on load; `check_weights` refuses weights that do not fit the model
they are loaded into, before that model is allocated.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import ConfigError, UserError
from .fileio import NotRegularFileError, atomic_torch_save, open_regular
from .value_checks import MAX_IMAGE_SIZE, check_value

FORMAT = 1

# What evaluate / predict / export / resume read from a checkpoint's meta, checked on every load: a
# checkpoint may come from anyone ("here is my best.pt"), so nothing in it is trusted to be well-formed.
# (key, type, range, what the range is); a missing key is null and left to the code that needs it.
_META_RULES: list[tuple[str, Any, Any, str]] = [
    ("data", dict | None, None, ""),
    ("data.classes", list[str] | None, lambda v: len(v) >= 1 and len(set(v)) == len(v) and all(v),
     "a non-empty list of distinct, non-empty class names"),
    ("data.channels", int | None, lambda v: v in (1, 3), "1 or 3"),
    ("data.image_size", int | None, lambda v: 8 <= v <= MAX_IMAGE_SIZE, f"in [8, {MAX_IMAGE_SIZE}]"),
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
    for name, tensor in _tensors(ckpt):
        problem = tensor_problem(tensor)
        if problem:
            raise UserError(f"checkpoint {path} was refused: its tensor {name} {problem}")
    meta = ckpt["meta"]
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint {path} was refused: its meta entry is not a mapping")
    try:
        check_meta(meta)
    except ConfigError as exc:
        raise UserError(f"checkpoint {path} was refused: its {exc}") from None


def check_meta(meta: dict, where: str = "meta.") -> None:
    """The types and ranges of _META_RULES, and the sizes that must agree. A run checks the meta its checkpoints
    will hold with the same code before it trains (training/experiment.py, `where=""`: the errors then name
    the config keys, `data.classes` rather than `meta.data.classes`), so that it never writes a checkpoint the
    runner itself refuses."""
    def name(key: str) -> str:
        return where + (key if where else key.removeprefix("config."))

    for key, hint, rule, rule_text in _META_RULES:
        check_value(name(key), _lookup(meta, key), hint, rule, rule_text)
    data = meta.get("data") or {}
    for key in ("mean", "std"):
        if data.get(key) is not None and data.get("channels") is not None and len(data[key]) != data["channels"]:
            raise ConfigError(f"{name('data.' + key)}={data[key]} is invalid: it needs one value per channel "
                              f"({data['channels']})")
    if meta.get("input_size") and data.get("image_size") and meta["input_size"] > data["image_size"]:
        raise ConfigError(f"{name('input_size')}={meta['input_size']} is invalid: it must not exceed the image "
                          f"size ({data['image_size']})")


def _tensors(content: dict):
    """(dotted name, tensor) of every tensor in a checkpoint: model, optimizer, EMA, random streams. Walked
    with a stack, not by recursion: a crafted file may nest lists deeper than Python's recursion limit."""
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in reversed(content.items())]
    while stack:
        name, value = stack.pop()
        if isinstance(value, torch.Tensor):
            yield name, value
        elif isinstance(value, dict):
            stack += [(f"{name}.{k}", v) for k, v in reversed(value.items())]
        elif isinstance(value, list | tuple):
            stack += [(f"{name}[{i}]", v) for i, v in reversed(list(enumerate(value)))]


def _fills_its_storage(tensor: torch.Tensor) -> bool:
    """Whether the elements lie one after another in some order of the dimensions (channels_last weights
    included): no two share memory (a stride-0 expansion does) and none is skipped."""
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(tensor.shape, tensor.stride()) if n != 1),
                               key=lambda pair: pair[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why a loaded tensor is not a plain dense tensor whose storage holds exactly its values (so that
    every copy of it costs what the file holds), or None."""
    if type(tensor) not in (torch.Tensor, nn.Parameter) or tensor.is_nested:
        return f"is a {type(tensor).__name__}, not a plain tensor"
    if tensor.layout != torch.strided:
        return f"is a {str(tensor.layout).removeprefix('torch.')} tensor, not a dense one"
    if tensor.device.type == "meta":
        return "is a meta tensor, which holds no values"
    if tensor.numel() and not _fills_its_storage(tensor):
        return (f"is a view whose elements overlap or leave gaps (shape {list(tensor.shape)}, strides "
                f"{list(tensor.stride())}), not a dense tensor")
    needed, held = tensor.numel() * tensor.element_size(), tensor.untyped_storage().nbytes()
    if tensor.storage_offset() or held != needed:
        return f"keeps {held} bytes of storage for {needed} bytes of values"
    return None


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def check_weights(weights: dict[str, torch.Tensor], skeleton: nn.Module, path: str | os.PathLike) -> None:
    """The weights fit the model they are loaded into: `skeleton`, built from the checkpoint's config on
    the meta device (no memory). The same names, shapes and dtypes (load_state_dict would copy an int or
    complex weight into a float parameter without a word); finite parameters; batch-norm running means
    finite and variances finite and not negative (the normalization divides by their square root). As
    every tensor fills its storage (check_checkpoint), the model allocated next is no larger than the file.
    Other buffers may legitimately hold infinities (a mask of -inf): the outputs are checked instead
    (inference.predictor.require_finite)."""
    expected = skeleton.state_dict()
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    stored = {k: tuple(v.shape) for k, v in weights.items()}
    if shapes != stored:
        wrong = sorted(set(shapes) ^ set(stored)) or [k for k in shapes if shapes[k] != stored[k]]
        raise UserError(f"checkpoint {path} was refused: its weights do not fit the model its config describes "
                        f"({len(wrong)} tensors differ, first: {wrong[0]})")
    for key, tensor in weights.items():
        if tensor.dtype != expected[key].dtype:
            raise UserError(f"checkpoint {path} was refused: its weight {key} is {_dtype(tensor)}, where the model "
                            f"has {_dtype(expected[key])}")
    parameters = {name for name, _ in skeleton.named_parameters(remove_duplicate=False)}
    for key, tensor in weights.items():
        statistic = key.rpartition(".")[2] in ("running_mean", "running_var") and key not in parameters
        if (key in parameters or statistic) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"checkpoint {path} was refused: its weight {key} holds NaN or infinite values")
        if statistic and key.endswith("running_var") and bool((tensor < 0).any()):
            raise UserError(f"checkpoint {path} was refused: its batch-norm variance {key} holds negative values")
