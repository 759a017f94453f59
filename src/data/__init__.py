"""Datasets, the decode-once cache, honest splits, device-resident batches and batched augmentation."""
from .augment import Augment
from .datamodule import Cifar100Data, DigitsData, Fer2013Data, FolderData, ImageData
from .loader import DeviceLoader
from .sources import RawData, Split

__all__ = ["Augment", "Cifar100Data", "DeviceLoader", "DigitsData", "Fer2013Data", "FolderData", "ImageData",
           "RawData", "Split"]
