"""Decoding a dataset's listed image files into uint8 tensors through the decode-once cache, in parallel parts that an
interrupted decode goes on from: `read_folder` (an image-folder dataset) and `read_listed` (any list of files).
A cached decode is checked against the files on every load (freshness.py) and brought up to date."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from ..errors import BadImageError, DataError
from ..progress import Progress
from . import freshness
from .cache import DecodeCache, cache_key
from .folders import Listing, _check_no_file_in_two_places, scan_folder
from .images import decode_image
from .raw import RawData, Split

log = logging.getLogger(__name__)

DECODE_PART = 4096  # images per part of a first decode: decoded in parallel, kept, what an interruption loses


def _decode_file(path: str, channels: int, size: int) -> tuple[np.ndarray, bytes, int]:
    """One read of the file: its (size, size, channels) pixels, the digest of the bytes they were decoded from
    and the file's signature to record (freshness.read_file). BadImageError when the file cannot be read or
    decoded."""
    try:
        data, signature = freshness.read_file(path)
    except MemoryError:
        raise BadImageError(f"cannot read image {path}: it needs more memory than is available") from None
    except OSError as exc:  # as read_image words it
        raise BadImageError(f"cannot read image {path}: {exc}") from exc
    return decode_image(path, channels, size, data), freshness.content_digest(data), signature


def _decode_part(paths: list[str], start: int, channels: int, size: int) -> tuple[np.ndarray, list[list], dict]:
    """Decodes paths (the dataset's images start.. start+len): ((N, H, W, C) uint8, [[index, error], ...] with
    indices into the whole dataset, and their record: {"digests": (N, DIGEST_BYTES) uint8, "signatures": (N,)
    int64}, an unreadable file's all zeros and UNSURE). Runs in a forked worker process, so it uses PIL and
    numpy only: torch's thread pool does not survive a fork (a worker calling into it hangs)."""
    images = np.zeros((len(paths), size, size, channels), dtype=np.uint8)
    digests = np.zeros((len(paths), freshness.DIGEST_BYTES), dtype=np.uint8)
    signatures = np.full(len(paths), freshness.UNSURE, dtype=np.int64)
    bad: list[list] = []
    for i, path in enumerate(paths):
        try:
            images[i], digest, signatures[i] = _decode_file(path, channels, size)
            digests[i] = np.frombuffer(digest, dtype=np.uint8)
        except BadImageError as exc:
            bad.append([start + i, str(exc)])
    return images, bad, {"digests": digests, "signatures": signatures}


def _decode_all(paths: list[str], channels: int, size: int, desc: str, cache: DecodeCache) -> dict:
    """Decodes every file; returns the images and the list of [index, error] for unreadable ones.

    In parts of DECODE_PART images, on every core (one process each: for small images Python's overhead
    dominates the decode and threads contend for the GIL), written into the cache's decode buffer (the raw
    file being built: the pixels never all sit in this process's memory) and each part marked done as it
    completes, so that an interrupted decode (Ctrl-C, a killed job) goes on from the parts it had; the
    parts are decoded exactly as in one go, and the result is the same to the bit."""
    starts = range(0, len(paths), DECODE_PART)
    images = cache.decode_buffer("images", (len(paths), channels, size, size), desc.removeprefix("decoding "))
    digests = torch.zeros((len(paths), freshness.DIGEST_BYTES), dtype=torch.uint8)
    signatures = torch.full((len(paths),), freshness.UNSURE, dtype=torch.int64)
    bad: list[list] = []
    several = len(starts) > 1  # one part: nothing to go on from, nothing to parallelise

    def record(start: int, done: dict) -> None:
        digests[start:start + len(done["digests"])] = torch.as_tensor(done["digests"])
        signatures[start:start + len(done["signatures"])] = torch.as_tensor(done["signatures"])
        bad.extend(done["bad"])

    def keep(index: int, start: int, decoded: tuple[np.ndarray, list[list], dict]) -> None:
        part, part_bad, files = decoded
        rows = images[start:start + len(part)]
        rows.copy_(torch.from_numpy(part).permute(0, 3, 1, 2))
        done = {"bad": part_bad, **{name: torch.from_numpy(value) for name, value in files.items()}}
        record(start, done)
        if several:
            cache.mark_part_done(index, rows, done)

    todo = []
    for index, start in enumerate(starts):
        done = cache.part_done(index, images[start:start + DECODE_PART]) if several else None
        if done is not None:
            record(start, done)
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
    return {"images": images, "bad": sorted(bad), "digests": digests, "signatures": signatures}


def _decode_into(decoded: dict, index: int, path: str, channels: int, size: int) -> None:
    """Decodes one file into its row of a loaded entry, with its record (BadImageError when it cannot be)."""
    pixels, digest, signature = _decode_file(path, channels, size)
    decoded["images"][index] = torch.tensor(pixels).permute(2, 0, 1)
    decoded["digests"].numpy()[index] = np.frombuffer(digest, dtype=np.uint8)
    decoded["signatures"][index] = signature


def _retry_unreadable(decoded: dict, paths: list[str], channels: int, size: int) -> bool:
    """A failure is never served from the cache: the images that could not be read when the cache was
    made (permission denied, a file still being copied) are read again. Returns whether any now reads."""
    still_bad, fixed = [], False
    for index, _ in decoded["bad"]:
        try:
            _decode_into(decoded, index, paths[index], channels, size)
            fixed = True
        except BadImageError as exc:
            still_bad.append([index, str(exc)])
    decoded["bad"] = still_bad
    return fixed


def _bring_up_to_date(decoded: dict, paths: list[str], current: np.ndarray, channels: int, size: int,
                      what: str) -> tuple[bool, bool] | None:
    """Checks a loaded entry against the files (freshness.py): each readable file whose signature is not the
    recorded one is read and hashed; the same digest keeps its pixels and records the new signature, another
    digest decodes it again into its row. Returns (pixels changed, record changed), or None when more than
    DECODE_PART files have new content (decoding the whole dataset in parallel parts is then faster than one
    by one here)."""
    recorded, digests = decoded["signatures"].numpy(), decoded["digests"].numpy()
    unreadable = {index for index, _ in decoded["bad"]}  # read again on every load anyway
    rows = [i for i in freshness.rows_to_check(recorded, current).tolist() if i not in unreadable]
    changed, refreshed = [], 0
    for i in rows:
        try:
            data, signature = freshness.read_file(paths[i])
        except (OSError, MemoryError):
            changed.append(i)  # gone or unreadable now: decoding it says why
            continue
        if freshness.content_digest(data) != digests[i].tobytes():
            changed.append(i)
        elif signature != recorded[i]:
            recorded[i] = signature
            refreshed += 1
    if rows:
        log.info("Checked %d of %d files of %s by their content (%s): %d changed, %d the same", len(rows),
                 len(paths), what, freshness.why_checked(), len(changed), len(rows) - len(changed))
    if len(changed) > DECODE_PART:
        log.info("Decoding %s again: %d files changed", what, len(changed))
        return None
    for i in changed:
        try:
            _decode_into(decoded, i, paths[i], channels, size)
        except BadImageError as exc:
            decoded["bad"].append([i, str(exc)])
            decoded["digests"][i], decoded["signatures"][i] = 0, freshness.UNSURE
    if changed:
        decoded["bad"].sort()
        log.info("Decoded the %d changed files of %s again", len(changed), what)
    return bool(changed), bool(changed) or refreshed > 0


def _listing_key(kind: str, root: Path, channels: int, image_size: int, listing: Listing) -> str:
    """The cache key: the files' paths, splits and labels, and the decode settings. Not their stat: a file changed
    in place keeps its entry, whose record finds the change (freshness.py). Hashed as bytes: a JSON list of 35,887
    files cost 0.2 s."""
    files = hashlib.sha256("\0".join(listing.paths).encode("utf-8", "surrogateescape"))  # NUL: in no file name
    files.update(listing.labels.astype(np.int64).tobytes())
    files.update(listing.split_of.astype(np.int64).tobytes())
    return cache_key(kind, str(root.resolve()), channels, image_size, listing.split_names, files.hexdigest())


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off inside: the scan, stat and listing of a warm start allocate a few
    objects per file (FER2013: ~150k, none in a cycle), and with it on they set off collections of the whole
    heap (torch's ~200k objects) that were 0.15 s of FER2013's warm start. Around those steps only (and the
    few files a check decodes again): a whole decode, where the exceptions of unreadable files make cycles,
    runs with it on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_folder(root: str | os.PathLike, channels: int, image_size: int, cache_dir: str | None,
                on_bad_image: str = "error") -> RawData:
    """Reads an ImageFolder-style dataset (with or without train/val/test split folders)."""
    root = Path(root).expanduser().absolute()  # one cache entry and one file naming, whatever the cwd
    signatures: list[int] = []
    with _collector_paused():
        classes, listing = scan_folder(root, signatures)
    return _read("folder", root, classes, listing, np.array(signatures, dtype=np.int64), channels, image_size,
                 cache_dir, on_bad_image)


def read_listed(kind: str, root: Path, classes: list[str], entries: list[tuple[str, int, str]], channels: int,
                image_size: int, cache_dir: str | None, on_bad_image: str = "error") -> RawData:
    """Decodes the image files `entries` lists ((split, class index, absolute path), as a folder scan or a
    reader's index gives them: data.datasets.ImageListData) through the decode cache, whose entry is named
    by `kind` and root and keyed by every file's split, class and name; a loaded entry is checked against
    the files and brought up to date (_bring_up_to_date)."""
    with _collector_paused():
        listing = Listing.of(entries)
        signatures = freshness.current_signatures(listing.paths)
    return _read(kind, root, classes, listing, signatures, channels, image_size, cache_dir, on_bad_image)


def _read(kind: str, root: Path, classes: list[str], listing: Listing, signatures: np.ndarray, channels: int,
          image_size: int, cache_dir: str | None, on_bad_image: str) -> RawData:
    """read_listed's work, on the files as columns with their signatures (freshness.py) now."""
    freshness.check_every_file()  # a wrong FER_RUNNER_CACHE_CHECK is refused before any work
    paths = listing.paths
    with _collector_paused():
        _check_no_file_in_two_places(listing, signatures)
        cache = DecodeCache(cache_dir, str(root), _listing_key(kind, root, channels, image_size, listing))
        decoded = _load_up_to_date(cache, paths, signatures, channels, image_size, root)
    if decoded is None:
        decoded = _decode_all(paths, channels, image_size, f"decoding {root.name}", cache)
        cache.save(decoded)
    with _collector_paused():
        return _raw_data(root, classes, decoded, listing, on_bad_image)


def _load_up_to_date(cache: DecodeCache, paths: list[str], current: np.ndarray, channels: int, size: int,
                     root: Path) -> dict | None:
    """The cache's entry with its unreadable images read again and checked against the files (stored again
    when that changed it); None when there is none, or when decoding everything again is quicker."""
    decoded = cache.load()
    if decoded is None:
        return None
    fixed = bool(decoded["bad"]) and _retry_unreadable(decoded, paths, channels, size)
    outcome = _bring_up_to_date(decoded, paths, current, channels, size, str(root))
    if outcome is None:
        return None
    if fixed or outcome[0]:
        cache.save(decoded)
    elif outcome[1]:
        cache.save(decoded, unchanged=("images", "digests"))  # the pixels as they are: only the record
    return decoded


def _raw_data(root: Path, classes: list[str], decoded: dict, listing: Listing, on_bad_image: str) -> RawData:
    """The splits of the decoded images, leaving out the unreadable ones (data.on_bad_image=skip)."""
    paths, labels = listing.paths, listing.labels
    bad = decoded["bad"]
    if bad and on_bad_image != "skip":
        more = f" (and {len(bad) - 1} more unreadable images)" if len(bad) > 1 else ""
        raise BadImageError(f"{bad[0][1]}{more}; set data.on_bad_image=skip to leave them out")
    if bad:
        log.warning("Skipped %d unreadable images, first: %s", len(bad), bad[0][1])
    keep = np.ones(len(paths), dtype=bool)
    keep[[i for i, _ in bad]] = False
    splits = {}
    for code, name in enumerate(listing.split_names):  # in numpy: a test per file in Python cost 0.1 s
        listed = listing.split_of == code
        if not listed.any():
            continue  # a split folder without images: no split, as for a reader that lists none
        rows = np.flatnonzero(listed & keep)
        # as Split(...).subset(rows) makes it, with the file names gathered in C
        splits[name] = Split(decoded["images"], torch.from_numpy(labels[rows]),
                             list(map(paths.__getitem__, rows.tolist())), torch.from_numpy(rows))
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
