"""Bad data the folder reader must refuse by name (or leave out with on_bad_image=skip), and a property
test over random folder trees.

tests/test_sources.py has the common cases (missing root, empty class folders, text and truncated files,
hidden files, image modes, FER2013 CSV rows); this file adds empty files, decompression bombs, CMYK JPEGs,
non-ASCII names, symlinks, and hypothesis-generated datasets that mix all of them.
"""
from __future__ import annotations

import io
import logging
import math
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from src.data.decoding import read_folder
from src.data.images import decode_image
from src.data.raw import RawData
from src.errors import BadImageError, DataError
from tests.helpers import write_blank_png


def read(root: Path, on_bad_image: str = "error", channels: int = 3, size: int = 16,
         cache_dir: Path | None = None) -> RawData:
    return read_folder(root, channels, size, cache_dir=str(cache_dir) if cache_dir else None,
                       on_bad_image=on_bad_image)


def loaded(raw: RawData) -> dict[str, str]:
    """Every loaded file -> the name of its class."""
    return {f: raw.classes[label] for s in raw.splits.values() for f, label in zip(s.files, s.labels.tolist())}


def good(path: Path, color: tuple[int, int, int] = (200, 100, 50)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return str(path)


def one_line_naming(exc: BaseException, path: Path) -> bool:
    return str(path) in str(exc) and "\n" not in str(exc)


# -- empty files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.jpg", "empty.png"])
def test_zero_byte_image_is_a_bad_image(tmp_path, name, caplog):
    root = tmp_path / "ds"
    kept = {good(root / "a" / "1.png"): "a", good(root / "b" / "2.png"): "b"}
    empty = root / "b" / name
    empty.touch()
    with pytest.raises(BadImageError) as info:
        read(root)
    assert one_line_naming(info.value, empty)
    with caplog.at_level(logging.WARNING, logger="src.data.decoding"):
        raw = read(root, on_bad_image="skip")
    assert loaded(raw) == kept
    assert "Skipped 1 unreadable images" in caplog.text and str(empty) in caplog.text


# -- decompression bombs -------------------------------------------------------------------------------


@pytest.fixture
def decodes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image whose pixels Pillow decodes (ImageFile.load), while the test runs."""
    calls: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_huge_declared_size_is_refused_without_decoding(tmp_path, decodes):
    bomb = write_blank_png(tmp_path / "bomb.png", 100_000, 100_000, complete=False)
    assert bomb.stat().st_size < 200  # 10 gigapixels declared in a tiny file
    start = time.perf_counter()
    with pytest.raises(BadImageError, match=re.escape(str(bomb)) + ".*decompression bomb"):
        decode_image(str(bomb), 3, 16)
    assert time.perf_counter() - start < 1
    assert decodes == []  # refused from the header: no pixel buffer was ever allocated
    decode_image(good(tmp_path / "ok.png"), 3, 16)
    assert set(decodes) == {(8, 8)}  # (the spy does see real decodes; reading EXIF may call load() once more)


def test_size_between_pillows_warning_and_error_is_refused(tmp_path, decodes):
    """Pillow only warns (DecompressionBombWarning) from MAX_IMAGE_PIXELS to twice that; decode_image
    turns the warning into an error, so a 134-megapixel file is refused before it is decoded."""
    side = math.isqrt(int(1.5 * Image.MAX_IMAGE_PIXELS))
    assert Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    bomb = write_blank_png(tmp_path / "big.png", side, side)
    with warnings.catch_warnings():  # a well-formed file that Pillow itself would open and decode
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(bomb) as im:
            im.verify()
            assert im.size == (side, side)
    start = time.perf_counter()
    with pytest.raises(BadImageError, match=re.escape(str(bomb)) + ".*decompression bomb"):
        decode_image(str(bomb), 1, 16)
    assert time.perf_counter() - start < 1
    assert decodes == []


def test_decompression_bomb_in_a_dataset(tmp_path):
    root = tmp_path / "ds"
    kept = {good(root / "a" / "1.png"): "a"}
    bomb = write_blank_png(root / "a" / "bomb.png", 100_000, 100_000, complete=False)
    with pytest.raises(BadImageError) as info:
        read(root)
    assert one_line_naming(info.value, bomb)
    assert loaded(read(root, on_bad_image="skip")) == kept


# -- CMYK ----------------------------------------------------------------------------------------------


def test_cmyk_jpeg_is_converted_to_the_configured_channels(tmp_path):
    (tmp_path / "ds" / "inks").mkdir(parents=True)
    red, gray = tmp_path / "ds" / "inks" / "red.jpg", tmp_path / "ds" / "inks" / "gray.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(red)  # no cyan, full magenta and yellow: red
    Image.new("CMYK", (16, 16), (0, 0, 0, 128)).save(gray)  # half black ink
    with Image.open(red) as im:
        assert im.mode == "CMYK"
    assert np.abs(decode_image(str(red), 3, 8).astype(int) - [255, 0, 0]).max() <= 8  # JPEG is lossy
    assert np.abs(decode_image(str(red), 1, 8).astype(int) - 0.299 * 255).max() <= 4  # luma of red
    for channels in (1, 3):
        assert np.abs(decode_image(str(gray), channels, 8).astype(int) - 127).max() <= 4
    for channels, expected in ((3, {"red": [255, 0, 0], "gray": [127] * 3}), (1, {"red": [76], "gray": [127]})):
        split = read(tmp_path / "ds", channels=channels, size=8).splits["all"]
        assert split.images.shape == (2, channels, 8, 8)
        for file, image in zip(split.files, split.images):
            assert (image.float().mean((1, 2)) - torch.tensor(expected[Path(file).stem])).abs().max() <= 8


# -- names ---------------------------------------------------------------------------------------------


def test_non_ascii_names_and_spaces(tmp_path):
    root = tmp_path / "dätä set"
    files = {good(root / "happy face" / "笑顔 1.png"): "happy face",
             good(root / "happy face" / "sub dir é" / "naïve 2.bmp"): "happy face",
             good(root / "ünï cödé" / "ünïcode.jpg"): "ünï cödé"}
    raw = read(root, cache_dir=tmp_path / "cache")
    assert raw.classes == ["happy face", "ünï cödé"]
    assert loaded(raw) == files
    assert loaded(read(root, cache_dir=tmp_path / "cache")) == files  # and again, from the cache

    bad = root / "ünï cödé" / "壊れた ファイル.png"
    bad.write_text("not a png")
    with pytest.raises(BadImageError) as info:
        read(root)
    assert one_line_naming(info.value, bad)
    bad.unlink()
    empty = root / "ñö ïmägés"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        read(root)
    assert one_line_naming(info.value, empty)


# -- symlinks ------------------------------------------------------------------------------------------
#
# The rules: a symlinked file is an image at its link's path, in the class folder that holds the link.
# A symlinked folder is walked like a real one, but each real folder at most once per class folder (at
# its first path in sorted, depth-first order; later links to it are not followed again), and a link
# to a folder that holds the link (the folder itself, a parent, the split folder, the dataset root) is
# a loop and is never followed, so that each real image of a class loads exactly once and no other
# class's images come in through a loop. A class or split folder that is such a loop, or a broken
# link, is an error (it cannot be a class, and ignoring it would drop a class unnoticed).


def test_symlinked_image_file_is_loaded(tmp_path):
    elsewhere = good(tmp_path / "elsewhere" / "photo.png")
    root = tmp_path / "ds"
    files = {good(root / "a" / "1.png"): "a", good(root / "b" / "2.png"): "b"}
    link = root / "b" / "linked.png"
    link.symlink_to(elsewhere)
    assert loaded(read(root)) == files | {str(link): "b"}


@pytest.mark.parametrize("where", ["other_split", "other_class"])
def test_one_file_in_two_splits_or_classes_is_an_error(tmp_path, where):
    """A link from train/ to a test image would train on the test split; from another class, it would
    give the image two labels."""
    root = tmp_path / "ds"
    good(root / "train" / "a" / "1.png")
    good(root / "train" / "b" / "2.png")
    test_image = good(root / "test" / "a" / "3.png")
    link = root / "train" / ("a" if where == "other_split" else "b") / "linked.png"
    if where == "other_class":
        test_image = str(root / "train" / "a" / "1.png")
    link.symlink_to(test_image)
    kind = "splits" if where == "other_split" else "classes"
    with pytest.raises(DataError, match=re.escape(f"are the same file ({Path(test_image).resolve()}) in two {kind}")):
        read(root)


def test_a_link_to_a_file_of_the_same_class_loads_it_twice(tmp_path):
    root = tmp_path / "ds"
    original = good(root / "a" / "1.png")
    good(root / "b" / "2.png")
    (root / "a" / "again.png").symlink_to(original)
    assert sorted(loaded(read(root))) == sorted([original, str(root / "a" / "again.png"), str(root / "b" / "2.png")])


def test_symlinked_folder_is_followed_once(tmp_path):
    outside = tmp_path / "elsewhere"
    good(outside / "x.png")
    good(outside / "deeper" / "y.png")
    root = tmp_path / "ds"
    files = {good(root / "a" / "1.png"): "a", good(root / "b" / "2.png"): "b"}
    (root / "b" / "more").symlink_to(outside, target_is_directory=True)
    (root / "b" / "zz same again").symlink_to(outside, target_is_directory=True)  # a second link: not followed
    expected = files | {str(root / "b" / "more" / "x.png"): "b", str(root / "b" / "more" / "deeper" / "y.png"): "b"}
    assert loaded(read(root)) == expected


def test_link_to_a_folder_already_walked_is_not_followed_again(tmp_path):
    root = tmp_path / "ds"
    files = {good(root / "a" / "1.png"): "a", good(root / "a" / "sub" / "2.png"): "a"}
    (root / "a" / "zz link to sub").symlink_to(root / "a" / "sub", target_is_directory=True)
    assert loaded(read(root)) == files
    # The first path in sorted order wins: a link that sorts before the real folder is where its images load.
    (root / "a" / "zz link to sub").unlink()
    (root / "a" / "0 link to sub").symlink_to(root / "a" / "sub", target_is_directory=True)
    assert loaded(read(root)) == {str(root / "a" / "1.png"): "a", str(root / "a" / "0 link to sub" / "2.png"): "a"}


@pytest.mark.parametrize("target", ["itself", "parent within the class", "class folder", "dataset root",
                                    "split folder", "above the dataset"])
def test_symlink_loop_terminates_and_loads_each_image_once(tmp_path, target):
    root = tmp_path / "ds"
    splits = target == "split folder"
    base = root / "train" if splits else root
    files = {good(base / "a" / "1.png"): "a", good(base / "a" / "sub" / "2.png"): "a", good(base / "b" / "3.png"): "b"}
    folder, points_to = {
        "itself": (base / "a" / "sub", base / "a" / "sub"),
        "parent within the class": (base / "a" / "sub", base / "a"),
        "class folder": (base / "a", base / "a"),
        "dataset root": (base / "a", root),
        "split folder": (base / "a" / "sub", base),
        "above the dataset": (base / "a", tmp_path),
    }[target]
    (folder / "loop").symlink_to(points_to, target_is_directory=True)
    start = time.perf_counter()
    assert loaded(read(root)) == files
    assert time.perf_counter() - start < 5


def test_loop_back_from_a_linked_folder_is_not_followed(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "elsewhere"
    files = {good(root / "a" / "1.png"): "a", good(root / "b" / "2.png"): "b"}
    good(outside / "x.png")
    (root / "a" / "more").symlink_to(outside, target_is_directory=True)
    (outside / "back").symlink_to(root, target_is_directory=True)  # ds/a/more/back is ds again
    assert loaded(read(root)) == files | {str(root / "a" / "more" / "x.png"): "a"}


@pytest.mark.parametrize("where", ["class folder", "linked folder"])
def test_broken_symlink_is_a_bad_image(tmp_path, where, caplog):
    root = tmp_path / "ds"
    files = {good(root / "a" / "1.png"): "a", good(root / "b" / "2.png"): "b"}
    folder = root / "b"
    if where == "linked folder":
        (tmp_path / "elsewhere").mkdir()
        (root / "b" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        folder = root / "b" / "more"
    broken = folder / "gone.png"
    broken.symlink_to(tmp_path / "no such file.png")
    for cache_dir in (None, tmp_path / "cache"):
        with pytest.raises(BadImageError) as info:
            read(root, cache_dir=cache_dir)
        assert one_line_naming(info.value, broken)
        with caplog.at_level(logging.WARNING, logger="src.data.decoding"):
            assert loaded(read(root, on_bad_image="skip", cache_dir=cache_dir)) == files
        assert str(broken) in caplog.text


def test_symlinked_class_folder_is_a_class(tmp_path):
    (tmp_path / "store" / "b").mkdir(parents=True)
    root = tmp_path / "ds"
    files = {good(root / "a" / "1.png"): "a"}
    (root / "b").symlink_to(tmp_path / "store" / "b", target_is_directory=True)
    files[good(root / "b" / "2.png")] = "b"
    assert loaded(read(root)) == files


@pytest.mark.parametrize("broken", ["b", "train/b", "val/b", "val"])
def test_broken_symlinked_class_or_split_folder_is_an_error(tmp_path, broken):
    root = tmp_path / "ds"
    base = root if broken == "b" else root / "train"
    good(base / "a" / "1.png")
    if broken in ("val", "val/b"):
        good(base / "b" / "2.png")
    broken = root / broken
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.symlink_to(tmp_path / "unmounted" / broken.name, target_is_directory=True)
    with pytest.raises(DataError) as info:  # rather than a class or split silently missing
        read(root)
    assert one_line_naming(info.value, broken)


@pytest.mark.parametrize(("link", "target"), [("b", "."), ("train/b", "train"), ("train/b", "."), ("val", ".")])
def test_class_or_split_folder_linked_to_a_folder_holding_it_is_an_error(tmp_path, link, target):
    root = tmp_path / "ds"
    base = root if link == "b" else root / "train"
    good(base / "a" / "1.png")
    if link == "val":
        good(base / "b" / "2.png")
    (root / link).symlink_to(root / target, target_is_directory=True)
    with pytest.raises(DataError) as info:  # a loop: it would load every other class under this name
        read(root)
    assert one_line_naming(info.value, root / link) and "loop" in str(info.value)


# -- on_bad_image=skip ---------------------------------------------------------------------------------


def test_training_class_without_readable_images_is_an_error_when_skipping(tmp_path):
    root = tmp_path / "ds"
    good(root / "a" / "1.png")
    (root / "b").mkdir()
    (root / "b" / "x.png").write_text("not a png")
    with pytest.raises(DataError) as info:  # rather than a class the model never sees in training
        read(root, on_bad_image="skip")
    assert one_line_naming(info.value, root / "b")
    assert "no readable images" in str(info.value)


# -- property: random folder trees ---------------------------------------------------------------------
#
# A tree is a layout ("flat": root/<class>/..., or "splits": root/{train,val,test}/<class>/...) and, per
# split and class, a list of files of known kinds. The oracle below states the documented rules in full;
# read_folder must either return exactly the images it predicts or raise the error it predicts.

NAME_CHARS = "abcxyzAB01 _-éüñ笑顔"  # letters, digits, spaces, non-ASCII; cannot spell train/val/test
GOOD = [  # (mode, extension) pairs Pillow writes and reads back
    ("L", ".png"), ("RGB", ".png"), ("RGBA", ".png"), ("P", ".png"), ("1", ".png"), ("LA", ".png"),
    ("I;16", ".png"), ("L", ".jpg"), ("RGB", ".jpeg"), ("CMYK", ".jpg"), ("RGB", ".bmp"), ("P", ".bmp"),
    ("P", ".gif"), ("RGB", ".webp"), ("RGBA", ".tiff"), ("I;16", ".tif"), ("L", ".ppm"), ("RGB", ".PNG"),
]
IMAGE_EXTS = sorted({ext for _, ext in GOOD})
BAD_KINDS = ("empty", "text", "truncated")  # image files that cannot be decoded
SUBFOLDERS = ["", "", "sub", "deep é/er"]  # of the class folder; the file belongs to the class
HIDDEN_FOLDERS = [".hidden", "ok/.thumbs"]  # files under a hidden folder are skipped


@dataclass(frozen=True)
class FileSpec:
    kind: str  # "good", one of BAD_KINDS, "hidden" (a dot-file), "in_hidden" (an image in a hidden folder),
    # or "other" (a file without an image extension)
    mode: str
    ext: str
    width: int
    height: int
    seed: int
    subfolder: str

    def name(self, index: int) -> str:
        stem = f"{index:02d} {self.kind}"
        if self.kind == "hidden":
            return f".{stem}{self.ext}"
        return stem + (self.ext if self.kind != "other" else ".txt")

    def counts(self) -> bool:
        """Whether the reader lists the file as an image (it then has to decode it or report it)."""
        return self.kind in ("good", *BAD_KINDS)

    def content(self) -> bytes:
        if self.kind == "empty":
            return b""
        if self.kind == "text":
            return b"this is not an image\n"
        rng = np.random.default_rng(self.seed)
        if self.mode == "I;16":
            image = Image.fromarray(rng.integers(0, 65536, (self.height, self.width), dtype=np.uint16))
        else:
            pixels = rng.integers(0, 256, (self.height, self.width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).convert(self.mode)
        buffer = io.BytesIO()
        image.save(buffer, format=Image.registered_extensions()[self.ext.lower()])
        data = buffer.getvalue()
        return data[: len(data) // 2] if self.kind == "truncated" else data


@st.composite
def file_specs(draw) -> FileSpec:
    kind = draw(st.sampled_from(["good"] * 5 + [*BAD_KINDS, "hidden", "in_hidden", "other"]))
    mode, ext = draw(st.sampled_from(GOOD))
    if kind in ("empty", "text"):
        ext = draw(st.sampled_from(IMAGE_EXTS))
    folder = draw(st.sampled_from(HIDDEN_FOLDERS if kind == "in_hidden" else SUBFOLDERS))
    return FileSpec(kind, mode, ext, draw(st.integers(8, 20)), draw(st.integers(8, 20)),
                    draw(st.integers(0, 2**16)), folder)


@dataclass
class Tree:
    layout: str
    folders: dict[str, dict[str, list[FileSpec]]]  # split ("all" when flat) -> class -> files
    loose: list[FileSpec]  # files directly in the main split folder: never read

    def split_dir(self, root: Path, split: str) -> Path:
        return root if split == "all" else root / split

    def paths(self, root: Path, split: str, name: str) -> list[tuple[str, FileSpec]]:
        folder = self.split_dir(root, split) / name
        return [(str(folder / f.subfolder / f.name(i) if f.subfolder else folder / f.name(i)), f)
                for i, f in enumerate(self.folders[split][name])]

    def write(self, root: Path) -> None:
        main = "all" if self.layout == "flat" else "train"
        for split, by_class in self.folders.items():
            self.split_dir(root, split).mkdir(parents=True, exist_ok=True)
            for name in by_class:
                (self.split_dir(root, split) / name).mkdir()
                for path, spec in self.paths(root, split, name):
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    Path(path).write_bytes(spec.content())
        for i, spec in enumerate(self.loose):
            (self.split_dir(root, main) / spec.name(90 + i)).write_bytes(spec.content())


class_names = st.lists(st.text(NAME_CHARS, min_size=1, max_size=5), min_size=1, max_size=3, unique_by=str.casefold)


def rarely(draw, value, otherwise):
    """`value` about one time in six (structural errors, so that most trees get as far as decoding)."""
    return value if draw(st.sampled_from([False] * 5 + [True])) else otherwise


@st.composite
def trees(draw) -> Tree:
    classes = draw(class_names)
    files = st.lists(file_specs(), min_size=rarely(draw, 0, 1), max_size=4)
    loose = draw(st.lists(file_specs(), max_size=2))
    if draw(st.booleans()):
        return Tree("flat", {"all": {c: draw(files) for c in classes}}, loose)
    folders = {"train": {c: draw(files) for c in classes}}
    for split in ("val", "test"):
        if draw(st.booleans()):
            known = draw(st.lists(st.sampled_from(classes), min_size=rarely(draw, 0, 1), unique=True))
            unknown = rarely(draw, ["zzzzzz"], [])  # longer than any class name: not a class of train
            folders[split] = {c: draw(files) for c in known + unknown}
    return Tree("splits", folders, loose)


@dataclass
class Expected:
    error: type | None = None  # the exception read_folder raises, or None
    names: tuple[str, ...] = ()  # paths of which the error message must name one
    classes: tuple[str, ...] = ()
    files: dict[str, dict[str, int]] | None = None  # split -> loaded path -> label


def oracle(tree: Tree, root: Path, on_bad_image: str) -> Expected:
    """What read_folder must do, from the documented rules, checked in the order it checks them."""
    main = "all" if tree.layout == "flat" else "train"
    classes = sorted(tree.folders[main])
    if not classes:
        return Expected(DataError, (str(tree.split_dir(root, main)),))  # no class folders
    listed = {}  # split -> [(path, label, spec)] of the files read as images
    for split, by_class in tree.folders.items():
        if not by_class:
            return Expected(DataError, (str(tree.split_dir(root, split)),))  # a split folder without classes
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            return Expected(DataError, (str(tree.split_dir(root, split) / unknown[0]),))
        listed[split] = []
        for name in sorted(by_class):
            images = [(path, classes.index(name), f) for path, f in tree.paths(root, split, name) if f.counts()]
            if split == main and not images:
                return Expected(DataError, (str(tree.split_dir(root, split) / name),))  # no images
            listed[split] += images
    bad = tuple(path for images in listed.values() for path, _, f in images if f.kind in BAD_KINDS)
    if bad and on_bad_image == "error":
        return Expected(BadImageError, bad)
    files = {split: {path: label for path, label, f in images if f.kind == "good"} for split, images in listed.items()}
    if not files[main]:
        return Expected(DataError, (str(root),))  # no readable training images
    for label, name in enumerate(classes):
        if label not in files[main].values():  # a training class whose images were all skipped
            return Expected(DataError, (str(tree.split_dir(root, main) / name),))
    return Expected(None, (), tuple(classes), files)


@settings(max_examples=25, deadline=None, database=None)
@given(tree=trees(), channels=st.sampled_from([1, 3]), size=st.integers(8, 16))
def test_random_trees_load_exactly_the_good_images(tree, channels, size):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dätä set"
        tree.write(root)
        for on_bad_image in ("error", "skip"):
            expected = oracle(tree, root, on_bad_image)
            if expected.error is not None:
                with pytest.raises(DataError) as info:
                    read(root, on_bad_image, channels, size)
                message = str(info.value)
                assert type(info.value) is expected.error, message
                assert "\n" not in message and any(name in message for name in expected.names), message
                continue
            raw = read(root, on_bad_image, channels, size)
            assert raw.classes == list(expected.classes)
            got = {name: dict(zip(s.files, s.labels.tolist())) for name, s in raw.splits.items() if len(s)}
            assert got == {name: files for name, files in expected.files.items() if files}
            for split in raw.splits.values():
                assert split.images.shape == (len(split), channels, size, size)
                assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
