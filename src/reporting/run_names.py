"""Naming runs and grouping them: each run's name (the overrides that vary between the runs of a report), the
repeats of one experiment (seed, data.fold) and the groups they form, and the report's order of runs."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..evaluation.metrics import lower_is_better
from .run_records import Run, override_key, read_runs

# Overrides that only repeat an experiment: runs that differ in nothing else form one group.
REPEAT_KEYS = ("seed", "data.fold")


def collect_runs(paths: list[str | Path]) -> list[Run]:
    """The runs of `paths` (read_runs: runs and sweeps, each optionally as LABEL=PATH), each named
    (_name_runs), best monitored metric first (failed runs last)."""
    runs = read_runs(paths)
    _name_runs(runs)
    return _sorted(runs)


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


def repeat_of(run: Run) -> tuple:
    """What tells repeats of one experiment apart: the seed (metrics.json's, else the override) and the fold."""
    given = {override_key(o): o.split("=", 1)[1] for o in run.overrides if override_key(o) in REPEAT_KEYS}
    seed = (run.metrics or {}).get("seed")
    return given.get("seed") if seed is None else str(seed), given.get("data.fold")


def _sorted(runs: list[Run]) -> list[Run]:
    def order(run: Run):
        key, value = run.monitor
        if value is None:
            return (1, 0.0)
        return (0, value if lower_is_better(key) else -value)

    return sorted(runs, key=order)


def groups(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Completed runs whose label and overrides are equal apart from seed and data.fold and that differ in
    seed or fold (two seeds or folds at least; re-runs of one command are no group), best monitored metric
    first."""
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.status == "completed":
            key = (run.label, *(o for o in run.overrides if override_key(o) not in REPEAT_KEYS))
            by_key.setdefault(key, []).append(run)
    def name(label: str, overrides: list[str]) -> str:  # as _name_runs names runs
        hidden = set(common_overrides([r for r in runs if r.label == label]))
        return " ".join([*([label] if label else []), *(o for o in overrides if o not in hidden)]) or "(all)"

    named = [(name(label, overrides), members)
             for (label, *overrides), members in by_key.items() if len({repeat_of(m) for m in members}) > 1]
    return named  # runs are already sorted, so groups come in order of their best member
