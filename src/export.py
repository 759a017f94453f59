"""Export a checkpoint's model: `python -m src.export ckpt_path=PATH format=onnx|torchscript`.

The exported model takes the preprocessed tensor (float, normalized, N x C x H x W); a JSON file
beside it records the classes and the preprocessing. The config tree is conf/export.yaml.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from .command_rules import EXPORT_RULES, check_values
from .entry import CONFIG_DIR, hydra_command, run_or_exit
from .inference.model_export import export_checkpoint

log = logging.getLogger("src.export")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    def export() -> None:
        check_values(cfg, EXPORT_RULES)
        export_checkpoint(cfg.ckpt_path, cfg.format, cfg.output)

    run_or_exit(export, log, plugins=cfg.plugins)


cli = hydra_command(main)  # `python -m src.export` and the `fer-export` command

if __name__ == "__main__":
    cli()
