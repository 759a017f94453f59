"""`python -m src.predict`: the top-k classes of image files, decoded exactly as in training.

Files, folders (searched recursively) and globs are expanded to image paths; every image is decoded
like a training image (mode converted to the checkpoint's channels, resized to its image size) and
predicted by the checkpoint(s) (several: an ensemble); the result is printed and optionally written to
a CSV or JSON file.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import PREDICT_RULES, check_values
from ..data.images import decode_image
from ..data.sources import find_images
from ..errors import BadImageError, UserError
from .predictor import Ensemble, checkpoint_paths, load_predictors

log = logging.getLogger(__name__)


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
