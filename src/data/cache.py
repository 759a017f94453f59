"""The decode-once cache: a decoded dataset stored as one file, keyed by everything that shapes it.

The key hashes the file list with sizes and modification times plus the decode settings, so a
changed, added or removed image (or another image_size/channels) gives another key: a changed
dataset is never served stale. The stored tensor carries a checksum; a damaged cache file is
detected, reported and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..fileio import atomic_torch_save

log = logging.getLogger(__name__)

# Bump when the decoding itself changes (resampling filter, mode conversion), to invalidate old caches.
CACHE_FORMAT = 1


def cache_key(*parts) -> str:
    """A stable hash of JSON-serialisable parts."""
    payload = json.dumps([CACHE_FORMAT, *parts], separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _checksum(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def cached_decode(cache_dir: str | None, name: str, key: str, build: Callable[[], dict]) -> dict:
    """Returns build()'s dict (tensors and plain lists), from `cache_dir` when an entry with `key` exists.

    The dict must hold a uint8 tensor under "images"; it is checksummed on save and verified on load.
    With cache_dir None nothing is cached.
    """
    if cache_dir is None:
        return build()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:] or "dataset"
    path = Path(cache_dir).expanduser() / f"{slug}-{key[:24]}.pt"
    if path.exists():
        try:
            entry = torch.load(path, weights_only=True)
            if entry.get("key") == key and entry.get("checksum") == _checksum(entry["images"]):
                log.info("Loaded decoded %s from cache %s", name, path)
                return entry["data"] | {"images": entry["images"]}
            log.warning("Cache file %s does not match its checksum; decoding again", path)
        except Exception as exc:  # a truncated or foreign file: rebuild rather than fail
            log.warning("Cache file %s is unreadable (%s); decoding again", path, exc)
    data = build()
    images = data["images"]
    rest = {k: v for k, v in data.items() if k != "images"}
    atomic_torch_save({"key": key, "checksum": _checksum(images), "images": images, "data": rest}, path)
    log.info("Decoded %s and cached it at %s", name, path)
    return data
