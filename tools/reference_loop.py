#!/usr/bin/env python3
"""The yardstick: training throughput of a plain-PyTorch loop, to measure the project's trainer against.

A speed-up only means something next to what the same machine does with the same model and data
without this project. This script is that baseline, in two modes:

  seed  the typical course-project pipeline: torchvision ImageFolder, per-sample PIL transforms
        (grayscale or RGB, resize, horizontal flip, rotation ±10°, ToTensor, Normalize 0.5/0.5),
        a DataLoader with worker processes, a plain fp32 loop with SGD (lr 0.01, momentum 0.9,
        weight decay 5e-4).
  bare  the compute ceiling of the device: every image decoded once into one float tensor
        beforehand, batches gathered by index, no augmentation, the same fp32 loop.

It measures images per second of training: the wall time of each batch (loading it, forward,
backward, optimizer step; on a GPU up to a synchronize), summed over all batches after the first
`--warmup-batches`, which pay for worker start-up, allocator growth and kernel selection.

It deliberately imports nothing from the rest of `src` (a yardstick must not share the code it
measures), only PyTorch and torchvision; `--model-yaml` alone uses Hydra, to build any of the
project's conf/model/NAME.yaml models. It lives in the repository so that a clone can measure itself;
it is the project's own implementation of the yardstick the development machines keep outside the
repository, and on the same machine, model and data the two give the same figures.

Prints one JSON line: {"mode", "model", "device", "images", "train_s", "images_per_s"}.

Examples, from the repository's root:

    python tools/reference_loop.py --root ~/datasets/fer2013/train --mode seed --model-yaml conf/model/lenet.yaml
    python -m tools.reference_loop --root ~/datasets/fer2013/train --mode bare --model resnet18 --limit-batches 6
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets, models, transforms

# --- models -------------------------------------------------------------------------------------


def lenet(num_classes: int, in_channels: int, size: int) -> nn.Module:
    """LeNet-5 as course projects write it: no pooling to a fixed size, so the first fully connected
    layer takes the flattened map of whatever input size."""
    side = (size // 2 - 4) // 2  # conv 5x5 padded keeps the size, pool halves it, conv 5x5 takes 4, pool halves
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def resnet18_cifar(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool), the usual choice
    for small images: the ImageNet stem would shrink 48x48 to 12x12 before the first block."""
    model = models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def yaml_model(path: str, num_classes: int, in_channels: int) -> nn.Module:
    """A project model config (conf/model/NAME.yaml), built as the project's trainer builds it."""
    # Imported here: Hydra is needed for this option only.
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    # The configs' targets are src.models.*: a clone that was not pip-installed finds them from its root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    return instantiate(OmegaConf.load(path), num_classes=num_classes, in_channels=in_channels)


# --- data ---------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    # A named function, not a lambda: DataLoader workers may need to pickle the transform.
    return image.convert("RGB")


def seed_batches(args: argparse.Namespace) -> tuple[int, torch.utils.data.DataLoader]:
    """(number of classes, batches) of the typical pipeline: every sample decoded and augmented in
    Python, per epoch, in DataLoader workers."""
    channels = args.channels
    transform = transforms.Compose([
        transforms.Grayscale(1) if channels == 1 else transforms.Lambda(to_rgb),
        transforms.Resize(args.size),  # the shorter side, as course projects write it (FER2013 is square)
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(10),
        transforms.ToTensor(),
        transforms.Normalize([0.5] * channels, [0.5] * channels),
    ])
    folder = datasets.ImageFolder(args.root, transform=transform)
    loader = torch.utils.data.DataLoader(folder, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    return len(folder.classes), loader


class IndexBatches:
    """Shuffled full batches gathered by index from tensors in memory: a new order every epoch, the
    last partial batch dropped (as the seed mode's DataLoader does)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int):
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.labels))
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.images[index], self.labels[index]


def bare_batches(args: argparse.Namespace) -> tuple[int, IndexBatches]:
    """(number of classes, batches) with all decoding done before training: what is left to time is
    the model's step, plus one gather per batch."""
    folder = datasets.ImageFolder(args.root)
    mode = "L" if args.channels == 1 else "RGB"
    pixels = []
    for path, _ in folder.samples:
        with Image.open(path) as image:
            pixels.append(np.asarray(image.convert(mode).resize((args.size, args.size))))
    # Decoded pixels are (H, W[, C]); the NCHW tensor is a view of them, so with 3 channels the batches
    # are channels_last in memory (the float conversion keeps the strides) -- a layout that changes conv
    # speed, and the one the development machines' yardstick's batches have too.
    images = torch.from_numpy(np.stack(pixels)).view(-1, args.size, args.size, args.channels).permute(0, 3, 1, 2)
    images = (images.float() / 255 - 0.5) / 0.5  # Normalize(0.5, 0.5), as in the seed mode
    return len(folder.classes), IndexBatches(images, torch.tensor(folder.targets), args.batch_size)


# --- the measurement ----------------------------------------------------------------------------


def train(model: nn.Module, batches, args: argparse.Namespace) -> tuple[int, float]:
    """Train for `args.epochs` epochs; returns (images, seconds) of the timed batches.

    Each batch's time runs from the end of the one before (or the epoch's start, so the first batch
    also pays for starting the epoch's iterator) to the end of its optimizer step: the loading time
    the step did not hide is counted. The first `args.warmup_batches` of the run are not timed.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    on_gpu = args.device.startswith("cuda")
    timed_images, timed_s, done = 0, 0.0, 0
    model.train()
    for _ in range(args.epochs):
        start = time.perf_counter()
        for images, labels in itertools.islice(batches, args.limit_batches or None):
            images = images.to(args.device, non_blocking=True)
            labels = labels.to(args.device, non_blocking=True)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_gpu:  # kernels run asynchronously: wait for this batch's before reading the clock
                torch.cuda.synchronize(args.device)
            end = time.perf_counter()
            done += 1
            if done > args.warmup_batches:
                timed_images += len(labels)
                timed_s += end - start
            start = end
    return timed_images, timed_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="ImageFolder root of the training split (root/CLASS/*.png|jpg)")
    parser.add_argument("--mode", choices=["seed", "bare"], default="seed")
    parser.add_argument("--model", choices=["lenet", "resnet18"], default="lenet", help="a built-in model")
    parser.add_argument("--model-yaml", help="a project model config instead, e.g. conf/model/lenet.yaml")
    parser.add_argument("--channels", type=int, default=1, help="1: grayscale, 3: RGB")
    parser.add_argument("--size", type=int, default=48, help="input side in pixels")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (seed mode)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit-batches", type=int, default=0, help="stop each epoch after this many batches (0: all)")
    parser.add_argument("--warmup-batches", type=int, default=2, help="batches not timed at the start of the run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    num_classes, batches = (seed_batches if args.mode == "seed" else bare_batches)(args)
    if args.model_yaml:
        model = yaml_model(args.model_yaml, num_classes, args.channels)
    elif args.model == "lenet":
        model = lenet(num_classes, args.channels, args.size)
    else:
        model = resnet18_cifar(num_classes, args.channels)
    model = model.to(args.device)
    # One untimed forward pass materialises lazy layers (a project model may have some) before the
    # optimizer is given the parameters.
    with torch.no_grad():
        model(torch.zeros(2, args.channels, args.size, args.size, device=args.device))

    images, seconds = train(model, batches, args)
    print(json.dumps({
        "mode": args.mode,
        "model": Path(args.model_yaml).name if args.model_yaml else args.model,
        "device": args.device,
        "images": images,
        "train_s": round(seconds, 3),
        "images_per_s": round(images / seconds, 1) if seconds else None,
    }))


if __name__ == "__main__":
    main()
