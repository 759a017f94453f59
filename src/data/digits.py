"""Reading scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no download) into uint8 tensors."""
from __future__ import annotations

import numpy as np
import torch

from .images import resize_uint8, to_channels
from .memory import check_fits_in_host_memory
from .raw import RawData, Split

# scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, no download


def read_digits(channels: int, image_size: int) -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    check_fits_in_host_memory(len(digits.images), channels, image_size, "scikit-learn's digits")
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    images = to_channels(resize_uint8(images, image_size), channels)
    labels = torch.from_numpy(digits.target).long()
    files = [f"digits[{i}]" for i in range(len(labels))]
    return RawData([str(d) for d in digits.target_names], {"all": Split(images, labels, files)})
