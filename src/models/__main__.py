"""`python -m src.models` (`fer-models`): a Markdown table of every model config, as docs/models.md shows it,
then the model classes registered from outside the runner (plugins, installed packages).

Parameters and size are for 7 classes and 1 input channel (FER2013); MFLOPs are one image's forward
pass, counting convolutions and matrix products at 2 FLOPs per multiply-add, at 48x48x1 (FER2013)
and 32x32x3 (CIFAR), each with the stem `stem=auto` picks for that size. The table goes to stdout; its
progress (about 2 s a model on a CPU) to stderr: a bar on a terminal, else a log line every 30 s.

Your own models (docs/plugins.md): `--config-dir my_conf` adds the configs of my_conf/model/ (a name there
takes the place of the runner's config of the same name, as for `src.train --config-dir`), `--plugins
usernet` imports those modules first and lists the classes they register.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from .. import registry
from ..entry import CONFIG_DIR
from ..errors import UserError
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


def model_configs(config_dir: str | Path | None = None) -> dict[str, Path]:
    """{config name: file} of conf/model and, taking precedence by name, `config_dir`/model."""
    dirs = [CONF_DIR] + ([Path(config_dir).expanduser() / "model"] if config_dir else [])
    return {path.stem: path for folder in dirs for path in sorted(folder.glob("*.yaml"))}


def table(names: list[str], log_every_s: float = DEFAULT_EVERY_S, configs: dict[str, Path] | None = None) -> str:
    configs = configs if configs is not None else model_configs()
    unknown = [name for name in names if name not in configs]
    if unknown:
        raise UserError(f"no model config named {', '.join(unknown)} (the configs: {', '.join(sorted(configs))})")
    rows = ["| model | params | MFLOPs 48x48x1 | MFLOPs 32x32x3 | size MB |", "|---|---:|---:|---:|---:|"]
    with Progress(len(names), "models table", "model", every_s=log_every_s, logger=log,
                  console=sys.stderr) as progress:
        for name in names:
            cfg = OmegaConf.load(configs[name])
            model = instantiate(cfg, num_classes=7, in_channels=1, **_input_size(cfg, 48))
            rows.append(f"| `{name}` | {count_parameters(model):,} | {mflops(cfg, 1, 48):,.0f} | "
                        f"{mflops(cfg, 3, 32):,.0f} | {size_mb(model):.1f} |")
            progress.update(1)
    return "\n".join(rows)


def user_classes_table(configs: dict[str, Path]) -> str | None:
    """The registered model classes that are not the runner's own (src.*), each with its source file and the
    configs naming it; None when there are none."""
    targets: dict[str, list[str]] = {}
    for name, path in configs.items():
        cfg = OmegaConf.load(path)
        target = cfg.get("_target_") if isinstance(cfg, DictConfig) else None
        targets.setdefault(str(target), []).append(f"`{name}`")
    user = {full: cls for full, cls in registry.registered("model").items() if not full.startswith("src.")}
    if not user:
        return None
    rows = ["| registered model class | defined in | model configs naming it |", "|---|---|---|"]
    for full, cls in sorted(user.items()):
        source = getattr(sys.modules.get(cls.__module__), "__file__", None) or "?"
        rows.append(f"| `{full}` | {source} | {', '.join(targets.get(full, [])) or '-'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="model configs (default: every one)")
    parser.add_argument("--config-dir", help="a folder whose model/*.yaml are configs too (as src.train's)")
    parser.add_argument("--plugins", action="append", default=[], metavar="MODULE",
                        help="a module to import first, as the commands' plugins=[...] key (repeat for more)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # the progress lines
    try:
        registry.load_plugins(args.plugins)
        configs = model_configs(args.config_dir)
        print(table(args.names or sorted(configs), configs=configs))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    user = user_classes_table(configs)
    if user:
        print("\n" + user)


if __name__ == "__main__":
    main()
