"""What every command-line entrypoint (train, evaluate, predict, export) shares.

- the `${run_id:}`, `${start_time:}` and `${job_dirname:}` resolvers used in run and sweep directory names;
- `run_or_exit`: a UserError (bad data, config or file) ends the command with its one-sentence
  message and exit code 2, instead of a traceback; in a multirun, records logged with
  `extra={"file_only": True}` (per-class tables) go to the job's log file, not the console.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import registry
from .errors import UserError
from .fileio import check_writable_folder, read_text
from .runtime.sweep_jobs import record_job_error

T = TypeVar("T")


def _config_dir() -> str:
    """The config tree: conf/ beside the package in a clone (`python -m src.train` from the repository), or
    the copy installed inside the package (`pip install .` puts it at src/conf). An absolute path, so that
    the commands work from any folder."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise SystemExit(f"the config tree (conf/train.yaml) is neither in {package.parent} nor in {package}: "
                     "reinstall the project")


CONFIG_DIR = _config_dir()

# A short random id per process, in every run and sweep directory name: two runs started in the
# same second (or on two machines sharing a disk) never write into the same directory. Cached in the
# config like Hydra's ${now:}: jobs of a parallel launcher (other processes) receive the sweep config
# with its resolved values and so share the sweep directory.
# The processes of one torchrun launch (trainer=ddp) are one run: they all take rank 0's id and start
# time (`${start_time:}` replaces Hydra's per-process `${now:}` in the run directory's name).
_PROCESS_ID = secrets.token_hex(3)
_start: datetime.datetime | None = None


def _run_id() -> str:
    from .runtime.distributed import rank_zero_value  # torch: imported when a directory is named, not before

    return rank_zero_value("run_id", _PROCESS_ID)


def _start_time(pattern: str) -> str:
    """The time of the first call in this process (rank 0's under torchrun), formatted with `pattern`."""
    global _start
    if _start is None:
        from .runtime.distributed import rank_zero_value

        _start = datetime.datetime.fromisoformat(rank_zero_value("start_time", datetime.datetime.now().isoformat()))
    return _start.strftime(pattern)


def _job_dirname(overrides: str) -> str:
    """A sweep job's directory name from its overrides (`<n>_<this>`), e.g. `model.dropout@0.2+seed@1`
    (conf/hydra/default.yaml joins key and value with '@' and overrides with '+').

    The name must paste back into any command unquoted: `ckpt_path=outputs/sweeps/<s>/3_model.dropout@0.2+seed@1`
    passes Hydra's override grammar and shells. So only letters, digits and `. _ - + @` are kept; any other
    character (the '=' and ',' of a list value, a '/' that would make a sub-directory) becomes '_'. A name
    that would not fit in a file name (255 bytes), as an Optuna trial's float values easily do, is
    shortened, with a hash of the whole text."""
    name = re.sub(r"[^A-Za-z0-9._+@-]", "_", overrides)
    if len(name.encode()) <= MAX_JOB_DIRNAME_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return name.encode()[:MAX_JOB_DIRNAME_BYTES - 9].decode(errors="ignore") + "_" + digest


MAX_JOB_DIRNAME_BYTES = 200  # 255 on most file systems, less the job number
OmegaConf.register_new_resolver("run_id", _run_id, replace=True, use_cache=True)
OmegaConf.register_new_resolver("start_time", _start_time, replace=True, use_cache=True)
OmegaConf.register_new_resolver("job_dirname", _job_dirname, replace=True)


# A config of this runner holds a few hundred values; a YAML file whose aliases (&name ... *name) expand to more is
# an "alias bomb": a few lines that Hydra (OmegaConf.create copies every alias) would expand for hours.
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_FILES = 2_000  # files of one --config-dir checked; a folder with more is not a config folder


def hydra_command(main: Callable[[], object]) -> Callable[[], None]:
    """The entry of a Hydra command (`python -m src.X`, `fer-X`): the YAML files of the config folders named on
    the command line are checked before Hydra reads any of them (`check_config_files`)."""
    def cli() -> None:
        check_config_files(sys.argv[1:])
        main()
    cli.__doc__ = main.__doc__
    return cli


def check_config_files(args: list[str]) -> None:
    """Refuses, in one sentence, a YAML file of a `--config-dir`/`-cd` or `--config-path`/`-cp` folder that
    expands to more than MAX_CONFIG_VALUES values through its aliases. The file is composed (yaml.compose: an
    alias is one shared node, nothing is copied) and its expanded size counted once per node."""
    import yaml

    folders = [value for flag, value in zip(args, args[1:]) if flag in ("--config-dir", "-cd", "--config-path", "-cp")]
    folders += [a.split("=", 1)[1] for a in args if a.startswith(("--config-dir=", "--config-path="))]
    for folder in folders:
        files = sorted(p for p in Path(folder).expanduser().rglob("*.y*ml") if p.suffix in (".yaml", ".yml"))
        for path in files[:MAX_CONFIG_FILES]:
            try:
                node = yaml.compose(read_text(path), Loader=yaml.SafeLoader)
            except (OSError, ValueError, yaml.YAMLError):
                continue  # unreadable or not YAML: Hydra says so itself if it reads the file
            if node is not None and _expanded_size(node, {}) > MAX_CONFIG_VALUES:
                _refuse(f"{path} was refused: its YAML aliases (*name) expand to more than {MAX_CONFIG_VALUES:,} "
                        "values (a config has a few hundred)")


def _expanded_size(node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is copied out; each node is counted once (`sizes`)."""
    import yaml

    if id(node) not in sizes:
        sizes[id(node)] = 1  # a recursive alias (YAML allows it) counts once instead of looping
        if isinstance(node, yaml.MappingNode):
            sizes[id(node)] = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            sizes[id(node)] = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    return min(sizes[id(node)], MAX_CONFIG_VALUES + 1)


class RunFolderCheck(Callback):
    """A Hydra callback (conf/hydra/default.yaml, eval.yaml): before Hydra creates the run (or sweep) folder and
    opens its log file there, the folder's name must resolve (no interpolation loop, no unset environment
    variable) and the folder must be one this user can create and write. Otherwise one sentence and exit code 2,
    where Hydra would end with a traceback ("Unable to configure handler 'file'", FileExistsError, ...)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # the ${hydra:...} of the name resolve as Hydra's own will
        try:
            folder = OmegaConf.select(config, key, throw_on_resolution_failure=True)
            check_writable_folder(str(folder), key)
        except OmegaConfBaseException as exc:
            _refuse(f"{key} cannot be resolved: {str(exc).splitlines()[0]}")
        except UserError as exc:
            _refuse(str(exc))


def _refuse(message: str) -> NoReturn:
    """A command's one-sentence end before its job started (its logging is Hydra's own, not the job's yet)."""
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(UserError.exit_code)


def discard_if_empty(output_dir: str | Path) -> None:
    """Removes a command's output directory that holds nothing but what is written before the work starts
    (Hydra's .hydra/, the log, run_info.json): a run stopped by a config or data error leaves no empty
    directory behind for `src.report` to list. A directory with anything else in it (checkpoints) is kept."""
    output_dir = Path(output_dir)
    if output_dir.is_dir() and all(p.name in (".hydra", "run_info.json") or p.suffix == ".log"
                                   for p in output_dir.iterdir()):
        shutil.rmtree(output_dir, ignore_errors=True)


def run_or_exit(work: Callable[[], T], logger: logging.Logger, on_error: Callable[[], None] | None = None,
                plugins: Iterable[str] | str | None = None) -> T | None:
    """Imports the `plugins` modules (the command's `plugins` key: src/registry.py), then runs `work`. A
    UserError (bad data, config or file) is logged as its one sentence and ends the process with its exit
    code (2, or 130 for Ctrl-C), after `on_error` (cleanup); so does Ctrl-C at any moment (130), without a
    traceback, and so does running out of memory (the sizes chosen: batch, image size, model).

    In a multirun a failed job must not end the sweep: its error (a UserError's sentence, or the traceback
    of anything else, which also goes to the job's log) is kept for the sweep callback, which records the
    job as failed, and None is returned; the sweep ends with one sentence and a non-zero exit once every
    job ran (src/reporting/sweep_callback.py). Ctrl-C stops the whole sweep.

    Also in a multirun, records logged with `extra={"file_only": True}` (the per-class tables, 100 lines
    for CIFAR-100) go to the job's log file only: the console shows every job's summary lines."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun:
        _keep_file_only_records_off_the_console()
    try:
        registry.load_plugins(plugins)
        try:
            return work()
        except Exception as exc:
            out_of_memory = _out_of_memory(exc)  # the sizes the user chose, not a bug: one sentence
            if out_of_memory is None:
                raise
            raise out_of_memory from None
    except KeyboardInterrupt:
        logger.error("Interrupted (Ctrl-C)")
        sys.exit(130)
    except UserError as exc:
        logger.error("%s", exc)
        if exc.exit_code == 130 or not multirun:
            if on_error is not None and not multirun:
                on_error()
            sys.exit(exc.exit_code)
        error = exc
    except Exception as exc:
        if not multirun:
            raise  # a bug, not the user's mistake: Python's traceback is what helps
        logger.exception("The job crashed")
        error = exc
    record_job_error(error)
    return None


def _out_of_memory(exc: Exception) -> UserError | None:
    """An allocation the machine could not make (host or GPU memory), as the one sentence a user can act on;
    None for any other exception. (By name and message: torch is not imported here.)"""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))):
        return None
    detail = re.search(r"(tried to allocate [^.(]*)", text)
    return UserError(f"out of memory{f' ({detail.group(1).strip()})' if detail else ''}: lower data.batch_size, "
                     "data.eval_batch_size or data.image_size, or choose a smaller model")


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def _keep_file_only_records_off_the_console() -> None:
    """Hydra configures the logging of every job anew: its console handler (a StreamHandler that is not a
    FileHandler) gets the filter, the job's log file keeps everything."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if _not_file_only not in handler.filters:
                handler.addFilter(_not_file_only)
