"""Comparing the face detectors on group photos made of dataset faces with known positions:

    python -m src.inference.detector_comparison $DATA_DIR/fer2013/test --photos 200 [--seed 0]

Each photo is a smooth random backdrop (640x480) with 2 to 5 faces of the folder (any image folder:
FER2013's test split is 48x48 gray faces) scaled to 64-160 pixels at random positions that do not
overlap, a third of them mirrored. A face counts as found when one detection is centred inside its square
and overlaps it (IoU >= 0.3: the square holds the dataset's margin around the face); every other
detection is a false one. Prints recall, false detections per photo and milliseconds per photo for each
detector (mtcnn, haar), on the same photos. The tests build their group photos with the same functions.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

Square = tuple[int, int, int]  # x, y, side


def backdrop(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour backdrop, (height, width, 3) uint8, with no face-like structure."""
    coarse = rng.integers(60, 200, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)).copy()


def paste(canvas: np.ndarray, face: Image.Image, square: Square) -> None:
    """`face` scaled to side s, in colour, at (x, y) of the canvas."""
    x, y, s = square
    canvas[y:y + s, x:x + s] = np.asarray(face.convert("RGB").resize((s, s), Image.Resampling.BICUBIC))


def group_photo(faces: Sequence[Image.Image], rng: np.random.Generator, width: int = 640, height: int = 480,
                sides: tuple[int, int] = (64, 160)) -> tuple[np.ndarray, list[Square]]:
    """A photo with `faces` at random non-overlapping squares (a third mirrored); the squares placed (a face
    that finds no room after 50 tries is left out)."""
    canvas, placed = backdrop(width, height, rng), []
    for face in faces:
        for _ in range(50):
            side = int(rng.integers(sides[0], sides[1] + 1))
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y for px, py, ps in placed):
                paste(canvas, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 1 / 3 else face,
                      (x, y, side))
                placed.append((x, y, side))
                break
    return canvas, placed


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(boxes: Sequence[Sequence[int]], squares: Sequence[Square], min_iou: float = 0.3) -> tuple[int, int]:
    """(faces found, false detections): a square is found by the first unused box centred inside it with
    IoU >= min_iou; boxes left over are false detections."""
    unused, found = list(boxes), 0
    for x, y, s in squares:
        square = (x, y, x + s, y + s)
        for box in unused:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            if x <= cx <= x + s and y <= cy <= y + s and iou(box, square) >= min_iou:
                unused.remove(box)
                found += 1
                break
    return found, len(unused)


def compare(face_files: Sequence[str], photos: int, seed: int, detectors: Sequence[str]) -> list[dict]:
    from .faces import make_detector

    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(photos):
        chosen = rng.choice(len(face_files), size=int(rng.integers(2, 6)), replace=False)
        scenes.append(group_photo([Image.open(face_files[i]) for i in chosen], rng))
    results = []
    for name in detectors:
        detector = make_detector(name)
        detector.detect(scenes[0][0])  # warm-up: first-call allocations are not the detector's speed
        found = false = total = 0
        start = time.perf_counter()
        for canvas, squares in scenes:
            f, wrong = match([face.box for face in detector.detect(canvas)], squares)
            found, false, total = found + f, false + wrong, total + len(squares)
        seconds = time.perf_counter() - start
        results.append({"detector": name, "faces": total, "recall": found / total,
                        "false_per_photo": false / photos, "ms_per_photo": 1000 * seconds / photos})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.inference.detector_comparison",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("faces", help="a folder of face images (searched recursively), e.g. fer2013/test")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", nargs="+", default=["mtcnn", "haar"])
    args = parser.parse_args(argv)
    from ..data.folders import find_images

    files = find_images(Path(args.faces))
    if len(files) < 5:
        print(f"{args.faces}: fewer than 5 images", file=sys.stderr)
        return 2
    rows = compare(files, args.photos, args.seed, args.detectors)
    print("| detector | faces | recall | false detections per photo | ms per photo (640x480) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['detector']} | {r['faces']} | {r['recall']:.3f} | {r['false_per_photo']:.3f} | "
              f"{r['ms_per_photo']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
