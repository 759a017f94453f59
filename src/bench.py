"""Benchmark the runner against plain PyTorch loops: `python -m src.bench model=resnet18 [trainer.precision=bf16]`.

Takes the training config (every train.yaml group and key) plus the `bench` node of conf/bench.yaml.
"""
from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .entry import CONFIG_DIR, hydra_command, run_or_exit
from .training.benchmark import run_benchmark

log = logging.getLogger("src.bench")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)  # as typed: text
                 if not o.startswith("bench.")]
    run_or_exit(lambda: run_benchmark(cfg, hydra_cfg.runtime.output_dir, overrides,
                                      hydra_cfg.runtime.choices.get("model")), log, plugins=cfg.plugins)
    log.info("Results in %s", hydra_cfg.runtime.output_dir)


cli = hydra_command(main)  # `python -m src.bench` and the `fer-bench` command

if __name__ == "__main__":
    cli()
