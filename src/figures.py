"""Figures for TensorBoard and the run directory (matplotlib, no display needed; the confusion matrix of
every epoch an image drawn with PIL)."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot():
    """matplotlib, imported on first use (about 0.5 s, not worth paying before training starts),
    rendering off-screen: runs happen on headless machines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_figure(matrix: list[list[int]], classes: list[str], title: str = "") -> Figure:
    """Counts (left) and row-normalized recall per true class (right); rows = true, columns = predicted."""
    counts = np.asarray(matrix)
    rows = counts.sum(1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    size = max(4.0, 0.55 * len(classes) + 2)
    fig, axes = _pyplot().subplots(1, 2, figsize=(2 * size + 1, size), constrained_layout=True)
    for ax, values, fmt, name in ((axes[0], counts, "d", "counts"), (axes[1], normalized, ".2f", "row-normalized")):
        ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({name})" if title else name)
        if len(classes) <= 20:
            for i in range(len(classes)):
                for j in range(len(classes)):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8,
                            color="white" if normalized[i, j] > 0.5 else "black")
    return fig


# matplotlib's "Blues" colormap at 0, 1/4, 1/2, 3/4 and 1, the shades of confusion_matrix_figure: a
# confusion_matrix_image is shaded as the figure is.
_BLUES = np.array([[247, 251, 255], [198, 219, 239], [106, 174, 214], [32, 112, 180], [8, 48, 107]], float)
# Up to this many classes the image writes the counts in the cells; above, the cells are too small.
_MAX_CLASSES_WITH_TEXT = 20


@functools.cache
def _font(size: int):
    """DejaVu Sans, the font of the matplotlib figures (it ships with matplotlib), for PIL; read once."""
    from pathlib import Path

    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def confusion_matrix_image(matrix: list[list[int]], classes: list[str], title: str = "") -> np.ndarray:
    """The confusion matrix as an RGB image (H, W, 3) uint8: rows = true, columns = predicted, each cell
    shaded by its share of the row (recall on the diagonal) and, up to 20 classes, labelled with its count
    and that share.

    Drawn with PIL in milliseconds, for TensorBoard's image of every epoch: confusion_matrix_figure
    (matplotlib, kept for the run directory's report) takes 1-1.5 s on a laptop-class CPU, which was two
    thirds of the quickstart's training time when it was drawn every epoch."""
    from PIL import Image, ImageDraw

    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    k = len(classes)
    with_text = k <= _MAX_CLASSES_WITH_TEXT
    cell = 48 if with_text else max(4, 640 // k)
    labelled = cell >= 10  # class names beside rows and above columns
    font, small = _font(12), _font(10)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_size = max(int(measure.textlength(c, font=font)) for c in classes) + 8 if labelled else 0
    lines = ([(title, font)] if title else []) + [("rows: true, columns: predicted; shade: share of the row", small)]
    margin, line_height = 8, 18
    left, top = margin + label_size, margin + line_height * len(lines) + label_size
    size = k * cell
    width = max(left + size, *(margin + int(measure.textlength(text, font=f)) for text, f in lines)) + margin

    # the cells: each share looked up in the colormap, then repeated to cell x cell pixels
    shade = np.stack([np.interp(shares, np.linspace(0, 1, len(_BLUES)), _BLUES[:, c]) for c in range(3)], -1)
    image = Image.new("RGB", (width, top + size + margin), "white")
    image.paste(Image.fromarray(shade.round().astype(np.uint8).repeat(cell, 0).repeat(cell, 1)), (left, top))
    draw = ImageDraw.Draw(image)
    for n, (text, f) in enumerate(lines):
        draw.text((margin, margin + n * line_height), text, fill="black", font=f)
    if labelled:
        columns = Image.new("RGB", (label_size, size), "white")  # drawn across, then turned to read upwards
        column_draw = ImageDraw.Draw(columns)
        for i, name in enumerate(classes):
            centre = i * cell + cell // 2
            draw.text((left - 4, top + centre), name, fill="black", font=font, anchor="rm")
            column_draw.text((4, centre), name, fill="black", font=font, anchor="lm")
        image.paste(columns.rotate(90, expand=True), (left, top - label_size))
        for i in range(k + 1):  # grid lines between the cells
            draw.line([(left + i * cell, top), (left + i * cell, top + size)], fill=(200, 200, 200))
            draw.line([(left, top + i * cell), (left + size, top + i * cell)], fill=(200, 200, 200))
    if with_text:
        for i in range(k):
            for j in range(k):
                colour = "white" if shares[i, j] > 0.5 else "black"
                x, y = left + j * cell + cell // 2, top + i * cell + cell // 2
                draw.text((x, y - 7), str(counts[i, j]), fill=colour, font=font, anchor="mm")
                draw.text((x, y + 9), f"{shares[i, j]:.2f}", fill=colour, font=small, anchor="mm")
    return np.asarray(image)


def save_figure(fig: Figure, path) -> None:
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def _curves_figure(title: str, xlabel: str, ylabel: str):
    fig, ax = _pyplot().subplots(figsize=(6.5, 5.5), constrained_layout=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def roc_figure(labels: np.ndarray, probs: np.ndarray, classes: list[str], aucs: dict, title: str = "") -> Figure:
    """One-vs-rest ROC curve per class, with its AUC in the legend."""
    from sklearn.metrics import roc_curve

    fig, ax = _curves_figure(f"{title} ROC (one-vs-rest)".strip(), "false positive rate", "true positive rate")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for c, name in enumerate(classes):
        if aucs.get(name) is None:
            continue
        fpr, tpr, _ = roc_curve(labels == c, probs[:, c])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {aucs[name]:.3f})")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(labels: np.ndarray, probs: np.ndarray, classes: list[str], title: str = "") -> Figure:
    """One-vs-rest precision-recall curve per class, with its average precision in the legend."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = _curves_figure(f"{title} precision-recall".strip(), "recall", "precision")
    for c, name in enumerate(classes):
        positive = labels == c
        if not positive.any():
            continue
        precision, recall, _ = precision_recall_curve(positive, probs[:, c])
        ap = average_precision_score(positive, probs[:, c])
        ax.plot(recall, precision, lw=1.5, label=f"{name} (AP {ap:.3f})")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def misclassified_figure(images, labels: np.ndarray, probs: np.ndarray, classes: list[str],
                         count: int = 36) -> Figure:
    """A grid of the most confident mistakes: each image with its true label, the predicted one and
    the predicted probability.

    The grid is one mosaic image in one axes with a caption per tile: a subplot per image took about 3 s
    to lay out and draw (the slowest part of every run's test report), the mosaic a tenth of that."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:count]
    cols = max(1, min(6, len(worst)))
    rows = max(1, -(-len(worst) // cols))
    _, channels, height, width = images.shape
    # a tile: the image at the bottom, room for a two-line caption above it; 1.9 inches wide
    tile_w = round(width * 1.15)
    tile_h = max(round(tile_w * 2.2 / 1.9), height + round(0.35 * width))
    mosaic = np.full((rows * tile_h, cols * tile_w, channels), 255, np.uint8)
    fig = _pyplot().figure(figsize=(max(1.9 * cols, 4.5), 1.9 * tile_h / tile_w * rows + 0.4))
    ax = fig.add_axes((0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    ax.axis("off")
    for n, i in enumerate(worst):
        y, x = (n // cols + 1) * tile_h - height - 2, (n % cols) * tile_w + (tile_w - width) // 2
        mosaic[y:y + height, x:x + width] = images[i].permute(1, 2, 0).numpy()
        ax.text(x + width / 2, y - 1, f"true {classes[labels[i]]}\npred {classes[predicted[i]]} "
                f"{probs[i, predicted[i]]:.2f}", ha="center", va="bottom", fontsize=7)
    ax.imshow(mosaic[..., 0] if channels == 1 else mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if not len(worst):
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"most confident mistakes ({len(worst)} of {len(wrong)})", fontsize=9)
    return fig


def pca_figure(features: np.ndarray, labels: np.ndarray, classes: list[str], title: str = "") -> Figure:
    """The first two principal components of the features, coloured by true class."""
    from sklearn.decomposition import PCA

    points = PCA(n_components=2).fit_transform(features)
    fig, ax = _pyplot().subplots(figsize=(6.5, 5.5), constrained_layout=True)
    for c, name in enumerate(classes):
        mask = labels == c
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.6, label=name)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"{title} features, PCA".strip())
    ax.legend(markerscale=3, fontsize=8)
    return fig


def curves_by_epoch_figure(histories: dict[str, list[dict]], keys: tuple[str, ...]) -> Figure:
    """One panel per history key (e.g. val/acc, val/loss), one line per run, against the epoch."""
    fig, axes = _pyplot().subplots(1, len(keys), figsize=(6 * len(keys), 4.8), squeeze=False,
                                   constrained_layout=True)
    for ax, key in zip(axes.flat, keys):
        for name, history in histories.items():
            points = [(int(r["epoch"]), float(r[key])) for r in history if r.get(key) not in (None, "")]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, lw=1.3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        # below the panels: with a dozen runs of long names a legend inside would hide the curves
        columns = 1 if max(map(len, labels)) > 45 else min(3, len(labels))
        fig.legend(handles, labels, loc="outside lower center", ncol=columns, fontsize=7)
    return fig


def time_to_accuracy_figure(histories: dict[str, list[dict]], targets: tuple[float, ...] = ()) -> Figure:
    """Validation accuracy against wall-clock minutes of training (history's time_s), one line per run,
    with the accuracies of `targets` as dashed lines: what a user waits for, whatever the epoch count."""
    fig, ax = _pyplot().subplots(figsize=(8, 5.5), constrained_layout=True)
    for name, history in histories.items():
        points = [(float(r["time_s"]) / 60, float(r["val/acc"])) for r in history
                  if r.get("time_s") not in (None, "") and r.get("val/acc") not in (None, "")]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, lw=1.3, label=name)
    for target in targets:
        ax.axhline(target, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training time with validation (minutes)")
    ax.set_ylabel("val accuracy")
    ax.set_xlim(left=0)
    ax.set_title("time to accuracy")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=1 if max(map(len, labels)) > 45 else 2,
                   fontsize=7)
    return fig


def comparison_bars_figure(values: dict[str, list[float]], measures: tuple[str, ...],
                           errors: dict[str, list[float | None]] | None = None) -> Figure:
    """Grouped horizontal bars: one group per run (top = first), one bar per measure, optional error bars."""
    names = list(values)
    height = 0.8 / len(measures)
    fig, ax = _pyplot().subplots(figsize=(8, 1.2 + 0.45 * len(names) * len(measures)), constrained_layout=True)
    positions = np.arange(len(names))[::-1]
    for m, measure in enumerate(measures):
        widths = [values[name][m] for name in names]
        xerr = [(errors[name][m] or 0.0) for name in names] if errors else None
        bars = ax.barh(positions + (len(measures) - 1 - 2 * m) * height / 2, widths, height, xerr=xerr,
                       capsize=3, label=measure)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_yticks(positions, names, fontsize=7)
    ax.set_xlim(0, 1.08)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig
