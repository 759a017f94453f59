"""FaceClassifier: the checkpoint(s) behind a face detector, the one pipeline from a photo or a video frame to
class probabilities, decoded as in training. src.predict's photos (image_prediction.py) and videos
(video_prediction.py) and src.demo share it."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..data.images import image_to_array
from ..progress import DEFAULT_EVERY_S
from .faces import Face, crop_face, make_detector
from .predictor import Ensemble, checkpoint_paths, load_predictors


class FaceClassifier:
    """The checkpoint(s) behind a face detector: `classify(image)` finds the faces of a Pillow image and
    returns them with their class probabilities; `whole(images)` predicts uint8 arrays as they are.
    src.predict's photos and videos and src.demo share it."""

    def __init__(self, cfg):
        self.detector = None  # first: a missing detector package stops before any checkpoint is read
        if cfg.faces:
            self.detector = make_detector(cfg.detector.name, cfg.detector.min_size, cfg.detector.threshold)
        predictors, shared = load_predictors(checkpoint_paths(cfg.ckpt_path), cfg.trainer, cfg.tta)
        self.predictors = predictors
        self.target = predictors[0] if len(predictors) == 1 else Ensemble(predictors)
        self.classes: list[str] = list(shared["classes"])
        self.channels, self.image_size = shared["channels"], shared["image_size"]
        self.margin = float(cfg.detector.margin)

    def whole(self, arrays: Sequence[np.ndarray], description: str = "predicting") -> torch.Tensor:
        """(N, K) probabilities of (size, size, channels) uint8 arrays."""
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return self.target.log_probs(images, description).exp()

    def face_inputs(self, image: Image.Image, faces: Sequence[Face]) -> list[np.ndarray]:
        """Each face cropped with the margin and converted as a training image."""
        return [image_to_array(crop_face(image, face, self.margin), self.channels, self.image_size) for face in faces]

    def classify(self, image: Image.Image) -> tuple[list[Face], list[np.ndarray], torch.Tensor]:
        """The faces of `image` (largest first), the model's input for each (uint8, as in training) and
        their (F, K) class probabilities."""
        rgb = np.asarray(image.convert("RGB"))
        faces = sorted(self.detector.detect(rgb), key=lambda f: -f.side)
        if not faces:
            return [], [], torch.empty(0, len(self.classes))
        inputs = self.face_inputs(image, faces)
        return faces, inputs, self.whole(inputs, "faces")

    def saliency_figure(self, inputs: Sequence[np.ndarray], probs: torch.Tensor, title: str,
                        names: Sequence[str] | None = None):
        """Each input (face or image) as the model saw it under the Grad-CAM map of its predicted class (of
        the first model of an ensemble), eight to a row."""
        from .saliency import grad_cam, model_view, saliency_figure

        images = torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).contiguous()
        predicted = probs.argmax(1).tolist()
        cams = grad_cam(self.predictors[0], images, predicted)
        seen = model_view(self.predictors[0], images).permute(0, 2, 3, 1).numpy()
        names = names or [f"face {i}" for i in range(len(inputs))]
        tiles = [(seen[i], cams[i].numpy(), f"{names[i]}\n{self.label(probs[i])}", "black") for i in range(len(inputs))]
        return saliency_figure([("", tiles[start:start + 8]) for start in range(0, len(tiles), 8)], title)

    def label(self, probs: torch.Tensor) -> str:
        """"happy 0.91": the most probable class and its probability."""
        return f"{self.classes[int(probs.argmax())]} {float(probs.max()):.2f}"


def progress_every_s(cfg) -> float:
    """trainer.log_every_s, its default when null."""
    return DEFAULT_EVERY_S if cfg.trainer.get("log_every_s") is None else float(cfg.trainer.log_every_s)
