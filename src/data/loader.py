"""Batches gathered by index from a split that lives, decoded, on the training device.

This replaces Dataset + DataLoader for data that fits in device memory (FER2013 is 83 MB as uint8):
no worker processes, no per-sample Python, no host-to-device copy per batch.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .raw import Split


def shard_order(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of an epoch's sample order: every world_size-th position from `rank` on, over
    the first len(order) // world_size * world_size positions. The shares are disjoint and of equal
    length (ranks must take the same number of steps); the remainder, fewer than world_size samples at
    the end of the order, is dropped (other samples each epoch, as the order is drawn anew). Strided
    rather than contiguous: the global batch b (batch b of every rank) is then positions
    [b * B * W, (b + 1) * B * W) of the order, the batch of one process with batch size B * W."""
    usable = len(order) // world_size * world_size
    return order[rank:usable:world_size]


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights inverse to class frequency: every class is drawn equally often."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()


class DeviceLoader:
    """Yields (uint8 images, labels) batches of a split held on `device`.

    Training order: a seeded permutation per epoch, or with `balanced`, `len(split)` draws with
    replacement weighted inverse to class frequency (torch's WeightedRandomSampler semantics).
    The order is drawn on the host with a CPU generator (reproducible on any device) and copied
    once per epoch. After `shard(rank, world_size)` (DistributedDataParallel) every rank draws the
    same order and serves only its share of it (see shard_order).
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device | str, *, shuffle: bool = False,
                 balanced: bool = False, drop_last: bool = False, seed: int = 0, budget_bytes: int | None = None):
        self.device = torch.device(device)
        # Over the device's budget the split stays in host memory (as it is: perhaps memory-mapped from the
        # decode cache) and each batch is gathered there and copied over; to a GPU through two pinned
        # staging buffers, so that one batch's copy overlaps the previous batch's step (_host_batches).
        # On the CPU "on the device" is a split of its own in host memory: the split as it is when its rows are
        # consecutive (a view, perhaps of the memory-mapped cache), else its rows gathered once.
        self.split = split
        self.on_device = budget_bytes is None or split.nbytes <= budget_bytes
        if self.on_device:
            self.images, self.labels = split.images.to(self.device), split.labels.to(self.device)
        else:
            self.images, self.labels = None, split.labels
        self._staging: list | None = None
        self.batch_size = batch_size
        self.shuffle = shuffle or balanced
        self.weights = balanced_weights(split.labels) if balanced else None
        self._drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> DeviceLoader:
        """Serve only the share of rank `rank` of every shuffled epoch (the training loader of a DDP run)."""
        if not self.shuffle:
            raise ValueError("only the shuffled training order is sharded (evaluation: distributed.map_shards)")
        self.rank, self.world_size = rank, world_size
        return self

    @property
    def samples(self) -> int:
        """Samples per epoch (of this rank's share)."""
        return len(self.labels) // self.world_size

    @property
    def drop_last(self) -> bool:
        # Dropping the last partial batch keeps batch-norm statistics sane, unless it is the only batch.
        return self._drop_last and self.samples >= self.batch_size

    def __len__(self) -> int:
        n = self.samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate()

    def iterate(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch `start` on (the order of a shuffled epoch is drawn in full first,
        so a resumed epoch skips exactly the batches it had done)."""
        n = len(self.labels)
        if not self.shuffle and self.on_device:  # evaluation order: slices, no gather
            for b in range(start, len(self)):
                batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
                yield self.images[batch], self.labels[batch]
            return
        if not self.shuffle:
            order = torch.arange(n)
        elif self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=self.generator)
        else:
            order = torch.randperm(n, generator=self.generator)
        if self.world_size > 1:
            order = shard_order(order, self.rank, self.world_size)
        if self.on_device:
            order = order.to(self.images.device)  # one copy per epoch
        batches = (order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(start, len(self)))
        if self.on_device:
            yield from ((self.images[index], self.labels[index]) for index in batches)
        else:
            yield from self._host_batches(batches)

    def _host_batches(self, indices: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches gathered from the split in host memory. To a GPU: gathered into one of two pinned staging
        buffers and copied asynchronously; a buffer is reused only after the copy out of it finished (its
        event), so gathering batch b+1 overlaps the copy and the step of batch b."""
        source, rows = self.split.source, self.split.rows
        if self.device.type != "cuda":
            yield from ((self.split.gather(index), self.labels[index]) for index in indices)
            return
        if self._staging is None:
            shape = (self.batch_size, *source.shape[1:])
            self._staging = [(torch.empty(shape, dtype=source.dtype).pin_memory(),
                              torch.empty(self.batch_size, dtype=self.labels.dtype).pin_memory(),
                              torch.cuda.Event()) for _ in range(2)]
        for b, index in enumerate(indices):
            images, labels, copied = self._staging[b % 2]
            copied.synchronize()  # the copy out of this buffer (two batches ago) is done
            n = len(index)
            torch.index_select(source, 0, index if rows is None else rows[index], out=images[:n])
            torch.index_select(self.labels, 0, index, out=labels[:n])
            batch = (images[:n].to(self.device, non_blocking=True), labels[:n].to(self.device, non_blocking=True))
            copied.record()
            yield batch
