"""Datasets, the decode-once cache, honest splits, device-resident batches and batched augmentation."""
from .augment import Augment
from .datamodule import Cifar100Data, DigitsData, Fer2013Data, FolderData, ImageData
from .loader import DeviceLoader
from .sources import RawData, Split

# The classes a data config may name: what a checkpoint's stored config is allowed to build (by class name).
DATASET_CLASSES = {cls.__name__: cls for cls in (FolderData, Fer2013Data, DigitsData, Cifar100Data)}

__all__ = ["DATASET_CLASSES", "Augment", "Cifar100Data", "DeviceLoader", "DigitsData", "Fer2013Data", "FolderData",
           "ImageData", "RawData", "Split"]
