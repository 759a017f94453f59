"""`python -m src.predict`: the classes of the faces in photos (or of whole images), decoded as in training.

Files, folders (searched recursively) and globs are expanded to image paths. With `faces=true` (the
default) each image's faces are found (evaluation/faces.py: detector, crop with a margin) and each face
is predicted; an annotated copy of the image (boxes, label, confidence) goes to `out_dir`. With
`faces=false` the whole image is the input, as for a dataset of pre-cropped faces. Either way every
face or image is converted exactly like a training image (the checkpoint's channels and size; its
normalization and centre crop in the predictor) and predicted by the checkpoint(s) (several: an
ensemble). The table (one row per face, or per image) is printed and written to `out_dir` as
predictions.csv and predictions.json (or to `output`). `video=` hands over to video_prediction.py.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..command_rules import PREDICT_RULES, check_values
from ..data.folders import find_images
from ..data.images import image_to_array, read_image
from ..errors import BadImageError, UserError
from ..figures import save_figure
from ..fileio import check_writable_folder
from ..progress import Progress
from .face_classifier import FaceClassifier, progress_every_s
from .faces import annotate, looks_precropped
from .video_prediction import predict_video

log = logging.getLogger(__name__)

SALIENCY_MAX_IMAGES = 64  # whole-image mode: saliency.png shows at most this many


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


def prediction_row(classes: Sequence[str], probs: torch.Tensor, top_k: int, **where) -> dict:
    """One table row: where the prediction comes from (file, face, box, ...), the top-k classes and
    every class's probability."""
    k = max(1, min(int(top_k), len(classes)))
    top = probs.topk(k)
    ranked = [{"label": classes[i], "probability": round(float(v), 6)} for v, i in zip(top.values, top.indices)]
    return {**where, "top_k": ranked, "probabilities": dict(zip(classes, map(float, probs)))}


def predict_images(cfg) -> list[dict]:
    """`python -m src.predict`: top-k classes per face (or per image), printed and written to out_dir."""
    check_values(cfg, PREDICT_RULES)
    # where the results go, checked before any work: out_dir (annotated images and videos, the table), output's folder
    if cfg.output:
        check_writable_folder(Path(cfg.output).parent, "output")
    if cfg.faces or cfg.saliency or not cfg.output or cfg.get("video") is not None:
        check_writable_folder(cfg.out_dir, "out_dir")
    if cfg.get("video") is not None:
        return predict_video(cfg)
    if cfg.images is None:
        raise UserError("give images=[photo.jpg,folder/,'shots/*.png'] (or video=clip.mp4 / video=0 for a camera)")
    entries = [cfg.images] if isinstance(cfg.images, str) else list(cfg.images)
    files = expand_image_paths(entries)
    if not files:
        raise UserError(f"no readable images in images={entries}: no file matched")
    if cfg.saliency:
        from .saliency import require_captum

        require_captum()
    classifier = FaceClassifier(cfg)
    out_dir = Path(cfg.out_dir)
    rows = _predict_faces(classifier, files, cfg, out_dir) if cfg.faces else _predict_whole(classifier, files, cfg)
    if not rows:
        raise UserError(f"no readable images in images={entries}")
    table = Path(cfg.output) if cfg.output else out_dir / "predictions.csv"
    _write_predictions(rows, classifier.classes, table)
    if not cfg.output:
        _write_predictions(rows, classifier.classes, table.with_suffix(".json"))
    log.info("Wrote %d predictions to %s", len(rows), table if cfg.output else f"{table} (and .json)")
    return rows


def _predict_whole(classifier: FaceClassifier, files: list[str], cfg) -> list[dict]:
    readable, arrays = [], []
    for file in files:
        try:  # exactly the training decode: mode conversion to the checkpoint's channels, resize
            with read_image(file) as im:
                arrays.append(image_to_array(im, classifier.channels, classifier.image_size))
            readable.append(file)
        except BadImageError as exc:
            log.warning("skipped: %s", exc)
    if not readable:
        return []
    rows, probs = [], classifier.whole(arrays)
    for file, p in zip(readable, probs):
        rows.append(prediction_row(classifier.classes, p, cfg.top_k, file=file))
        print(f"{file}: {_ranked(rows[-1])}")
    if cfg.saliency:
        shown = min(len(arrays), SALIENCY_MAX_IMAGES)
        if shown < len(arrays):
            log.warning("saliency.png shows the first %d of %d images", shown, len(arrays))
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        save_figure(classifier.saliency_figure(arrays[:shown], probs[:shown], "Grad-CAM of the predicted class",
                                               names=[Path(f).name for f in readable[:shown]]),
                    Path(cfg.out_dir) / "saliency.png")
    return rows


def _predict_faces(classifier: FaceClassifier, files: list[str], cfg, out_dir: Path) -> list[dict]:
    rows, names, precropped = [], set(), []
    out_dir.mkdir(parents=True, exist_ok=True)
    with Progress(len(files), f"faces ({cfg.detector.name})", "img", every_s=progress_every_s(cfg),
                  logger=log) as progress:
        for file in files:
            progress.update(1)
            try:
                with read_image(file) as im:
                    image = im.copy()
            except BadImageError as exc:
                log.warning("skipped: %s", exc)
                continue
            faces, inputs, probs = classifier.classify(image)
            if looks_precropped(image.width, image.height, faces, classifier.image_size):
                precropped.append(file)
            if not faces:
                print(f"{file}: no face found")
                rows.append({"file": file, "face": None, "top_k": [], "probabilities": {}})
                continue
            for index, (face, p) in enumerate(zip(faces, probs)):
                rows.append(prediction_row(classifier.classes, p, cfg.top_k, file=file, face=index,
                                           box=list(face.box), detector_score=round(face.score, 4)))
                print(f"{file} face {index} at {face.box}: {_ranked(rows[-1])}")
            annotated = annotate(image, faces, [classifier.label(p) for p in probs])
            name = _unique_name(Path(file).stem + "_faces.jpg", names)
            annotated.save(out_dir / name, quality=92)
            if cfg.saliency:
                title = f"Grad-CAM of the predicted class, {Path(file).name}"
                figure = classifier.saliency_figure(inputs, probs, title)
                save_figure(figure, out_dir / name.replace("_faces.jpg", "_saliency.png"))
    if precropped:
        log.warning("%d of %d images look like pre-cropped faces (small, or one face filling the image), e.g. %s: "
                    "faces=false predicts whole images, as for a dataset of cropped faces",
                    len(precropped), len(files), precropped[0])
    log.info("Annotated images in %s", out_dir)
    return rows


def _ranked(row: dict) -> str:
    return ", ".join(f"{r['label']} {r['probability']:.3f}" for r in row["top_k"])


def _unique_name(name: str, taken: set[str]) -> str:
    """`name`, or name_2, name_3, ... when images of the same name from other folders came first."""
    stem, suffix, candidate, n = Path(name).stem, Path(name).suffix, name, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}_{n}{suffix}"
    taken.add(candidate)
    return candidate


def _write_predictions(rows: list[dict], classes: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=2))
        return
    if path.suffix.lower() != ".csv":
        raise UserError(f"output={path}: use a .csv or .json file name")
    faces = any("face" in row for row in rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        where = ["file", "face", "x0", "y0", "x1", "y1", "detector_score"] if faces else ["file"]
        writer.writerow([*where, "predicted", "confidence", *[f"p_{c}" for c in classes]])
        for row in rows:
            located = [row["file"]]
            if faces:
                box = row.get("box") or [""] * 4
                located += [_blank(row.get("face")), *box, _blank(row.get("detector_score"))]
            if not row["top_k"]:  # an image without a face: its row says so by its empty prediction
                writer.writerow([*located, "", "", *[""] * len(classes)])
                continue
            best = row["top_k"][0]
            writer.writerow([*located, best["label"], f"{best['probability']:.6f}",
                             *[f"{row['probabilities'][c]:.6f}" for c in classes]])


def _blank(value) -> str:
    return "" if value is None else str(value)
