"""Memory budgets: decoded datasets must fit in host memory (checked before decoding), and live on
the training device only when they fit its budget (otherwise batches are gathered from host memory)."""
from __future__ import annotations

import os

import torch

from ..errors import DataError

# Leave room for the model, activations and everything else the process and the system need.
HOST_FRACTION = 0.6
DEVICE_FRACTION = 0.5


def available_host_bytes() -> int:
    """Memory available to new allocations (Linux MemAvailable; elsewhere the free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits_in_host_memory(count: int, channels: int, size: int, what: str) -> None:
    """Raises DataError before decoding when `count` decoded images would not fit in memory."""
    needed = count * channels * size * size
    available = available_host_bytes()
    if needed > HOST_FRACTION * available:
        raise DataError(f"decoding {count:,} images of {channels}x{size}x{size} from {what} needs "
                        f"{needed / 2**30:.1f} GiB, more than {HOST_FRACTION:.0%} of the {available / 2**30:.1f} GiB "
                        "of memory available; lower data.image_size, use data.channels=1, or select fewer "
                        "images (data.classes, data.per_class_limit)")


def device_budget_bytes(device: torch.device, max_device_bytes: float | None = None) -> int | None:
    """How many bytes of dataset may live on `device`: `max_device_bytes`, or half of the GPU's free memory
    (not of its total: another process or the previous job of a sweep worker may hold some of it). On the
    CPU the split is in host memory anyway; what the budget decides there is whether a split of scattered
    rows of the (memory-mapped) decoded dataset is gathered once into a copy of its own (up to
    HOST_FRACTION of the available memory) or batch by batch."""
    if max_device_bytes is not None:
        return int(max_device_bytes)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(DEVICE_FRACTION * free)
    return int(HOST_FRACTION * available_host_bytes())
