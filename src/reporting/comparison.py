"""Comparison tables and plots over runs: what `python -m src.report` and the sweep callback write.

A run is a directory with metrics.json (and history.csv, .hydra/overrides.yaml); a sweep is a
directory with jobs.jsonl, which the sweep callback appends to after every job (so failed jobs, which
have no metrics.json, still get a row). From any mix of them this module builds:

- summary.csv / summary.md: one row per run, sorted by the monitored validation metric (failed runs
  last), with the overrides that vary between the runs as the row's name (runs with equal overrides,
  re-runs, are told apart by their directory's name); one number format per column of summary.md;
- when runs differ only in `seed` or `data.fold`: the same figures as mean ± std per group, over its
  seeds and folds (aggregate.csv and a second table in summary.md); re-runs with the same seed and fold
  are no such group, and within a group they count once (averaged);
- time to accuracy: per run, the wall-clock time of training (with validation) until val accuracy first
  reached a target (time_to_val_acc_<target>; by default the best accuracy every run reached);
- curves.png (validation accuracy and loss per epoch of every run), time_to_accuracy.png (validation
  accuracy against wall-clock minutes), bars.png (test accuracy and macro-F1 per run or group) and
  best_confusion_matrix.png (the best run's test confusion matrix).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import describe, matches, show
from ..errors import UserError
from ..evaluation.metrics import BY_NAME, SCALAR_METRICS, SUMMARY_METRICS, lower_is_better
from ..fileio import atomic_write_text, read_text

log = logging.getLogger(__name__)

# Overrides that say where things are, not what was trained: left out of run names and groups.
LOCATION_KEYS = ("data.root", "data.csv", "ckpt_path", "paths.", "hydra.", "resume")
# Overrides that only repeat an experiment: runs that differ in nothing else form one group.
REPEAT_KEYS = ("seed", "data.fold")

# The summary metrics of the registry (src/evaluation/metrics.py), on val and on test: column -> metrics.json key
SUMMARY_COLUMNS = {f"{split}_{name}": f"{split}/{name}" for split in ("val", "test") for name in SUMMARY_METRICS}
# column -> metrics.json key
METRIC_COLUMNS = {"params": "model/params", "size_mb": "model/size_mb", "conv_layers": "model/conv_layers",
                  "epoch_time_s": "train/epoch_time_s", "images_per_s": "train/images_per_s",
                  "train_time_s": "train/time_s", "best_epoch": "best_epoch", **SUMMARY_COLUMNS}
# How each run was made (run_info.json, metrics.json, .hydra/hydra.yaml): the second table of summary.md.
PROVENANCE_COLUMNS = ("run", "data", "command", "machine", "train_time", "run_time")
# What groups of runs (seeds, folds) show as mean ± std
AGGREGATED = (*SUMMARY_COLUMNS, "epoch_time_s", "images_per_s", "train_time_s")
# One number format per column of summary.md (summary.csv and aggregate.csv keep the values as they are):
# the registry's decimals for metric columns (src/evaluation/metrics.py), counts as integers with thousands
# separators, seconds per epoch and images per second to a tenth, a whole training in seconds as an integer,
# megabytes to a hundredth.
_INTEGER = "{:,.0f}"
COLUMN_FORMATS = {"params": _INTEGER, "conv_layers": _INTEGER, "best_epoch": _INTEGER, "runs": _INTEGER,
                  "size_mb": "{:,.2f}", "epoch_time_s": "{:,.1f}", "images_per_s": "{:,.1f}", "train_time_s": _INTEGER,
                  **{column: f"{{:.{BY_NAME[key.split('/', 1)[1]].decimals}f}}"
                     for column, key in SUMMARY_COLUMNS.items()}}
PER_CLASS_FORMAT = f"{{:.{BY_NAME['per_class'].decimals}f}}"  # the f1_<class> columns


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
                "machine": machine, "train_time": _duration(metrics.get("train/time_s")),
                "run_time": _duration(metrics.get("run_time_s"))}

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


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _read_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    overrides = _read(path, _yaml_data) if path.exists() else []
    if not matches(overrides, list[str] | None):
        raise UserError(f"{path} is not a list of overrides: it was not written by Hydra (or was edited)")
    return [o for o in overrides or [] if not _key(o).startswith(LOCATION_KEYS)]


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


def collect_runs(paths: list[str | Path]) -> list[Run]:
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
    _name_runs(unique)
    return _sorted(unique)


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


def common_overrides(runs: list[Run]) -> list[str]:
    """The overrides every run shares (shown once above the table instead of in every row)."""
    shared = set(runs[0].overrides)
    for run in runs[1:]:
        shared &= set(run.overrides)
    return [o for o in runs[0].overrides if o in shared]


def _name_runs(runs: list[Run]) -> None:
    """Each run's name: its overrides that not every run shares; a labelled run's: its label and the
    overrides that not every run of that label shares. Runs with equal names (re-runs of one command) get
    their directory's name added, with as many parent folders as tell them apart."""
    shared = set(common_overrides(runs))
    for run in runs:
        if run.label:
            same_label = set(common_overrides([r for r in runs if r.label == run.label]))
            run.name = " ".join([run.label, *(o for o in run.overrides if o not in same_label)])
        else:
            run.name = " ".join(o for o in run.overrides if o not in shared) or run.dir.name
    for name, count in Counter(run.name for run in runs).items():
        if count > 1:
            same = [run for run in runs if run.name == name]
            depth = next((d for d in range(1, 8) if len({_tail(r.dir, d) for r in same}) == count), None)
            for run in same:
                run.name = f"{name} ({_tail(run.dir, depth) if depth else run.dir})"


def _tail(path: Path, depth: int) -> str:
    return "/".join(path.parts[-depth:])


def _repeat(run: Run) -> tuple:
    """What tells repeats of one experiment apart: the seed (metrics.json's, else the override) and the fold."""
    given = {_key(o): o.split("=", 1)[1] for o in run.overrides if _key(o) in REPEAT_KEYS}
    seed = (run.metrics or {}).get("seed")
    return given.get("seed") if seed is None else str(seed), given.get("data.fold")


def _sorted(runs: list[Run]) -> list[Run]:
    def order(run: Run):
        key, value = run.monitor
        if value is None:
            return (1, 0.0)
        return (0, value if lower_is_better(key) else -value)

    return sorted(runs, key=order)


# -- tables ----------------------------------------------------------------------------------------------

def run_row(run: Run) -> dict:
    row = {"run": run.name, "status": run.status, "error": run.error, "dir": str(run.dir)}
    if run.metrics:
        row |= {column: run.metrics.get(key) for column, key in METRIC_COLUMNS.items()}
        row |= {f"f1_{name}": m["f1"] for name, m in (run.metrics.get("test/per_class") or {}).items()}
    return row


def groups(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Completed runs whose label and overrides are equal apart from seed and data.fold and that differ in
    seed or fold (two seeds or folds at least; re-runs of one command are no group), best monitored metric
    first."""
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.status == "completed":
            key = (run.label, *(o for o in run.overrides if _key(o) not in REPEAT_KEYS))
            by_key.setdefault(key, []).append(run)
    def name(label: str, overrides: list[str]) -> str:  # as _name_runs names runs
        hidden = set(common_overrides([r for r in runs if r.label == label]))
        return " ".join([*([label] if label else []), *(o for o in overrides if o not in hidden)]) or "(all)"

    named = [(name(label, overrides), members)
             for (label, *overrides), members in by_key.items() if len({_repeat(m) for m in members}) > 1]
    return named  # runs are already sorted, so groups come in order of their best member


def aggregate_row(name: str, members: list[Run]) -> dict:
    """Mean and sample standard deviation of each figure over the group's seeds and folds (`runs`: how
    many); runs that repeat a seed and fold are averaged first, so that each seed or fold counts once."""
    repeats: dict[tuple, list[dict]] = {}
    for member in members:
        repeats.setdefault(_repeat(member), []).append(run_row(member))
    row = {"group": name, "runs": len(repeats)}
    for column in AGGREGATED:
        per_repeat = [[r[column] for r in rows if r.get(column) is not None] for rows in repeats.values()]
        values = [statistics.mean(v) for v in per_repeat if v]
        row[column] = statistics.mean(values) if values else None
        row[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return row


def _format(column: str, value) -> str:
    """`value` in `column`'s format (COLUMN_FORMATS); text as it is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if column.startswith("time_to_"):
        return _duration(value)
    spec = COLUMN_FORMATS.get(column) or (PER_CLASS_FORMAT if column.startswith("f1_") else "{}")
    return spec.format(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _mean_std(column: str, mean, std) -> str:
    return f"{_format(column, mean)} ± {_format(column, std)}" if std is not None else _format(column, mean)


def _markdown(columns: list[str], rows: list[dict]) -> list[str]:
    text = ("run", "group", "status", "error", *PROVENANCE_COLUMNS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if c in text else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(_format(c, row.get(c)).replace("|", "\\|") for c in columns) + " |" for row in rows]
    return lines


def _csv(columns: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# -- time to accuracy ----------------------------------------------------------------------------------------
# history.csv's time_s is the wall clock of training with validation at each epoch's end: the time a run
# took to reach a validation accuracy is the time_s of its first epoch at or above it.

def time_to(history: list[dict], accuracy: float) -> float | None:
    """Seconds of training (with validation) until val/acc first reached `accuracy`; None if it never did
    (or history.csv has no time_s: a run from before it was recorded)."""
    for record in history:
        if record.get("time_s") not in (None, "") and record.get("val/acc") not in (None, "") \
                and float(record["val/acc"]) >= accuracy:
            return float(record["time_s"])
    return None


def time_targets(runs: list[Run]) -> list[float]:
    """The default accuracy for "time to": the best val accuracy that every timed run reached (the lowest
    best, rounded down to a whole percent), so that each run of the comparison has a time."""
    bests = [max(float(r["val/acc"]) for r in history if r.get("val/acc") not in (None, ""))
             for history in (run.history() for run in runs if run.status == "completed")
             if any(r.get("time_s") not in (None, "") and r.get("val/acc") not in (None, "") for r in history)]
    return [math.floor(min(bests) * 100) / 100] if bests else []


def time_column(accuracy: float) -> str:
    return f"time_to_val_acc_{accuracy:g}"


def write_tables(runs: list[Run], out_dir: Path, targets: list[float] = ()) -> str:
    """summary.csv, summary.md and (when runs repeat with other seeds or folds) aggregate.csv; returns the
    Markdown. `targets`: val accuracies whose time to reach each run's row gives (time_to_val_acc_<target>,
    seconds in summary.csv)."""
    rows = [run_row(run) for run in runs]
    histories = [run.history() if run.status == "completed" else [] for run in runs]
    for row, history in zip(rows, histories):
        row |= {time_column(target): time_to(history, target) for target in targets}
    per_class = sorted({k for row in rows for k in row if k.startswith("f1_")})
    columns = ["run", "status", *METRIC_COLUMNS, *map(time_column, targets), *per_class, "error"]
    atomic_write_text(_csv([*columns, "dir"], rows), out_dir / "summary.csv")
    shared = common_overrides(runs)
    lines = [f"{len(runs)} runs" + (f"; every run: `{' '.join(shared)}`" if shared else ""), "",
             *_markdown([c for c in columns if c != "error" or any(r["error"] for r in rows)], rows)]
    made = [run.provenance() for run in runs]
    made = [{**row, "command": ", resumed by ".join(f"`{command}`" for command in row["command"])} for row in made]
    lines += ["", "How each run was made (train time: all epochs with their validation; run time: data loading, "
              "training and the test evaluation):", "", *_markdown(list(PROVENANCE_COLUMNS), made)]
    grouped = [aggregate_row(name, members) for name, members in groups(runs)]
    if grouped:
        mean_std = [{"group": g["group"], "runs": g["runs"],
                     **{c: _mean_std(c, g[c], g[f"{c}_std"]) for c in AGGREGATED}} for g in grouped]
        lines += ["", "Mean ± sample standard deviation over runs that differ only in seed or data.fold (runs: "
                  "the seeds and folds; runs that repeat a seed and fold count once, averaged):", "",
                  *_markdown(["group", "runs", *AGGREGATED], mean_std)]
        atomic_write_text(_csv(["group", "runs", *[k for c in AGGREGATED for k in (c, f"{c}_std")]], grouped),
                          out_dir / "aggregate.csv")
    markdown = "\n".join(lines) + "\n"
    atomic_write_text(markdown, out_dir / "summary.md")
    return markdown


# -- plots -------------------------------------------------------------------------------------------------

def write_plots(runs: list[Run], out_dir: Path, targets: list[float] = ()) -> list[Path]:
    """curves.png, time_to_accuracy.png, bars.png and best_confusion_matrix.png (each only when the runs
    have what it shows)."""
    from ..evaluation.figures import (
        comparison_bars_figure,
        confusion_matrix_figure,
        curves_by_epoch_figure,
        save_figure,
        time_to_accuracy_figure,
    )

    written = []
    completed = [run for run in runs if run.status == "completed"]
    histories = {run.name: run.history() for run in completed}
    if any(histories.values()):
        save_figure(curves_by_epoch_figure(histories, ("val/acc", "val/loss")), out_dir / "curves.png")
        written.append(out_dir / "curves.png")
    if any(r.get("time_s") not in (None, "") for history in histories.values() for r in history):
        save_figure(time_to_accuracy_figure(histories, tuple(targets)), out_dir / "time_to_accuracy.png")
        written.append(out_dir / "time_to_accuracy.png")
    grouped = [aggregate_row(name, members) for name, members in groups(runs)]
    shown = [f"test_{name}" for name in SUMMARY_METRICS]  # the summary metrics on test
    if grouped:  # one bar per group, its standard deviation as the error bar
        bars = {g["group"]: [g[c] for c in shown] for g in grouped}
        errors = {g["group"]: [g[f"{c}_std"] for c in shown] for g in grouped}
    else:
        bars = {run.name: [run.metrics.get(SUMMARY_COLUMNS[c]) for c in shown] for run in completed}
        errors = None
    bars = {name: values for name, values in bars.items() if None not in values}
    if bars:
        labels = [f"test {BY_NAME[name].label}" for name in SUMMARY_METRICS]
        save_figure(comparison_bars_figure(bars, labels, errors), out_dir / "bars.png")
        written.append(out_dir / "bars.png")
    best = next((run for run in completed if run.metrics.get("test/confusion_matrix")), None)
    if best:
        figure = confusion_matrix_figure(best.metrics["test/confusion_matrix"], best.metrics["classes"],
                                         f"best: {best.name}, test")
        save_figure(figure, out_dir / "best_confusion_matrix.png")
        written.append(out_dir / "best_confusion_matrix.png")
    return written


def write_comparison(runs: list[Run], out_dir: str | Path, plots: bool = True,
                     targets: list[float] | None = None) -> str:
    """Tables and plots of `runs` into out_dir; `targets`: the val accuracies to give the time to (default:
    time_targets, the best accuracy every run reached)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = time_targets(runs) if targets is None else targets
    markdown = write_tables(runs, out_dir, targets)
    if plots:
        names = [p.name for p in write_plots(runs, out_dir, targets)]
        if names:
            markdown += "\n" + "\n".join(f"![{Path(n).stem}]({n})" for n in names) + "\n"
            atomic_write_text(markdown, out_dir / "summary.md")
    return markdown


def insert_into_document(document: Path, section: str, markdown: str, report_dir: Path, command: str) -> None:
    """Replaces what lies between `<!-- report SECTION -->` and `<!-- /report SECTION -->` in `document`
    with `markdown` (a summary.md written into report_dir), its figure links made relative to the document."""
    begin, end = f"<!-- report {section} -->", f"<!-- /report {section} -->"
    text = document.read_text() if document.is_file() else ""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UserError(f"{document} needs one line {begin} and, after it, one line {end}: the report goes "
                        "between them")
    prefix = Path(os.path.relpath(report_dir, document.parent)).as_posix()
    body = re.sub(r"!\[([^\]]*)\]\(([^/)]+)\)", lambda m: f"![{m.group(1)}]({prefix}/{m.group(2)})", markdown)
    block = f"{begin}\n<!-- generated by: {command} -->\n\n{body.strip()}\n\n{end}"
    head, rest = text.split(begin, 1)
    atomic_write_text(head + block + rest.split(end, 1)[1], document)
