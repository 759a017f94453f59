"""What a resumed run would change: `config_differences` compares a checkpoint's stored config with the current
one, group by group, as each class sees its settings; the keys of src/key_roles.py (where the data lives, how
the run is shown, the machine) may differ."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from .. import registry
from ..config import defaults
from ..key_roles import LOCATION, MACHINE, RUN_CONTROL, role_of

# A run may go on with the data read from elsewhere, shown or logged otherwise, or on another machine.
MAY_CHANGE = (LOCATION, RUN_CONTROL, MACHINE)


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out



def _effective(node: Any, group: str) -> dict:
    """A group's settings as its class sees them: for the registry's groups the keys the config leaves out at
    their defaults and the target as the class's own full name (a config file that stops repeating a default,
    or a class reached through another import path, changes nothing); sequences as lists."""
    if not isinstance(node, dict):
        return {}
    target = node.get("_target_")
    cls = registry.registered(group).get(target) if group in registry.GROUPS and isinstance(target, str) else None
    settings = {**(defaults(cls) if cls else {}), **node}
    if cls:
        settings["_target_"] = registry.full_name(cls)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def config_differences(saved: dict, current: DictConfig, groups: tuple[str, ...]) -> list[str]:
    """`key: saved → current` for every setting of `groups` (model, data, optim, ...) that a resumed run would
    change."""
    now = OmegaConf.to_container(current, resolve=True) if isinstance(current, DictConfig) else current
    before, after = (_flat({group: _effective(c.get(group), group) for group in groups}) for c in (saved, now))
    return [f"{key}: {before.get(key)} → {after.get(key)}" for key in sorted(set(before) | set(after))
            if role_of(key) not in MAY_CHANGE and before.get(key) != after.get(key)]
