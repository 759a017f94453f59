"""Reading CIFAR-100's python-pickle release into uint8 tensors (downloading it with torchvision when asked), through an
unpickler that refuses anything the release does not hold."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..fileio import open_regular
from .images import resize_uint8, to_channels
from .memory import check_fits_in_host_memory
from .raw import RawData, Split

log = logging.getLogger(__name__)

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
            check_fits_in_host_memory(len(pixels), channels, image_size, f"{folder / name}")
            images = torch.from_numpy(np.ascontiguousarray(pixels).reshape(-1, 3, 32, 32))
            labels = _release_labels(batch, labels_key, folder / name, len(images), len(classes))
            files = [f"{CIFAR100_FOLDER}/{name}[{i}]" for i in range(len(labels))]
            splits[name] = Split(to_channels(resize_uint8(images, image_size), channels), labels, files)
    except (OSError, KeyError) as exc:
        raise DataError(f"{folder} is not the CIFAR-100 python release ({type(exc).__name__}: {exc})") from None
    return RawData(list(classes), splits)
