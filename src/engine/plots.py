"""Figures for TensorBoard and the run directory (matplotlib, no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # render off-screen: runs happen on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_matrix_figure(matrix: list[list[int]], classes: list[str], title: str = "") -> plt.Figure:
    """Counts (left) and row-normalized recall per true class (right); rows = true, columns = predicted."""
    counts = np.asarray(matrix)
    rows = counts.sum(1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    size = max(4.0, 0.55 * len(classes) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size), constrained_layout=True)
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


def save_figure(fig: plt.Figure, path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
