"""The comparison tables of `python -m src.report` and the sweep callback (src/reporting/comparison.py), from
run directories written here: what is aggregated over seeds, how rows are named, how numbers are printed."""
from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import pytest
import yaml

from src.errors import UserError
from src.reporting.comparison import write_comparison
from src.reporting.run_names import collect_runs


def make_run(path: Path, overrides: list[str], seed: int, acc: float, **metrics) -> Path:
    """A finished run as the runner leaves it, as far as the report reads it: .hydra/overrides.yaml,
    run_info.json and metrics.json."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "run_info.json").write_text(json.dumps({"command": "python -m src.train " + " ".join(overrides),
                                                    "device": "cpu"}))
    record = {"monitor": "val/acc", "best_epoch": 3, "seed": seed, "val/acc": acc, "val/macro_f1": acc / 2,
              "test/acc": acc, "test/macro_f1": acc / 2, "model/params": 61451, "model/size_mb": 0.235,
              "model/conv_layers": 2, "train/epoch_time_s": 1.25, "train/images_per_s": 1234.5, "train/time_s": 3.75,
              "test/per_class": {"cat": {"precision": acc, "recall": acc, "f1": acc, "support": 4}}} | metrics
    (path / "metrics.json").write_text(json.dumps(record))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def markdown_table(markdown: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """The columns and the rows of the table whose header line starts with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [c.strip() for c in lines[start].strip("|").split("|")], rows


def test_identical_reruns_are_not_aggregated_and_are_told_apart(tmp_path):
    first = make_run(tmp_path / "first" / "job", ["model.dropout=0", "seed=1"], 1, 0.5)
    second = make_run(tmp_path / "second" / "job", ["model.dropout=0", "seed=1"], 1, 0.5)
    make_run(tmp_path / "other", ["model.dropout=0.2", "seed=1"], 1, 0.25)
    runs = collect_runs([tmp_path / "first", tmp_path / "second", tmp_path / "other"])
    names = {run.dir: run.name for run in runs}
    # the same overrides and the same directory name: the parent folder tells them apart
    assert names[first] == "model.dropout=0 (first/job)" and names[second] == "model.dropout=0 (second/job)"
    assert names[tmp_path / "other"] == "model.dropout=0.2"
    markdown = write_comparison(runs, tmp_path / "report", plots=False)
    assert not (tmp_path / "report" / "aggregate.csv").exists()
    assert "±" not in markdown
    assert {r["run"] for r in read_csv(tmp_path / "report" / "summary.csv")} == set(names.values())


def test_seeds_are_aggregated_and_a_repeated_seed_counts_once(tmp_path):
    make_run(tmp_path / "s1", ["seed=1"], 1, 0.5)
    make_run(tmp_path / "s1_again", ["seed=1"], 1, 0.7)
    make_run(tmp_path / "s2", ["seed=2"], 2, 0.3)
    make_run(tmp_path / "default_seed", [], 0, 0.4)  # seed 0 from the config: another seed
    runs = collect_runs([tmp_path])
    assert sorted(run.name for run in runs) == ["default_seed", "seed=1 (s1)", "seed=1 (s1_again)", "seed=2"]
    write_comparison(runs, tmp_path / "report", plots=False)
    (group,) = read_csv(tmp_path / "report" / "aggregate.csv")
    per_seed = [statistics.mean([0.5, 0.7]), 0.3, 0.4]
    assert group["group"] == "(all)" and group["runs"] == "3"  # seeds 0, 1 and 2
    assert float(group["test_acc"]) == pytest.approx(statistics.mean(per_seed))
    assert float(group["test_acc_std"]) == pytest.approx(statistics.stdev(per_seed))


def test_each_column_of_the_tables_has_one_number_format(tmp_path):
    """Formats follow the column, not each value's size: accuracy 1.0 is 1.0000 beside 0.2500, a 150 MB
    model has two decimals like a 0.2 MB one."""
    make_run(tmp_path / "a", ["model.dropout=0", "seed=1"], 1, 1.0, **{
        "model/size_mb": 150.25, "model/params": 61_451_000, "train/epoch_time_s": 0.5,
        "train/images_per_s": 99.25, "train/time_s": 12_345.6})
    make_run(tmp_path / "b", ["model.dropout=0", "seed=2"], 2, 0.25, **{
        "model/size_mb": 0.235, "train/epoch_time_s": 123.4, "train/images_per_s": 12345.6})
    make_run(tmp_path / "c", ["model.dropout=0.2", "seed=1"], 1, 0.125)
    markdown = write_comparison(collect_runs([tmp_path]), tmp_path / "report", plots=False)
    metric = r"\d\.\d{4}"
    formats = {"params": r"\d{1,3}(,\d{3})*", "size_mb": r"[\d,]+\.\d\d", "conv_layers": r"\d+",
               "epoch_time_s": r"[\d,]+\.\d", "images_per_s": r"[\d,]+\.\d", "train_time_s": r"[\d,]+",
               "best_epoch": r"\d+",
               "val_acc": metric, "val_macro_f1": metric, "test_acc": metric, "test_macro_f1": metric,
               "f1_cat": metric, "runs": r"\d+"}
    columns, rows = markdown_table(markdown, "| run | status |")
    assert len(rows) == 3
    for row in rows:
        for column, cell in zip(columns, row):
            if column in formats:
                assert re.fullmatch(formats[column], cell), (column, cell)
    assert rows[0][columns.index("test_acc")] == "1.0000" and rows[0][columns.index("size_mb")] == "150.25"
    columns, rows = markdown_table(markdown, "| group | runs |")
    assert len(rows) == 1  # model.dropout=0 over seeds 1 and 2
    for column, cell in zip(columns, rows[0]):
        if column in formats:  # mean ± std, both in the column's format
            parts = cell.split(" ± ") if column != "runs" else [cell]
            assert all(re.fullmatch(formats[column], part) for part in parts), (column, cell)


def write_history(run_dir: Path, records: list[dict]) -> None:
    with open(run_dir / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def test_time_to_accuracy_is_the_first_epoch_at_or_above_the_target(tmp_path):
    """Time to accuracy: a slow-per-epoch run that gets there in fewer epochs can win; a run that never
    reaches the target has no time; the default target is the best accuracy every run reached."""
    fast = make_run(tmp_path / "fast", ["model=lenet"], 0, 0.62)
    write_history(fast, [{"epoch": 1, "val/acc": 0.40, "time_s": 30}, {"epoch": 2, "val/acc": 0.55, "time_s": 60},
                         {"epoch": 3, "val/acc": 0.62, "time_s": 90}])
    slow = make_run(tmp_path / "slow", ["model=resnet18"], 0, 0.70)
    write_history(slow, [{"epoch": 1, "val/acc": 0.58, "time_s": 100}, {"epoch": 2, "val/acc": 0.70, "time_s": 200}])
    runs = collect_runs([tmp_path])
    write_comparison(runs, tmp_path / "report", plots=True, targets=[0.55, 0.65])
    rows = {r["run"]: r for r in read_csv(tmp_path / "report" / "summary.csv")}
    assert float(rows["model=lenet"]["time_to_val_acc_0.55"]) == 60
    assert rows["model=lenet"]["time_to_val_acc_0.65"] == ""  # never reached
    assert float(rows["model=resnet18"]["time_to_val_acc_0.55"]) == 100
    assert float(rows["model=resnet18"]["time_to_val_acc_0.65"]) == 200
    assert (tmp_path / "report" / "time_to_accuracy.png").stat().st_size > 10_000
    columns, table = markdown_table((tmp_path / "report" / "summary.md").read_text(), "| run | status |")
    cells = {row[0]: row[columns.index("time_to_val_acc_0.65")] for row in table}
    assert cells == {"model=resnet18": "3 min 20 s", "model=lenet": ""}
    # default target: the lower of the two bests (0.62), which both runs reached
    markdown = write_comparison(runs, tmp_path / "default", plots=False)
    assert "time_to_val_acc_0.62" in markdown
    rows = {r["run"]: r for r in read_csv(tmp_path / "default" / "summary.csv")}
    assert float(rows["model=lenet"]["time_to_val_acc_0.62"]) == 90
    assert float(rows["model=resnet18"]["time_to_val_acc_0.62"]) == 200


def test_runs_without_time_in_their_history_get_no_time_to_accuracy(tmp_path):
    """history.csv written before time_s was recorded: the report still works, without times or that plot."""
    old = make_run(tmp_path / "old", ["seed=1"], 1, 0.5)
    write_history(old, [{"epoch": 1, "val/acc": 0.5}])
    markdown = write_comparison(collect_runs([tmp_path]), tmp_path / "report", plots=True)
    assert "time_to_val_acc" not in markdown and not (tmp_path / "report" / "time_to_accuracy.png").exists()
    assert (tmp_path / "report" / "curves.png").exists()


def test_time_to_takes_accuracies_not_percentages(tmp_path, capsys):
    from src.report import main

    make_run(tmp_path / "run", [], 0, 0.5)
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "run"), "--time-to", "65"])
    assert info.value.code == 2 and "between 0 and 1" in capsys.readouterr().err


def test_kept_run_records_make_the_same_report_and_grow_it(tmp_path):
    """--keep-runs: the report folder alone makes the report again (the runs' outputs deleted), and a later
    run adds a row to it; the kept records are the runs' small text files, no checkpoints."""
    from src.report import main

    for seed, acc in ((0, 0.61), (1, 0.63)):
        run = make_run(tmp_path / "outputs" / f"seed{seed}", [f"seed={seed}"], seed, acc)
        write_history(run, [{"epoch": 1, "val/acc": acc - 0.1, "time_s": 50},
                            {"epoch": 2, "val/acc": acc, "time_s": 100}])
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    report = tmp_path / "docs" / "results"
    assert main([str(tmp_path / "outputs"), "--out", str(report), "--keep-runs", "--no-plots"]) == 0
    first = read_csv(report / "summary.csv")
    kept = sorted(p.relative_to(report / "runs").as_posix() for p in (report / "runs").rglob("*") if p.is_file())
    assert kept == sorted(f"seed{s}/{f}" for s in (0, 1) for f in ("metrics.json", "history.csv", "run_info.json",
                                                                     ".hydra/overrides.yaml"))
    for path in (tmp_path / "outputs").rglob("*"):  # the outputs are gone
        if path.is_file():
            path.unlink()
    later = make_run(tmp_path / "later" / "seed2", ["seed=2"], 2, 0.62)
    assert main([str(report / "runs"), str(later), "--out", str(report), "--keep-runs", "--no-plots"]) == 0
    again = read_csv(report / "summary.csv")
    strip = [{k: v for k, v in row.items() if k != "dir"} for row in again]
    assert [r for r in strip if r["run"] != "seed=2"] == [{k: v for k, v in row.items() if k != "dir"} for row in first]
    assert len(again) == 3 and (report / "runs" / "seed2" / "metrics.json").is_file()


def test_labelled_paths_name_and_group_runs_their_overrides_do_not_tell_apart(tmp_path):
    """Two versions of one experiment (its YAML changed between them): the same overrides, told apart and
    grouped by the labels given as LABEL=PATH; a path that exists with `=` in its name stays a path."""
    for seed, acc in ((0, 0.66), (1, 0.68)):
        make_run(tmp_path / "new" / f"seed{seed}", ["experiment=x", f"seed={seed}"], seed, acc)
    for seed, acc in ((0, 0.62), (1, 0.64)):
        make_run(tmp_path / "old" / f"seed{seed}", ["experiment=x", f"seed={seed}"], seed, acc)
    swept = make_run(tmp_path / "sweep" / "model.dropout=0.2", ["experiment=x", "model.dropout=0.2"], 0, 0.5)
    runs = collect_runs([f"new recipe={tmp_path / 'new'}", f"old recipe={tmp_path / 'old'}", swept])
    assert {run.name: run.dir for run in runs} == {
        "new recipe seed=0": tmp_path / "new" / "seed0", "new recipe seed=1": tmp_path / "new" / "seed1",
        "old recipe seed=0": tmp_path / "old" / "seed0", "old recipe seed=1": tmp_path / "old" / "seed1",
        "model.dropout=0.2": swept}
    write_comparison(runs, tmp_path / "report", plots=False)
    groups = {row["group"]: row for row in read_csv(tmp_path / "report" / "aggregate.csv")}
    assert set(groups) == {"new recipe", "old recipe"}
    assert float(groups["new recipe"]["test_acc"]) == pytest.approx(0.67)
    assert float(groups["old recipe"]["test_acc"]) == pytest.approx(0.63)
    # without labels the four runs are re-runs of two seeds of one experiment
    unlabelled = collect_runs([tmp_path / "new", tmp_path / "old"])
    write_comparison(unlabelled, tmp_path / "unlabelled", plots=False)
    (group,) = read_csv(tmp_path / "unlabelled" / "aggregate.csv")
    assert group["runs"] == "2" and float(group["test_acc"]) == pytest.approx(0.65)
    # a mistyped path with `=` in it: the error says how it was read
    with pytest.raises(UserError, match=r"lenet does not exist \(.*0_model=lenet read as LABEL=PATH\)"):
        collect_runs([tmp_path / "sweep" / "0_model=lenet"])


def test_a_resumed_run_shows_every_command_that_trained_it(tmp_path):
    run = make_run(tmp_path / "run", ["seed=0"], 0, 0.6)
    info = json.loads((run / "run_info.json").read_text())
    info |= {"earlier_commands": ["python -m src.train seed=0 test=false"],
             "command": "python -m src.train seed=0 resume=true"}
    (run / "run_info.json").write_text(json.dumps(info))
    markdown = write_comparison(collect_runs([run]), tmp_path / "report", plots=False)
    columns, rows = markdown_table(markdown, "| run | data | command")
    assert rows[0][columns.index("command")] == \
        "`python -m src.train seed=0 test=false`, resumed by `python -m src.train seed=0 resume=true`"


def test_the_machine_column_counts_cpu_threads_in_words(tmp_path):
    runs = []
    for threads in (1, 2):
        run = make_run(tmp_path / f"t{threads}", [f"seed={threads}"], threads, 0.6)
        info = json.loads((run / "run_info.json").read_text()) | {"device_name": "AMD EPYC", "cpu_threads": threads}
        (run / "run_info.json").write_text(json.dumps(info))
        runs.append(run)
    markdown = write_comparison(collect_runs(runs), tmp_path / "report", plots=False)
    columns, rows = markdown_table(markdown, "| run | data | command")
    assert sorted(row[columns.index("machine")] for row in rows) == ["AMD EPYC, 1 thread", "AMD EPYC, 2 threads"]


def test_the_command_above_a_readme_section_can_be_pasted_to_make_it_again(tmp_path):
    """Labels have spaces: the generated-by comment quotes each argument as a shell reads it."""
    import shlex

    from src.report import main

    make_run(tmp_path / "runs" / "seed0", ["seed=0"], 0, 0.6)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report x -->\n<!-- /report x -->\n")
    argv = [f"new recipe, seed 0={tmp_path / 'runs' / 'seed0'}", "--out", str(tmp_path / "out"), "--no-plots",
            "--readme", str(readme), "--section", "x"]
    assert main(argv) == 0
    comment = re.search(r"<!-- generated by: (.*) -->", readme.read_text()).group(1)
    assert shlex.split(comment) == ["python", "-m", "src.report", *argv]
    assert "| new recipe, seed 0 |" in readme.read_text()
