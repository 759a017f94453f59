"""Train one model (or a sweep with -m): `python -m src.train model=resnext3 data.balanced=true`.

The config tree is conf/train.yaml; `python -m src.train --help` lists the groups and options.
"""
from __future__ import annotations

import logging
import secrets
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .engine.experiment import train
from .errors import UserError

log = logging.getLogger("src.train")

# A short random id per process, in every run and sweep directory name: two runs started in the
# same second (or on two machines sharing a disk) never write into the same directory.
_PROCESS_ID = secrets.token_hex(3)
OmegaConf.register_new_resolver("run_id", lambda: _PROCESS_ID, replace=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the monitored validation metric, for Hydra sweepers."""
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    try:
        metrics = train(cfg, run_dir, choices=dict(hydra_cfg.runtime.choices))
    except UserError as exc:
        log.error("%s", exc)
        sys.exit(2)
    log.info("Run directory: %s", run_dir)
    return metrics.get(cfg.trainer.monitor)


if __name__ == "__main__":
    main()
