"""The `data=` config group's objects: a dataset read once, split honestly, served from the device.

`ImageData.setup()` reads the decoded images (through the cache), derives whatever splits the
dataset does not ship (a stratified, seeded fraction of train for val; of everything for test in the
flat layout), applies class selection and per-class caps, and computes the normalization on train.
The splits depend on `split_seed` only, never on the training `seed`: changing the seed of a run
(or of an ensemble member) never changes which images are validated or tested on.

With `folds=k` (k-fold cross-validation) every split the reader returned is pooled and cut into k
stratified folds; fold `fold` is the test split and the other folds are train, from which val is held
out as usual. With `group_regex` the folds and the val holdout keep each group (subject) whole.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .. import registry
from ..errors import ConfigError, DataError
from ..value_checks import MAX_IMAGE_SIZE, check_value, require
from .cifar100 import CIFAR100_LABELS, read_cifar100
from .decoding import read_folder, read_listed
from .digits import read_digits
from .fer2013_csv import read_fer2013_csv
from .loader import DeviceLoader
from .memory import device_budget_bytes
from .raw import SPLITS, RawData, Split
from .splits import assign_folds, group_holdout, limit_per_class, stratified_holdout

log = logging.getLogger(__name__)


NORMALIZATION_CHUNK = 4096  # images at a time: a float64 copy of a whole split would cost 8 bytes a pixel


def channel_mean_std(split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and (sample) standard deviation of a split's uint8 images, in [0, 1], from each
    channel's histogram of the 256 pixel values, counted over chunks of the split (views of a memory-mapped
    source where they can be): exact, about 10x faster than float64 statistics, never a copy of the split.
    (6 s for 220k images of 96x96 RGB on 2 cores; data.mean and data.std given skip it.)"""
    channels = split.source.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.int64)
    for chunk in split.chunks(NORMALIZATION_CHUNK):
        for c in range(channels):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.float64)
    n = counts.sum(1).double()
    mean = (counts * values).sum(1) / n
    variance = (counts * (values - mean[:, None]).square()).sum(1) / (n - 1).clamp(min=1)
    return (mean / 255).tolist(), (variance.sqrt() / 255).tolist()


class ImageData:
    """Base of every dataset config; subclasses implement `read()`."""

    def __init__(self, *, channels: int, image_size: int, batch_size: int = 128, eval_batch_size: int = 512,
                 val_split: float = 0.1, test_split: float = 0.1, split_seed: int = 0,
                 classes: list[str] | None = None, per_class_limit: Mapping | None = None,
                 balanced: bool = False, mean: list[float] | None = None, std: list[float] | None = None,
                 max_device_bytes: float | None = None, cache_dir: str | None = None, folds: int | None = None,
                 fold: int = 0, group_regex: str | None = None):
        folds_ok = folds is None or (type(folds) is int and folds >= 2)  # type(): not a bool, not a float
        for ok, key, value, rule in [
            (channels in (1, 3), "data.channels", channels, "must be 1 or 3"),
            # the range a checkpoint's meta.data.image_size must be in (checkpoint_file._META_RULES)
            (8 <= image_size <= MAX_IMAGE_SIZE, "data.image_size", image_size, f"must be in [8, {MAX_IMAGE_SIZE}]"),
            (batch_size >= 1, "data.batch_size", batch_size, "must be at least 1"),
            (eval_batch_size >= 1, "data.eval_batch_size", eval_batch_size, "must be at least 1"),
            (0 <= val_split < 1, "data.val_split", val_split, "must be in [0, 1)"),
            (0 <= test_split < 1, "data.test_split", test_split, "must be in [0, 1)"),
            (folds_ok, "data.folds", folds, "must be null (no cross-validation) or an integer >= 2"),
            # A fold without folds would silently train the same split in every job of a fold sweep.
            (type(fold) is int and (0 <= fold < folds if folds_ok and folds else fold == 0), "data.fold", fold,
             "must be in [0, data.folds)" if folds else "needs data.folds (cross-validation is off)"),
            (group_regex is None or folds is not None, "data.group_regex", group_regex,
             "needs data.folds: groups are only used to keep them whole in cross-validation folds"),
            (max_device_bytes is None or max_device_bytes >= 0, "data.max_device_bytes", max_device_bytes,
             "must be null (half the GPU's memory) or >= 0"),
            (mean is None or len(mean) == channels, "data.mean", mean, f"needs one value per channel ({channels})"),
            (std is None or (len(std) == channels and all(s > 0 for s in std)), "data.std", std,
             f"needs one value > 0 per channel ({channels})"),
        ]:
            require(ok, key, value, rule)
        self.channels, self.image_size = channels, image_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_split, self.test_split, self.split_seed = val_split, test_split, split_seed
        self.selected_classes = list(classes) if classes else None
        self.per_class_limit = _check_per_class_limit(per_class_limit)
        self.balanced = balanced
        self.mean, self.std = mean, std
        self.max_device_bytes, self.cache_dir = max_device_bytes, cache_dir
        self.folds, self.fold = folds, fold
        try:
            self.group_regex = re.compile(group_regex) if group_regex is not None else None
        except re.error as exc:
            raise ConfigError(f"data.group_regex={group_regex} is invalid: it is not a regular expression "
                              f"({exc})") from None
        self.classes: list[str] = []
        self.splits: dict[str, Split] = {}

    def read(self) -> RawData:
        raise NotImplementedError

    # -- building the splits -------------------------------------------------------------------------

    def setup(self) -> ImageData:
        raw = self.read()
        splits = dict(raw.splits)
        if self.folds:
            splits = self._cross_validation_fold(splits, raw.classes)
        elif "all" in splits:  # no shipped splits: hold out test, then val, both stratified and seeded
            rest = splits.pop("all")
            if self.test_split > 0:
                keep, held = stratified_holdout(rest.labels, self.test_split, self.split_seed)
                rest, splits["test"] = rest.subset(keep), rest.subset(held)
            splits["train"] = rest
        if "val" not in splits and self.val_split > 0:
            train = splits["train"]
            if self.group_regex:  # a subject in both train and val would make val (and selection) optimistic
                keep, held = group_holdout(train.labels, self._group_ids(train), self.val_split, self.split_seed + 1)
            else:
                keep, held = stratified_holdout(train.labels, self.val_split, self.split_seed + 1)
            splits["train"], splits["val"] = splits["train"].subset(keep), splits["train"].subset(held)
        self.classes = raw.classes
        if self.selected_classes:
            splits = self._select_classes(splits, raw.classes)
        for name, limit in self.per_class_limit.items():
            if name in splits:
                splits[name] = splits[name].subset(
                    limit_per_class(splits[name].labels, self.classes, limit, self.split_seed + 2))
        self.splits = {name: s for name, s in splits.items() if len(s)}
        if "val" not in self.splits:
            log.warning("No validation split (data.val_split=0): the last epoch is kept, nothing is selected")
        if "test" not in self.splits:
            log.warning("No test split: the run ends without a test evaluation")
        self._set_normalization()
        sizes = ", ".join(f"{name} {len(self.splits[name])}" for name in ("train", "val", "test")
                          if name in self.splits)
        log.info("Data: %d classes (%s); %s images of %dx%dx%d", len(self.classes), ", ".join(self.classes),
                 sizes, self.channels, self.image_size, self.image_size)
        return self

    def _cross_validation_fold(self, splits: dict[str, Split], classes: list[str]) -> dict[str, Split]:
        """Pools every split the reader returned (a shipped val/ and test/ too, so that the k test parts
        partition the whole dataset) and returns fold `fold` as test, the other folds as train."""
        pool = Split.concat(list(splits.values()))
        counts = torch.bincount(pool.labels, minlength=len(classes)).tolist()
        # Only the classes trained on matter (unknown data.classes names are reported by _select_classes).
        used = [classes.index(c) for c in self.selected_classes or classes if c in classes]
        smallest = min(used, key=counts.__getitem__, default=None)
        if smallest is not None and counts[smallest] < self.folds:
            raise DataError(f"data.folds={self.folds} is more than the {counts[smallest]} images of class "
                            f"{classes[smallest]!r}: every fold needs one to test; lower data.folds")
        groups = self._group_ids(pool) if self.group_regex else None
        n_groups = len(set(groups)) if groups else 0
        if groups and n_groups < self.folds:
            raise DataError(f"data.folds={self.folds} is more than the {n_groups} groups data.group_regex="
                            f"{self.group_regex.pattern} finds: every fold needs one; lower data.folds")
        fold_of = assign_folds(pool.labels, self.folds, self.split_seed, groups)
        test = pool.subset((fold_of == self.fold).nonzero().flatten())
        log.info("Cross-validation: fold %d of %d (data.split_seed=%d%s) is the test split, %d of %d pooled "
                 "images; train and val come from the other %d", self.fold, self.folds, self.split_seed,
                 f", {n_groups} groups by data.group_regex" if groups else "", len(test), len(pool),
                 len(pool) - len(test))
        return {"train": pool.subset((fold_of != self.fold).nonzero().flatten()), "test": test}

    def _group_ids(self, split: Split) -> list[str]:
        """Each image's group: group_regex searched in its file's base name; the first capture group, or
        the whole match when the pattern has none."""
        ids = []
        for file in split.files:
            match = self.group_regex.search(os.path.basename(file))
            group = match and match.group(1 if self.group_regex.groups else 0)
            if group is None:
                raise DataError(f"{file}: its name does not match data.group_regex={self.group_regex.pattern}, "
                                "so it has no group; fix the pattern or the file name")
            ids.append(group)
        return ids

    def _select_classes(self, splits: dict[str, Split], available: list[str]) -> dict[str, Split]:
        unknown = [c for c in self.selected_classes if c not in available]
        if unknown:
            raise ConfigError(f"data.classes names {unknown[0]!r}, which is not a class of the dataset "
                              f"({', '.join(available)})")
        old_to_new = torch.full((len(available),), -1, dtype=torch.long)
        for new, name in enumerate(self.selected_classes):
            old_to_new[available.index(name)] = new
        self.classes = list(self.selected_classes)
        out = {}
        for name, split in splits.items():
            kept = split.subset((old_to_new[split.labels] >= 0).nonzero().flatten())
            kept.labels = old_to_new[kept.labels]
            out[name] = kept
        return out

    def _set_normalization(self) -> None:
        """Per-channel mean/std of the training images in [0, 1], unless given in the config."""
        if self.mean is None or self.std is None:
            mean, std = channel_mean_std(self.splits["train"])
            self.mean = mean if self.mean is None else self.mean
            self.std = [s if s > 1e-6 else 1.0 for s in std] if self.std is None else self.std
        for key, values in (("data.mean", self.mean), ("data.std", self.std)):
            if len(values) != self.channels:
                raise ConfigError(f"{key}={list(values)} needs one value per channel ({self.channels})")

    # -- what the trainer uses -----------------------------------------------------------------------

    @property
    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.splits["train"].labels, minlength=len(self.classes))

    def train_loader(self, device: torch.device | str, seed: int, split: Split | None = None) -> DeviceLoader:
        """Shuffled batches of the train split (or of `split`, a part of it: trainer.overfit_batches)."""
        budget = device_budget_bytes(torch.device(device), self.max_device_bytes)
        loader = DeviceLoader(self.splits["train"] if split is None else split, self.batch_size, device, shuffle=True,
                              balanced=self.balanced, drop_last=True, seed=seed, budget_bytes=budget)
        if not loader.on_device:
            log.warning("The training split (%.2f GiB) is over the device budget (%.2f GiB, data.max_device_bytes): "
                        "it stays in host memory and batches are copied to %s", loader.split.nbytes / 2**30,
                        budget / 2**30, device)
        return loader

    def eval_loader(self, split: str, device: torch.device | str) -> DeviceLoader | None:
        if split not in self.splits:
            return None
        return DeviceLoader(self.splits[split], self.eval_batch_size, device)

    def describe(self) -> dict:
        """What a checkpoint stores so that evaluate/predict can preprocess new images the same way."""
        return {"classes": list(self.classes), "channels": self.channels, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std)}


def _check_per_class_limit(limits: Mapping | None) -> dict:
    """{split: N or {class: N}} with N a positive integer (a negative one would silently act as a slice)."""
    if not limits:
        return {}
    checked = {}
    for split, limit in limits.items():
        key = f"data.per_class_limit.{split}"
        if split not in ("train", "val", "test"):
            raise ConfigError(f"data.per_class_limit has key {split!r}; use train, val or test")
        caps = limit.items() if isinstance(limit, Mapping) else [(None, limit)]
        for name, cap in caps:
            check_value(f"{key}.{name}" if name is not None else key, cap, int, lambda n: n >= 1,
                        "a positive integer (or a mapping from class name to one)")
        checked[split] = dict(limit) if isinstance(limit, Mapping) else limit
    return checked


class ImageListData(ImageData):
    """Base of a dataset reader that lists image files with their labels (RAF-DB's label list, AffectNet's
    CSV, a manifest of your own): a subclass implements `list_images()`, and the runner decodes the files in
    parallel through the decode-once cache, then splits, k-folds and groups them like any dataset. Paths are
    absolute or relative to `root`; split names are train, val, test, or all when the dataset ships no
    splits (val and test are then drawn from it). A reader of images that are not files overrides `read()`
    instead and returns a RawData of uint8 tensors (docs/plugins.md)."""

    def __init__(self, root: str, on_bad_image: str = "error", **kwargs):
        super().__init__(**kwargs)
        if on_bad_image not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_image={on_bad_image} is invalid: use error or skip")
        if root is None or str(root) in ("", "???"):
            raise ConfigError("data.root is not set: pass data.root=PATH to your dataset folder")
        self.root, self.on_bad_image = root, on_bad_image

    def list_images(self) -> tuple[list[str], list[tuple[str, str, str]]]:
        """(class names in label order, [(split, class name, image path), ...])."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement list_images() (or read())")

    def read(self) -> RawData:
        root = Path(self.root).expanduser().absolute()  # one cache entry and one file naming, whatever the cwd
        classes, listed = self.list_images()
        what = f"{type(self).__qualname__}.list_images()"
        if not classes or len(set(classes)) != len(classes):
            raise DataError(f"{what} gave the classes {classes}: they must be distinct names, at least one")
        index = {name: i for i, name in enumerate(classes)}
        entries = []
        for split, name, path in listed:
            if split not in (*SPLITS, "all"):
                raise DataError(f"{what} put {path} in the split {split!r}: use train, val, test or all")
            if name not in index:
                raise DataError(f"{what} labelled {path} {name!r}, which is not one of its classes "
                                f"({', '.join(classes)})")
            entries.append((split, index[name], str(path if Path(path).is_absolute() else root / path)))
        splits = {split for split, _, _ in entries}
        if not ({"train", "all"} & splits) or {"train", "all"} <= splits:
            raise DataError(f"{what} gave the splits {sorted(splits)}: it needs train (with val and test optional) "
                            "or all")
        kind = registry.full_name(type(self))
        return read_listed(kind, root, classes, entries, self.channels, self.image_size, self.cache_dir,
                           self.on_bad_image)


class FolderData(ImageListData):
    """root/{train,val,test}/<class>/<image> (val and test optional) or root/<class>/<image>: the folders are
    the list (decoding.read_folder scans them)."""

    def read(self) -> RawData:
        return read_folder(self.root, self.channels, self.image_size, self.cache_dir, self.on_bad_image)


class Fer2013Data(FolderData):
    """FER2013 in the folder release (train/val/test = Training/PublicTest/PrivateTest) or Kaggle's CSV."""

    def __init__(self, root: str, csv: str | None = None, **kwargs):
        super().__init__(root, **kwargs)
        self.csv = csv

    def read(self) -> RawData:
        if self.csv:
            return read_fer2013_csv(self.csv, self.channels, self.image_size, self.cache_dir)
        if not Path(self.root).expanduser().is_dir():
            raise DataError(
                f"FER2013 not found at {os.path.abspath(os.path.expanduser(self.root))}: unpack fer2013.tar.gz "
                "so that this folder holds train/ val/ test/, or point elsewhere with DATA_DIR=<folder holding "
                "fer2013/>, data.root=PATH, or data.csv=PATH/fer2013.csv")
        return super().read()


class Cifar100Data(ImageData):
    """CIFAR-100 (Krizhevsky 2009) from its python-pickle release in root/cifar-100-python/, with the
    100 fine or the 20 coarse (superclass) labels; downloaded through torchvision when missing and
    `download` is true. Val is a stratified fraction of train (val_split); test is the official test set."""

    def __init__(self, root: str, label_type: str = "fine", download: bool = True, **kwargs):
        super().__init__(**kwargs)
        if label_type not in CIFAR100_LABELS:
            raise ConfigError(f"data.label_type={label_type} is invalid: use fine or coarse")
        self.root, self.label_type, self.download = root, label_type, download

    def read(self) -> RawData:
        return read_cifar100(self.root, self.label_type, self.channels, self.image_size, self.download)


class DigitsData(ImageData):
    """scikit-learn's bundled handwritten digits (1,797 real images, 10 classes), no download needed."""

    def read(self) -> RawData:
        return read_digits(self.channels, self.image_size)
