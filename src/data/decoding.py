"""Decoding a dataset's listed image files into uint8 tensors through the decode-once cache, in parallel parts that an
interrupted decode goes on from: `read_folder` (an image-folder dataset) and `read_listed` (any list of files)."""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from ..errors import BadImageError, DataError
from ..progress import Progress
from .cache import DecodeCache, cache_key
from .folders import _check_no_file_in_two_places, _file_stat, scan_folder
from .images import decode_image
from .raw import RawData, Split

log = logging.getLogger(__name__)

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
    reader's index gives them: data.datasets.ImageListData) through the decode cache, whose entry is named
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
