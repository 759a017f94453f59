"""Device batches (balanced sampling), honest splits, class selection and per-class caps."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.data import DeviceLoader, FolderData, Split
from src.data.splits import limit_per_class, stratified_holdout
from src.errors import ConfigError, DataError
from tests.helpers import CLASSES, fast_overrides, image_files

# -- DeviceLoader ------------------------------------------------------------------------------------


def indexed_split(counts: list[int]) -> Split:
    """A split whose i-th 1x2 "image" encodes i, so that every drawn sample can be identified."""
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    index = torch.arange(len(labels))
    images = torch.stack([index // 256, index % 256], 1).to(torch.uint8).view(-1, 1, 1, 2)
    return Split(images, labels, [f"sample{i}" for i in index.tolist()])


def sample_ids(images: torch.Tensor) -> torch.Tensor:
    # on the batch's device: the CUDA tests draw their batches on the GPU (it failed there, first H200 run)
    return images.view(-1, 2).long() @ torch.tensor([256, 1], device=images.device)


def epoch(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(sample ids, labels, batch sizes) of one pass over the loader."""
    ids, labels, sizes = [], [], []
    for images, y in loader:
        ids.append(sample_ids(images))
        labels.append(y)
        sizes.append(len(y))
    return torch.cat(ids), torch.cat(labels), sizes


def test_balanced_sampler_draws_classes_equally():
    split = indexed_split([10, 100, 1000])
    loader = DeviceLoader(split, batch_size=100, device="cpu", balanced=True, seed=0)
    drawn = Counter()
    for _ in range(20):
        ids, labels, sizes = epoch(loader)
        assert len(labels) == len(split) == 1110  # an epoch is as long as the split
        assert len(sizes) == len(loader) == 12
        assert torch.equal(split.labels[ids], labels)  # images and labels gathered together
        drawn.update(labels.tolist())
    total = sum(drawn.values())
    for c in range(3):
        assert drawn[c] / total == pytest.approx(1 / 3, abs=0.05), drawn
    # The rare class is drawn with replacement: its 10 images each appear ~740 times.
    assert drawn[0] > 10 * 20 * 20


def test_unbalanced_epoch_is_a_permutation_with_true_counts():
    split = indexed_split([10, 100, 1000])
    loader = DeviceLoader(split, batch_size=100, device="cpu", shuffle=True, seed=0)
    orders = []
    for _ in range(3):
        ids, labels, _ = epoch(loader)
        assert sorted(ids.tolist()) == list(range(1110))  # every sample exactly once
        assert Counter(labels.tolist()) == {0: 10, 1: 100, 2: 1000}
        orders.append(ids)
    assert not torch.equal(orders[0], orders[1])  # a new order every epoch
    assert not torch.equal(orders[0], torch.arange(1110))


def test_loader_order_is_seeded():
    split = indexed_split([5, 50, 500])
    for balanced in (False, True):
        a = DeviceLoader(split, 64, "cpu", shuffle=True, balanced=balanced, seed=3)
        b = DeviceLoader(split, 64, "cpu", shuffle=True, balanced=balanced, seed=3)
        c = DeviceLoader(split, 64, "cpu", shuffle=True, balanced=balanced, seed=4)
        first = epoch(a)[0]
        assert torch.equal(first, epoch(b)[0])
        assert not torch.equal(first, epoch(c)[0])


def test_eval_loader_is_sequential_and_complete():
    split = indexed_split([3, 7, 11])
    ids, labels, sizes = epoch(DeviceLoader(split, batch_size=8, device="cpu"))
    assert torch.equal(ids, torch.arange(21)) and torch.equal(labels, split.labels)
    assert sizes == [8, 8, 5]


def test_drop_last_unless_it_is_the_only_batch():
    split = indexed_split([10, 100, 1000])
    loader = DeviceLoader(split, batch_size=100, device="cpu", shuffle=True, drop_last=True)
    _, _, sizes = epoch(loader)
    assert sizes == [100] * 11 and len(loader) == 11
    small = DeviceLoader(indexed_split([2, 3]), batch_size=100, device="cpu", shuffle=True, drop_last=True)
    assert epoch(small)[2] == [5]


def test_balanced_data_config_balances_training_batches(make_folder, cache_dir):
    root = make_folder(per_class=[4, 8, 32], size=16)
    data = FolderData(root=str(root), channels=1, image_size=16, val_split=0, test_split=0, batch_size=4,
                      balanced=True, cache_dir=str(cache_dir)).setup()
    loader = data.train_loader("cpu", seed=0)
    drawn = Counter()
    for _ in range(50):
        drawn.update(epoch(loader)[1].tolist())
    total = sum(drawn.values())
    assert all(abs(drawn[c] / total - 1 / 3) < 0.05 for c in range(3)), drawn
    assert data.class_counts.tolist() == [4, 8, 32]  # the true counts, for class weights


# -- splits ------------------------------------------------------------------------------------------


def setup(root: Path, cache_dir: Path, **kwargs) -> FolderData:
    kwargs = {"channels": 1, "image_size": 16, "val_split": 0.2, "test_split": 0.2, **kwargs}
    return FolderData(root=str(root), cache_dir=str(cache_dir), **kwargs).setup()


def files_by_split(data: FolderData) -> dict[str, list[str]]:
    return {name: list(split.files) for name, split in data.splits.items()}


def check_labels_match_folders(data: FolderData) -> None:
    for name, split in data.splits.items():
        for file, label in zip(split.files, split.labels.tolist()):
            assert Path(file).parent.name == data.classes[label], f"{name}: {file} labelled {label}"


def per_class(files: list[str]) -> Counter:
    return Counter(Path(f).parent.name for f in files)


COUNTS = [10, 20, 7]


def test_flat_layout_splits_are_disjoint_complete_and_stratified(make_folder, cache_dir):
    root = make_folder(per_class=COUNTS, size=16)
    data = setup(root, cache_dir)
    files = files_by_split(data)
    assert set(files) == {"train", "val", "test"}
    sets = {name: set(f) for name, f in files.items()}
    assert all(len(sets[n]) == len(files[n]) for n in files)  # no duplicates
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == image_files(root)
    for name, n in zip(CLASSES, COUNTS):
        assert abs(per_class(files["test"])[name] - round(0.2 * n)) <= 1, ("test", name)
        assert abs(per_class(files["val"])[name] - round(0.2 * n)) <= 1, ("val", name)
        assert per_class(files["train"])[name] >= 1
    check_labels_match_folders(data)
    assert data.classes == list(CLASSES)


def test_split_depends_on_split_seed_only(make_folder, cache_dir, compose_cfg):
    root = make_folder(per_class=COUNTS, size=16)
    same = [files_by_split(setup(root, cache_dir, split_seed=5)) for _ in range(2)]
    assert same[0] == same[1]
    assert files_by_split(setup(root, cache_dir, split_seed=6)) != same[0]
    # The training seed (top-level `seed`) never moves an image between train, val and test.
    by_seed = [files_by_split(instantiate(compose_cfg(fast_overrides(
        root, cache_dir, f"seed={seed}", "data.val_split=0.2", "data.test_split=0.2")).data).setup())
        for seed in (0, 1, 12345)]
    assert by_seed[0] == by_seed[1] == by_seed[2]


def test_val_is_drawn_from_train_folder_and_test_folder_is_untouched(make_folder, cache_dir):
    root = make_folder(splits={"train": 10, "test": 4}, size=16)
    data = setup(root, cache_dir, val_split=0.3, test_split=0.5)
    files = files_by_split(data)
    train_files, test_files = image_files(root / "train"), image_files(root / "test")
    assert set(files["test"]) == test_files and len(files["test"]) == 12  # test_split ignores shipped test/
    assert set(files["val"]) <= train_files
    assert set(files["train"]) | set(files["val"]) == train_files
    assert not set(files["train"]) & set(files["val"])
    assert per_class(files["val"]) == dict.fromkeys(CLASSES, 3)  # round(0.3 * 10) per class
    check_labels_match_folders(data)


def test_shipped_val_folder_is_used_as_is(make_folder, cache_dir):
    root = make_folder(splits={"train": 6, "val": 2, "test": 3}, size=16)
    files = files_by_split(setup(root, cache_dir, val_split=0.5))
    for name in ("train", "val", "test"):
        assert set(files[name]) == image_files(root / name)


def test_train_folder_only_gives_no_test_split(make_folder, cache_dir):
    root = make_folder(splits={"train": 10}, size=16)
    data = setup(root, cache_dir)
    assert set(data.splits) == {"train", "val"}
    assert set(files_by_split(data)["train"]) | set(files_by_split(data)["val"]) == image_files(root)


def test_val_split_zero_gives_no_val_split(make_folder, cache_dir):
    data = setup(make_folder(per_class=5, size=16), cache_dir, val_split=0.0, test_split=0.0)
    assert set(data.splits) == {"train"} and len(data.splits["train"]) == 15


def test_stratified_holdout_keeps_one_sample_of_every_class():
    labels = torch.tensor([0] * 1 + [1] * 3 + [2] * 10)
    kept, held = stratified_holdout(labels, fraction=0.9, seed=0)
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(14))
    assert Counter(labels[kept].tolist()) == {0: 1, 1: 1, 2: 1}
    assert Counter(labels[held].tolist()) == {1: 2, 2: 9}


# -- class selection and per-class caps ----------------------------------------------------------------


def test_classes_subset_and_per_class_limit(make_folder, cache_dir):
    root = make_folder(splits={"train": 10, "val": 4, "test": 4}, size=16)
    kwargs = {"classes": ["top", "bottom"], "per_class_limit": {"train": {"top": 3}, "val": 2}}
    data = setup(root, cache_dir, **kwargs)
    assert data.classes == ["top", "bottom"]  # the configured order, not alphabetical
    check_labels_match_folders(data)  # labels remapped: top -> 0, bottom -> 1
    assert data.splits["train"].labels.unique().tolist() == [0, 1]
    files = files_by_split(data)
    assert per_class(files["train"]) == {"top": 3, "bottom": 10}  # bottom not named: kept whole
    assert per_class(files["val"]) == {"top": 2, "bottom": 2}
    assert per_class(files["test"]) == {"top": 4, "bottom": 4}
    assert data.class_counts.tolist() == [3, 10]
    assert set(files["train"]) <= image_files(root / "train")
    assert files_by_split(setup(root, cache_dir, **kwargs)) == files  # a seeded draw


def test_per_class_limit_from_hydra_config(make_folder, cache_dir, compose_cfg):
    root = make_folder(splits={"train": 10, "val": 4}, size=16)
    cfg = compose_cfg(fast_overrides(root, cache_dir, "data.classes=[middle,top]",
                                     "data.per_class_limit={train: {middle: 2}, val: 1}"))
    data = instantiate(cfg.data).setup()
    assert data.classes == ["middle", "top"]
    assert per_class(files_by_split(data)["train"]) == {"middle": 2, "top": 10}
    assert per_class(files_by_split(data)["val"]) == {"middle": 1, "top": 1}
    check_labels_match_folders(data)


def test_limit_per_class_caps_and_keeps():
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 9)
    chosen = limit_per_class(labels, ["a", "b", "c"], 3, seed=0)
    assert Counter(labels[chosen].tolist()) == {0: 3, 1: 2, 2: 3}
    assert chosen.tolist() == sorted(chosen.tolist())
    assert torch.equal(chosen, limit_per_class(labels, ["a", "b", "c"], 3, seed=0))
    assert not torch.equal(chosen, limit_per_class(labels, ["a", "b", "c"], 3, seed=1))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"classes": ["top", "nope"]}, ConfigError, "'nope'"),
    ({"per_class_limit": {"train": {"nope": 1}}}, DataError, "'nope'"),
    ({"per_class_limit": {"training": 3}}, ConfigError, "'training'"),
])
def test_bad_class_selection(make_folder, cache_dir, kwargs, error, match):
    with pytest.raises(error, match=match):
        setup(make_folder(per_class=4, size=16), cache_dir, **kwargs)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"val_split": 1.5}, "data.val_split=1.5"), ({"test_split": -0.1}, "data.test_split=-0.1"),
    ({"channels": 2}, "data.channels=2"), ({"image_size": 4}, "data.image_size=4"),
    ({"batch_size": 0}, "data.batch_size=0"), ({"on_bad_image": "ignore"}, "data.on_bad_image=ignore"),
])
def test_invalid_data_values_raise_config_error(tmp_path, kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FolderData(root=str(tmp_path), **{"channels": 3, "image_size": 32, **kwargs})


def test_mean_std_computed_on_train_or_checked(make_folder, cache_dir):
    root = make_folder(per_class=6, size=16)
    data = setup(root, cache_dir, channels=3)
    train = data.splits["train"].images.double() / 255
    assert data.mean == pytest.approx(train.mean((0, 2, 3)).tolist())
    assert data.std == pytest.approx(train.std((0, 2, 3)).tolist(), rel=1e-3)
    with pytest.raises(ConfigError, match="data.mean"):
        setup(root, cache_dir, channels=3, mean=[0.5])


def test_normalization_statistics_from_histograms_equal_float64_over_the_whole_split():
    from src.data.datasets import channel_mean_std

    images = torch.randint(0, 256, (9000, 3, 8, 8), dtype=torch.uint8)  # more than one chunk of 4096
    images[:, 2] //= 4  # channels that differ
    labels = torch.zeros(9000, dtype=torch.long)
    files = [str(i) for i in range(9000)]
    mean, std = channel_mean_std(Split(images, labels, files))
    pixels = images.transpose(0, 1).reshape(3, -1).double()
    assert mean == pytest.approx((pixels.mean(1) / 255).tolist(), rel=1e-12)
    assert std == pytest.approx((pixels.std(1) / 255).tolist(), rel=1e-12)
    # a split of scattered rows (a subset): its own images only, chunk by chunk
    rows = torch.randperm(9000, generator=torch.Generator().manual_seed(0))[:5000]
    mean, std = channel_mean_std(Split(images, labels, files).subset(rows))
    pixels = images[rows].transpose(0, 1).reshape(3, -1).double()
    assert mean == pytest.approx((pixels.mean(1) / 255).tolist(), rel=1e-12)
    assert std == pytest.approx((pixels.std(1) / 255).tolist(), rel=1e-12)
    assert channel_mean_std(Split(torch.full((2, 1, 4, 4), 7, dtype=torch.uint8), labels[:2], files[:2])) == (
        [7 / 255], [0.0])


@pytest.mark.parametrize("scattered", [False, True])
@pytest.mark.parametrize("shuffle", [True, False])
def test_a_split_over_the_device_budget_gives_the_same_batches_from_host_memory(shuffle, scattered):
    """Over data.max_device_bytes the split stays where it is (host memory, or the cache's memory map) and
    batches are gathered from it: the same batches as from a device-resident copy, and no copy of it made;
    also for a split of scattered rows of its source (a class selection, a val holdout, skipped images)."""
    split = indexed_split([7, 11, 5])
    if scattered:
        split = split.subset(torch.randperm(23, generator=torch.Generator().manual_seed(1))[:17])
        assert split.rows is not None and split.run is None and len(split.source) == 23
    resident = DeviceLoader(split, 4, "cpu", shuffle=shuffle, seed=3)
    streamed = DeviceLoader(split, 4, "cpu", shuffle=shuffle, seed=3, budget_bytes=1)
    assert resident.on_device and not streamed.on_device
    assert streamed.images is None  # batches gathered from the split's source, no copy of it
    for _ in range(2):
        a, b = epoch(resident), epoch(streamed)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
