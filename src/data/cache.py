"""The decode-once cache: a decoded dataset stored as one file, keyed by everything that shapes it.

The key hashes the file list with sizes and modification times plus the decode settings, so a
changed, added or removed image (or another image_size/channels) gives another key: a changed
dataset is never served stale.

Everything an entry serves (pixels, labels, file names, the list of unreadable files) is covered by an
HMAC-SHA256 under a secret key of this user (`cache_secret_file()`, created on first use). A damaged
entry, one edited by hand (a label changed) and one this user's runner did not write (copied from
another machine, or planted in a shared cache folder) all fail the check and are decoded again. The
file is read with torch.load(weights_only=True): even before the check, loading it runs no code.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from pathlib import Path

import torch

from ..fileio import atomic_torch_save, open_regular

log = logging.getLogger(__name__)

# Bump when the decoding itself changes (resampling filter, mode conversion, EXIF orientation), to
# invalidate old caches.
CACHE_FORMAT = 3


def cache_key(*parts) -> str:
    """A stable hash of JSON-serialisable parts."""
    payload = json.dumps([CACHE_FORMAT, *parts], separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_secret_file() -> Path:
    """$FER_RUNNER_CACHE_SECRET, or fer-runner/cache-secret under $XDG_CONFIG_HOME (~/.config)."""
    if os.environ.get("FER_RUNNER_CACHE_SECRET"):
        return Path(os.environ["FER_RUNNER_CACHE_SECRET"]).expanduser()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser()
    return config_home / "fer-runner" / "cache-secret"


@functools.cache
def _secret() -> bytes:
    """This user's cache secret: read, or created (readable by the user only) on first use. Two processes
    creating it at once agree on the first one written (a hard link fails if the name exists)."""
    path = cache_secret_file()
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        with open_regular(path) as f:
            secret = f.read()
        if len(secret) < 16:
            raise OSError(f"{path} holds {len(secret)} bytes, fewer than a secret needs")
        return secret
    except OSError as exc:
        log.warning("The decode cache's secret %s cannot be read or created (%s): decoded datasets are cached for "
                    "this process only; set FER_RUNNER_CACHE_SECRET to a writable path", path, exc)
        return secrets.token_bytes(32)


def _digest(key: str, data: dict) -> str:
    """HMAC of the key and every value of the entry, tensors by dtype, shape and bytes."""
    mac = hmac.new(_secret(), key.encode(), hashlib.sha256)
    for name in sorted(data):
        value = data[name]
        mac.update(b"\0" + name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            value = value.contiguous()
            mac.update(f"{value.dtype}{tuple(value.shape)}".encode())
            mac.update(value.reshape(-1).view(torch.uint8).numpy().data if value.numel() else b"")
        else:
            mac.update(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
    return mac.hexdigest()


class DecodeCache:
    """One cache entry: `load()` returns the stored dict (tensors and plain lists) or None, `save(data)`
    stores one. With cache_dir None nothing is cached."""

    def __init__(self, cache_dir: str | os.PathLike | None, name: str, key: str):
        self.name, self.key = name, key
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:] or "dataset"
        self.path = Path(cache_dir).expanduser() / f"{slug}-{key[:24]}.pt" if cache_dir is not None else None

    def load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            with open_regular(self.path) as f:
                entry = torch.load(f, weights_only=True)
            data = entry["data"] if isinstance(entry, dict) else None
            if (isinstance(data, dict) and entry.get("key") == self.key and isinstance(entry.get("digest"), str)
                    and hmac.compare_digest(entry["digest"], _digest(self.key, data))):
                log.info("Loaded decoded %s from cache %s", self.name, self.path)
                return data
            log.warning("Cache file %s fails its integrity check (damaged, edited, or not written by this user's "
                        "runner); decoding again", self.path)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: rebuild rather than fail
            log.warning("Cache file %s is unreadable (%s); decoding again", self.path, exc)
        return None

    def save(self, data: dict) -> None:
        if self.path is None:
            return
        try:
            atomic_torch_save({"format": CACHE_FORMAT, "key": self.key, "digest": _digest(self.key, data),
                               "data": data}, self.path)
        except OSError as exc:  # a read-only or full cache folder costs speed, not the run
            log.warning("Could not write the decode cache %s (%s); the next run decodes again", self.path,
                        exc.strerror or exc)
            return
        log.info("Decoded %s and cached it at %s", self.name, self.path)
