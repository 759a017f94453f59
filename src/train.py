"""Train one model (or a sweep with -m): `python -m src.train model=resnext3 data.balanced=true`.

The config tree is conf/train.yaml; `python -m src.train --help` lists the groups and options.
"""
from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .engine.experiment import train
from .entry import run_or_exit

log = logging.getLogger("src.train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the monitored validation metric, for Hydra sweepers."""
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    metrics = run_or_exit(lambda: train(cfg, run_dir, choices=dict(hydra_cfg.runtime.choices)), log)
    log.info("Run directory: %s", run_dir)
    return metrics.get(cfg.trainer.monitor)


if __name__ == "__main__":
    main()
