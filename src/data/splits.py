"""Seeded, stratified index selection: held-out fractions, cross-validation folds and per-class caps."""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
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


def assign_folds(labels: torch.Tensor, k: int, seed: int, groups: Sequence[Hashable] | None = None) -> torch.Tensor:
    """The fold (0 .. k-1) of every sample: k folds as equal in size and class mix as the groups allow.

    Without `groups`: scikit-learn's StratifiedKFold (shuffled, seeded): fold sizes and the count of every
    class differ by at most 1 between folds. With groups (subjects), all samples of a group share a fold:
    groups are placed one at a time, largest first (equal sizes: by majority class, then in a seeded random
    order), each into the fold holding the fewest images of the group's majority class (ties: the smallest
    fold, then the lowest index). This is not StratifiedGroupKFold: it also works with fewer groups than
    folds (the validation holdout of group_holdout needs that) and is 15x faster (docs/design.md).
    """
    if groups is None:
        return _stratified_folds(labels, k, seed)
    label_list = labels.tolist()
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    majority = {}
    for group, index in members.items():
        counts = Counter(label_list[i] for i in index)
        majority[group] = max(counts, key=lambda c: (counts[c], -c))  # ties: the lowest class index
    names = list(members)
    generator = torch.Generator().manual_seed(seed)
    shuffled = [names[i] for i in torch.randperm(len(names), generator=generator).tolist()]
    order = sorted(shuffled, key=lambda g: (-len(members[g]), majority[g]))  # stable: keeps the seeded order
    per_class = [Counter() for _ in range(k)]
    sizes = [0] * k
    fold = torch.empty(len(label_list), dtype=torch.long)
    for group in order:
        c = majority[group]
        f = min(range(k), key=lambda f: (per_class[f][c], sizes[f], f))
        fold[members[group]] = f
        per_class[f].update(label_list[i] for i in members[group])
        sizes[f] += len(members[group])
    return fold


def _stratified_folds(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    import warnings

    from sklearn.model_selection import StratifiedKFold  # imported when folds are asked for, not at startup

    fold = torch.empty(len(labels), dtype=torch.long)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits": allowed
        warnings.simplefilter("ignore", UserWarning)
        for f, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels.numpy())):
            fold[torch.from_numpy(test)] = f
    return fold


def group_holdout(labels: torch.Tensor, groups: Sequence[Hashable], fraction: float,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits indices into (kept, held_out) holding out whole groups: one of round(1 / fraction) folds of
    `assign_folds` (a tenth for 0.1, a third for 0.3), as near in size and class mix as whole groups
    allow. Both results are sorted."""
    n_groups = len(set(groups))
    if n_groups < 2:
        raise DataError(f"data.val_split={fraction} holds out whole groups (data.group_regex), but the training "
                        f"part has only {n_groups} group; set data.val_split=0 or use more data.folds")
    fold = assign_folds(labels, max(2, round(1 / fraction)), seed, groups)
    return (fold != 0).nonzero().flatten(), (fold == 0).nonzero().flatten()


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
