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
from contextlib import contextmanager
from pathlib import Path

import torch

from ..data.inputs import ModelInput
from ..errors import ConfigError, UserError
from ..fileio import check_writable_folder
from .predictor import checkpoint_paths, load_model, require_finite

log = logging.getLogger(__name__)

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


# The exported model must give PyTorch's logits on a batch; more than this (float32) is a broken export.
MAX_ABS_DIFFERENCE = 1e-3


def export_checkpoint(ckpt_path: str, fmt: str, output: str | None = None) -> Path:
    """Exports one checkpoint (a file, or a run directory: its checkpoints/best.pt, like evaluate and predict
    take) and checks the exported model against PyTorch on a batch."""
    if fmt not in SUFFIXES:
        raise ConfigError(f"format={fmt} is invalid: use onnx or torchscript")
    paths = checkpoint_paths(ckpt_path)
    if len(paths) != 1:
        raise UserError(f"ckpt_path={ckpt_path} holds {len(paths)} checkpoints; export one model at a time (a run "
                        "directory or a checkpoint file)")
    ckpt_path = paths[0]
    model, meta = load_model(ckpt_path, "cpu")
    data = meta["data"]
    out = Path(output) if output else Path(ckpt_path).with_suffix(SUFFIXES[fmt])
    for written in (out, Path(f"{out}.json")):
        if written.exists() and written.resolve() == Path(ckpt_path).expanduser().resolve():
            raise ConfigError(f"output={output or out} would overwrite the checkpoint it exports ({ckpt_path}); "
                              "choose another output path")
    check_writable_folder(out.parent, "output")
    # the model's input: the training crop when it was trained on crops, else the whole image
    side = ModelInput(data["mean"], data["std"], meta.get("input_size")).input_size(data["image_size"])
    example = torch.randn(2, data["channels"], side, side)
    with torch.no_grad():  # weights that overflow would export, and fail the comparison below as "broken"
        require_finite(model(example), f"checkpoint {ckpt_path}", "fp32")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter needs it and onnxscript)
            import onnxscript  # noqa: F401
        except ImportError:
            raise UserError("format=onnx needs the onnx and onnxscript packages: pip install -e '.[export]'") from None
        with _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):  # the optimizer logs every pass at INFO
            torch.onnx.export(model, (example,), str(out), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
                              verbose=False)
    else:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream; ONNX is the lasting format
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.trace(model, example).save(str(out))
    difference = _difference_from_pytorch(model, out, fmt, data["channels"], side)
    sidecar = {"format": fmt, "model": str(out.name), "checkpoint": str(ckpt_path), "classes": data["classes"],
               "channels": data["channels"], "image_size": data["image_size"], "input_size": side,
               "mean": data["mean"], "std": data["std"], "max_abs_difference_from_pytorch": difference,
               "input": "float32 N x C x input_size x input_size: images resized to image_size, centre-cropped to "
                        "input_size, (pixel / 255 - mean) / std per channel", "output": "logits N x classes"}
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=2))
    checked = ("not checked: " + ("onnxruntime is not installed" if fmt == "onnx" else "no runtime")
               if difference is None else f"max abs difference from PyTorch on a batch of 8: {difference:.2e}")
    log.info("Exported %s to %s (preprocessing in %s.json; %s)", ckpt_path, out, out, checked)
    return out


@contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _difference_from_pytorch(model: torch.nn.Module, path: Path, fmt: str, channels: int, side: int) -> float | None:
    """The largest absolute difference between the exported model's logits and PyTorch's on a batch of 8
    (another batch size than the export's example: the batch dimension is dynamic). An export that differs
    by more than MAX_ABS_DIFFERENCE is an error; None when the ONNX runtime is not installed."""
    x = torch.randn(8, channels, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    else:
        with torch.no_grad():
            got = torch.jit.load(str(path))(x)
    difference = float((got - expected).abs().max())
    if not difference <= MAX_ABS_DIFFERENCE:
        raise UserError(f"the exported model {path} gives other logits than PyTorch (max abs difference "
                        f"{difference:.2e} on a batch of 8); the export is broken for this model, try format="
                        f"{'torchscript' if fmt == 'onnx' else 'onnx'}")
    return difference
