"""The benchmark entry on a tiny synthetic dataset (no reference script, no startup subprocess)."""
from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from src.training.benchmark import bench_table, run_benchmark
from src.training.experiment import train
from tests.helpers import CONF_DIR, TIMING_KEYS, compose_train, fast_overrides, write_dataset


def test_bench_measures_the_runner_and_its_bare_loop(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 30, "val": 4, "test": 6})
    overrides = [o for o in fast_overrides(root, tmp_path / "cache") if not o.startswith("trainer.max_epochs")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=[*overrides, "aug=basic", "bench.batches=4", "bench.warmup=1",
                                          "bench.rounds=2", "bench.reference=null", "bench.startup=false",
                                          "bench.eval_images=16"])
    result = run_benchmark(cfg, tmp_path / "bench", overrides, "lenet")
    assert result["runner_images_per_s"] > 0 and result["bare_same_precision_images_per_s"] > 0
    assert result["decode_first_s"] > 0 and result["decode_cached_s"] > 0
    assert result["eval"]["tencrop_s"] > 0 and result["eval"]["images"] == 16
    assert result["augment_images_per_s"]["own"] > 0 and result["peak_rss_gib"] > 0
    assert result["ratios"]["runner_over_bare_same_precision"] > 0
    rounds = result["rounds"]  # the loops in turn, twice: each figure the median round, each ratio of one round
    assert len(rounds) == 2 and result["runner_images_per_s"] == sum(r["runner_images_per_s"] for r in rounds) / 2
    assert result["ratios"]["runner_over_bare_same_precision"] == pytest.approx(
        sum(r["runner_images_per_s"] / r["bare_same_precision_images_per_s"] for r in rounds) / 2)
    assert result["ratios"]["runner_over_seed"] is None  # no reference loop measured
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert saved["runner_images_per_s"] == result["runner_images_per_s"]
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert table.strip() == bench_table(result) and "| runner (this project) |" in table


def test_bench_runs_the_reference_loop_of_the_repository(tmp_path, monkeypatch):
    """From a fresh clone: the default bench.reference is the repository's own reference loop."""
    monkeypatch.delenv("BENCH_REFERENCE", raising=False)
    root = write_dataset(tmp_path / "data", splits={"train": 30, "val": 4, "test": 6})
    overrides = [o for o in fast_overrides(root, tmp_path / "cache") if not o.startswith("trainer.max_epochs")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=[*overrides, "bench.batches=3", "bench.warmup=1", "bench.rounds=1",
                                          "bench.startup=false",
                                          "bench.decode=false", "bench.eval=false", "bench.augment=false",
                                          "bench.reference_modes=[bare]"])
    assert cfg.bench.reference == "tools/reference_loop.py"
    result = run_benchmark(cfg, tmp_path / "bench", overrides, "lenet")
    assert result["reference_bare_images_per_s"] > 0 and result["ratios"]["runner_over_reference_bare"] > 0


def test_a_split_kept_in_host_memory_trains_to_the_same_result(tmp_path):
    root = write_dataset(tmp_path / "data", splits={"train": 12, "val": 4, "test": 4})
    runs = {}
    for name, extra in (("device", []), ("host", ["data.max_device_bytes=1"])):
        cfg = compose_train(fast_overrides(root, tmp_path / "cache", "aug=basic", "trainer.max_epochs=2", *extra))
        runs[name] = train(cfg, tmp_path / name)
    assert {k: v for k, v in runs["host"].items() if k not in TIMING_KEYS} == \
        {k: v for k, v in runs["device"].items() if k not in TIMING_KEYS}
