"""`python -m src.predict ckpt_path=... video=clip.mp4` (or `video=0`, a camera): faces through time.

Every `video_every`-th frame goes through the face classifier of image_prediction.py (detector, crop,
the model); the frames in between carry the last boxes and labels, so the annotated video stays smooth
while the model runs on a fraction of the frames. Written to out_dir:

- <name>_annotated.mp4: the video with each face's box and label;
- <name>_frames.csv: one row per face of each predicted frame (frame, time, box, class probabilities),
  a frame without a face as a row with an empty face;
- <name>_probabilities.png: each class's probability over time, for the largest face of each frame.

Reading and writing video uses OpenCV (the `faces` extra). A camera runs until `video_max_frames` or
Ctrl-C; what was seen until then is written either way.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..figures import save_figure
from ..progress import Progress
from .face_classifier import FaceClassifier, progress_every_s
from .faces import INSTALL_HINT, annotate

log = logging.getLogger(__name__)


def _open_capture(source):
    try:
        import cv2
    except ImportError:
        raise UserError(f"reading videos needs OpenCV, which is not installed: {INSTALL_HINT}") from None
    is_camera = isinstance(source, int)
    if not is_camera and not Path(str(source)).is_file():
        raise UserError(f"video={source}: no such file")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        what = f"camera {source} (is one connected, and may this process use it?)" if is_camera else \
            f"{source}: OpenCV cannot decode it (a video file: .mp4, .avi, .mov, .mkv, ...)"
        raise UserError(f"cannot open video {what}")
    return cv2, capture


def predict_video(cfg) -> list[dict]:
    """Annotated video, per-frame CSV and probability plot of `cfg.video`; returns the CSV's rows."""
    if not cfg.faces:
        raise UserError("video= finds faces in each frame: faces=false (whole images) applies to images= only")
    cv2, capture = _open_capture(cfg.video)
    classifier = FaceClassifier(cfg)
    name = f"camera{cfg.video}" if isinstance(cfg.video, int) else Path(str(cfg.video)).stem
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 1 <= fps <= 240 else 25.0  # cameras and some containers report 0 or nonsense
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    limit = cfg.video_max_frames or (total if total > 0 else None)
    every = int(cfg.video_every)
    video_path = out_dir / f"{name}_annotated.mp4"
    writer, rows, faces, labels, frame = None, [], [], [], 0
    try:
        with Progress(limit or 0, f"video {name}", "frames", every_s=progress_every_s(cfg), logger=log) as progress:
            while limit is None or frame < limit:
                ok, bgr = capture.read()
                if not ok:
                    break
                image = Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))
                if frame % every == 0:
                    faces, _, probs = classifier.classify(image)
                    labels = [classifier.label(p) for p in probs]
                    rows += _frame_rows(classifier.classes, frame, frame / fps, faces, probs)
                annotated = np.asarray(annotate(image, faces, labels))[..., ::-1]
                if writer is None:
                    height, width = annotated.shape[:2]
                    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                writer.write(np.ascontiguousarray(annotated))
                frame += 1
                progress.update(1)
    except KeyboardInterrupt:
        log.warning("Interrupted at frame %d: writing what was seen so far", frame)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frame == 0:
        raise UserError(f"video={cfg.video}: no frame could be read")
    _write_frames_csv(rows, classifier.classes, out_dir / f"{name}_frames.csv")
    _plot_probabilities(rows, classifier.classes, out_dir / f"{name}_probabilities.png")
    found = sum(1 for r in rows if r["face"] == 0)
    log.info("%d frames, %d predicted (every %d), a face in %d of them: %s, %s_frames.csv, %s_probabilities.png",
             frame, len({r['frame'] for r in rows}), every, found, video_path, name, name)
    return rows


def _frame_rows(classes, frame: int, time_s: float, faces, probs) -> list[dict]:
    if not faces:
        return [{"frame": frame, "time_s": round(time_s, 3), "face": None, "box": None, "probabilities": {}}]
    return [{"frame": frame, "time_s": round(time_s, 3), "face": i, "box": list(face.box),
             "probabilities": dict(zip(classes, map(float, p)))} for i, (face, p) in enumerate(zip(faces, probs))]


def _write_frames_csv(rows: list[dict], classes: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "time_s", "face", "x0", "y0", "x1", "y1", "predicted",
                         *[f"p_{c}" for c in classes]])
        for row in rows:
            if row["face"] is None:
                writer.writerow([row["frame"], row["time_s"], "", "", "", "", "", "", *[""] * len(classes)])
                continue
            probs = row["probabilities"]
            writer.writerow([row["frame"], row["time_s"], row["face"], *row["box"], max(probs, key=probs.get),
                             *[f"{probs[c]:.6f}" for c in classes]])


def _plot_probabilities(rows: list[dict], classes: list[str], path: Path) -> None:
    """Each class's probability over time for the largest face (face 0) of each predicted frame; frames
    without a face leave a gap."""
    import matplotlib.pyplot as plt

    frames = sorted({r["frame"] for r in rows})
    largest = {r["frame"]: r for r in rows if r["face"] == 0}
    times = [next(r["time_s"] for r in rows if r["frame"] == f) for f in frames]
    figure, axes = plt.subplots(figsize=(9, 3.5))
    for c in classes:
        values = [largest[f]["probabilities"][c] if f in largest else np.nan for f in frames]
        axes.plot(times, values, label=c, linewidth=1.5)
    axes.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), title="class probabilities of the largest face")
    axes.legend(loc="upper right", fontsize=8, ncol=min(4, len(classes)))
    axes.grid(alpha=0.3)
    save_figure(figure, path)
