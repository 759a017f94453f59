"""Predict images: `python -m src.predict ckpt_path=PATH images=[face1.jpg,faces/,'shots/*.png']`.

Prints the top-k classes of every image; output=predictions.csv (or .json) also writes them.
The config tree is conf/predict.yaml.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from .entry import CONFIG_DIR, hydra_command, run_or_exit
from .inference.image_prediction import predict_images

log = logging.getLogger("src.predict")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    run_or_exit(lambda: predict_images(cfg), log, plugins=cfg.plugins)


cli = hydra_command(main)  # `python -m src.predict` and the `fer-predict` command

if __name__ == "__main__":
    cli()
