"""k-fold cross-validation (data.folds, data.fold, data.group_regex): the folds partition the pooled
data, are stratified, keep groups (subjects) whole, depend on split_seed only, and train end to end."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from src.config import build
from src.data import DigitsData, FolderData
from src.data.splits import assign_folds
from src.errors import ConfigError, DataError
from src.training.experiment import train
from tests.helpers import CLASSES, class_image, fast_overrides, image_files, read_metrics

SUBJECT = r"^(S\d+)_"


def setup_fold(root: Path, cache_dir: Path, folds: int, fold: int, **kwargs) -> FolderData:
    kwargs = {"channels": 1, "image_size": 16, "val_split": 0.2, "test_split": 0.2, **kwargs}
    return FolderData(root=str(root), cache_dir=str(cache_dir), folds=folds, fold=fold, **kwargs).setup()


def files_by_split(data: FolderData) -> dict[str, list[str]]:
    return {name: list(split.files) for name, split in data.splits.items()}


def every_fold(root: Path, cache_dir: Path, folds: int, **kwargs) -> list[dict[str, list[str]]]:
    return [files_by_split(setup_fold(root, cache_dir, folds, fold, **kwargs)) for fold in range(folds)]


def subject(file: str) -> str:
    return re.search(SUBJECT, Path(file).name).group(1)


def write_subjects(root: Path, images: dict[int, list[int]], size: int = 16) -> Path:
    """root/<class>/S<subject>_<n>.png: images[s] lists subject s's images by class index."""
    rng = np.random.default_rng(0)
    for s, labels in images.items():
        for n, label in enumerate(labels):
            path = root / CLASSES[label] / f"S{s:03d}_{n:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(class_image(label, rng, size)).save(path)
    return root


# Ten subjects with 3 to 7 images each, of two or three classes: folds of whole subjects cannot be
# exactly equal, which is what the group tests are about.
SUBJECTS = {s: [(s + n) % 3 for n in range(3 + s % 5)] for s in range(10)}


def check_partition(folds: list[dict[str, list[str]]], everything: set[str]) -> None:
    """Every image is tested in exactly one fold, and in each fold train, val and test are disjoint and
    cover everything."""
    tests = [set(f["test"]) for f in folds]
    assert sum(len(t) for t in tests) == len(everything) and set().union(*tests) == everything
    for files in folds:
        parts = [set(files[name]) for name in ("train", "val", "test")]
        assert sum(map(len, parts)) == len(everything) and set().union(*parts) == everything


# -- the fold assignment itself -------------------------------------------------------------------------


@pytest.mark.parametrize(("counts", "k"), [([10, 20, 7], 3), ([10, 20, 7], 7), ([5, 5], 2), ([1, 30, 4, 9], 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_assign_folds_is_stratified_and_balanced(counts, k, seed):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    fold = assign_folds(labels, k, seed)
    assert set(fold.tolist()) <= set(range(k))
    sizes = torch.bincount(fold, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    for c in range(len(counts)):
        per_fold = torch.bincount(fold[labels == c], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)
    assert torch.equal(fold, assign_folds(labels, k, seed))


def test_assign_folds_keeps_groups_whole_and_folds_near_equal():
    groups = [s for s, labels in SUBJECTS.items() for _ in labels]
    labels = torch.tensor([c for labels in SUBJECTS.values() for c in labels])
    fold = assign_folds(labels, 3, seed=0, groups=groups)
    for s in SUBJECTS:
        assert len({fold[i].item() for i, g in enumerate(groups) if g == s}) == 1, s
    sizes = torch.bincount(fold, minlength=3)
    assert sizes.max() - sizes.min() <= max(map(len, SUBJECTS.values())), sizes  # within one group's size


# -- folds of a folder dataset ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [{"per_class": [10, 12, 7]}, {"splits": {"train": 6, "val": 2, "test": 3}}],
                         ids=["flat", "split_folders"])
def test_test_parts_partition_the_pooled_data_and_are_stratified(make_folder, cache_dir, layout):
    root = make_folder(size=16, **layout)
    folds = every_fold(root, cache_dir, 3)
    check_partition(folds, image_files(root))
    for name in CLASSES:  # a shipped val/ and test/ are pooled: the counts are of every image of the class
        per_fold = [sum(Path(f).parent.name == name for f in files["test"]) for files in folds]
        assert max(per_fold) - min(per_fold) <= 1, (name, per_fold)


def test_groups_never_cross_train_val_and_test(tmp_path, cache_dir):
    root = write_subjects(tmp_path / "ck", SUBJECTS)
    folds = every_fold(root, cache_dir, 3, group_regex=SUBJECT, val_split=0.25)
    check_partition(folds, image_files(root))
    for files in folds:
        subjects = {name: {subject(f) for f in files[name]} for name in ("train", "val", "test")}
        assert not subjects["train"] & subjects["test"] and not subjects["train"] & subjects["val"]
        assert not subjects["val"] & subjects["test"]
        assert all(subjects.values())
    # Without a capture group the whole match is the group: "S003_" groups like "S003".
    assert every_fold(root, cache_dir, 3, group_regex=r"^S\d+_", val_split=0.25) == folds


def test_folds_depend_on_split_seed_only(make_folder, cache_dir, compose_cfg):
    root = make_folder(per_class=[10, 12, 7], size=16)

    def test_files(*overrides: str) -> list[str]:
        cfg = compose_cfg(fast_overrides(root, cache_dir, "data.folds=3", "data.fold=1", *overrides))
        return files_by_split(instantiate(cfg.data).setup())["test"]

    assert test_files("seed=0") == test_files("seed=1") == test_files("seed=12345")
    assert test_files("data.split_seed=5") == test_files("data.split_seed=5")
    assert test_files("data.split_seed=5") != test_files("data.split_seed=6")


def test_digits_folds_pool_every_image():
    data = DigitsData(channels=1, image_size=8, folds=5, fold=2, val_split=0.1, test_split=0.2).setup()
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] in (359, 360)  # a fifth, not test_split


# -- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"folds": 1}, "data.folds=1 is invalid"),
    ({"folds": 2.5}, "data.folds=2.5 is invalid"),
    ({"folds": 5, "fold": 5}, "data.fold=5 is invalid: it must be in [0, data.folds)"),
    ({"folds": 5, "fold": -1}, "data.fold=-1 is invalid: it must be in [0, data.folds)"),
    ({"fold": 2}, "data.fold=2 is invalid: it needs data.folds"),
    ({"group_regex": SUBJECT}, "data.group_regex=^(S\\d+)_ is invalid: it needs data.folds"),
    ({"folds": 3, "group_regex": "(S"}, "data.group_regex=(S is invalid: it is not a regular expression"),
])
def test_bad_fold_values_are_config_errors_before_any_data_is_read(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        FolderData(root=str(tmp_path / "missing"), channels=1, image_size=16, **kwargs)


def test_bad_fold_from_the_command_line_is_a_config_error(tmp_path, compose_cfg):
    cfg = compose_cfg(fast_overrides(tmp_path / "missing", tmp_path / "cache", "data.folds=5", "data.fold=5"))
    with pytest.raises(ConfigError, match=re.escape("data.fold=5 is invalid: it must be in [0, data.folds)")):
        build(cfg.data)


def test_more_folds_than_images_of_a_class_or_groups_is_a_data_error(make_folder, tmp_path, cache_dir):
    with pytest.raises(DataError, match="data.folds=8 is more than the 7 images of class 'top'"):
        setup_fold(make_folder(per_class=[10, 12, 7], size=16), cache_dir, 8, 0)
    two_subjects = write_subjects(tmp_path / "two", {s: [0, 1, 2] * 2 for s in range(2)})
    message = f"data.folds=3 is more than the 2 groups data.group_regex={SUBJECT} finds"
    with pytest.raises(DataError, match=re.escape(message)):
        setup_fold(two_subjects, cache_dir, 3, 0, group_regex=SUBJECT)


def test_file_name_without_a_group_is_a_data_error(tmp_path, cache_dir):
    root = write_subjects(tmp_path / "ck", SUBJECTS)
    odd = root / "top" / "portrait.png"
    Image.fromarray(class_image(2, np.random.default_rng(0), 16)).save(odd)
    with pytest.raises(DataError, match=re.escape(f"{odd}: its name does not match data.group_regex={SUBJECT}")):
        setup_fold(root, cache_dir, 3, 0, group_regex=SUBJECT)


# -- end to end ---------------------------------------------------------------------------------------------


def test_training_on_a_fold_tests_that_fold(tmp_path, make_folder, cache_dir, compose_cfg):
    root = make_folder(per_class=[8, 9, 10], size=16)
    cfg = compose_cfg(fast_overrides(root, cache_dir, "data.folds=3", "data.fold=1"))
    expected = Counter(instantiate(cfg.data).setup().splits["test"].labels.tolist())
    assert sum(expected.values()) == 9
    metrics = train(cfg, tmp_path / "run")
    per_class = read_metrics(tmp_path / "run")["test/per_class"]
    assert {c: per_class[name]["support"] for c, name in enumerate(CLASSES)} == expected
    assert metrics["test/per_class"] == per_class
