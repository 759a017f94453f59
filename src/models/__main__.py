"""`python -m src.models`: a Markdown table of every conf/model config, as the README shows it.

Parameters and size are for 7 classes and 1 input channel (FER2013); MFLOPs are one image's forward
pass, counting convolutions and matrix products at 2 FLOPs per multiply-add, at 48x48x1 (FER2013)
and 32x32x3 (CIFAR), each with the stem `stem=auto` picks for that size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from . import count_parameters, size_mb

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"


def mflops(cfg, channels: int, size: int) -> float:
    model = instantiate(cfg, num_classes=7, in_channels=channels, **_input_size(cfg, size)).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    return counter.get_total_flops() / 1e6


def _input_size(cfg, size: int) -> dict:
    return {"input_size": size} if "input_size" in cfg else {}


def table(names: list[str]) -> str:
    rows = ["| model | params | MFLOPs 48x48x1 | MFLOPs 32x32x3 | size MB |", "|---|---:|---:|---:|---:|"]
    for name in names:
        cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
        model = instantiate(cfg, num_classes=7, in_channels=1, **_input_size(cfg, 48))
        rows.append(f"| `{name}` | {count_parameters(model):,} | {mflops(cfg, 1, 48):,.0f} | "
                    f"{mflops(cfg, 3, 32):,.0f} | {size_mb(model):.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="model configs (default: every conf/model/*.yaml)")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
    print(table(names))


if __name__ == "__main__":
    main()
