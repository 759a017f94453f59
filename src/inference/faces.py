"""Finding faces in photos and video frames, cropping them as the model was trained, drawing the results.

Two detectors whose weights ship inside their pip packages (nothing is downloaded at run time), both in
the `faces` extra (`pip install -e '.[faces]'`):

- `mtcnn` (the default): the MTCNN cascade of facenet-pytorch, three small CNNs run with PyTorch. It
  finds frontal and turned faces down to `min_size` pixels and gives each a probability.
- `haar`: OpenCV's Viola-Jones cascade (haarcascade_frontalface_default.xml, in the opencv wheel). About
  as fast on a CPU, but it misses turned and tilted faces and fires on face-like texture more often.

docs/faces-and-demo.md has the comparison (recall, false detections and time on group
photos built from FER2013 test faces) that made mtcnn the default.

A face is cropped as a square around its box, `margin` of the box's side added on every side (FER2013's
faces are framed loosely: hair, chin and some background), then converted exactly as a training image
(data.images.image_to_array: channels, size), so the predictor's normalization and centre crop apply.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError, UserError

log = logging.getLogger(__name__)

DETECTORS = ("mtcnn", "haar")
INSTALL_HINT = "pip install -e '.[faces]' (or pip install 'fer-runner[faces]')"


@dataclass(frozen=True)
class Face:
    """A detected face: its box in pixels of the image (x0, y0 inclusive, x1, y1 exclusive) and the
    detector's confidence (MTCNN: a probability; Haar: the cascade's last-stage weight, not a probability)."""
    box: tuple[int, int, int, int]
    score: float

    @property
    def side(self) -> int:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def _missing(package: str, detector: str) -> UserError:
    return UserError(f"the {detector} face detector needs the {package} package, which is not installed: "
                     f"{INSTALL_HINT}; or predict the whole image with faces=false")


class MtcnnDetector:
    """facenet-pytorch's MTCNN (weights in the package) on the CPU or the run's device."""

    name = "mtcnn"

    def __init__(self, min_size: int = 20, threshold: float = 0.9, device: str = "cpu"):
        try:
            from facenet_pytorch import MTCNN
        except ImportError:
            raise _missing("facenet-pytorch", self.name) from None
        # keep_all: every face, not only the most probable one; post_process off: we crop ourselves.
        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_size, device=device, post_process=False)
        self.threshold = threshold

    def detect(self, rgb: np.ndarray) -> list[Face]:
        boxes, probs = self.mtcnn.detect(Image.fromarray(rgb))
        if boxes is None:
            return []
        return [Face(_clip_box(box, rgb.shape), float(p)) for box, p in zip(boxes, probs) if p >= self.threshold]


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (the XML file in the opencv wheel)."""

    name = "haar"

    def __init__(self, min_size: int = 20, min_neighbors: int = 5):
        try:
            import cv2
        except ImportError:
            raise _missing("opencv-python-headless", self.name) from None
        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if self.cascade.empty():
            raise UserError("OpenCV's haarcascade_frontalface_default.xml could not be loaded: reinstall opencv "
                            "(" + INSTALL_HINT + ")")
        self.min_size, self.min_neighbors = min_size, min_neighbors

    def detect(self, rgb: np.ndarray) -> list[Face]:
        gray = self.cv2.equalizeHist(self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2GRAY))
        boxes, _, weights = self.cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(self.min_size, self.min_size),
            outputRejectLevels=True)
        return [Face(_clip_box((x, y, x + w, y + h), rgb.shape), float(s))
                for (x, y, w, h), s in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(weights).reshape(-1))]


def make_detector(name: str, min_size: int = 20, threshold: float = 0.9, device: str = "cpu"):
    """The detector `name` (mtcnn | haar); `threshold` applies to MTCNN's probabilities."""
    if name == "mtcnn":
        return MtcnnDetector(min_size, threshold, device)
    if name == "haar":
        return HaarDetector(min_size)
    raise ConfigError(f"detector.name={name} is invalid: use one of {', '.join(DETECTORS)}")


def _clip_box(box, shape) -> tuple[int, int, int, int]:
    h, w = shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def crop_face(image: Image.Image, face: Face, margin: float) -> Image.Image:
    """The square around `face`'s box, its side the box's longer side times (1 + 2 * margin), centred
    on the box; parts outside the image repeat its edge pixels (a face at the border keeps its framing)."""
    x0, y0, x1, y1 = face.box
    side = max(1, round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    left, top = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
    inside = (max(0, left), max(0, top), min(image.width, left + side), min(image.height, top + side))
    if inside == (left, top, left + side, top + side):
        return image.crop(inside)
    pixels = np.asarray(image.crop(inside))
    pad = [(inside[1] - top, top + side - inside[3]), (inside[0] - left, left + side - inside[2])]
    pad += [(0, 0)] * (pixels.ndim - 2)
    return Image.fromarray(np.pad(pixels, pad, mode="edge"), mode=image.mode)


def looks_precropped(width: int, height: int, faces: list[Face], model_size: int) -> bool:
    """A small image, or one whose only face fills most of it: likely a dataset face already cropped,
    which the detector finds badly (no margin around it) and whole-image prediction suits."""
    if max(width, height) <= 2 * model_size:
        return True
    return len(faces) == 1 and faces[0].side >= 0.6 * min(width, height)


def annotate(image: Image.Image, faces: list[Face], labels: list[str]) -> Image.Image:
    """A copy of `image` (RGB) with each face's box and its label ("happy 0.91") drawn on it."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    line = max(2, round(min(out.size) / 200))
    font = ImageFont.load_default(size=max(12, round(min(out.size) / 30)))
    for face, label in zip(faces, labels):
        x0, y0, x1, y1 = face.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 200, 0), width=line)
        left, top, right, bottom = draw.textbbox((x0, y0), label, font=font)
        text_y = y0 - (bottom - top) - 2 * line if y0 - (bottom - top) - 2 * line >= 0 else y1 + line
        draw.rectangle((x0, text_y, x0 + right - left + 2 * line, text_y + bottom - top + 2 * line), fill=(255, 200, 0))
        draw.text((x0 + line - (left - x0), text_y + line - (top - y0)), label, fill=(0, 0, 0), font=font)
    return out
