"""Exporting a checkpoint's model to ONNX or TorchScript, for use outside this runner.

The exported model takes the preprocessed input: float32 (N, C, H, W) with
x = (pixel / 255 - mean) / std per channel, at the checkpoint's image size (centre-cropped to its training
crop, input_size, when it was trained on crops); a JSON file beside it records the classes, the image and
input sizes, the channels and mean/std.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from ..data.inputs import ModelInput
from ..errors import ConfigError, UserError
from .predictor import load_model

log = logging.getLogger(__name__)

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def export_checkpoint(ckpt_path: str, fmt: str, output: str | None = None) -> Path:
    if fmt not in SUFFIXES:
        raise ConfigError(f"format={fmt} is invalid: use onnx or torchscript")
    model, meta = load_model(ckpt_path, "cpu")
    data = meta["data"]
    out = Path(output) if output else Path(ckpt_path).with_suffix(SUFFIXES[fmt])
    for written in (out, Path(f"{out}.json")):
        if written.exists() and written.resolve() == Path(ckpt_path).expanduser().resolve():
            raise ConfigError(f"output={output or out} would overwrite the checkpoint it exports ({ckpt_path}); "
                              "choose another output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    # the model's input: the training crop when it was trained on crops, else the whole image
    side = ModelInput(data["mean"], data["std"], meta.get("input_size")).input_size(data["image_size"])
    example = torch.randn(2, data["channels"], side, side)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter needs it and onnxscript)
            import onnxscript  # noqa: F401
        except ImportError:
            raise UserError("format=onnx needs the onnx and onnxscript packages: pip install -e '.[export]'") from None
        torch.onnx.export(model, (example,), str(out), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
                          verbose=False)
    else:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream; ONNX is the lasting format
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.trace(model, example).save(str(out))
    sidecar = {"format": fmt, "model": str(out.name), "checkpoint": str(ckpt_path), "classes": data["classes"],
               "channels": data["channels"], "image_size": data["image_size"], "input_size": side,
               "mean": data["mean"], "std": data["std"],
               "input": "float32 N x C x input_size x input_size: images resized to image_size, centre-cropped to "
                        "input_size, (pixel / 255 - mean) / std per channel", "output": "logits N x classes"}
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=2))
    log.info("Exported %s to %s (preprocessing in %s.json)", ckpt_path, out, out)
    return out
