"""What the model looks at: Grad-CAM maps with Captum (PyTorch's interpretability library, the `saliency`
extra: `pip install -e '.[saliency]'`).

Grad-CAM (Selvaraju et al. 2017) weights the last spatial feature map's channels by the gradient of a
class score, averaged over the map, and keeps the positive part: a coarse map of the pixels that raised
that class, upsampled to the input. Captum's LayerGradCam computes it for any module; `feature_layer`
picks the module for any model of the zoo (and timm's): the last one, in the order modules finish their
forward pass, whose output is still a spatial map (N, C, H, W) with H or W above 1, i.e. the last
convolutional stage before global pooling.

`src.evaluate ... saliency=true` writes saliency.png (per class, correct and misclassified images with
the map of the predicted class); `src.predict ... saliency=true` writes each face's map next to the
annotated image.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[saliency]' (or pip install 'fer-runner[saliency]')"


def require_captum() -> None:
    """A one-sentence error now, not after a long evaluation, when the `saliency` extra is missing."""
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        raise UserError(f"saliency maps need Captum, which is not installed: {INSTALL_HINT}") from None


def feature_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last module to finish with a spatial (N, C, H, W) output, H or W > 1, for `example` (a batch
    of model inputs): the last convolutional feature map before global pooling."""
    finished: list[nn.Module] = []

    def record(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4 and max(output.shape[-2:]) > 1:
            finished.append(module)

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not finished:
        raise UserError(f"{type(model).__name__} has no module with a spatial output for a "
                        f"{tuple(example.shape[-2:])} input: Grad-CAM needs a convolutional feature map")
    return finished[-1]


def grad_cam(predictor, images: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """(N, H, W) Grad-CAM maps in [0, 1] (each scaled by its own maximum) of the classes `targets` for
    uint8 images (N, C, H, W), at the model's input size (the predictor's centre crop), in fp32."""
    require_captum()
    from captum.attr import LayerAttribution, LayerGradCam

    model = predictor.model.eval()
    device = next(model.parameters()).device
    inputs = predictor.inputs.centre(images.to(device)).float()
    layer = feature_layer(model, inputs[:1])
    maps = []
    with torch.enable_grad():
        for start in range(0, len(inputs), 64):
            batch = inputs[start:start + 64].detach()
            target = torch.as_tensor(list(targets[start:start + 64]), device=device)
            attribution = LayerGradCam(model, layer).attribute(batch, target=target, relu_attributions=True)
            up = LayerAttribution.interpolate(attribution.detach().float(), tuple(batch.shape[-2:]),
                                              interpolate_mode="bilinear")
            maps.append(up[:, 0].cpu())
    cams = torch.cat(maps).clamp_(min=0)
    peak = cams.flatten(1).amax(1).clamp_(min=1e-12).view(-1, 1, 1)
    return cams / peak


def model_view(predictor, images: torch.Tensor) -> torch.Tensor:
    """The uint8 pixels the model saw (the centre crop, if the run trained on crops), (N, C, h, w)."""
    from ..data.inputs import center_crop

    return center_crop(images, predictor.inputs.crop)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An (H, W, 3) float RGB image in [0, 1]: the uint8 image (H, W, C) in gray or colour under the map in
    matplotlib's jet colours, weighted by the map (no colour where the map is zero)."""
    from matplotlib import colormaps

    base = image.astype(np.float32) / 255
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base
    heat = colormaps["jet"](cam)[..., :3]
    weight = alpha * cam[..., None]
    return np.clip(base * (1 - weight) + heat * weight, 0, 1)


Tile = tuple[np.ndarray, np.ndarray, str, str]  # uint8 image (H, W, C), map (H, W), title, title colour


def saliency_figure(rows: Sequence[tuple[str, list[Tile]]], title: str):
    """A grid of images under their Grad-CAM maps, one row per (row name, tiles)."""
    import matplotlib.pyplot as plt

    columns = max((len(tiles) for _, tiles in rows), default=1) or 1
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.35 * columns + 1.2, 1.5 * len(rows) + 0.6),
                                squeeze=False)
    for r, (name, tiles) in enumerate(rows):
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(c < len(tiles))
            if c < len(tiles):
                image, cam, tile_title, colour = tiles[c]
                ax.imshow(overlay(image, cam))
                ax.set_title(tile_title, fontsize=6, color=colour)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / figure.get_figheight()))  # room for the title
    return figure


def split_saliency(predictor, images: torch.Tensor, labels: torch.Tensor, probs: np.ndarray,
                   classes: Sequence[str], per_class: int, title: str):
    """saliency.png's figure for a split: per true class, its `per_class` most confident correct
    predictions, then its `per_class` most confident mistakes, each under the map of the predicted class."""
    labels_np = labels.cpu().numpy()
    predicted, confidence = probs.argmax(1), probs.max(1)
    groups = []
    for k, name in enumerate(classes):
        for right, what in ((True, "right"), (False, "wrong")):
            picked = np.flatnonzero((labels_np == k) & ((predicted == k) == right))
            groups.append((f"{name}\n{what}", picked[np.argsort(-confidence[picked], kind="stable")][:per_class]))
    chosen = np.concatenate([picked for _, picked in groups]).astype(np.int64)
    if not len(chosen):
        raise UserError("no images to draw saliency maps for")
    subset = images[torch.as_tensor(chosen)]
    cams = grad_cam(predictor, subset, predicted[chosen].tolist())
    seen = model_view(predictor, subset).permute(0, 2, 3, 1).cpu().numpy()
    tiles = {int(i): (seen[n], cams[n].numpy(), f"{classes[labels_np[i]]}→{classes[predicted[i]]} {confidence[i]:.2f}",
                      "darkgreen" if labels_np[i] == predicted[i] else "darkred") for n, i in enumerate(chosen)}
    return saliency_figure([(name, [tiles[int(i)] for i in picked]) for name, picked in groups], title)
