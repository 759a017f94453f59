"""Checkpoints are plain data: tensors, numbers, strings, lists and dicts, loaded with weights_only=True.

A checkpoint holds everything to resume training (model, optimizer, scheduler, epoch, RNG states,
the selection state) and everything evaluate/predict need (the resolved config, class names,
image size, channels and normalization), but no pickled code.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from ..errors import UserError
from ..fileio import atomic_torch_save

FORMAT = 1


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
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):  # a pickle naming classes or functions: refuse it
            raise UserError(f"checkpoint {path} was refused: it holds objects other than plain data and "
                            "tensors, which could run code on load") from None
        raise UserError(f"checkpoint {path} is not a readable PyTorch checkpoint: {exc}") from None
    except Exception as exc:  # torch.load raises many types for files that are not checkpoints
        raise UserError(f"checkpoint {path} is not a readable PyTorch checkpoint: {exc}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise UserError(f"checkpoint {path} was not written by this runner (no model/meta entries)")
    return ckpt
