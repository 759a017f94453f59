"""Evaluate a checkpoint (or an ensemble) on a split: `python -m src.evaluate ckpt_path=PATH [tta=tencrop]`.

The model and preprocessing come from the checkpoint; the config tree is conf/eval.yaml.
"""
from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .entry import CONFIG_DIR, discard_if_empty, hydra_command, run_or_exit
from .evaluation.split_evaluation import run_evaluation

log = logging.getLogger("src.evaluate")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    run_or_exit(lambda: run_evaluation(cfg, run_dir), log, lambda: discard_if_empty(run_dir), plugins=cfg.plugins)
    log.info("Results in %s", run_dir)


cli = hydra_command(main)  # `python -m src.evaluate` and the `fer-evaluate` command

if __name__ == "__main__":
    cli()
