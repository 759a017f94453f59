"""Train one model (or a sweep with -m): `python -m src.train model=resnext3 data.balanced=true`.

On several GPUs (DistributedDataParallel, one process each): `torchrun --nproc_per_node=N -m src.train
trainer=ddp ...`. The config tree is conf/train.yaml; `python -m src.train --help` lists the groups and options.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .entry import CONFIG_DIR, check_config_files, discard_if_empty, run_or_exit
from .runtime import distributed
from .runtime.sweep_jobs import cpu_threads_for_sweep_job, gpu_for_sweep_job
from .training.experiment import train
from .training.run_checkpoints import previous_attempt

log = logging.getLogger("src.train")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the monitored validation metric, for Hydra sweepers."""
    distributed.adopt_submitit_tasks()  # a job of several submitit tasks: one DDP run, as under torchrun
    distributed.quiet_other_ranks()
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    cpu_threads_for_sweep_job(cfg, hydra_cfg)
    with gpu_for_sweep_job(cfg, hydra_cfg):
        # A run stopped by an error before it trained leaves no empty run directory (rank 0 owns it).
        cleanup = (lambda: discard_if_empty(run_dir)) if distributed.launched_rank() == 0 else None
        metrics = run_or_exit(lambda: _train_or_skip(cfg, run_dir, hydra_cfg), log, cleanup, plugins=cfg.plugins)
    distributed.shutdown()
    if metrics is None:  # a failed job of a sweep (see entry.run_or_exit): the sweep goes on
        return None
    log.info("Run directory: %s", run_dir)
    return metrics.get(cfg.trainer.monitor)


def _train_or_skip(cfg: DictConfig, run_dir: str, hydra_cfg) -> dict:
    """A sweep re-run in the same sweep directory skips its completed jobs and resumes interrupted ones
    (checkpointing.previous_attempt); everything else trains."""
    if hydra_cfg.mode == RunMode.MULTIRUN:
        done = previous_attempt(cfg, Path(run_dir))
        if done is not None:
            log.info("Job %s already completed in %s with these settings: skipped", hydra_cfg.job.num, run_dir)
            return done
        if cfg.resume:
            log.info("Job %s was interrupted: resuming from %s/checkpoints/last.pt", hydra_cfg.job.num, run_dir)
    # The overrides as typed: `data.root=${paths.data_dir}/x` is text here, not an interpolation to resolve.
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    return train(cfg, run_dir, dict(hydra_cfg.runtime.choices), overrides)


def cli() -> None:
    """`python -m src.train` and the `fer-train` command."""
    check_config_files(sys.argv[1:])
    if distributed.launched_rank() > 0:
        # torchrun's other processes share rank 0's run directory (see entry.py): rank 0 alone writes
        # its .hydra/ (the composed config and the overrides).
        sys.argv.append("hydra.output_subdir=null")
    main()


if __name__ == "__main__":
    cli()
