"""Reading datasets from disk: bad inputs, skipped files, image modes and formats, FER2013's CSV."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from src.data import Fer2013Data, FolderData
from src.data.fer2013_csv import FER2013_CSV_LABELS
from src.data.images import decode_image
from src.errors import BadImageError, ConfigError, DataError
from tests.helpers import CLASSES, FER_CLASSES, fer_pixels, image_files, quote, read_fer, write_fer_csv


def read(root: Path, cache_dir: Path | None = None, **kwargs) -> FolderData:
    kwargs = {"channels": 3, "image_size": 16, "val_split": 0.0, "test_split": 0.0, **kwargs}
    return FolderData(root=str(root), cache_dir=str(cache_dir) if cache_dir else None, **kwargs).setup()


def all_files(data: FolderData) -> set[str]:
    return {f for split in data.splits.values() for f in split.files}


# -- bad inputs ----------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    root = tmp_path / "no_such_dataset"
    with pytest.raises(DataError, match=re.escape(str(root)) + ".*does not exist"):
        read(root)


def test_root_without_class_folders(tmp_path):
    root = tmp_path / "flat_images"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")  # images directly in the root: no classes
    with pytest.raises(DataError, match=re.escape(str(root)) + ".*has no class folders"):
        read(root)


def test_split_folder_without_class_folders(make_folder):
    root = make_folder(splits={"train": 2}, size=16)
    (root / "val").mkdir()
    with pytest.raises(DataError, match=re.escape(str(root / "val")) + ".*no class folders"):
        read(root)


@pytest.mark.parametrize("split", ["val", "test"])
def test_class_unknown_to_train(make_folder, split):
    root = make_folder(splits={"train": 2, split: 1}, size=16)
    (root / split / "zebra").mkdir()
    Image.new("RGB", (8, 8)).save(root / split / "zebra" / "z.png")
    with pytest.raises(DataError, match=re.escape(str(root / split / "zebra")) + ".*not a class of the training"):
        read(root)


@pytest.mark.parametrize("content", ["empty", "only_non_images"])
def test_empty_training_class_folder(make_folder, content):
    root = make_folder(per_class=2, size=16)
    (root / "void").mkdir()
    if content == "only_non_images":
        (root / "void" / "README.txt").write_text("nothing here")
    with pytest.raises(DataError, match=re.escape(str(root / "void")) + ".*has no images"):
        read(root)


def test_empty_class_folder_in_shipped_test_split_is_allowed(make_folder):
    root = make_folder(splits={"train": 2, "test": 1}, size=16)
    for f in (root / "test" / "top").iterdir():
        f.unlink()
    data = read(root)
    assert data.splits["test"].labels.tolist() == [0, 1]


@pytest.mark.parametrize("corruption", ["text", "truncated"])
def test_corrupt_image_names_the_file(make_folder, corruption):
    root = make_folder(per_class=3, size=16)
    bad = root / "middle" / "x.jpg"
    if corruption == "text":
        bad.write_text("this is not a JPEG")
    else:
        buffer = (root / "middle" / "img_000.png").read_bytes()
        bad = root / "middle" / "x.png"
        bad.write_bytes(buffer[: len(buffer) // 2])
    with pytest.raises(BadImageError, match=re.escape(str(bad))):
        read(root)


def test_on_bad_image_skip_loads_the_others(make_folder, caplog):
    root = make_folder(per_class=3, size=16)
    good = image_files(root)
    bad = root / "middle" / "x.jpg"
    bad.write_text("this is not a JPEG")
    (root / "top" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with caplog.at_level(logging.WARNING):
        data = read(root, on_bad_image="skip")
    assert all_files(data) == good
    assert len(data.splits["train"]) == 9
    check = {Path(f).parent.name: label for f, label in zip(data.splits["train"].files,
                                                          data.splits["train"].labels.tolist())}
    assert check == {"bottom": 0, "middle": 1, "top": 2}
    assert "Skipped 2 unreadable images" in caplog.text


def test_several_bad_images_are_counted_in_the_error(make_folder):
    root = make_folder(per_class=2, size=16)
    for i in range(3):
        (root / "top" / f"bad{i}.png").write_text("no")
    with pytest.raises(BadImageError, match=r"and 2 more unreadable images.*on_bad_image=skip"):
        read(root)


def test_only_bad_images_in_training_is_an_error(tmp_path):
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_text("no")
    with pytest.raises(DataError, match="no readable training images"):
        read(root, on_bad_image="skip")


def test_hidden_and_non_image_files_are_skipped_silently(make_folder, caplog):
    root = make_folder(per_class=2, size=16)
    expected = image_files(root)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "top" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "top" / ".hidden.jpg").write_text("not an image")
    (root / "top" / "._img_000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "top" / "notes.txt").write_text("labelled by hand")
    (root / "top" / "labels.csv").write_text("a,b")
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".ipynb_checkpoints" / "a.png")  # a hidden folder is not a class
    (root / "bottom" / ".thumbs").mkdir()
    (root / "bottom" / ".thumbs" / "t.jpg").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        data = read(root)
    assert data.classes == list(CLASSES)
    assert all_files(data) == expected
    readers = ("src.data.folders", "src.data.decoding")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(readers)]


def test_images_in_nested_folders_belong_to_the_class(make_folder):
    root = make_folder(per_class=2, size=16)
    (root / "top" / "session1").mkdir()
    Image.new("RGB", (8, 8), (255, 255, 255)).save(root / "top" / "session1" / "deep.png")
    data = read(root)
    files = data.splits["train"].files
    nested = files.index(str(root / "top" / "session1" / "deep.png"))
    assert data.classes[data.splits["train"].labels[nested]] == "top"
    assert len(files) == 7


# -- image modes and formats ---------------------------------------------------------------------------


def make_image(mode: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(rng.uniform(0, 255, (h, w)).astype(np.float32))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


FILES = [  # (mode, extension, (width, height))
    ("L", "png", (20, 30)), ("RGB", "png", (64, 48)), ("RGBA", "png", (33, 33)), ("P", "png", (16, 40)),
    ("I;16", "png", (48, 48)), ("1", "png", (10, 10)), ("LA", "png", (12, 18)),
    ("L", "jpg", (50, 20)), ("RGB", "jpeg", (100, 100)), ("CMYK", "jpg", (30, 30)),
    ("L", "bmp", (24, 24)), ("RGB", "bmp", (13, 17)), ("P", "bmp", (16, 16)),
    ("P", "gif", (40, 40)), ("L", "gif", (9, 31)),
    ("RGB", "webp", (60, 30)), ("RGBA", "webp", (30, 60)),
    ("I;16", "tif", (20, 20)), ("F", "tiff", (16, 16)), ("RGB", "PNG", (8, 8)),
]


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i, (mode, ext, size) in enumerate(FILES):
            make_image(mode, size, rng).save(root / cls / f"{i:02d}_{mode.replace(';', '')}.{ext}")
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_and_format_loads(mixed_folder, channels):
    data = read(mixed_folder, channels=channels, image_size=24)
    train = data.splits["train"]
    assert len(train) == 2 * len(FILES)  # nothing skipped
    assert train.images.shape == (2 * len(FILES), channels, 24, 24)
    assert train.images.dtype == torch.uint8
    assert data.channels == channels and data.image_size == 24


@pytest.mark.parametrize(("mode", "ext", "size"), FILES, ids=[f"{m}-{e}" for m, e, _ in FILES])
def test_decode_image_shape(tmp_path, mode, ext, size):
    path = tmp_path / f"x.{ext}"
    make_image(mode, size, np.random.default_rng(1)).save(path)
    for channels in (1, 3):
        array = decode_image(str(path), channels, 20)
        assert array.shape == (20, 20, channels) and array.dtype == np.uint8


def solid(tmp_path: Path, name: str, image: Image.Image) -> str:
    path = tmp_path / name
    image.save(path)
    return str(path)


def test_decoded_pixel_values(tmp_path):
    rgb = solid(tmp_path, "rgb.png", Image.new("RGB", (10, 7), (200, 100, 50)))
    assert (decode_image(rgb, 3, 16) == [200, 100, 50]).all()
    luma = 0.299 * 200 + 0.587 * 100 + 0.114 * 50  # ITU-R 601-2, as Pillow's convert("L")
    assert np.abs(decode_image(rgb, 1, 16).astype(float) - luma).max() <= 1

    gray = solid(tmp_path, "gray.jpg", Image.new("L", (30, 30), 77))
    assert np.abs(decode_image(gray, 3, 8).astype(int) - 77).max() <= 1  # JPEG: lossy by a level at most
    assert (decode_image(gray, 3, 8)[..., 0] == decode_image(gray, 3, 8)[..., 2]).all()

    rgba = solid(tmp_path, "rgba.png", Image.new("RGBA", (8, 8), (10, 20, 30, 0)))
    assert (decode_image(rgba, 3, 8) == [10, 20, 30]).all()

    palette = solid(tmp_path, "p.gif", Image.new("RGB", (8, 8), (0, 255, 0)).convert("P"))
    assert (decode_image(palette, 3, 8) == [0, 255, 0]).all()


@pytest.mark.parametrize(("value16", "value8"), [(0x8000, 128), (0xFFFF, 255), (0x0100, 1), (0x00FF, 0)])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, value16, value8):
    path = solid(tmp_path, "deep.png", Image.fromarray(np.full((6, 6), value16, dtype=np.uint16)))
    assert (decode_image(path, 1, 6) == value8).all()
    assert (decode_image(path, 3, 6) == value8).all()


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), color).convert("P") for color in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert (decode_image(str(path), 3, 8) == [255, 0, 0]).all()


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match=re.escape(str(tmp_path / "gone.png"))):
        decode_image(str(tmp_path / "gone.png"), 3, 8)


# -- FER2013 as Kaggle's CSV -----------------------------------------------------------------------------

def test_fer2013_csv_splits_and_class_mapping(tmp_path):
    data = read_fer(write_fer_csv(tmp_path / "fer2013.csv"))
    assert FER2013_CSV_LABELS[6] == "neutral" and FER2013_CSV_LABELS[4] == "sad"
    assert data.classes == FER_CLASSES == sorted(FER_CLASSES)
    assert {name: len(s) for name, s in data.splits.items()} == {"train": 3, "val": 1, "test": 2}
    names = {name: [data.classes[i] for i in s.labels.tolist()] for name, s in data.splits.items()}
    assert names == {"train": ["neutral", "sad", "angry"], "val": ["happy"], "test": ["neutral", "surprise"]}
    assert data.splits["train"].files == ["fer2013.csv:2", "fer2013.csv:3", "fer2013.csv:4"]
    assert data.splits["test"].files == ["fer2013.csv:6", "fer2013.csv:7"]
    for i, k in enumerate([0, 1, 2]):
        assert torch.equal(data.splits["train"].images[i, 0], torch.from_numpy(fer_pixels(k)).view(48, 48))


def test_fer2013_csv_through_config(tmp_path, cache_dir, compose_cfg):
    csv = write_fer_csv(tmp_path / "fer2013.csv")
    cfg = compose_cfg(["data=fer2013", f"data.csv={quote(csv)}", f"paths.cache_dir={quote(cache_dir)}",
                       "data.channels=3", "data.image_size=32"])
    data = instantiate(cfg.data).setup()
    assert data.splits["train"].images.shape == (3, 3, 32, 32)
    assert data.splits["val"].images.shape == (1, 3, 32, 32)
    assert data.classes == FER_CLASSES


@pytest.mark.parametrize(("pixels", "line", "match"), [
    ({1: "1 2 x"}, 3, "not a list of integers"),
    ({2: " ".join(["5"] * 2303)}, 4, "2304 values"),
    ({0: " ".join(["300"] * 2304)}, 2, "0..255"),
    ({3: ""}, 5, "2304 values"),
])
def test_fer2013_csv_malformed_pixels_names_the_line(tmp_path, pixels, line, match):
    csv = write_fer_csv(tmp_path / "fer2013.csv", pixels=pixels)
    with pytest.raises(DataError, match=rf"{re.escape(str(csv))}, line {line}: .*{match}"):
        read_fer(csv)


@pytest.mark.parametrize(("rows", "match"), [
    ([(7, "Training")], "line 2: emotion 7"),
    ([(0, "Training"), (1, "Validation")], "line 3: Usage 'Validation'"),
    ([(0, "PublicTest")], "no rows with Usage 'Training'"),
])
def test_fer2013_csv_bad_rows(tmp_path, rows, match):
    with pytest.raises(DataError, match=match):
        read_fer(write_fer_csv(tmp_path / "fer2013.csv", rows=rows))


def test_fer2013_csv_missing_column(tmp_path):
    csv = tmp_path / "fer2013.csv"
    csv.write_text("emotion,Usage\n0,Training\n")
    with pytest.raises(DataError, match="missing column.*pixels"):
        read_fer(csv)


def test_fer2013_missing_csv_and_folder(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "none.csv"))):
        read_fer(tmp_path / "none.csv")
    with pytest.raises(DataError, match="FER2013 not found"):
        Fer2013Data(root=str(tmp_path / "fer2013"), channels=1, image_size=48).setup()


def test_fer2013_folder_release(make_folder):
    root = make_folder(splits={"train": 3, "val": 1, "test": 1}, classes=FER_CLASSES, size=48)
    data = Fer2013Data(root=str(root), channels=1, image_size=48).setup()
    assert data.classes == FER_CLASSES
    assert {name: len(s) for name, s in data.splits.items()} == {"train": 21, "val": 7, "test": 7}


def test_on_bad_image_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="on_bad_image"):
        FolderData(root=str(tmp_path), channels=1, image_size=16, on_bad_image="warn")
