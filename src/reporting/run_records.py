"""Run records: the Run class and what runs and sweeps left on disk (metrics.json, run_info.json, .hydra
overrides, a sweep's jobs.jsonl), read and checked; and the copy of those records that `--keep-runs` keeps."""
from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UserError
from ..evaluation.metrics import SCALAR_METRICS
from ..fileio import read_text
from ..key_roles import LOCATION, RUN_CONTROL, role_of
from ..value_checks import describe, matches, show

# Overrides that say where things are or how the run was started and shown, not what was trained
# (src/key_roles.py): left out of run names and groups.
NOT_NAMING = (LOCATION, RUN_CONTROL)


@dataclass
class Run:
    dir: Path
    overrides: list[str]   # as given on the command line, location keys left out
    status: str            # completed | failed | incomplete (no metrics.json: killed or still running)
    error: str = ""
    metrics: dict | None = None
    name: str = ""         # the overrides that vary between the runs of a report
    label: str = ""        # given on the command line as LABEL=PATH

    def provenance(self) -> dict:
        """The data config chosen, the command, the machine and the wall times of the run."""
        info_file, hydra_file = self.dir / "run_info.json", self.dir / ".hydra" / "hydra.yaml"
        info = _read_checked(info_file, _json_object, RUN_INFO_TYPES) if info_file.exists() else {}
        hydra_yaml = _read_checked(hydra_file, _yaml_data, {"hydra.runtime.choices": dict | None}) \
            if hydra_file.exists() else {}
        choices = ((hydra_yaml.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
        machine = info.get("device_name") or info.get("device") or ""
        if info.get("device") == "cpu" and info.get("cpu_threads"):
            threads = info["cpu_threads"]
            machine += f", {threads} thread{'s'[:threads != 1]}"
        if (self.metrics or {}).get("world_size"):
            machine += f", {self.metrics['world_size']} processes"
        metrics = self.metrics or {}
        # a resumed run: the commands before the one that finished it, first first
        commands = [*(info.get("earlier_commands") or []), *([info["command"]] if info.get("command") else [])]
        return {"run": self.name, "data": str(choices.get("data") or ""), "command": commands,
                "machine": machine, "train_time": duration(metrics.get("train/time_s")),
                "run_time": duration(metrics.get("run_time_s"))}

    @property
    def monitor(self) -> tuple[str, float | None]:
        key = (self.metrics or {}).get("monitor", "val/acc")
        return key, (self.metrics or {}).get(key)

    def history(self) -> list[dict]:
        """history.csv's rows; every value a number (or empty)."""
        path = self.dir / "history.csv"
        if not path.exists():
            return []
        rows = list(csv.DictReader(io.StringIO(_read(path, lambda text: text))))
        for line, row in enumerate(rows, start=2):
            for key, value in row.items():
                try:
                    if value not in (None, ""):
                        float(value)
                except (TypeError, ValueError):
                    raise UserError(f"{path}, line {line}: {key}={value!r} is not a number; this file was not "
                                    "written by this runner (or was edited)") from None
        return rows


# -- reading what runs left on disk --------------------------------------------------------------------------
# Run directories are shared and copied around like checkpoints: every file is read as data (JSON, or
# YAML with the safe loader: no tags, no interpolations resolved) and checked for the types the report
# uses, so that a damaged or crafted file ends the report with one sentence naming it.

_NUMBER = float | None
METRICS_TYPES = {
    "monitor": str | None, "best_epoch": int | None, "classes": list[str] | None,
    "test/per_class": dict[str, dict[str, _NUMBER]] | None, "test/confusion_matrix": list[list[int]] | None,
    "world_size": int | None, "seed": int | None, "train/time_s": _NUMBER, "run_time_s": _NUMBER,
    **{key: _NUMBER for key in ("model/params", "model/size_mb", "model/conv_layers", "train/epoch_time_s",
                                "train/images_per_s")},
    **{f"{split}/{name}": _NUMBER for split in ("val", "test") for name in SCALAR_METRICS},
}
RUN_INFO_TYPES = {key: str | None for key in ("command", "device", "device_name")} | {
    "cpu_threads": int | None, "earlier_commands": list[str] | None}


def _read(path: Path, parse):
    try:
        return parse(read_text(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{path} is not valid {'JSON' if path.suffix in ('.json', '.jsonl') else 'YAML'}: "
                        f"{str(exc).splitlines()[0]}") from None


def _json_object(text: str):
    return json.loads(text)


def _yaml_data(text: str):
    return yaml.safe_load(text)


def _read_checked(path: Path, parse, types: dict) -> dict:
    """A JSON or YAML mapping whose (dotted) keys have the given types; missing keys are fine."""
    data = _read(path, parse)
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a mapping: it was not written by this runner")
    for key, hint in types.items():
        value = data
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not matches(value, hint):
            raise UserError(f"{path} was not written by this runner (or was edited): {key}={show(value)} is not "
                            f"{describe(hint)}")
    return data


def override_key(override: str) -> str:
    """An override's key: `+model.width=8` -> `model.width`."""
    return override.split("=", 1)[0].lstrip("+~")


def _read_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    overrides = _read(path, _yaml_data) if path.exists() else []
    if not matches(overrides, list[str] | None):
        raise UserError(f"{path} is not a list of overrides: it was not written by Hydra (or was edited)")
    return [o for o in overrides or [] if role_of(override_key(o)) not in NOT_NAMING]


def _read_run(run_dir: Path, status: str | None = None, error: str = "") -> Run:
    metrics_file = run_dir / "metrics.json"
    metrics = _read_checked(metrics_file, _json_object, METRICS_TYPES) if metrics_file.exists() else None
    if status is None or (status == "completed" and metrics is None):
        status = "completed" if metrics is not None else "incomplete"
    return Run(run_dir, _read_overrides(run_dir), status, error, metrics if status == "completed" else None)


def read_job_records(sweep_dir: Path) -> list[dict]:
    """jobs.jsonl, one record per job number (the last one wins: a job re-run after a failure replaces
    its row), in job order."""
    path = sweep_dir / "jobs.jsonl"
    latest = {}
    for number, line in enumerate(_read(path, lambda text: text).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and matches(record.get("job"), int) and isinstance(record.get("dir"), str)
                and record.get("status") in ("completed", "failed") and matches(record.get("error"), str | None)):
            raise UserError(f"{path}, line {number} is not a job record of this runner's sweeps")
        latest[record["job"]] = record
    return [latest[job] for job in sorted(latest)]


def _read_sweep(sweep_dir: Path) -> list[Run]:
    """Every job of a sweep, from jobs.jsonl."""
    return [_read_run(Path(r["dir"]), r["status"], r.get("error") or "") for r in read_job_records(sweep_dir)]


def split_label(argument: str | Path) -> tuple[str, Path]:
    """`LABEL=PATH` -> (LABEL, PATH); a path that exists as given (sweep folders have `=` in their names)
    or has no `=` -> ("", PATH)."""
    text = str(argument)
    label, _, rest = text.partition("=")
    if Path(text).exists() or not rest or not label:
        return "", Path(text)
    return label, Path(rest)


def _find_runs(path: Path) -> list[Run]:
    if (path / "jobs.jsonl").exists():
        return _read_sweep(path)
    if (path / "metrics.json").exists() or (path / "run_info.json").exists():
        return [_read_run(path)]
    if not path.is_dir():
        return []
    found = sorted(p.parent for p in path.rglob("*") if p.name in ("jobs.jsonl", "run_info.json"))
    sweeps = [p for p in found if (p / "jobs.jsonl").exists()]
    inside_sweep = [p for p in found if any(s in p.parents for s in sweeps)]
    # A run that stopped before its first epoch (a config or data error) has nothing to report.
    trained = [p for p in found if p in sweeps or (p / "metrics.json").exists() or (p / "checkpoints").is_dir()]
    return [run for p in trained if p not in inside_sweep for run in _find_runs(p)]


def read_runs(paths: list[str | Path]) -> list[Run]:
    """Runs and sweeps named by `paths`; a folder that is neither is searched for them. A path given as
    LABEL=PATH labels its runs: they are named and grouped by LABEL instead of by their overrides (runs made
    with the same overrides at different versions of an experiment's YAML, or from other projects)."""
    runs: list[Run] = []
    for argument in paths:
        label, path = split_label(argument)
        if not path.exists():
            read_as = f" ({argument} read as LABEL=PATH)" if label else ""
            raise UserError(f"{path} does not exist{read_as}: pass run or sweep directories (outputs/runs/..., "
                            "outputs/sweeps/...), each optionally as LABEL=PATH")
        for run in _find_runs(path):
            run.label = label
            runs.append(run)
    seen, unique = set(), []
    for run in runs:  # a run reached twice (its sweep and itself) is one row
        if run.dir.resolve() not in seen:
            seen.add(run.dir.resolve())
            unique.append(run)
    if not unique:
        raise UserError(f"no runs found in {', '.join(map(str, paths))}: a run directory holds run_info.json "
                        "(and metrics.json when it finished), a sweep directory jobs.jsonl")
    return unique


# What a report reads of a run (all small text files): kept by `src.report --keep-runs` so that a report
# can be made again, and runs added to it, from the report folder alone (no checkpoints, no event files).
RECORD_FILES = ("metrics.json", "history.csv", "run_info.json", "per_class.md", ".hydra/config.yaml",
                ".hydra/overrides.yaml", ".hydra/hydra.yaml")


def keep_run_records(runs: list[Run], out_dir: Path) -> Path:
    """Copies each run's RECORD_FILES to out_dir/runs/<run directory name> (a name taken twice gets _2, ...);
    runs already inside out_dir/runs are left as they are. Returns out_dir/runs."""
    kept = Path(out_dir) / "runs"
    kept.mkdir(parents=True, exist_ok=True)
    for run in runs:
        if kept.resolve() in run.dir.resolve().parents:
            continue
        name, n = run.dir.name, 1
        while (kept / name).exists():
            n += 1
            name = f"{run.dir.name}_{n}"
        for record in RECORD_FILES:
            if (run.dir / record).is_file():
                (kept / name / record).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run.dir / record, kept / name / record)
    return kept


def duration(seconds: float | None) -> str:
    """Seconds as `M min SS s` (or `S s`); "" for None."""
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
