"""Building objects from config nodes."""
from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from .errors import UserError


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, but a UserError raised by a constructor reaches the user as itself
    (Hydra wraps it in an InstantiationException with a traceback-like message)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise
