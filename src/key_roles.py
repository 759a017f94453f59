"""The one table of config keys that are not part of the experiment, and the role each plays.

Three places ask "is this key part of what was trained?", and all three read this table:
- resuming (src/training/config_changes.py): a run may go on with these keys changed;
- TensorBoard's HParams (src/training/tensorboard_logger.py): LOCATION and RUN_CONTROL keys are never shown,
  MACHINE keys only when given on the command line;
- comparison tables (src/reporting): LOCATION and RUN_CONTROL keys never name a run or a group of runs.

Every other key is part of the experiment: a difference in it is a difference in what was trained.
A key ending with a dot stands for every key below it.
"""
from __future__ import annotations

LOCATION = "location"  # where the files are: the same experiment reads the same data from anywhere
RUN_CONTROL = "run control"  # how the run is started, resumed, shown and logged
MACHINE = "machine"  # which device, and what changes only speed or memory, never the result

KEY_ROLES: dict[str, str] = {
    "data.root": LOCATION,
    "data.csv": LOCATION,
    "data.cache_dir": LOCATION,
    "data.download": LOCATION,
    "ckpt_path": LOCATION,
    "paths.": LOCATION,
    "hydra.": LOCATION,
    "resume": RUN_CONTROL,
    "test": RUN_CONTROL,
    "plugins": RUN_CONTROL,
    "logger.": RUN_CONTROL,
    "trainer.progress_bar": RUN_CONTROL,
    "trainer.log_every_s": RUN_CONTROL,
    "trainer.device": MACHINE,
    "trainer.warmup_batches": MACHINE,
    "trainer.channels_last": MACHINE,
    "trainer.compile": MACHINE,
    "trainer.threads": MACHINE,
    "data.eval_batch_size": MACHINE,
    "data.max_device_bytes": MACHINE,
    "data.on_bad_image": MACHINE,
    "model.input_size": MACHINE,  # derived: it repeats data.image_size, which is part of the experiment
}


def role_of(key: str) -> str | None:
    """The role of `key` (`data.root`, `hydra.run.dir`), None for a key of the experiment."""
    for pattern, role in KEY_ROLES.items():
        if key == pattern or (pattern.endswith(".") and key.startswith(pattern)):
            return role
    return None


def keys_with(*roles: str) -> tuple[str, ...]:
    """The table's keys (and key prefixes) of these roles."""
    return tuple(key for key, role in KEY_ROLES.items() if role in roles)
