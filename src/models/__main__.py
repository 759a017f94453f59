"""`python -m src.models`: a Markdown table of every conf/model config, as the README shows it.

Parameters and size are for 7 classes and 1 input channel (FER2013); MFLOPs are one image's forward
pass, counting convolutions and matrix products at 2 FLOPs per multiply-add, at 48x48x1 (FER2013)
and 32x32x3 (CIFAR), each with the stem `stem=auto` picks for that size. The table goes to stdout; its
progress (about 2 s a model on a CPU) to stderr: a bar on a terminal, else a log line every 30 s.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from ..entry import CONFIG_DIR
from ..progress import DEFAULT_EVERY_S, Progress
from . import count_parameters, size_mb

log = logging.getLogger("src.models")

CONF_DIR = Path(CONFIG_DIR) / "model"


def mflops(cfg, channels: int, size: int) -> float:
    model = instantiate(cfg, num_classes=7, in_channels=channels, **_input_size(cfg, size)).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    return counter.get_total_flops() / 1e6


def _input_size(cfg, size: int) -> dict:
    return {"input_size": size} if "input_size" in cfg else {}


def table(names: list[str], log_every_s: float = DEFAULT_EVERY_S) -> str:
    rows = ["| model | params | MFLOPs 48x48x1 | MFLOPs 32x32x3 | size MB |", "|---|---:|---:|---:|---:|"]
    with Progress(len(names), "models table", "model", every_s=log_every_s, logger=log,
                  console=sys.stderr) as progress:
        for name in names:
            cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
            model = instantiate(cfg, num_classes=7, in_channels=1, **_input_size(cfg, 48))
            rows.append(f"| `{name}` | {count_parameters(model):,} | {mflops(cfg, 1, 48):,.0f} | "
                        f"{mflops(cfg, 3, 32):,.0f} | {size_mb(model):.1f} |")
            progress.update(1)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="model configs (default: every conf/model/*.yaml)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # the progress lines
    names = args.names or sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
    print(table(names))


if __name__ == "__main__":
    main()
