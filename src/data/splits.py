"""Seeded, stratified index selection: held-out fractions and per-class caps."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import DataError


def _class_indices(labels: torch.Tensor, generator: torch.Generator) -> dict[int, torch.Tensor]:
    """For each class present, its sample indices in a seeded random order."""
    out = {}
    for c in labels.unique().tolist():
        index = (labels == c).nonzero().flatten()
        out[c] = index[torch.randperm(len(index), generator=generator)]
    return out


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits indices into (kept, held_out), holding out round(fraction * n_c) samples of each class c.

    Every class keeps at least one sample; both results are sorted.
    """
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for index in _class_indices(labels, generator).values():
        n_held = min(int(round(fraction * len(index))), len(index) - 1)
        held.append(index[:n_held])
        kept.append(index[n_held:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def limit_per_class(labels: torch.Tensor, classes: list[str], limit: int | Mapping[str, int],
                    seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random draw of at most `limit` samples per class.

    `limit` is one number for every class or a mapping from class name to number (classes it does
    not name are kept whole).
    """
    if isinstance(limit, Mapping):
        unknown = sorted(set(limit) - set(classes))
        if unknown:
            raise DataError(f"data.per_class_limit names class {unknown[0]!r}, which is not one of "
                            f"{', '.join(classes)}")
        caps = {classes.index(name): n for name, n in limit.items()}
    else:
        caps = dict.fromkeys(range(len(classes)), limit)
    generator = torch.Generator().manual_seed(seed)
    chosen = [index[: caps.get(c, len(index))] for c, index in _class_indices(labels, generator).items()]
    return torch.cat(chosen).sort().values
