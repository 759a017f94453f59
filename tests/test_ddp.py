"""DistributedDataParallel (trainer=ddp): each rank's share of an epoch, and real torchrun launches of two
processes on the CPU (gloo)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.data import DeviceLoader
from src.training.experiment import train
from tests.helpers import ROOT, TIMING_KEYS, compose_train, fast_overrides, quote, read_metrics, write_dataset
from tests.test_data import epoch, indexed_split
from tests.test_train import CONTRACT_KEYS

SPLITS = {"train": 16, "val": 4, "test": 5}  # per class: 48 training images, 15 test images (odd: unequal shards)


# -- sharding ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("balanced", [False, True])
def test_rank_shares_of_an_epoch_are_disjoint_equal_and_cover_the_order(balanced):
    split = indexed_split([7, 11, 5])  # 23 samples over 3 ranks: shares of 7, a remainder of 2
    world, batch = 3, 2
    whole = DeviceLoader(split, len(split), "cpu", shuffle=True, balanced=balanced, seed=5)
    ranks = [DeviceLoader(split, batch, "cpu", shuffle=True, balanced=balanced, seed=5).shard(r, world)
             for r in range(world)]
    orders = []
    for _ in range(2):  # every epoch a new order, drawn alike on every rank
        order = epoch(whole)[0]
        shares = [epoch(loader) for loader in ranks]
        assert all(len(ids) == 7 and sizes == [2, 2, 2, 1] for ids, _, sizes in shares)  # equal: equal steps
        ids = [share[0] for share in shares]
        # Rank r holds every 3rd position of the order from r on; the last len % 3 positions are dropped.
        assert torch.equal(torch.stack(ids, 1).flatten(), order[:21])
        if not balanced:  # a permutation: the shares are disjoint
            assert len(set(torch.cat(ids).tolist())) == 21
        # Batch b of all ranks together is batch b of one process with a batch of world * batch.
        assert sorted(torch.cat([i[:batch] for i in ids]).tolist()) == sorted(order[:world * batch].tolist())
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])


def test_sharded_training_loader_drops_the_last_partial_batch_on_every_rank():
    split = indexed_split([10, 10, 10])
    loaders = [DeviceLoader(split, 4, "cpu", shuffle=True, drop_last=True, seed=0).shard(r, 2) for r in range(2)]
    assert [len(loader) for loader in loaders] == [3, 3]  # 15 samples each: 3 full batches
    assert all(epoch(loader)[2] == [4, 4, 4] for loader in loaders)
    with pytest.raises(ValueError, match="only the shuffled training order"):
        DeviceLoader(split, 4, "cpu").shard(0, 2)


# -- torchrun ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ddp") / "data", splits=SPLITS)


def torchrun(*overrides: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m src.train ...` with this venv's torch."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "src.train", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_processes_train_one_run_equal_to_one_process_with_the_global_batch(tmp_path, data_root):
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = torchrun("trainer=ddp", *fast_overrides(data_root, cache), f"paths.output_dir={quote(out)}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (out / "runs").iterdir()  # both ranks named the same directory
    metrics = read_metrics(run_dir)
    assert all(metrics.get(k) is not None for k in CONTRACT_KEYS), metrics
    assert metrics["world_size"] == 2 and metrics["epochs"] == 1 and metrics["device"] == "cpu"
    assert 0 <= metrics["test/acc"] <= 1 and metrics["train/images_per_s"] > 0
    # The test split was evaluated exactly once: the ranks' shares (7 and 8 images) gathered.
    test_size = 3 * SPLITS["test"]
    assert sum(row["support"] for row in metrics["test/per_class"].values()) == test_size
    assert sum(map(sum, metrics["test/confusion_matrix"])) == test_size
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "history.csv").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    # Batches of 8 on 2 ranks are the batches of 16 of one process (the shares interleave), the averaged
    # gradients are its gradients, and the gathered evaluation is its evaluation: the same numbers.
    single = train(compose_train(fast_overrides(data_root, cache, "data.batch_size=16")), tmp_path / "single")
    for key, value in single.items():
        if key not in TIMING_KEYS:
            assert metrics[key] == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value), key


@pytest.mark.slow
def test_each_rank_draws_its_own_augmentation_and_a_resume_restores_every_rank(tmp_path, data_root):
    """With augmentation and dropout on, each rank has its own streams (seeded per rank), every rank's streams
    are in last.pt, and a 2-process run resumed from epoch 1 ends as the uninterrupted one."""
    cache = tmp_path / "cache"
    recipe = ["trainer=ddp", *fast_overrides(data_root, cache, "aug=fer", "model.dropout=0.3")]

    def run(name: str, *overrides: str) -> dict:
        result = torchrun(*recipe, *overrides, f"hydra.run.dir={quote(tmp_path / name)}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return read_metrics(tmp_path / name)

    whole = run("A", "trainer.max_epochs=2")
    saved = torch.load(tmp_path / "A" / "checkpoints" / "last.pt", weights_only=True)["rng"]
    (other,) = saved["ranks"]
    assert not torch.equal(other["augment"], saved["augment"]) and not torch.equal(other["torch"], saved["torch"])
    run("B", "trainer.max_epochs=1")
    resumed = run("C", "trainer.max_epochs=2", f"ckpt_path={quote(tmp_path / 'B' / 'checkpoints' / 'last.pt')}")
    assert {k: v for k, v in resumed.items() if k not in TIMING_KEYS} == \
        {k: v for k, v in whole.items() if k not in TIMING_KEYS}


@pytest.mark.slow
def test_torchrun_with_a_single_process_trainer_is_a_clear_error(tmp_path, data_root):
    out = tmp_path / "out"
    result = torchrun(*fast_overrides(data_root, tmp_path / "cache"), f"paths.output_dir={quote(out)}")
    assert result.returncode != 0
    assert "torchrun started 2 processes, but this trainer trains in one" in result.stdout + result.stderr
    # No second directory; rank 0 removes the one both shared, since the run stopped before training.
    assert len(list((out / "runs").iterdir())) <= 1


def test_ddp_trainer_without_torchrun_trains_in_one_process(tmp_path, data_root, caplog):
    overrides = fast_overrides(data_root, tmp_path / "cache", "trainer.max_epochs=2")
    with caplog.at_level(logging.INFO):
        alone = train(compose_train([*overrides, "trainer=ddp"]), tmp_path / "ddp")
    assert "trainer=ddp without torchrun" in caplog.text
    default = train(compose_train(overrides), tmp_path / "default")
    assert {k: v for k, v in alone.items() if k not in TIMING_KEYS} == {
        k: v for k, v in default.items() if k not in TIMING_KEYS}
