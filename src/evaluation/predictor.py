"""From uint8 images to class log-probabilities, preprocessed exactly as in training.

`Predictor` wraps one model with its normalization, device, precision and test-time augmentation;
`Ensemble` averages the probabilities of several. The trainer's validation, the test evaluation at
the end of training, `src.evaluate` and `src.predict` all go through them: one code path.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import load_checkpoint
from ..config import PREDICT_RULES, build_stored, check_values
from ..data.images import decode_image
from ..data.sources import find_images
from ..errors import BadImageError, ConfigError, UserError
from ..models import MODEL_CLASSES
from ..runtime.devices import autocast, resolve_device, resolve_precision

log = logging.getLogger(__name__)

TTA_MODES = ("none", "flip", "tencrop")


def to_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool,
             augment=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) → float in [0, 1] → augmented (training only) → normalized model input."""
    x = images.float().div_(255)
    if augment:
        x = augment(x, generator)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def default_crop_size(image_size: int) -> int:
    """The ten-crop size when none is given: 44 of 48, as the FER2013 papers use (11/12 of the side)."""
    return image_size * 11 // 12


def center_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The centre size x size crop (x itself when size is None or not smaller)."""
    h, w = x.shape[-2:]
    if size is None or size >= min(h, w):
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def tta_views(x: torch.Tensor, mode: str, crop_size: int | None = None, input_size: int | None = None
              ) -> list[torch.Tensor]:
    """The views whose logits are averaged: the image (none); and its mirror (flip); or the four corner
    and the centre crops of crop_size, each also mirrored (tencrop).

    `input_size` is the side the model was trained on when training cropped (aug.crop.size, e.g. 44 of
    48): none and flip then see the centre crop, and tencrop's crops default to that size."""
    h, w = x.shape[-2:]
    if input_size is not None and input_size >= min(h, w):
        input_size = None  # trained on whole images
    if mode == "none":
        return [center_crop(x, input_size)]
    if mode == "flip":
        view = center_crop(x, input_size)
        return [view, view.flip(-1)]
    if mode != "tencrop":
        raise ConfigError(f"tta.mode={mode} is invalid: use one of {', '.join(TTA_MODES)}")
    c = crop_size or input_size or default_crop_size(min(h, w))
    if not 0 < c <= min(h, w):
        raise ConfigError(f"tta.crop_size={c} is invalid for {h}x{w} images")
    corners = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2)]
    crops = [x[..., top:top + c, left:left + c] for top, left in corners]
    return crops + [crop.flip(-1) for crop in crops]


class Predictor:
    """One model, ready to predict: normalization, device, precision, memory format, TTA, and the centre
    crop to the size it was trained on (input_size, when training cropped; see tta_views)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu", precision: str = "fp32", channels_last: bool = False,
                 tta: str = "none", crop_size: int | None = None, batch_size: int = 512,
                 input_size: int | None = None):
        if tta not in TTA_MODES:
            raise ConfigError(f"tta.mode={tta} is invalid: use one of {', '.join(TTA_MODES)}")
        self.model, self.device, self.precision = model, torch.device(device), precision
        self.channels_last, self.tta, self.crop_size, self.batch_size = channels_last, tta, crop_size, batch_size
        self.input_size = input_size
        self.mean = torch.tensor(list(mean), device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), device=self.device).view(1, -1, 1, 1)

    def _batches(self, images: torch.Tensor):
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size].to(self.device, non_blocking=True)
            yield to_input(batch, self.mean, self.std, self.channels_last)

    @torch.inference_mode()
    def log_probs(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K) float32 log-probabilities on the CPU for uint8 images (N, C, H, W) on any device."""
        self.model.eval()
        out = []
        for x in self._batches(images):
            views = tta_views(x, self.tta, self.crop_size, self.input_size)
            with autocast(self.device, self.precision):
                logits = torch.stack([self.model(v).float() for v in views]).mean(0)
            out.append(F.log_softmax(logits, dim=1))
        return torch.cat(out).cpu()

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, F) penultimate-layer features (the model's forward_features), without TTA."""
        self.model.eval()
        out = []
        for x in self._batches(images):
            with autocast(self.device, self.precision):
                out.append(self.model.forward_features(center_crop(x, self.input_size)).float())
        return torch.cat(out).cpu()


def average_probabilities(log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Soft voting: the log of the mean of the members' probabilities."""
    return torch.logsumexp(torch.stack(list(log_probs)), dim=0) - math.log(len(log_probs))


class Ensemble:
    """Averages the probabilities (soft voting) of several predictors over the same classes."""

    def __init__(self, members: Sequence[Predictor]):
        self.members = list(members)

    def log_probs(self, images: torch.Tensor) -> torch.Tensor:
        return average_probabilities([m.log_probs(images) for m in self.members])


def load_model(ckpt_path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The model a checkpoint holds, rebuilt from its own config, and the checkpoint's meta
    (config, data: classes, channels, image_size, mean, std; input_size: the training crop or None).

    The stored model config is data from a file that anyone may have written: only the runner's own
    model classes are built from it (config.build_stored), first on the meta device, where the shapes of
    its parameters must equal the checkpoint's tensors before any memory is allocated for them."""
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    meta = ckpt["meta"]
    data = meta.get("data") or {}
    described = all(data.get(k) is not None for k in ("classes", "channels", "image_size", "mean", "std"))
    if not described or not (meta.get("config") or {}).get("model"):
        raise UserError(f"checkpoint {ckpt_path} lacks the data description (classes, normalization) or the model "
                        "config to predict")

    def rebuild() -> nn.Module:
        stored = meta["config"]["model"]
        known = {"num_classes": len(data["classes"]), "in_channels": data["channels"]}
        if "pretrained" in stored:
            known["pretrained"] = False  # the weights come from the checkpoint: no download
        return build_stored(stored, MODEL_CLASSES, "model", f"checkpoint {ckpt_path}", **known)

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in rebuild().state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    if expected != stored:
        wrong = sorted(set(expected) ^ set(stored)) or [k for k in expected if expected[k] != stored[k]]
        raise UserError(f"checkpoint {ckpt_path} was refused: its weights do not fit the model its config describes "
                        f"({len(wrong)} tensors differ, first: {wrong[0]})")
    model = rebuild()
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), {**meta, "epoch": ckpt.get("epoch")}


def _runtime_settings(trainer_cfg, trained: dict, device: torch.device) -> tuple[str, bool]:
    """Precision and memory format: as given, or (null) as the checkpoint's run used them, so that an
    evaluation on the same machine reproduces the run's numbers exactly."""
    given = trainer_cfg.channels_last
    channels_last = bool(trained.get("channels_last", True) if given is None else given)
    if trainer_cfg.precision is not None:
        return resolve_precision(trainer_cfg.precision, device), channels_last
    try:
        return resolve_precision(trained.get("precision") or "auto", device), channels_last
    except ConfigError:  # e.g. trained in fp16 on a GPU, evaluated on a CPU
        return resolve_precision("auto", device), channels_last


def checkpoint_paths(ckpt_path) -> list[str]:
    """`ckpt_path` of evaluate / predict as checkpoint files: a file; a run directory (its
    checkpoints/best.pt); a sweep or any folder (every checkpoints/best.pt below it, sorted); or a list
    of these (an ensemble)."""
    entries = [str(ckpt_path)] if isinstance(ckpt_path, (str, Path)) else [str(p) for p in ckpt_path]
    found: list[str] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if not path.is_dir():
            found.append(entry)  # a file, or a missing path that load_checkpoint reports
        elif (path / "checkpoints" / "best.pt").is_file():
            found.append(str(path / "checkpoints" / "best.pt"))
        else:
            below = sorted(str(p) for p in path.rglob("best.pt") if p.parent.name == "checkpoints")
            if not below:
                raise UserError(f"ckpt_path={entry} is a folder without any checkpoints/best.pt below it")
            found += below
    return found


def load_predictors(ckpt_paths: Sequence[str], trainer_cfg, tta_cfg, batch_size: int | None = None
                    ) -> tuple[list[Predictor], dict]:
    """A Predictor per checkpoint (device from `trainer_cfg`; precision and channels_last from it or, when
    null, from the checkpoint's run; TTA from `tta_cfg`), and the data description they share.
    Checkpoints over different classes or inputs are an error."""
    device = resolve_device(trainer_cfg.device)
    predictors, first = [], None
    for path in ckpt_paths:
        model, meta = load_model(path, device)
        precision, channels_last = _runtime_settings(trainer_cfg, meta["config"].get("trainer") or {}, device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        data = meta["data"]
        described = {k: data[k] for k in ("classes", "channels", "image_size")}
        if first is None:
            first = {**described, "config": meta["config"]}
        elif described != {k: first[k] for k in described}:
            raise UserError(f"checkpoint {path} was trained on {described}, unlike {ckpt_paths[0]} "
                            f"({ {k: first[k] for k in described} }); an ensemble needs the same classes and input")
        predictors.append(Predictor(model, data["mean"], data["std"], device, precision, channels_last,
                                    tta_cfg.mode, tta_cfg.crop_size,
                                    batch_size or (meta["config"].get("data") or {}).get("eval_batch_size") or 512,
                                    meta.get("input_size")))
    return predictors, first


def expand_image_paths(entries: Sequence[str]) -> list[str]:
    """Files, folders (searched recursively for images) and globs → image paths; what matches nothing
    is reported and skipped."""
    found: list[str] = []
    for entry in entries:
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            found += find_images(path)
        elif path.is_file():
            found.append(str(path))
        elif path.exists():  # a FIFO, socket or device: reading it could block forever
            log.warning("%s is not a regular file: skipped", entry)
        elif any(ch in str(entry) for ch in "*?["):
            matches = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            found += matches
            if not matches:
                log.warning("%s matches no file", entry)
        else:
            log.warning("%s: no such file or folder", entry)
    return found


def predict_images(cfg) -> list[dict]:
    """`python -m src.predict`: top-k classes per image, printed and optionally written to CSV/JSON."""
    check_values(cfg, PREDICT_RULES)
    entries = [cfg.images] if isinstance(cfg.images, str) else list(cfg.images)
    predictors, shared = load_predictors(checkpoint_paths(cfg.ckpt_path), cfg.trainer, cfg.tta)
    classes = shared["classes"]
    files, arrays = [], []
    for file in expand_image_paths(entries):
        try:  # exactly the training decode: mode conversion to the checkpoint's channels, resize
            arrays.append(decode_image(file, shared["channels"], shared["image_size"]))
            files.append(file)
        except BadImageError as exc:
            log.warning("skipped: %s", exc)
    if not files:
        raise UserError(f"no readable images in images={entries}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    target = predictors[0] if len(predictors) == 1 else Ensemble(predictors)
    probs = target.log_probs(images).exp()
    k = max(1, min(int(cfg.top_k), len(classes)))
    rows = []
    for file, p in zip(files, probs):
        top = p.topk(k)
        ranked = [{"label": classes[i], "probability": round(float(v), 6)} for v, i in zip(top.values, top.indices)]
        rows.append({"file": file, "top_k": ranked, "probabilities": dict(zip(classes, map(float, p)))})
        print(f"{file}: " + ", ".join(f"{r['label']} {r['probability']:.3f}" for r in ranked))
    if cfg.output:
        _write_predictions(rows, classes, Path(cfg.output))
        log.info("Wrote %d predictions to %s", len(rows), cfg.output)
    return rows


def _write_predictions(rows: list[dict], classes: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=2))
        return
    if path.suffix.lower() != ".csv":
        raise UserError(f"output={path}: use a .csv or .json file name")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "predicted", "confidence", *[f"p_{c}" for c in classes]])
        for row in rows:
            best = row["top_k"][0]
            writer.writerow([row["file"], best["label"], f"{best['probability']:.6f}",
                             *[f"{row['probabilities'][c]:.6f}" for c in classes]])
