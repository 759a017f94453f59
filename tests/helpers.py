"""Helpers shared by the tests (conftest.py wraps them in fixtures)."""
from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from src.data import Fer2013Data

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
CLASSES = ("bottom", "middle", "top")  # alphabetical, as the folder reader orders them
GROUPS = ("data", "model", "aug", "optim", "sched", "trainer", "logger", "experiment")
# metrics.json keys that are wall-clock measurements: equal runs differ in these only
TIMING_KEYS = frozenset({"train/epoch_time_s", "train/images_per_s", "train/time_s", "run_time_s", "time_s"})


def quote(path: str | Path) -> str:
    """A path as a quoted Hydra override value (tmp paths of parametrized tests contain '[' and ']')."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def compose_entry(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """conf/<name>.yaml composed with `overrides`, as `python -m src.<name>` would (without the hydra node),
    with the entrypoints' resolvers (${run_id:} ...) registered as importing an entrypoint registers them."""
    import src.entry  # noqa: F401 - registers the resolvers

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/train.yaml composed with `overrides`, as `python -m src.train` would (without the hydra node)."""
    return compose_entry("train", overrides)


def fast_overrides(root: str | Path, cache_dir: str | Path, *overrides: str) -> list[str]:
    """Overrides for a fast CPU training on a synthetic folder dataset: LeNet, fp32, no logger, no
    augmentation, constant lr, 1 epoch, batches of 8. Later overrides win."""
    return ["data=folder", f"data.root={quote(root)}", f"paths.cache_dir={quote(cache_dir)}",
            "model=lenet", "aug=none", "optim=adamw", "optim.lr=3e-3", "sched=constant", "logger=none",
            "trainer.device=cpu", "trainer.precision=fp32", "trainer.progress_bar=false",
            "trainer.max_epochs=1", "data.batch_size=8", "data.eval_batch_size=64", *overrides]


def class_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A learnable (size, size, 3) uint8 image: a bright horizontal band whose height tells the class.

    Class 0 ("bottom") has the band in the bottom third, 1 ("middle") in the middle, 2 ("top") at the
    top; the rest is dark noise. Horizontal flips and small shifts keep the class. (Labels from 3 on
    repeat the pattern: only datasets of three classes are learnable.)
    """
    image = rng.integers(0, 70, (size, size, 3))
    third = size // 3
    start = (size - third, third, 0)[label % 3]
    image[start:start + third] = rng.integers(180, 256, (third, size, 3))
    return image.astype(np.uint8)


def write_class_folder(folder: Path, label: int, n: int, rng: np.random.Generator, size: int = 32,
                       start: int = 0) -> list[Path]:
    """n PNGs of class `label` named img_NNN.png, numbered from `start`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(class_image(label, rng, size)).save(path)
        paths.append(path)
    return paths


def write_dataset(root: Path, per_class: int | Sequence[int] = 12, splits: dict[str, int] | None = None,
                  classes: Sequence[str] = CLASSES, size: int = 32, seed: int = 0) -> Path:
    """A synthetic ImageFolder dataset; returns `root`.

    splits=None: the flat layout root/<class>/img_NNN.png with `per_class` images per class (one count
    for all, or one per class). splits={"train": 10, "val": 3, ...}: root/<split>/<class>/img_NNN.png.
    """
    rng = np.random.default_rng(seed)
    if splits is None:
        counts = [per_class] * len(classes) if isinstance(per_class, int) else list(per_class)
        for label, (name, n) in enumerate(zip(classes, counts)):
            write_class_folder(root / name, label, n, rng, size)
    else:
        for split, n in splits.items():
            for label, name in enumerate(classes):
                write_class_folder(root / split / name, label, n, rng, size)
    return root


def image_files(root: Path) -> set[str]:
    return {str(p) for p in Path(root).rglob("*.png")}


def read_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


# -- FER2013 as Kaggle's CSV ---------------------------------------------------------------------------

FER_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def fer_pixels(k: int) -> np.ndarray:
    return ((np.arange(48 * 48) * (k + 1) + 7 * k) % 256).astype(np.uint8)


FER_ROWS = [  # (emotion, usage); the data rows are lines 2..7 of the file
    (6, "Training"), (4, "Training"), (0, "Training"), (3, "PublicTest"), (6, "PrivateTest"), (5, "PrivateTest"),
]


def write_fer_csv(path: Path, rows=FER_ROWS, pixels: dict[int, str] | None = None) -> Path:
    lines = ["emotion,pixels,Usage"]
    for k, (emotion, usage) in enumerate(rows):
        text = (pixels or {}).get(k, " ".join(map(str, fer_pixels(k))))
        lines.append(f"{emotion},{text},{usage}")
    path.write_text("\n".join(lines) + "\n")
    return path


def read_fer(csv: Path, cache_dir: Path | None = None, **kwargs) -> Fer2013Data:
    kwargs = {"channels": 1, "image_size": 48, **kwargs}
    return Fer2013Data(root=str(csv.parent / "unused"), csv=str(csv),
                       cache_dir=str(cache_dir) if cache_dir else None, **kwargs).setup()


# -- hand-made bad files -------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_blank_png(path: Path, width: int, height: int, complete: bool = True) -> Path:
    """A black 1-bit grayscale PNG of any declared size, written chunk by chunk so that it stays small.

    complete=True writes every (blank) row: a well-formed file, about width * height / 8000 bytes.
    complete=False writes the header and a single row, for sizes too large to write at all.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale, no interlace
    row = b"\x00" + bytes((width + 7) // 8)  # filter type 0, then the packed pixels
    stream = zlib.compressobj(9)
    data = b"".join(stream.compress(row) for _ in range(height if complete else 1)) + stream.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))
    return path


def tiny_trained_checkpoint(folder: Path) -> dict:
    """A tiny real training in `folder` (LeNet, one epoch on a synthetic 3-class folder): its dataset root, cache,
    best.pt and that checkpoint's content, for tests that change a real checkpoint."""
    import torch

    from src.training import experiment

    root = write_dataset(folder / "data", splits={"train": 8, "val": 2, "test": 3})
    experiment.train(compose_train(fast_overrides(root, folder / "cache")), folder / "run")
    ckpt = folder / "run" / "checkpoints" / "best.pt"
    return {"root": root, "cache": folder / "cache", "ckpt": ckpt, "content": torch.load(ckpt, weights_only=True)}
