"""The types every dataset reader returns: a `RawData` holds the class names and, per split name, a `Split` of
decoded uint8 images with their labels and files."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Split names are "train", "val", "test" when the dataset ships its own splits, or "all" when it does not (the flat
# folder layout, digits); `ImageData` then draws val/test from it.
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Images with their labels and files. `source` holds the pixels, (M, C, H, W) uint8; with `rows`, the
    split is those rows of it, in that order (a subset of a decoded, perhaps memory-mapped, dataset larger
    than memory: its pixels are gathered batch by batch, never copied whole); without, all of it."""
    source: torch.Tensor
    labels: torch.Tensor  # (N,) int64, indices into RawData.classes
    files: list[str]      # where each image came from, for predictions and error messages
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def run(self) -> slice | None:
        """The split's rows of its source as a slice when they are consecutive (a split folder of a dataset
        decoded whole), else None."""
        if self.rows is None:
            return slice(0, len(self.source))
        if len(self.rows) and int(self.rows[-1]) - int(self.rows[0]) + 1 == len(self.rows) and bool(
                (self.rows.diff() == 1).all()):
            return slice(int(self.rows[0]), int(self.rows[-1]) + 1)
        return None

    @property
    def images(self) -> torch.Tensor:
        """The split's pixels as one (N, C, H, W) tensor: a view of the source when its rows are consecutive,
        else a copy (for evaluation and figures; training gathers batch by batch, see `gather`)."""
        run = self.run
        return self.source[run] if run is not None else self.source[self.rows]

    @property
    def nbytes(self) -> int:
        return len(self) * self.source[0].nbytes if len(self.source) else 0

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """The pixels of the split's images `index` (positions in the split), gathered from the source."""
        return self.source[index if self.rows is None else self.rows.to(index.device)[index]]

    def chunks(self, size: int):
        """The pixels in order, `size` images at a time: views of the source where the rows are consecutive,
        else a bounded copy each."""
        run = self.run
        for start in range(0, len(self), size):
            if run is not None:
                yield self.source[run.start + start:min(run.start + start + size, run.stop)]
            else:
                yield self.gather(torch.arange(start, min(start + size, len(self))))

    def subset(self, index: torch.Tensor) -> Split:
        """The images `index` (positions in this split): the same source, their rows of it; nothing copied."""
        rows = index if self.rows is None else self.rows[index]
        return Split(self.source, self.labels[index], [self.files[i] for i in index.tolist()], rows)

    @staticmethod
    def concat(parts: list[Split]) -> Split:
        """The splits one after the other: rows of their common source (as the splits of one decoded dataset
        are), or copied into a new one."""
        labels, files = torch.cat([s.labels for s in parts]), [file for s in parts for file in s.files]
        if all(s.source is parts[0].source for s in parts):
            rows = [torch.arange(len(s.source)) if s.rows is None else s.rows for s in parts]
            return Split(parts[0].source, labels, files, torch.cat(rows))
        return Split(torch.cat([s.images for s in parts]), labels, files)


@dataclass
class RawData:
    classes: list[str]
    splits: dict[str, Split]
