"""Sweeps as users run them: multirun summaries, python -m src.report, TensorBoard HParams across runs,
the joblib and submitit_local launchers, the Optuna search and the SLURM launcher config."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import src.entry  # noqa: F401  (registers ${run_id:}, used in the sweep directory)
from src.report import main as report_main
from tests.helpers import CONF_DIR, ROOT, fast_overrides, quote, write_dataset

EXPECTED_PLOTS = ("curves.png", "bars.png", "best_confusion_matrix.png")


def run_sweep(tmp_path: Path, data_root: Path, *args: str,
              timeout: float = 240) -> tuple[Path, subprocess.CompletedProcess]:
    """`python -m src.train -m ...` on the synthetic data; returns the sweep directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    overrides = fast_overrides(data_root, tmp_path / "cache", "trainer.max_epochs=2")
    result = subprocess.run([sys.executable, "-m", "src.train", "-m", *overrides, *args,
                             f"paths.output_dir={quote(tmp_path / 'out')}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    sweeps = list((tmp_path / "out" / "sweeps").iterdir())
    assert len(sweeps) == 1, (sweeps, result.stderr[-3000:])
    return sweeps[0], result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "faces", splits={"train": 16, "val": 4, "test": 4})


@pytest.fixture(scope="module")
def sweep_2x2_run(tmp_path_factory, data_root) -> tuple[Path, subprocess.CompletedProcess]:
    tmp_path = tmp_path_factory.mktemp("sweep")
    sweep, result = run_sweep(tmp_path, data_root, "logger=tensorboard", "model.dropout=0,0.2", "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep, result


@pytest.fixture(scope="module")
def sweep_2x2(sweep_2x2_run) -> Path:
    return sweep_2x2_run[0]


def test_multirun_writes_one_directory_per_job_named_by_its_overrides(sweep_2x2):
    names = [d.name for d in job_dirs(sweep_2x2)]
    assert len(names) == 4
    assert names[0].startswith("0_") and "model.dropout@0+" in names[0] and "seed@1" in names[0]
    assert "model.dropout@0.2" in names[3] and "seed@2" in names[3]
    assert all((d / "metrics.json").is_file() for d in job_dirs(sweep_2x2))


@pytest.mark.slow
def test_a_job_directory_pastes_into_a_command_unquoted(sweep_2x2, tmp_path):
    """What the sweep prints is what a user pastes: ckpt_path=<job dir> with no quoting, as Hydra parses
    overrides (every command) and as a shell splits words (evaluate, run for real)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for job in job_dirs(sweep_2x2):
        assert parser.parse_override(f"ckpt_path={job}").value() == str(job)
        assert parser.parse_override(f"ckpt_path={job}/checkpoints/last.pt").value() == f"{job}/checkpoints/last.pt"
    job = job_dirs(sweep_2x2)[3]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(f"{sys.executable} -m src.evaluate ckpt_path={job} paths.output_dir={tmp_path}",
                            shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    (out,) = (tmp_path / "eval").iterdir()
    assert json.loads((out / "metrics.json").read_text())["test/acc"] == \
        json.loads((job / "metrics.json").read_text())["test/acc"]


def test_summary_has_one_row_per_job_with_its_metrics_sorted_by_val(sweep_2x2):
    rows = read_csv(sweep_2x2 / "summary.csv")
    assert len(rows) == 4
    for row in rows:
        metrics = json.loads((Path(row["dir"]) / "metrics.json").read_text())
        assert row["status"] == "completed"
        assert float(row["val_acc"]) == pytest.approx(metrics["val/acc"])
        assert float(row["test_macro_f1"]) == pytest.approx(metrics["test/macro_f1"])
        assert int(row["params"]) == metrics["model/params"]
        assert int(row["best_epoch"]) == metrics["best_epoch"]
        for name, per_class in metrics["test/per_class"].items():
            assert float(row[f"f1_{name}"]) == pytest.approx(per_class["f1"])
        # the row is named by what varies in the sweep, not by what every job shares
        assert row["run"].split() == [o for o in row["run"].split() if o.startswith(("model.dropout=", "seed="))]
    val = [float(r["val_acc"]) for r in rows]
    assert val == sorted(val, reverse=True)
    markdown = (sweep_2x2 / "summary.md").read_text()
    assert "every run: `" in markdown and "model=lenet" in markdown.splitlines()[0]
    assert markdown.count("| completed |") == 4


def test_runs_that_differ_only_in_seed_are_aggregated_as_mean_and_std(sweep_2x2):
    groups = {g["group"]: g for g in read_csv(sweep_2x2 / "aggregate.csv")}
    assert set(groups) == {"model.dropout=0", "model.dropout=0.2"}
    for name, group in groups.items():
        dropout = name.split("=")[1]
        members = [json.loads((d / "metrics.json").read_text()) for d in job_dirs(sweep_2x2)
                   if f"model.dropout={dropout}" in OmegaConf.load(d / ".hydra" / "overrides.yaml")]
        assert int(group["runs"]) == len(members) == 2
        accs = [m["test/acc"] for m in members]
        assert float(group["test_acc"]) == pytest.approx(statistics.mean(accs))
        assert float(group["test_acc_std"]) == pytest.approx(statistics.stdev(accs))
    assert "± " in (sweep_2x2 / "summary.md").read_text()


def test_sweep_end_writes_the_plots(sweep_2x2):
    for name in EXPECTED_PLOTS:
        assert (sweep_2x2 / name).stat().st_size > 5000, name
        assert f"]({name})" in (sweep_2x2 / "summary.md").read_text()


def test_tensorboard_hparams_of_every_run_side_by_side(sweep_2x2):
    """Each run writes its hyper-parameters and final metrics, and none defines the experiment alone:
    TensorBoard then builds the HParams table from all the runs (with one the values of one run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import backend_context, plugin_data_pb2

    content = {}
    for run_dir in job_dirs(sweep_2x2):
        events = EventAccumulator(str(run_dir))
        events.Reload()
        tags = events.PluginTagToContent("hparams")
        assert "_hparams_/experiment" not in tags
        content[run_dir.name] = tags
        start = plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/session_start_info"])
        hparams = start.session_start_info.hparams
        job = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        assert hparams["model.dropout"].number_value == pytest.approx(job.model.dropout)
        assert hparams["seed"].number_value == job.seed
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert events.Scalars("test/acc")[0].value == pytest.approx(metrics["test/acc"])
        assert len(events.Scalars("val/acc")) == 2  # the run's curves in the Scalars tab
    infos = {info.name: info for info in backend_context.Context(None)._compute_hparam_infos(content)}
    assert {"model.dropout", "seed", "optim.lr", "choice/model"} <= set(infos)
    assert list(infos["choice/model"].domain_discrete.values) == [json_value("lenet")]


def test_tensorboard_shows_what_a_person_compares_and_nothing_of_bookkeeping(sweep_2x2):
    """HParams: the swept keys, the group choices and the experiment's settings (the peak lr, optim.lr), no
    paths, resume or progress bar. Its metric columns are the run's own scalars: the test metrics of the
    selected epoch are logged once at its step, and no hparam/* copies make single-point Time Series cards."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    bookkeeping = ("ckpt_path", "resume", "trainer.progress_bar", "data.root", "data.cache_dir", "data.csv",
                   "data.download")
    for run_dir in job_dirs(sweep_2x2):
        events = EventAccumulator(str(run_dir))
        events.Reload()
        start = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        names = set(start.session_start_info.hparams)
        assert {"model.dropout", "seed", "choice/model", "choice/data", "optim.lr", "data.image_size"} <= names
        assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(3e-3)
        assert not [n for n in names if n in bookkeeping or n.startswith(("paths.", "hydra", "logger.", "choice/hydra",
                                                                          "choice/paths", "choice/logger"))]
        scalars = events.Tags()["scalars"]
        assert not [tag for tag in scalars if tag.startswith("hparam")]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for name in ("acc", "macro_f1"):
            (point,) = events.Scalars(f"test/{name}")
            assert (point.step, point.value) == (metrics["best_epoch"], pytest.approx(metrics[f"test/{name}"]))
        # HParams shows the first five metric columns in tag order: the test results, not the lr schedule's end
        assert sorted(scalars)[:2] == ["test/acc", "test/macro_f1"] and "lr" not in scalars


def test_per_class_tables_of_a_sweep_go_to_each_jobs_log_not_the_console(sweep_2x2_run):
    sweep, result = sweep_2x2_run
    header = "| class | precision | recall | F1 | support |"
    console = result.stdout + result.stderr
    assert console.count("Test (best epoch") == 4  # every job's summary line is still on the console
    assert header not in console
    for job in job_dirs(sweep):
        log = (job / "train.log").read_text()
        assert header in log and "| bottom |" in log


def json_value(text: str):
    from google.protobuf import struct_pb2

    return struct_pb2.Value(string_value=text)


@pytest.mark.slow  # test_reliability covers a failed job in the default run
def test_a_bad_value_fails_its_job_only(tmp_path, data_root):
    sweep, result = run_sweep(tmp_path, data_root, "model.dropout=0.1,1.5")
    rows = read_csv(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["completed", "failed"]
    assert rows[1]["run"] == "model.dropout=1.5" and "model.dropout=1.5 is invalid" in rows[1]["error"]
    assert result.returncode != 0  # Hydra still reports that a job failed


# -- python -m src.report --------------------------------------------------------------------------------------

def test_report_from_run_directories(sweep_2x2, tmp_path, capsys):
    jobs = job_dirs(sweep_2x2)
    assert report_main([str(jobs[0]), str(jobs[1]), "--out", str(tmp_path / "report")]) == 0
    rows = read_csv(tmp_path / "report" / "summary.csv")
    assert {r["dir"] for r in rows} == {str(jobs[0]), str(jobs[1])}
    assert {r["run"] for r in rows} == {"seed=1", "seed=2"}  # the only override that differs
    (group,) = read_csv(tmp_path / "report" / "aggregate.csv")
    assert group["group"] == "(all)" and group["runs"] == "2"
    for name in EXPECTED_PLOTS:
        assert (tmp_path / "report" / name).is_file()
    assert "| seed=1 |" in capsys.readouterr().out


def test_report_says_how_each_run_was_made(sweep_2x2):
    """The second table: the data chosen, the command, the machine and the wall times of every run."""
    markdown = (sweep_2x2 / "summary.md").read_text()
    header = "| run | data | command | machine | train_time | run_time |"
    assert header in markdown
    rows = markdown.split(header, 1)[1].strip().splitlines()[1:5]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "folder" and cells[2].startswith("`python -m src.train -m")
        assert re.search(r", \d+ threads?$", cells[3]) and cells[4].endswith(" s") and cells[5].endswith(" s")
    metrics = json.loads((job_dirs(sweep_2x2)[0] / "metrics.json").read_text())
    assert 0 < metrics["train/time_s"] <= metrics["run_time_s"] and metrics["model/conv_layers"] == 2  # LeNet


def test_report_goes_into_a_readme_section(sweep_2x2, tmp_path):
    readme = tmp_path / "docs" / "README.md"
    readme.parent.mkdir()
    readme.write_text("# Title\n\n<!-- report demo -->\nold table\n<!-- /report demo -->\n\nAfter.\n")
    out = tmp_path / "docs" / "report"
    assert report_main([str(sweep_2x2), "--out", str(out), "--readme", str(readme), "--section", "demo"]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title") and text.endswith("After.\n")
    assert "<!-- generated by: python -m src.report " in text and "| run | status |" in text
    assert "![curves](report/curves.png)" in text  # figure links relative to the README
    assert report_main([str(sweep_2x2), "--out", str(out), "--readme", str(readme), "--section", "demo"]) == 0
    assert readme.read_text() == text  # regenerating replaces the section, nothing else
    assert report_main([str(sweep_2x2), "--out", str(out), "--readme", str(readme), "--section", "other"]) == 2


def test_report_of_a_folder_finds_the_sweep_once(sweep_2x2, tmp_path):
    assert report_main([str(sweep_2x2.parent.parent), "--out", str(tmp_path), "--no-plots"]) == 0
    assert len(read_csv(tmp_path / "summary.csv")) == 4
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("path", ["missing", "empty"])
def test_report_without_runs_is_a_clear_error(tmp_path, caplog, path):
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / path)]) == 2
    assert "does not exist" in caplog.text or "no runs found" in caplog.text


# -- launchers and the Optuna search -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_run_a_two_job_sweep(tmp_path, data_root, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=5"]
    sweep, result = run_sweep(tmp_path, data_root, f"hydra/launcher={launcher}", *extra, "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(sweep / "summary.csv")
    assert sorted(r["run"] for r in rows) == ["seed=1", "seed=2"] and {r["status"] for r in rows} == {"completed"}
    assert all(Path(r["dir"]).parent == sweep for r in rows)  # the jobs (other processes) share the sweep dir
    assert (sweep / "curves.png").is_file()


@pytest.mark.slow
def test_a_sweep_of_multi_process_jobs_with_submitit_tasks(tmp_path, data_root):
    """2 jobs, each one DDP run of 2 submitit tasks (gloo): one run directory per job, written by rank 0, one
    row per job, and each job's metrics those of the same job in one process with the global batch."""
    from src.training.experiment import train
    from tests.helpers import TIMING_KEYS, compose_train

    sweep, result = run_sweep(tmp_path, data_root, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                              "hydra.launcher.timeout_min=5", "trainer=ddp", "trainer.backend=gloo", "seed=1,2",
                              timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(sweep / "summary.csv")
    assert sorted(r["run"] for r in rows) == ["seed=1", "seed=2"] and {r["status"] for r in rows} == {"completed"}
    assert len((sweep / "jobs.jsonl").read_text().splitlines()) == 2  # each job recorded once, by its rank 0
    for row in rows:
        job = Path(row["dir"])
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["world_size"] == 2
        seed = row["run"].split("=")[1]
        single = train(compose_train(fast_overrides(data_root, tmp_path / "cache", "trainer.max_epochs=2",
                                                    "data.batch_size=16", f"seed={seed}")), tmp_path / f"single{seed}")
        for key, value in single.items():
            if key not in TIMING_KEYS:
                assert metrics[key] == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value), key


@pytest.mark.slow
def test_optuna_search_maximizes_the_returned_val_metric(tmp_path, data_root):
    sweep, result = run_sweep(tmp_path, data_root, "hparams_search=fer_optuna", "hydra.sweeper.n_trials=3",
                              "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 3
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(float(r["val_acc"]) for r in rows))
    # optim.lr is searched too, but a value given on the command line (fast_overrides) fixes it
    assert set(best.best_params) == {"optim.weight_decay", "model.dropout", "loss.label_smoothing"}
    dropouts = {OmegaConf.load(Path(r["dir"]) / ".hydra" / "config.yaml").model.dropout for r in rows}
    assert len(dropouts) == 3 and all(0 <= d <= 0.5 for d in dropouts)  # each trial its own sampled values


def test_slurm_launcher_config():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.mem_gb, launcher.timeout_min) == ("gpu", 1, 32, 240)
    assert OmegaConf.to_container(launcher)["submitit_folder"].startswith("${hydra.sweep.dir}")


def test_parallel_jobs_claim_different_gpus_and_wait_when_all_are_taken(tmp_path):
    import threading
    import time

    from src.runtime.sweep_jobs import claim_gpu

    with claim_gpu(tmp_path, 2) as first, claim_gpu(tmp_path, 2) as second:
        assert {first, second} == {0, 1}
        third = []

        def claim_third():
            with claim_gpu(tmp_path, 2, poll_s=0.02) as index:
                third.append(index)

        waiter = threading.Thread(target=claim_third)
        waiter.start()
        time.sleep(0.3)
        assert third == []  # both GPUs busy: it waits
    waiter.join(timeout=10)
    assert third == [0]  # and takes the first one freed


@pytest.mark.slow
def test_a_sweep_rerun_in_its_directory_runs_only_the_jobs_it_has_not_finished(tmp_path, data_root):
    """Interrupted (Ctrl-C) after 2 of 4 jobs and re-run with the same command and hydra.sweep.dir: the 2
    completed jobs are skipped, the other 2 run (an interrupted one goes on from its last.pt), and the
    summary has one row per job."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "src.train", "-m",
               *fast_overrides(data_root, tmp_path / "cache", "trainer.max_epochs=2"), "seed=1,2,3,4",
               f"hydra.sweep.dir={quote(sweep)}"]
    # Ctrl-C as at a terminal, even when the tests run in a background job (started with SIGINT ignored,
    # which the sweep would inherit: it would then ignore the signal between its trainings)
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        jobs = sweep / "jobs.jsonl"
        if jobs.is_file() and len(jobs.read_text().splitlines()) >= 2:
            first.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    first.communicate(timeout=120)
    done_before = {r["job"] for r in map(json.loads, (sweep / "jobs.jsonl").read_text().splitlines())}
    assert len(done_before) == 2 and first.returncode != 0

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert output.count("already completed in") == 2 and "skipped" in output
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 4 and all(row["status"] == "completed" for row in rows)
    assert all((d / "metrics.json").is_file() for d in job_dirs(sweep))


@pytest.mark.parametrize(("n_jobs", "threads"), [(2, "half"), (-1, 1), (1, None)])
def test_parallel_jobs_share_the_cores(n_jobs, threads):
    """joblib with n_jobs=K: each job trains with cores // K threads (trainer.threads), unless it says."""
    from hydra.types import RunMode

    from src.runtime.sweep_jobs import cpu_threads_for_sweep_job

    cores = os.cpu_count()
    hydra_cfg = OmegaConf.create({"mode": RunMode.MULTIRUN, "launcher": {"n_jobs": n_jobs}})
    cfg = OmegaConf.create({"trainer": {"threads": None}})
    cpu_threads_for_sweep_job(cfg, hydra_cfg)
    assert cfg.trainer.threads == {"half": max(1, cores // min(2, cores)), 1: 1, None: None}[threads]
    chosen = OmegaConf.create({"trainer": {"threads": 3}})
    cpu_threads_for_sweep_job(chosen, hydra_cfg)
    assert chosen.trainer.threads == 3  # the user's choice stands


def test_long_job_directory_names_are_shortened_with_a_hash():
    from src.entry import MAX_JOB_DIRNAME_BYTES, _job_dirname

    short = "model.dropout@0.2+seed@1"
    assert _job_dirname(short) == short
    assert _job_dirname("model.stage_dropout@[0.2,0.4]+data=x") == "model.stage_dropout@_0.2_0.4_+data_x"
    long = "+".join(f"optim.lr@{0.1 + i / 1e9!r}" for i in range(30))
    name = _job_dirname(long)
    assert len(name.encode()) <= MAX_JOB_DIRNAME_BYTES and name.startswith(long[:150])
    assert name != _job_dirname(long.replace("0.1", "0.2", 1))  # the hash tells them apart
    assert "/" not in _job_dirname("model=a/b")


def test_a_sweep_job_with_device_auto_trains_on_the_gpu_it_claims(tmp_path, monkeypatch):
    import torch
    from hydra.types import RunMode

    from src.runtime.sweep_jobs import gpu_for_sweep_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    hydra_cfg = OmegaConf.create({"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)}})
    jobs = [OmegaConf.create({"trainer": {"device": "auto"}}) for _ in range(2)]
    with gpu_for_sweep_job(jobs[0], hydra_cfg), gpu_for_sweep_job(jobs[1], hydra_cfg):
        assert {jobs[0].trainer.device, jobs[1].trainer.device} == {"cuda:0", "cuda:1"}
        assert not emptied
    assert len(emptied) == 2  # each job hands its cached GPU memory back before it releases the GPU
    # the locks are per machine: a sweep directory on a shared filesystem serves jobs on several hosts
    assert {p.name for p in (tmp_path / ".gpu_locks").iterdir()} == {__import__("socket").gethostname()}
    chosen = OmegaConf.create({"trainer": {"device": "cpu"}})
    with gpu_for_sweep_job(chosen, hydra_cfg):
        assert chosen.trainer.device == "cpu"  # an explicit device is kept


def test_slurm_jobs_and_filesystems_without_locks_claim_no_gpu(tmp_path, monkeypatch, caplog):
    """Each SLURM job has its own allocation (it sees its GPUs as cuda:0...): claiming the sweep's lock 0 would
    serialise the whole sweep. Where flock fails (some network filesystems) the job runs without a claim."""
    import fcntl
    import logging

    import torch
    from hydra.types import RunMode

    from src.runtime.sweep_jobs import gpu_for_sweep_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    slurm = OmegaConf.create({"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)},
                              "launcher": {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher."
                                                       "SlurmLauncher"}})
    job = OmegaConf.create({"trainer": {"device": "auto"}})
    with gpu_for_sweep_job(job, slurm):
        assert job.trainer.device == "auto" and not (tmp_path / ".gpu_locks").exists()

    def no_locks(handle, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    local = OmegaConf.create({"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)}})
    with caplog.at_level(logging.WARNING), gpu_for_sweep_job(job, local):
        assert job.trainer.device == "auto"
    assert "No GPU claims" in caplog.text and "No locks available" in caplog.text
