"""Building objects from config nodes, and the checks a config passes before any work starts."""
from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, UserError


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, but a UserError raised by a constructor reaches the user as itself
    (Hydra wraps it in an InstantiationException with a traceback-like message)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise


def check_model_config(model_cfg: DictConfig, in_channels: int) -> None:
    """Builds the model on the meta device (no memory, no weights loaded), so that invalid model values
    stop the run before the dataset is decoded."""
    import torch

    overrides = {"pretrained": False} if "pretrained" in model_cfg else {}
    with torch.device("meta"):
        build(model_cfg, num_classes=2, in_channels=in_channels, **overrides)


def check_optimizer_config(optim_cfg: DictConfig) -> None:
    lr = optim_cfg.get("lr")
    if lr is None or not lr > 0:
        raise ConfigError(f"optim.lr={lr} is invalid: it must be > 0")


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


# Keys that may change between a run and its resumption: where the data lives, not what it is.
RESUME_MAY_CHANGE = ("data.root", "data.csv", "data.cache_dir")


def config_differences(saved: dict, current: DictConfig, groups: tuple[str, ...] = ("model", "data")) -> list[str]:
    """`key: saved → current` for every model/data setting a resumed run would change."""
    now = OmegaConf.to_container(current, resolve=True)
    before, after = (_flat({g: c.get(g, {}) for g in groups}) for c in (saved, now))
    return [f"{key}: {before.get(key)} → {after.get(key)}" for key in sorted(set(before) | set(after))
            if key not in RESUME_MAY_CHANGE and before.get(key) != after.get(key)]
