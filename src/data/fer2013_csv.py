"""Reading FER2013 as Kaggle's fer2013.csv (one row an image: emotion, 48x48 pixels, Usage) into uint8 tensors,
parsed once and kept in the decode cache, with the CSV's signature and digest (freshness.py) checked on every
load."""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import IO

import numpy as np
import torch

from ..errors import DataError
from ..fileio import open_regular
from . import freshness
from .cache import DecodeCache, cache_key
from .images import resize_uint8, to_channels
from .raw import SPLITS, RawData, Split

log = logging.getLogger(__name__)

# FER2013 as Kaggle's fer2013.csv: columns emotion, pixels (2304 values), Usage

FER2013_CSV_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # Kaggle 0..6
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


class _Hashing(io.RawIOBase):
    """A binary file read through, every byte read added to a digest (as freshness.content_digest's):
    the digest recorded is that of the bytes parsed, even if the file changes meanwhile. `signature` is the
    one to record for them (taken before the read)."""

    def __init__(self, f: IO[bytes]):
        self.f, self.digest = f, freshness.content_hasher()
        self.signature = freshness.signature_to_record(f.fileno())

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.f.readinto(buffer)
        self.digest.update(memoryview(buffer)[:count])
        return count

    def finish(self) -> str:
        """The digest of the whole file: what was not read yet is read into it (a reader on top stops at the
        last row)."""
        while chunk := self.f.read(1 << 20):
            self.digest.update(chunk)
        return freshness.finish_digest(self.digest).hex()


def _parse_fer2013_csv(path: Path) -> dict:
    log.info("Parsing %s (about 10 s for Kaggle's 35,887 rows; cached afterwards)", path)
    try:
        return _parse_fer2013_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a FER2013 CSV (a UTF-8 text file): {exc}") from None
    except OSError as exc:
        raise DataError(f"FER2013 CSV {path} cannot be read: {exc.strerror or exc}") from None


def _parse_fer2013_rows(path: Path) -> dict:
    # read through _Hashing: the digest recorded is that of the bytes parsed
    with open_regular(path) as raw:
        hashing = _Hashing(raw)
        # utf-8-sig: a byte-order mark (spreadsheet programs write one) is not part of the first column's name
        with io.TextIOWrapper(io.BufferedReader(hashing), encoding="utf-8-sig", newline="") as f:
            parsed = _parse_rows(path, csv.DictReader(f))
        parsed |= {"signature": hashing.signature, "digest": hashing.finish()}
    return parsed


def _parse_rows(path: Path, reader: csv.DictReader) -> dict:
    classes = sorted(FER2013_CSV_LABELS)  # the folder release's (alphabetical) order, so both agree
    to_class = [classes.index(name) for name in FER2013_CSV_LABELS]
    images, labels, splits, lines = [], [], [], []
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


def _digest_of_file(path: Path) -> tuple[str, int]:
    """The CSV's digest (as parsing records it) and the signature to record for it."""
    with open_regular(path) as raw:
        hashing = _Hashing(raw)
        return hashing.finish(), hashing.signature


def _up_to_date(parsed: dict, path: Path, cache: DecodeCache) -> bool:
    """Whether a cached parse still holds what the CSV contains (freshness.py): its signature is the recorded
    one, or else its digest is (then the new signature is recorded)."""
    current = freshness.signature(path.stat())
    recorded = parsed.get("signature", freshness.UNSURE)
    if current == recorded != freshness.UNSURE and not freshness.check_every_file():
        return True
    try:
        digest, signature = _digest_of_file(path)
    except OSError:
        return False  # parsing it again says why
    if digest != parsed.get("digest"):
        log.info("%s changed since it was cached (its content, not only its times); parsing it again", path)
        return False
    if signature != recorded:
        parsed["signature"] = signature
        cache.save(parsed, unchanged=("images",))
    log.info("Checked %s by its content (%s): the same", path, freshness.why_checked())
    return True


def read_fer2013_csv(path: str | os.PathLike, channels: int, image_size: int,
                     cache_dir: str | None) -> RawData:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"FER2013 CSV {path} does not exist; set data.csv=PATH to Kaggle's fer2013.csv")
    freshness.check_every_file()  # a wrong FER_RUNNER_CACHE_CHECK is refused before any work
    cache = DecodeCache(cache_dir, str(path), cache_key("fer2013-csv", str(path.resolve())))
    parsed = cache.load()
    if parsed is not None and not _up_to_date(parsed, path, cache):
        parsed = None
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
