"""Which classes the runner may build from a config it did not compose itself: the registry.

A config the user composed (conf/, `--config-dir`, the command line) is trusted: Hydra imports whatever
its `_target_` names. A config read back from a file (a checkpoint's stored model and data config) is
data: its `_target_` may only pick a class of this registry, by its full name (`module.Class`), never
import one. The registry holds, per group (`model`, `data`, `logger`):

- the runner's own classes (registered where they are defined: src/models, src/data, src/training);
- the classes of the **plugin modules** the trusted side names, each way importing the module, after which
  every class defined in it is registered in the group it belongs to (a torch Module is a model, an
  ImageData a dataset, a Logger a logger):
    * the `plugins` key of every command: `plugins=[usernet]`, or `plugins: [usernet]` in an experiment or
      `--config-dir` config;
    * an installed package's entry point in the group `fer_runner.plugins` (`pip install my-fer-models`);
- classes registered from Python with `register("model", MyNet)` or the `@register("model")` decorator.

A stored name that is not registered is refused in one sentence; a class of the same name from another
module is named in it, never built in its place (docs/plugins.md).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Iterable

from .errors import ConfigError, UserError

GROUPS = ("model", "data", "logger")
ENTRY_POINT_GROUP = "fer_runner.plugins"

# The packages that register the runner's own classes when imported. Named, not imported here: the registry
# is below them in the layers (src/data imports it to register), so it imports them by name on first use.
RUNNER_PACKAGES = (f"{__package__}.models", f"{__package__}.data")

_classes: dict[str, dict[str, type]] = {group: {} for group in GROUPS}  # group -> full name -> class
_bases: dict[str, type] = {}  # group -> the class its members derive from, declared by the package owning it
_loaded_modules: set[str] = set()
_entry_points_loaded = False


def full_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(group: str, cls: type | None = None, *, aliases: Iterable[str] = ()) -> Callable | type:
    """Registers `cls` in `group` under its full name (and `aliases`: other import paths of the same class,
    e.g. a package's re-export that configs name). As a decorator: `@register("model")`."""
    if group not in _classes:
        raise ValueError(f"unknown registry group {group!r} (groups: {', '.join(GROUPS)})")

    def add(cls: type) -> type:
        for name in (full_name(cls), *aliases):
            _classes[group][name] = cls
        return cls

    return add if cls is None else add(cls)


def declare_base(group: str, base: type) -> None:
    """`base` is the class every member of `group` derives from (src/data declares ImageData): a plugin
    module's subclasses of it are registered in `group`."""
    _bases[group] = base


def registered(group: str) -> dict[str, type]:
    """{full name: class} of `group`: the runner's own, the entry points' plugins and what was registered."""
    _import_runner_packages()
    load_entry_points()
    return dict(_classes[group])


def _import_runner_packages() -> None:
    for name in RUNNER_PACKAGES:
        importlib.import_module(name)


def _group_of(cls: type) -> str | None:
    """The group a plugin module's class belongs to: a torch Module is a model, an ImageData a dataset, a class
    with the logger's methods (log_scalars and close: src/training/experiment.py calls them) a logger; None
    for everything else (blocks are Modules too, and harmless to register: they are built only if named)."""
    import torch.nn as nn

    if "data" in _bases and issubclass(cls, _bases["data"]):
        return "data"
    if issubclass(cls, nn.Module):
        return "model"
    if callable(getattr(cls, "log_scalars", None)) and callable(getattr(cls, "close", None)):
        return "logger"
    return None


def _register_module(module) -> int:
    """Registers every class defined in `module` that belongs to a group; returns how many."""
    count = 0
    for value in vars(module).values():
        if isinstance(value, type) and value.__module__ == module.__name__:
            group = _group_of(value)
            if group is not None:
                register(group, value)
                count += 1
    return count


def load_plugins(modules: Iterable[str] | str | None) -> None:
    """Imports the plugin modules the trusted side named (the `plugins` key: a list of module names, or one)
    and registers their classes. Called by every command (src/entry.py, run_or_exit) before anything is built."""
    _import_runner_packages()  # first: the bases a plugin's classes are sorted by
    load_entry_points()
    for name in [modules] if isinstance(modules, str) else modules or ():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"plugins=[{name}] is invalid: every plugin is a module name, e.g. plugins=[usernet]")
        if name in _loaded_modules:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugins: module {name!r} cannot be imported ({type(exc).__name__}: {exc}); put "
                              "the folder holding it on PYTHONPATH or install its package") from None
        _register_module(module)
        _loaded_modules.add(name)


def load_entry_points() -> None:
    """Installed packages' plugins (entry-point group `fer_runner.plugins`), once per process. An entry point
    names a module (its classes are registered) or a function (called: it registers what it wants)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry_point.load()
        except Exception as exc:  # noqa: BLE001 - a broken installed plugin: say which, do not crash
            raise UserError(f"the installed plugin {entry_point.name} ({entry_point.value}) cannot be loaded: "
                            f"{type(exc).__name__}: {exc}") from None
        if isinstance(loaded, type(sys)):
            _register_module(loaded)
        elif callable(loaded):
            loaded()


def lookup(group: str, name: object, source: str) -> type:
    """The registered class a stored config's `_target_` names, matched in full; else a UserError (one
    sentence) naming what was asked for, a registered class of the same name if any, and how to register."""
    known = registered(group)
    if isinstance(name, str) and name in known:
        return known[name]
    short = name.rsplit(".", 1)[-1] if isinstance(name, str) else None
    namesakes = sorted(full for full in known if full.rsplit(".", 1)[-1] == short)
    namesake = (f"; the registered {namesakes[0]} has the same class name but is another class and is not used in "
                "its place") if namesakes else ""
    module = name.rsplit(".", 1)[0] if isinstance(name, str) and "." in name else None
    how = (f": if you trust that code, pass plugins=[{module}] (or install it as a package with a "
           f"'{ENTRY_POINT_GROUP}' entry point)") if module else ""
    raise UserError(f"{source} was refused: its stored {group} config names {name!r}, which is not a registered "
                    f"{group} class{namesake}{how}")
