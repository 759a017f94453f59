"""The decode-once cache: a decoded dataset stored as one file, keyed by everything that shapes it.

The key hashes the file list (names, splits, labels) and the decode settings: an added, removed or renamed
image (or another image_size/channels) gives another key. The entry records, for each file, the signature of
its stat and the digest of the bytes decoded, and the reader checks them on every load (freshness.py): a file
changed in place (even with its size and modification time restored) is found and decoded again, a file
touched or extracted again with the same content keeps its pixels.

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
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..fileio import atomic_torch_save, atomic_write_text, open_regular
from .memory import check_fits_in_host_memory

log = logging.getLogger(__name__)

# Bump when the decoding itself changes (resampling filter, mode conversion, EXIF orientation), to
# invalidate old caches.
CACHE_FORMAT = 4  # 4: keyed by the file list only, each file's signature and digest in the entry


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


# Large tensors (the decoded pixels) are stored as raw files beside the entry and memory-mapped when it is
# loaded (copy-on-write): loading reads no more than the check needs, and the pixels stay file-backed
# pages of the page cache instead of private memory of the process.
RAW_MIN_BYTES = 1 << 20
RAW_KEY = "raw_files"
RAW_DTYPES = {"torch.uint8": np.uint8, "torch.int64": np.int64, "torch.float32": np.float32}
_HASH_BLOCK = 1 << 24


def _write_raw(path: Path, tensor: torch.Tensor) -> dict:
    """Writes the tensor's bytes to `path` (beside it, then renamed over it) and describes it."""
    array = tensor.contiguous().numpy()
    digest = hashlib.sha256()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            flat = memoryview(array.reshape(-1).view(np.uint8))
            for start in range(0, len(flat), _HASH_BLOCK):
                block = flat[start:start + _HASH_BLOCK]
                digest.update(block)
                f.write(block)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": path.name, "dtype": str(tensor.dtype), "shape": list(tensor.shape), "sha256": digest.hexdigest()}


def _sha256(array: np.ndarray) -> str:
    """SHA-256 of a (C-contiguous) array's bytes, in blocks: a memory-mapped array is read once, in order."""
    digest = hashlib.sha256()
    flat = memoryview(array.reshape(-1).view(np.uint8))
    for start in range(0, len(flat), _HASH_BLOCK):
        digest.update(flat[start:start + _HASH_BLOCK])
    return digest.hexdigest()


def _map_file(path: Path, dtype: np.dtype, shape: tuple, mode: str) -> torch.Tensor:
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return torch.from_numpy(np.zeros(shape, dtype=dtype))
    return torch.from_numpy(np.memmap(path, dtype=dtype, mode=mode, shape=shape))


# A raw file checked against its SHA-256 gets a stamp beside it (<raw>.checked): an HMAC of the hash with the
# file's identity and state (device, inode, size, modification and change times). While the stamp matches, the
# file was not written, truncated, replaced or renamed since (each changes the inode or the change time, which
# no user can set), and a warm start maps it without reading it: milliseconds instead of ~1 s per GB. A file
# changed less than STAMP_MIN_AGE_S before the check gets no stamp: a change within the file system's
# timestamp granularity would not show in the change time.
STAMP_MIN_AGE_S = 2.0


def _stamp(st: os.stat_result, sha256: str) -> str:
    mac = hmac.new(_secret(), b"raw-file-checked", hashlib.sha256)
    mac.update(json.dumps([sha256, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]).encode())
    return mac.hexdigest()


def _stamp_matches(path: Path, st: os.stat_result, sha256: str) -> bool:
    try:
        with open_regular(path.with_name(path.name + ".checked")) as f:
            return hmac.compare_digest(f.read(128).decode("ascii", "replace"), _stamp(st, sha256))
    except OSError:
        return False


def _write_stamp(path: Path, st: os.stat_result, sha256: str) -> None:
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < STAMP_MIN_AGE_S * 1e9:
        return
    try:
        atomic_write_text(_stamp(st, sha256), path.with_name(path.name + ".checked"))
    except OSError:
        pass  # the next warm start reads the file again


def _map_raw(path: Path, info: dict) -> torch.Tensor | None:
    """The raw file as a tensor mapped from it, None when it is missing or its bytes are not the ones written
    (the entry's HMAC covers the SHA-256 the file must have; see _stamp for when it is not read again)."""
    dtype = np.dtype(RAW_DTYPES[info["dtype"]])
    size = int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize
    try:
        with open_regular(path) as f:
            st = os.fstat(f.fileno())
            if st.st_size != size:
                log.warning("Cache file %s is not the one its entry was written with; decoding again", path)
                return None
            if not _stamp_matches(path, st, info["sha256"]):
                if hashlib.file_digest(f, "sha256").hexdigest() != info["sha256"]:
                    log.warning("Cache file %s is not the one its entry was written with; decoding again", path)
                    return None
                _write_stamp(path, st, info["sha256"])
    except OSError as exc:
        log.warning("Cache file %s cannot be read (%s); decoding again", path, exc.strerror or exc)
        return None
    return _map_file(path, dtype, tuple(info["shape"]), "c")


class DecodeCache:
    """One cache entry: `load()` returns the stored dict (tensors and plain lists) or None, `save(data)`
    stores one. With cache_dir None nothing is cached."""

    def __init__(self, cache_dir: str | os.PathLike | None, name: str, key: str):
        self.name, self.key = name, key
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:] or "dataset"
        self.path = Path(cache_dir).expanduser() / f"{slug}-{key[:24]}.pt" if cache_dir is not None else None
        self._buffers: dict[str, torch.Tensor] = {}  # name -> the decode_buffer tensor mapped from its .partial
        self._loaded_raw: dict[str, dict] = {}  # name -> the description of its raw file, of the entry loaded

    def load(self) -> dict | None:
        data = self._read(self.path, self.key) if self.path is not None and self.path.exists() else None
        if data is not None:
            log.info("Loaded decoded %s from cache %s", self.name, self.path)
        return data

    def _read(self, path: Path, key: str, quiet: bool = False) -> dict | None:
        """The data of an entry (or part) written under `key`, None when it fails its check or is unreadable.
        Its large tensors are memory-mapped from their raw files (see _write)."""
        try:
            with open_regular(path) as f:
                entry = torch.load(f, weights_only=True)
            data = entry["data"] if isinstance(entry, dict) else None
            if (isinstance(data, dict) and entry.get("key") == key and isinstance(entry.get("digest"), str)
                    and hmac.compare_digest(entry["digest"], _digest(key, data))):
                raw = data.pop(RAW_KEY, {})
                mapped = {name: _map_raw(path.with_name(info["file"]), info) for name, info in raw.items()}
                if path == self.path:
                    self._loaded_raw = raw
                return data | mapped if all(tensor is not None for tensor in mapped.values()) else None
            if not quiet:
                log.warning("Cache file %s fails its integrity check (damaged, edited, or not written by this "
                            "user's runner); decoding again", path)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: rebuild rather than fail
            if not quiet:
                log.warning("Cache file %s is unreadable (%s); decoding again", path, exc)
        return None

    def _raw_path(self, name: str) -> Path:
        return self.path.with_name(f"{self.path.stem}.{name}.raw")

    def _write(self, path: Path, key: str, data: dict, unchanged: tuple[str, ...] = ()) -> bool:
        """The entry: tensors of RAW_MIN_BYTES or more (and those decoded into a decode_buffer) each as a raw
        file beside it (<entry>.<name>.raw, named with their shape, dtype and SHA-256 in the entry), the rest in
        the entry, all under its HMAC. The tensors named in `unchanged` that were loaded from a raw file keep it
        as it is (described as loaded): only the entry is written."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = {name: self._loaded_raw[name] for name in unchanged if name in self._loaded_raw}
            raw = {name: value for name, value in data.items() if isinstance(value, torch.Tensor) and name not in kept
                   and (value.nbytes >= RAW_MIN_BYTES or self._buffers.get(name) is value)
                   and str(value.dtype) in RAW_DTYPES}
            described = kept | {name: self._finish_buffer(name) if self._buffers.get(name) is tensor
                                else _write_raw(path.with_name(f"{path.stem}.{name}.raw"), tensor)
                                for name, tensor in raw.items()}
            stored = {k: v for k, v in data.items() if k not in described} | ({RAW_KEY: described} if described else {})
            atomic_torch_save({"format": CACHE_FORMAT, "key": key, "digest": _digest(key, stored), "data": stored},
                              path)
            return True
        except OSError as exc:  # a read-only or full cache folder costs speed, not the run
            log.warning("Could not write the decode cache %s (%s); the next run decodes again", path,
                        exc.strerror or exc)
            return False

    def save(self, data: dict, unchanged: tuple[str, ...] = ()) -> None:
        """Stores `data`. A tensor decoded into a decode_buffer is not copied: its .partial file becomes the
        entry's raw file, and data[name] is mapped from that file copy-on-write, like a loaded entry. `unchanged`
        names the tensors of the entry loaded that are still as loaded (their raw files are kept, not written):
        a record updated without new pixels costs the entry only, not the dataset's size."""
        if self.path is not None and self._write(self.path, self.key, data, unchanged):
            if unchanged:
                log.debug("Updated the record of %s in %s", self.name, self.path)
            else:
                log.info("Decoded %s and cached it at %s", self.name, self.path)
            for name, tensor in list(self._buffers.items()):
                if data.get(name) is tensor:
                    data[name] = _map_file(self._raw_path(name), tensor.numpy().dtype, tuple(tensor.shape), "c")
                    del self._buffers[name]
            self.drop_parts()

    # -- a first decode written straight into its raw file ----------------------------------------------------

    def decode_buffer(self, name: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
        """Where a first decode writes `name` (uint8 pixels). With a cache folder: the raw file being built,
        <entry>.<name>.raw.partial, memory-mapped shared: the decoded pixels are page-cache pages the kernel
        writes back to disk, never private memory of this process, so a dataset larger than memory decodes
        (it needs the disk space, checked here). The file is kept by an interrupted decode: the parts that
        were done are checked against it (part_done) and not decoded again. Without a cache folder (or where
        the file cannot be made) the pixels go to host memory, which must hold them; so do those of a dataset
        under RAW_MIN_BYTES, whose entry keeps them inside."""
        count, *image = shape
        needed = int(np.prod(shape, dtype=np.int64))
        if self.path is not None and needed >= RAW_MIN_BYTES:
            partial = self._raw_path(name).with_suffix(".raw.partial")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                exists = partial.is_file() and partial.stat().st_size == needed
                free = shutil.disk_usage(self.path.parent).free
                if not exists and needed > free:
                    raise DataError(f"decoding {count:,} images of {'x'.join(map(str, image))} from {what} needs "
                                    f"{needed / 2**30:.1f} GiB in the cache folder {self.path.parent}, which has "
                                    f"{free / 2**30:.1f} GiB free; free some, point data.cache_dir elsewhere, or "
                                    "lower data.image_size")
                tensor = _map_file(partial, np.dtype(np.uint8), tuple(shape), "r+" if exists else "w+")
                self._buffers[name] = tensor
                return tensor
            except OSError as exc:
                log.warning("Cannot decode into the cache folder %s (%s); decoding into memory", self.path.parent,
                            exc.strerror or exc)
        check_fits_in_host_memory(count, image[0], image[1], what)
        return torch.empty(shape, dtype=torch.uint8)

    def _finish_buffer(self, name: str) -> dict:
        """The decode_buffer's .partial file, complete, renamed to the entry's raw file and described."""
        tensor = self._buffers[name]
        array = tensor.numpy()
        if isinstance(getattr(array, "base", None), np.memmap):
            array.base.flush()
        raw = self._raw_path(name)
        info = {"file": raw.name, "dtype": str(tensor.dtype), "shape": list(tensor.shape), "sha256": _sha256(array)}
        os.replace(raw.with_suffix(".raw.partial"), raw)
        return info

    def part_done(self, index: int, part: torch.Tensor) -> dict | None:
        """What mark_part_done recorded for part `index` of an interrupted decode (its unreadable images and its
        files' record) when it was finished and `part` (its rows of the decode_buffer) still holds what was
        decoded; else None. Only a decode into the raw file can go on (one in memory is under RAW_MIN_BYTES, or
        has no cache folder)."""
        if not self._buffers:
            return None
        marker = self.load_part(index)
        if marker is None or marker.pop("sha256", None) != _sha256(part.numpy()):
            return None
        return marker

    def mark_part_done(self, index: int, part: torch.Tensor, record: dict) -> None:
        """Records that part `index` is decoded into `part` (the SHA-256 of its bytes, under the HMAC), with
        `record` (its unreadable images, its files' signatures and digests)."""
        if self._buffers:
            self.save_part(index, {"sha256": _sha256(part.numpy()), **record})

    # -- parts of a decode in progress: an interrupted first decode goes on where it stopped ---------------
    # Each part (a chunk of decoded images) is an entry of its own, checked like the whole one, in
    # <entry>.parts/; the whole entry replaces them when the decode completes.

    @property
    def parts_dir(self) -> Path | None:
        return self.path.with_name(self.path.name.removesuffix(".pt") + ".parts") if self.path is not None else None

    def load_part(self, index: int) -> dict | None:
        path = self.parts_dir / f"{index:06d}.pt" if self.parts_dir is not None else None
        return self._read(path, f"{self.key}/part{index}", quiet=True) if path is not None and path.exists() else None

    def save_part(self, index: int, data: dict) -> None:
        if self.parts_dir is None:
            return
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        self._write(self.parts_dir / f"{index:06d}.pt", f"{self.key}/part{index}", data)

    def drop_parts(self) -> None:
        if self.parts_dir is not None and self.parts_dir.is_dir():
            for part in self.parts_dir.glob("*"):
                part.unlink(missing_ok=True)
            try:
                self.parts_dir.rmdir()
            except OSError:
                pass
