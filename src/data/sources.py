"""Readers that turn a dataset on disk into decoded uint8 tensors, through the decode-once cache.

Every reader returns a `RawData`: class names and, per split name, a `Split`. Split names are
"train", "val", "test" when the dataset ships its own splits, or "all" when it does not (the flat
folder layout, digits); `ImageData` then draws val/test from it.
"""
from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BadImageError, DataError
from ..fileio import open_regular
from ..progress import Progress
from .cache import DecodeCache, cache_key
from .images import IMAGE_EXTENSIONS, decode_image, resize_uint8, to_channels

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Images with their labels and files. `source` holds the pixels, (M, C, H, W) uint8; with `rows`, the
    split is those rows of it, in that order (a subset of a decoded, perhaps memory-mapped, dataset larger
    than memory: its pixels are gathered batch by batch, never copied whole); without, all of it."""
    source: torch.Tensor
    labels: torch.Tensor  # (N,) int64, indices into RawData.classes
    files: list[str]      # where each image came from, for predictions and error messages
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def run(self) -> slice | None:
        """The split's rows of its source as a slice when they are consecutive (a split folder of a dataset
        decoded whole), else None."""
        if self.rows is None:
            return slice(0, len(self.source))
        if len(self.rows) and int(self.rows[-1]) - int(self.rows[0]) + 1 == len(self.rows) and bool(
                (self.rows.diff() == 1).all()):
            return slice(int(self.rows[0]), int(self.rows[-1]) + 1)
        return None

    @property
    def images(self) -> torch.Tensor:
        """The split's pixels as one (N, C, H, W) tensor: a view of the source when its rows are consecutive,
        else a copy (for evaluation and figures; training gathers batch by batch, see `gather`)."""
        run = self.run
        return self.source[run] if run is not None else self.source[self.rows]

    @property
    def nbytes(self) -> int:
        return len(self) * self.source[0].nbytes if len(self.source) else 0

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """The pixels of the split's images `index` (positions in the split), gathered from the source."""
        return self.source[index if self.rows is None else self.rows.to(index.device)[index]]

    def chunks(self, size: int):
        """The pixels in order, `size` images at a time: views of the source where the rows are consecutive,
        else a bounded copy each."""
        run = self.run
        for start in range(0, len(self), size):
            if run is not None:
                yield self.source[run.start + start:min(run.start + start + size, run.stop)]
            else:
                yield self.gather(torch.arange(start, min(start + size, len(self))))

    def subset(self, index: torch.Tensor) -> Split:
        """The images `index` (positions in this split): the same source, their rows of it; nothing copied."""
        rows = index if self.rows is None else self.rows[index]
        return Split(self.source, self.labels[index], [self.files[i] for i in index.tolist()], rows)

    @staticmethod
    def concat(parts: list[Split]) -> Split:
        """The splits one after the other: rows of their common source (as the splits of one decoded dataset
        are), or copied into a new one."""
        labels, files = torch.cat([s.labels for s in parts]), [file for s in parts for file in s.files]
        if all(s.source is parts[0].source for s in parts):
            rows = [torch.arange(len(s.source)) if s.rows is None else s.rows for s in parts]
            return Split(parts[0].source, labels, files, torch.cat(rows))
        return Split(torch.cat([s.images for s in parts]), labels, files)


@dataclass
class RawData:
    classes: list[str]
    splits: dict[str, Split]


# ---------------------------------------------------------------------------------------------------
# Folder layout: root/{train,val,test}/<class>/<image> or root/<class>/<image>


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_loop(path: str | Path, chain: tuple[str, ...]) -> bool:
    """Whether the folder at `path` resolves to one of the real folders `chain` or to a folder holding one."""
    target = os.path.realpath(path)
    return any(os.path.commonpath([target, real]) == target for real in chain)


def _check_link(path: str | Path, folder: str | Path) -> None:
    """Refuses a class or split folder that is a broken symlink or a symlink to `folder` (which holds it) or above."""
    if not os.path.islink(path):
        return
    if not os.path.exists(path):  # on an unmounted drive, say: it would drop out of the dataset unnoticed
        raise DataError(f"{path} is a broken symlink (its target {os.readlink(path)} does not exist)")
    if _is_loop(path, (os.path.realpath(folder),)):  # it would bring every other class into this one
        raise DataError(f"{path} is a symlink to {os.path.realpath(path)}, which holds it (a loop)")


def _class_dirs(folder: Path) -> list[str]:
    names = []
    for e in os.scandir(folder):
        if not _is_hidden(e.name):
            _check_link(e.path, folder)
            if e.is_dir():
                names.append(e.name)
    return sorted(names)


def find_images(folder: Path, not_regular: list[str] | None = None) -> list[str]:
    """Image files under a folder, recursively, sorted; hidden files and non-images are skipped, and so
    are FIFOs, sockets and devices (opening one could block the run forever). A broken symlink with an
    image name is kept, so that decoding reports it rather than the image silently going missing.

    Symlinked folders are followed, each real folder once (at its first path in sorted, depth-first
    order); a link to a folder that holds the link (itself, a parent, the dataset root) is a loop and is
    not followed: it would bring other classes' images (or the whole disk) into this class.
    An unreadable folder is an error naming it. The entries that are not regular files are appended to
    `not_regular` when given (to be reported once for a whole dataset), else reported here.
    """
    found: list[str] = []
    visited: set[str] = set()
    report_here = not_regular is None
    not_regular = [] if not_regular is None else not_regular

    def walk(path: str, chain: tuple[str, ...]) -> None:
        real = os.path.realpath(path)
        if real in visited:  # a second link to the same folder
            return
        visited.add(real)
        chain = (*chain, real)  # the real folders down to here
        try:
            with os.scandir(path) as it:
                entries = sorted((e for e in it if not _is_hidden(e.name)), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"cannot read folder {path}: {exc.strerror or exc}") from None
        folders = []
        for entry in entries:
            if entry.is_dir():  # follows symlinks
                if not _is_loop(entry.path, chain):
                    folders.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                # d_type answers is_file() without a stat call, except for symlinks
                if entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
                    found.append(entry.path)
                else:
                    not_regular.append(entry.path)
        for sub in folders:
            walk(sub, chain)

    walk(os.fspath(folder), ())
    if report_here:
        _report_not_regular(not_regular)
    return found


def _report_not_regular(paths: list[str]) -> None:
    if paths:
        log.warning("Skipped %d entries with image names that are not regular files (FIFOs, sockets or devices), "
                    "first: %s", len(paths), paths[0])


def scan_folder(root: Path) -> tuple[list[str], list[tuple[str, int, str]]]:
    """Finds class names and every (split, class index, path); checks the layout."""
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; set data.root=PATH to the dataset folder")
    for split in SPLITS:
        _check_link(root / split, root)
    has_splits = (root / "train").is_dir()
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()} if has_splits else {"all": root}
    main_dir = split_dirs["train" if has_splits else "all"]
    classes = _class_dirs(main_dir)
    if not classes:
        raise DataError(f"dataset folder {main_dir} has no class folders "
                        f"(expected {root}/<class>/<image> or {root}/train/<class>/<image>)")
    entries, not_regular = [], []
    for split, split_dir in split_dirs.items():
        names = _class_dirs(split_dir)
        if not names:
            raise DataError(f"split folder {split_dir} has no class folders")
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"class folder {split_dir / unknown[0]} is not a class of the training split "
                            f"(training classes: {', '.join(classes)})")
        for name in names:
            files = find_images(split_dir / name, not_regular)
            if not files and split_dir == main_dir:
                raise DataError(f"class folder {split_dir / name} has no images")
            entries.extend((split, classes.index(name), f) for f in files)
    _report_not_regular(not_regular)
    return classes, entries


def _check_no_file_in_two_places(entries: list[tuple[str, int, str]], stats: list[os.stat_result | None]) -> None:
    """One real file reached (through links) from two splits would leak test or validation images into
    training; from two classes it would have two labels. Twice in one class is allowed (oversampling).
    Files are identified by device and inode, which os.stat already gave (realpath would cost seconds)."""
    seen: dict[tuple[int, int], tuple[str, int, str]] = {}
    for (split, label, path), st in zip(entries, stats):
        if st is None:
            continue
        first = seen.setdefault((st.st_dev, st.st_ino), (split, label, path))
        if first[:2] != (split, label):
            raise DataError(f"{path} and {first[2]} are the same file ({os.path.realpath(path)}) in two "
                            f"{'splits' if first[0] != split else 'classes'}; remove one of the links")


def _file_stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:  # a broken symlink: decoding it reports the error
        return None


DECODE_PART = 4096  # images per part of a first decode: decoded in parallel, kept, what an interruption loses


def _decode_part(paths: list[str], start: int, channels: int, size: int) -> tuple[np.ndarray, list[list]]:
    """Decodes paths (the dataset's images start.. start+len): ((N, H, W, C) uint8, [[index, error], ...] with
    indices into the whole dataset). Runs in a forked worker process, so it uses PIL and numpy only: torch's
    thread pool does not survive a fork (a worker calling into it hangs)."""
    images = np.zeros((len(paths), size, size, channels), dtype=np.uint8)
    bad: list[list] = []
    for i, path in enumerate(paths):
        try:
            images[i] = decode_image(path, channels, size)
        except BadImageError as exc:
            bad.append([start + i, str(exc)])
    return images, bad


def _decode_all(paths: list[str], channels: int, size: int, desc: str, cache: DecodeCache) -> dict:
    """Decodes every file; returns the images and the list of [index, error] for unreadable ones.

    In parts of DECODE_PART images, on every core (one process each: for small images Python's overhead
    dominates the decode and threads contend for the GIL), written into the cache's decode buffer (the raw
    file being built: the pixels never all sit in this process's memory) and each part marked done as it
    completes, so that an interrupted decode (Ctrl-C, a killed job) goes on from the parts it had; the
    parts are decoded exactly as in one go, and the result is the same to the bit."""
    starts = range(0, len(paths), DECODE_PART)
    images = cache.decode_buffer("images", (len(paths), channels, size, size), desc.removeprefix("decoding "))
    bad: list[list] = []
    several = len(starts) > 1  # one part: nothing to go on from, nothing to parallelise

    def keep(index: int, start: int, decoded: tuple[np.ndarray, list[list]]) -> None:
        part, part_bad = decoded
        rows = images[start:start + len(part)]
        rows.copy_(torch.from_numpy(part).permute(0, 3, 1, 2))
        bad.extend(part_bad)
        if several:
            cache.mark_part_done(index, rows, part_bad)

    todo = []
    for index, start in enumerate(starts):
        done = cache.part_done(index, images[start:start + DECODE_PART]) if several else None
        if done is not None:
            bad.extend(done)
        else:
            todo.append((index, start))
    if len(todo) < len(starts):
        log.info("Continuing an interrupted decode of %s: %d of %d parts were done", desc.removeprefix("decoding "),
                 len(starts) - len(todo), len(starts))
    workers = min(os.cpu_count() or 1, len(todo))
    with Progress(len(paths), desc, "img", done=len(paths) - sum(len(paths[s:s + DECODE_PART]) for _, s in todo),
                  logger=log) as progress:  # a bar, or a line every 30 s off a terminal
        if workers <= 1:
            for index, start in todo:
                chunk = paths[start:start + DECODE_PART]
                keep(index, start, _decode_part(chunk, start, channels, size))
                progress.update(len(chunk))
        else:
            # fork: the workers need only PIL and numpy, already imported; spawn would import torch again
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = {pool.submit(_decode_part, paths[start:start + DECODE_PART], start, channels, size):
                           (index, start) for index, start in todo}
                for future in as_completed(futures):
                    # popped: a finished future holds its part's pixels, all of them together the dataset
                    index, start = futures.pop(future)
                    decoded = future.result()
                    keep(index, start, decoded)
                    progress.update(len(decoded[0]))
                    del future, decoded
    return {"images": images, "bad": sorted(bad)}


def _retry_unreadable(decoded: dict, paths: list[str], channels: int, size: int) -> bool:
    """A failure is never served from the cache: the images that could not be read when the cache was
    made (permission denied, a file still being copied) are read again. Returns whether any now reads."""
    still_bad, fixed = [], False
    for index, _ in decoded["bad"]:
        try:
            decoded["images"][index] = torch.tensor(decode_image(paths[index], channels, size)).permute(2, 0, 1)
            fixed = True
        except BadImageError as exc:
            still_bad.append([index, str(exc)])
    decoded["bad"] = still_bad
    return fixed


def read_folder(root: str | os.PathLike, channels: int, image_size: int, cache_dir: str | None,
                on_bad_image: str = "error") -> RawData:
    """Reads an ImageFolder-style dataset (with or without train/val/test split folders)."""
    root = Path(root).expanduser().absolute()  # one cache entry and one file naming, whatever the cwd
    classes, entries = scan_folder(root)
    return read_listed("folder", root, classes, entries, channels, image_size, cache_dir, on_bad_image)


def read_listed(kind: str, root: Path, classes: list[str], entries: list[tuple[str, int, str]], channels: int,
                image_size: int, cache_dir: str | None, on_bad_image: str = "error") -> RawData:
    """Decodes the image files `entries` lists ((split, class index, absolute path), as a folder scan or a
    reader's index gives them: data.datamodule.ImageListData) through the decode cache, whose entry is named
    by `kind` and root and keyed by every file's split, class, name, size and modification time."""
    paths = [path for _, _, path in entries]
    stats = [_file_stat(p) for p in paths]
    _check_no_file_in_two_places(entries, stats)
    prefix = str(root) + os.sep  # os.path.relpath would cost 0.6 s for FER2013's 35,887 files

    def relative(path: str) -> str:
        return path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)

    key = cache_key(kind, str(root.resolve()), channels, image_size,
                    [[s, c, relative(p), *((st.st_size, st.st_mtime_ns) if st else (-1, -1))]
                     for (s, c, p), st in zip(entries, stats)])
    cache = DecodeCache(cache_dir, str(root), key)
    decoded = cache.load()
    if decoded is None:
        decoded = _decode_all(paths, channels, image_size, f"decoding {root.name}", cache)
        cache.save(decoded)
    elif decoded["bad"] and _retry_unreadable(decoded, paths, channels, image_size):
        cache.save(decoded)
    bad = decoded["bad"]
    if bad and on_bad_image != "skip":
        more = f" (and {len(bad) - 1} more unreadable images)" if len(bad) > 1 else ""
        raise BadImageError(f"{bad[0][1]}{more}; set data.on_bad_image=skip to leave them out")
    if bad:
        log.warning("Skipped %d unreadable images, first: %s", len(bad), bad[0][1])
    keep = torch.ones(len(entries), dtype=torch.bool)
    keep[[i for i, _ in bad]] = False
    labels = torch.tensor([c for _, c, _ in entries], dtype=torch.long)
    split_names = [s for s, _, _ in entries]
    splits = {}
    for name in dict.fromkeys(split_names):
        index = torch.tensor([i for i, s in enumerate(split_names) if s == name and keep[i]], dtype=torch.long)
        splits[name] = Split(decoded["images"], labels, paths).subset(index)
    if len(splits.get("train", splits.get("all"))) == 0:
        raise DataError(f"dataset folder {root} has no readable training images")
    _check_every_class_readable(root, classes, splits)
    return RawData(classes, splits)


def _check_every_class_readable(root: Path, classes: list[str], splits: dict[str, Split]) -> None:
    """With on_bad_image=skip, a training class whose images were all unreadable is refused like an empty
    class folder: the model would have an output it never sees a training example of."""
    main = "train" if "train" in splits else "all"
    counts = torch.bincount(splits[main].labels, minlength=len(classes))
    if (counts == 0).any():
        name = classes[int((counts == 0).nonzero()[0])]
        folder = root / "train" / name if main == "train" else root / name
        raise DataError(f"class folder {folder} has no readable images (all of them were skipped as unreadable)")


# ---------------------------------------------------------------------------------------------------
# FER2013 as Kaggle's fer2013.csv: columns emotion, pixels (2304 values), Usage

FER2013_CSV_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # Kaggle 0..6
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def _parse_fer2013_csv(path: Path) -> dict:
    log.info("Parsing %s (about 10 s for Kaggle's 35,887 rows; cached afterwards)", path)
    try:
        return _parse_fer2013_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a FER2013 CSV (a UTF-8 text file): {exc}") from None
    except OSError as exc:
        raise DataError(f"FER2013 CSV {path} cannot be read: {exc.strerror or exc}") from None


def _parse_fer2013_rows(path: Path) -> dict:
    classes = sorted(FER2013_CSV_LABELS)  # the folder release's (alphabetical) order, so both agree
    to_class = [classes.index(name) for name in FER2013_CSV_LABELS]
    images, labels, splits, lines = [], [], [], []
    # utf-8-sig: a byte-order mark (spreadsheet programs write one) is not part of the first column's name
    with open_regular(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path} is not a FER2013 CSV: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():  # more, or fewer, fields than the header names
                count = len(reader.fieldnames) + len(row.get(None, [])) - sum(v is None for v in row.values())
                raise DataError(f"{path}, line {line}: {count} fields, but the header names "
                                f"{len(reader.fieldnames)} ({', '.join(reader.fieldnames)})")
            try:
                emotion = int(row["emotion"])
                pixels = np.array(row["pixels"].split(), dtype=np.int64)
            except (TypeError, ValueError, AttributeError):
                raise DataError(f"{path}, line {line}: emotion or pixels is not a list of integers") from None
            if not 0 <= emotion < len(FER2013_CSV_LABELS):
                raise DataError(f"{path}, line {line}: emotion {emotion} is not in 0..6")
            if pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
                raise DataError(f"{path}, line {line}: pixels must be 2304 values in 0..255, "
                                f"got {pixels.size}")
            if row["Usage"] not in FER2013_USAGE:
                raise DataError(f"{path}, line {line}: Usage {row['Usage']!r} is not one of "
                                f"{', '.join(FER2013_USAGE)}")
            images.append(pixels.astype(np.uint8).reshape(1, 48, 48))
            labels.append(to_class[emotion])
            splits.append(FER2013_USAGE[row["Usage"]])
            lines.append(line)
    if not images:
        raise DataError(f"{path} has no data rows")
    return {"images": torch.from_numpy(np.stack(images)), "labels": labels, "splits": splits, "lines": lines}


def read_fer2013_csv(path: str | os.PathLike, channels: int, image_size: int,
                     cache_dir: str | None) -> RawData:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"FER2013 CSV {path} does not exist; set data.csv=PATH to Kaggle's fer2013.csv")
    st = path.stat()
    cache = DecodeCache(cache_dir, str(path), cache_key("fer2013-csv", str(path.resolve()), st.st_size,
                                                         st.st_mtime_ns))
    parsed = cache.load()
    if parsed is None:
        parsed = _parse_fer2013_csv(path)
        cache.save(parsed)
    images = to_channels(resize_uint8(parsed["images"], image_size), channels)
    labels = torch.tensor(parsed["labels"], dtype=torch.long)
    splits = {}
    for name in SPLITS:
        index = torch.tensor([i for i, s in enumerate(parsed["splits"]) if s == name], dtype=torch.long)
        if len(index):
            splits[name] = Split(images[index], labels[index],
                                 [f"{path.name}:{parsed['lines'][i]}" for i in index.tolist()])
    if "train" not in splits:
        raise DataError(f"{path} has no rows with Usage 'Training'")
    return RawData(sorted(FER2013_CSV_LABELS), splits)


# ---------------------------------------------------------------------------------------------------
# scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, no download


def read_digits(channels: int, image_size: int) -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    images = to_channels(resize_uint8(images, image_size), channels)
    labels = torch.from_numpy(digits.target).long()
    files = [f"digits[{i}]" for i in range(len(labels))]
    return RawData([str(d) for d in digits.target_names], {"all": Split(images, labels, files)})


# ---------------------------------------------------------------------------------------------------
# CIFAR-100: the standard python-pickle release (cifar-100-python/{train,test,meta})

CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_LABELS = {"fine": ("fine_labels", "fine_label_names"), "coarse": ("coarse_labels", "coarse_label_names")}


class _ReleaseUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR python release holds: dicts, lists, strings, bytes, numbers and numpy
    arrays of a numeric dtype. Pickle calls whatever a file names while loading; here a name that is not
    one of the few callables numpy arrays need is refused, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_PICKLE_CALLABLES.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which the CIFAR release does not hold")
        return allowed


def _numeric_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.fields is not None:
        raise pickle.UnpicklingError(f"it holds an array of dtype {dtype}, not a numeric one")
    return dtype


def _array_callables() -> dict[tuple[str, str], object]:
    """The functions numpy's pickles name (numpy.core before numpy 2, numpy._core since; both spellings
    occur in files), mapped to this numpy's own; and Python 3's way of pickling bytes at protocol 2."""
    import codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    out: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _numeric_dtype,
                                          ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        out[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        out[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return out


_ALLOWED_PICKLE_CALLABLES = _array_callables()


def _load_pickle(path: Path) -> dict:
    """A file of the release as a dict with str keys (the release pickles Python 2 strings: latin-1)."""
    try:
        with open_regular(path) as f:
            loaded = _ReleaseUnpickler(f, encoding="latin1").load()
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - refused, truncated or not a pickle at all
        raise DataError(f"{path} was refused: it is not a file of the CIFAR-100 python release ({exc})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path} was refused: it is not a file of the CIFAR-100 python release (no dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in loaded.items()}


def _release_labels(batch: dict, key: str, path: Path, n: int, classes: int) -> torch.Tensor:
    """The labels of one file of the release: n integers in 0..classes-1."""
    labels = batch[key]
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        values = labels.astype(np.int64)
    elif isinstance(labels, list) and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels):
        values = np.array(labels, dtype=np.int64)
    else:
        raise DataError(f"{path}: {key} is not a list of integer labels")
    if len(values) != n:
        raise DataError(f"{path}: {key} has {len(values)} labels for {n} images")
    if n and not (values.min() >= 0 and values.max() < classes):
        raise DataError(f"{path}: {key} holds labels outside 0..{classes - 1}")
    return torch.from_numpy(values)


def download_cifar100(root: Path) -> None:
    """torchvision's downloader: fetches cifar-100-python.tar.gz from torchvision's CIFAR100.url, checks
    its MD5 and unpacks it into root."""
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    log.info("CIFAR-100 not found in %s: downloading it (about 160 MB)", root)
    try:
        download_and_extract_archive(CIFAR100.url, str(root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a failed checksum a RuntimeError
        raise DataError(f"CIFAR-100 could not be downloaded into {root} ({exc}); without internet put "
                        f"{CIFAR100_FOLDER}/ (from cifar-100-python.tar.gz) there, or set data.root") from None


def read_cifar100(root: str | os.PathLike, label_type: str, channels: int, image_size: int,
                  download: bool) -> RawData:
    """train (50,000) and test (10,000) with the fine (100) or coarse (20 superclass) labels."""
    root = Path(root).expanduser()
    folder = root / CIFAR100_FOLDER
    if not (folder / "train").is_file():
        if not download:
            raise DataError(f"CIFAR-100 not found: {folder} does not hold train, test and meta; unpack "
                            f"cifar-100-python.tar.gz in {root}, or set data.download=true")
        download_cifar100(root)
    labels_key, names_key = CIFAR100_LABELS[label_type]
    try:
        classes = _load_pickle(folder / "meta")[names_key]
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
            raise DataError(f"{folder / 'meta'}: {names_key} is not a list of class names")
        splits = {}
        for name in ("train", "test"):
            batch = _load_pickle(folder / name)
            pixels = batch["data"]
            if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 2
                    and pixels.shape[1] == 3 * 32 * 32):
                raise DataError(f"{folder / name}: data is not an N x 3072 array of uint8 pixels")
            images = torch.from_numpy(np.ascontiguousarray(pixels).reshape(-1, 3, 32, 32))
            labels = _release_labels(batch, labels_key, folder / name, len(images), len(classes))
            files = [f"{CIFAR100_FOLDER}/{name}[{i}]" for i in range(len(labels))]
            splits[name] = Split(to_channels(resize_uint8(images, image_size), channels), labels, files)
    except (OSError, KeyError) as exc:
        raise DataError(f"{folder} is not the CIFAR-100 python release ({type(exc).__name__}: {exc})") from None
    return RawData(list(classes), splits)
