"""Datasets, the decode-once cache, honest splits, device-resident batches and batched augmentation."""
from ..registry import declare_base, register
from .augment import Augment
from .datasets import Cifar100Data, DigitsData, Fer2013Data, FolderData, ImageData, ImageListData
from .loader import DeviceLoader
from .raw import RawData, Split

# The runner's own dataset classes: what a checkpoint's stored data config may name (src/registry.py). The data
# configs name them by this package's re-export (src.data.FolderData), checkpoints store that name.
for _cls in (FolderData, Fer2013Data, DigitsData, Cifar100Data):
    register("data", _cls, aliases=[f"{__name__}.{_cls.__name__}"])

declare_base("data", ImageData)  # a plugin module's ImageData subclasses are datasets

__all__ = ["Augment", "Cifar100Data", "DeviceLoader", "DigitsData", "Fer2013Data", "FolderData",
           "ImageData", "ImageListData", "RawData", "Split"]
