"""Your own code (src/registry.py, docs/plugins.md): a model class and a dataset reader in a module outside the
package, configured only through `--config-dir` and `plugins`, through every command; and the other half of
the trust rule: a checkpoint names only registered classes, in full, and never has anything imported."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from src import registry
from src.errors import UserError
from tests.helpers import CLASSES, ROOT, quote, read_metrics, write_dataset

# The user's module: a network without any of the runner's optional methods, a LeNet of the user's own (same
# class name as the runner's, another forward), and a reader of a CSV manifest (path,label,split).
USER_MODULE = '''
import csv
from pathlib import Path

import torch.nn as nn

from src.data import ImageListData
from src.models.lenet import LeNet as RunnerLeNet


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                  nn.Flatten(), nn.Linear(width * 16, num_classes))

    def forward(self, x):
        return self.body(x)


class LeNet(RunnerLeNet):
    """Same class name as the runner's LeNet, other outputs: swapping one for the other changes every prediction."""

    def forward(self, x):
        return -super().forward(x)


class ManifestFaces(ImageListData):
    """root/labels.csv: path,label,split rows."""

    def __init__(self, root: str, manifest: str = "labels.csv", **kwargs):
        super().__init__(root, **kwargs)
        self.manifest = manifest

    def list_images(self):
        with open(Path(self.root) / self.manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        classes = sorted({row["label"] for row in rows})
        return classes, [(row["split"], row["label"], row["path"]) for row in rows]
'''


def write_user_code(tmp_path: Path, splits: dict[str, int] | None = None, module: str = "usernet") -> dict:
    """The user's module (on PYTHONPATH), their config dir (model/tiny.yaml, model/own_lenet.yaml,
    data/manifest.yaml) and a dataset listed by a manifest whose files lie in one flat folder."""
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / f"{module}.py").write_text(USER_MODULE)
    conf = tmp_path / "my_conf"
    (conf / "model").mkdir(parents=True, exist_ok=True)
    (conf / "data").mkdir(exist_ok=True)
    (conf / "model" / "tiny.yaml").write_text(f"_target_: {module}.TinyNet\nwidth: 8\n")
    (conf / "model" / "own_lenet.yaml").write_text(f"_target_: {module}.LeNet\ndropout: 0.0\n")
    data = write_dataset(tmp_path / "images", splits=splits or {"train": 12, "val": 4, "test": 6})
    rows = ["path,label,split"] + [f"{p.relative_to(data)},{p.parent.name},{p.parent.parent.name}"
                                   for p in sorted(data.rglob("*.png"))]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    (conf / "data" / "manifest.yaml").write_text(textwrap.dedent(f"""\
        defaults:
          - folder
          - _self_
        _target_: {module}.ManifestFaces
        root: {data}
        manifest: labels.csv
        channels: 1
        image_size: 32
        """))
    return {"code": code, "conf": conf, "data": data, "module": module}


def run_cli(entry: str, user: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(user["code"])}
    for name in ("HYDRA_FULL_ERROR", "DATA_DIR", "CACHE_DIR"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", f"src.{entry}", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def fast(tmp_path: Path, *overrides: str) -> list[str]:
    return [f"paths.cache_dir={quote(tmp_path / 'cache')}", "aug=none", "optim=adamw", "optim.lr=3e-3",
            "sched=constant", "logger=none", "trainer.device=cpu", "trainer.precision=fp32",
            "trainer.progress_bar=false", "data.batch_size=8", *overrides]


def train_user_run(tmp_path: Path, user: dict, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli("train", user, "--config-dir", str(user["conf"]), "model=tiny", "data=manifest",
                   f"plugins=[{user['module']}]", *fast(tmp_path, "trainer.max_epochs=2", *overrides),
                   f"hydra.run.dir={quote(run_dir)}")


def last_line(result: subprocess.CompletedProcess) -> str:
    """The command's last words: its one-sentence error (logged to stdout or stderr)."""
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    return lines[-1] if lines else (result.stdout + result.stderr)[-2000:]


# -- the registry ------------------------------------------------------------------------------------------


def test_the_runners_own_classes_are_registered_by_the_names_their_configs_use():
    models, data = registry.registered("model"), registry.registered("data")
    assert models["src.models.lenet.LeNet"].__name__ == "LeNet"
    assert models["src.models.resnet.ResNet"].__name__ == "ResNet"
    assert data["src.data.Fer2013Data"] is data["src.data.datasets.Fer2013Data"]
    for path in sorted((ROOT / "conf" / "model").glob("*.yaml")) + sorted((ROOT / "conf" / "data").glob("*.yaml")):
        targets = [line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                   if line.startswith("_target_:")]  # none in a config that only extends another (fer5)
        assert all(target in registry.registered(path.parent.name) for target in targets), path


def test_a_decorated_class_is_registered_under_its_full_name():
    @registry.register("model")
    class Registered(torch.nn.Module):
        def __init__(self, num_classes: int, in_channels: int):
            super().__init__()

    name = registry.full_name(Registered)
    assert name.endswith("test_a_decorated_class_is_registered_under_its_full_name.<locals>.Registered")
    assert registry.lookup("model", name, "test") is Registered
    with pytest.raises(ValueError, match="unknown registry group"):
        registry.register("optimizer", Registered)


def test_a_plugin_module_registers_its_models_and_datasets_only(tmp_path, monkeypatch):
    user = write_user_code(tmp_path, module="usernet_registry")
    monkeypatch.syspath_prepend(str(user["code"]))
    registry.load_plugins(["usernet_registry"])
    models, data = registry.registered("model"), registry.registered("data")
    assert {"usernet_registry.TinyNet", "usernet_registry.LeNet"} <= set(models)
    assert "usernet_registry.ManifestFaces" in data and "usernet_registry.ManifestFaces" not in models
    assert "usernet_registry.RunnerLeNet" not in models  # imported into the module, not defined there
    assert "usernet_registry.csv" not in models


@pytest.mark.parametrize("value, message", [
    ("[no_such_module_anywhere]", r"plugins: module 'no_such_module_anywhere' cannot be imported .*PYTHONPATH"),
    ("['']", r"plugins=\[\] is invalid: every plugin is a module name"),
])
def test_a_plugin_that_cannot_be_imported_is_one_sentence(tmp_path, value, message):
    user = write_user_code(tmp_path)
    result = run_cli("evaluate", user, f"ckpt_path={quote(tmp_path / 'none.pt')}", f"plugins={value}", timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(message, last_line(result)), last_line(result)


# -- a checkpoint chooses nothing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory) -> Path:
    """A 1-epoch LeNet run on the user's dataset layout, trained with the runner's own classes."""
    from src.training.experiment import train
    from tests.helpers import compose_train, fast_overrides

    tmp = tmp_path_factory.mktemp("lenet_run")
    root = write_dataset(tmp / "data", splits={"train": 8, "val": 3, "test": 3})
    cfg = compose_train(fast_overrides(root, tmp / "cache", "data.channels=1"))
    train(cfg, tmp / "run")
    return tmp / "run"


def edited_checkpoint(run: Path, tmp_path: Path, target: str) -> Path:
    from src.checkpoint_file import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    ckpt["meta"]["config"]["model"]["_target_"] = target
    path = tmp_path / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, ckpt)
    return path


def test_a_checkpoint_naming_an_unregistered_module_imports_nothing(lenet_run, tmp_path):
    """The stored target names a module on PYTHONPATH that would write a marker file when imported."""
    marker = tmp_path / "imported.marker"
    code = tmp_path / "code"
    code.mkdir()
    (code / "evil_plugin.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nclass LeNet: pass\n")
    path = edited_checkpoint(lenet_run, tmp_path, "evil_plugin.LeNet")
    images = write_dataset(tmp_path / "images", per_class=1)
    user = {"code": code}
    for entry, args in [("evaluate", []), ("predict", [f"images={quote(images)}", "faces=false"]),
                        ("export", [])]:
        result = run_cli(entry, user, f"ckpt_path={quote(path)}", *args, timeout=90)
        assert result.returncode == 2, (entry, result.stderr[-2000:])
        line = last_line(result)
        assert "'evil_plugin.LeNet', which is not a registered model class" in line, (entry, line)
        assert "src.models.lenet.LeNet has the same class name but is another class" in line, line
        assert "plugins=[evil_plugin]" in line, line
        assert not marker.exists(), f"{entry} imported the module a checkpoint named"


@pytest.mark.parametrize("target", ["LeNet", "os.system", "src.models.LeNet ", 7, None])
def test_a_stored_target_matches_only_a_full_registered_name(lenet_run, tmp_path, target):
    from src.inference.predictor import load_model

    path = edited_checkpoint(lenet_run, tmp_path, target)
    with pytest.raises(UserError, match=r"was refused: its stored model config names .*which is not a registered"):
        load_model(path)


def test_a_same_name_class_of_another_module_is_refused_never_swapped(tmp_path):
    """The user's LeNet (another forward) trains; evaluating it without its plugin is refused in one sentence
    naming both classes; with the plugin, evaluate reports the training's test accuracy."""
    user = write_user_code(tmp_path)
    run = tmp_path / "run"
    result = run_cli("train", user, "--config-dir", str(user["conf"]), "model=own_lenet", "data=manifest",
                     "plugins=[usernet]", *fast(tmp_path, "trainer.max_epochs=2"), f"hydra.run.dir={quote(run)}")
    assert result.returncode == 0, result.stderr[-3000:]
    refused = run_cli("evaluate", user, f"ckpt_path={quote(run)}", f"hydra.run.dir={quote(tmp_path / 'e1')}")
    assert refused.returncode == 2
    line = last_line(refused)
    assert "names 'usernet.LeNet', which is not a registered model class" in line, line
    assert "the registered src.models.lenet.LeNet has the same class name" in line, line
    assert not (tmp_path / "e1" / "metrics.json").exists()
    evaluated = run_cli("evaluate", user, f"ckpt_path={quote(run)}", "plugins=[usernet]",
                        f"hydra.run.dir={quote(tmp_path / 'e2')}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert read_metrics(tmp_path / "e2")["test/acc"] == read_metrics(run)["test/acc"]


# -- the user's dataset reader ---------------------------------------------------------------------------------


def test_a_listed_dataset_is_decoded_through_the_cache_and_split_like_a_folder(tmp_path, monkeypatch, caplog):
    user = write_user_code(tmp_path, splits={"train": 10, "test": 4}, module="usernet_data")
    monkeypatch.syspath_prepend(str(user["code"]))
    registry.load_plugins(["usernet_data"])
    reader = registry.registered("data")["usernet_data.ManifestFaces"]
    kwargs = {"root": str(user["data"]), "channels": 1, "image_size": 16, "cache_dir": str(tmp_path / "cache"),
              "val_split": 0.2}
    first = reader(**kwargs).setup()
    assert first.classes == list(CLASSES)
    assert {name: len(s) for name, s in first.splits.items()} == {"train": 24, "val": 6, "test": 12}
    caplog.clear()
    with caplog.at_level("INFO"):
        second = reader(**kwargs).setup()
    assert "from cache" in caplog.text
    assert torch.equal(first.splits["train"].images, second.splits["train"].images)
    folds = [reader(**kwargs, folds=3, fold=k).setup() for k in range(3)]
    tested = [set(f.splits["test"].files) for f in folds]
    assert sum(map(len, tested)) == 42 and len(set.union(*tested)) == 42  # every image tested exactly once


@pytest.mark.parametrize("rows, message", [
    ([("train", "happy", "a.png")], r"labelled .*a\.png 'happy', which is not one of its classes"),
    ([("holdout", "top", "a.png")], r"put .*a\.png in the split 'holdout': use train, val, test or all"),
    ([("val", "top", "a.png")], r"gave the splits \['val'\]: it needs train"),
])
def test_a_reader_listing_what_cannot_be_split_is_one_sentence(tmp_path, rows, message):
    from src.data import ImageListData
    from src.errors import DataError

    class Listed(ImageListData):
        def list_images(self):
            return ["bottom", "top"], rows

    with pytest.raises(DataError, match=message):
        Listed(root=str(tmp_path), channels=1, image_size=16).setup()


# -- every command, through the real CLI ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_user_model_and_reader_go_through_every_command(tmp_path):
    """train, resume, evaluate (the training's test accuracy), an ensemble, predict, export (ONNX checked
    against PyTorch by the export itself), a sweep and its re-run, the demo, and embed=true saying what to add."""
    user = write_user_code(tmp_path)
    run = tmp_path / "run"
    trained = train_user_run(tmp_path, user, run)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = read_metrics(run)
    assert metrics["epochs"] == 2 and metrics["classes"] == list(CLASSES)

    resumed_dir = tmp_path / "resumed"
    resumed = train_user_run(tmp_path, user, resumed_dir, "trainer.max_epochs=3",
                             f"ckpt_path={quote(run / 'checkpoints' / 'last.pt')}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_metrics(resumed_dir)["epochs"] == 3

    evaluated = run_cli("evaluate", user, f"ckpt_path={quote(run)}", "plugins=[usernet]",
                        f"hydra.run.dir={quote(tmp_path / 'eval')}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert read_metrics(tmp_path / "eval")["test/acc"] == metrics["test/acc"]

    ensemble = run_cli("evaluate", user, f"ckpt_path=[{quote(run)},{quote(resumed_dir)}]", "plugins=[usernet]",
                       f"hydra.run.dir={quote(tmp_path / 'ensemble')}")
    assert ensemble.returncode == 0, ensemble.stderr[-3000:]
    assert len(read_metrics(tmp_path / "ensemble")["members"]) == 2

    embed = run_cli("evaluate", user, f"ckpt_path={quote(run)}", "plugins=[usernet]", "embed=true",
                    f"hydra.run.dir={quote(tmp_path / 'embed')}")
    assert embed.returncode == 2
    assert "usernet.TinyNet has no forward_features(x) method" in last_line(embed), last_line(embed)

    predictions = tmp_path / "predictions.json"
    predicted = run_cli("predict", user, f"ckpt_path={quote(run)}", "plugins=[usernet]", "faces=false",
                        f"images={quote(user['data'] / 'test')}", f"output={quote(predictions)}")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(json.loads(predictions.read_text())) == 18

    exported = run_cli("export", user, f"ckpt_path={quote(run)}", "plugins=[usernet]", "format=onnx",
                       f"output={quote(tmp_path / 'tiny.onnx')}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "tiny.onnx").is_file()

    sweep_args = ["-m", "--config-dir", str(user["conf"]), "model=tiny", "data=manifest", "plugins=[usernet]",
                  *fast(tmp_path, "trainer.max_epochs=1"), "seed=0,1", f"hydra.sweep.dir={quote(tmp_path / 'sweep')}"]
    first = run_cli("train", user, *sweep_args)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli("train", user, *sweep_args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already completed") + again.stdout.count("already completed") == 2

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(user["code"]), "GRADIO_ANALYTICS_ENABLED": "False"}
    demo = subprocess.Popen([sys.executable, "-m", "src.demo", f"ckpt_path={quote(run)}", "plugins=[usernet]",
                             "faces=false", f"port={port}", "trainer.device=cpu"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        from gradio_client import Client, handle_file

        deadline, client = time.monotonic() + 120, None
        while client is None and time.monotonic() < deadline and demo.poll() is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 - not serving yet
                time.sleep(1)
        assert client is not None, demo.stderr.read().decode()[-3000:] if demo.poll() is not None else "no page"
        image = next((user["data"] / "test" / "top").glob("*.png"))
        _annotated, _chart, table = client.predict(handle_file(str(image)), api_name="/predict")
        assert len(table["faces"]) == 1 and set(table["faces"][0]["probabilities"]) == set(CLASSES)
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(30)


def test_the_bench_measures_a_user_model_in_the_runner_and_the_reference_loop(tmp_path):
    """src.bench with a `--config-dir` model of a plugin module: the runner, its bare loop and the reference loop
    (a subprocess, given the composed model config and this import path) all build the user's class."""
    user = write_user_code(tmp_path, splits={"train": 24, "val": 4, "test": 4})
    run_dir = tmp_path / "bench"
    result = run_cli("bench", user, "--config-dir", str(user["conf"]), "model=tiny", "data=manifest",
                     "plugins=[usernet]", *fast(tmp_path), "bench.batches=2", "bench.warmup=1", "bench.rounds=1",
                     "bench.startup=false", "bench.decode=false", "bench.eval=false", "bench.augment=false",
                     "bench.reference_modes=[bare]",
                     f"hydra.run.dir={quote(run_dir)}")
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads((run_dir / "bench.json").read_text())
    assert bench["model"] == "tiny" and bench["runner_images_per_s"] > 0
    assert bench["reference_bare_images_per_s"] > 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_fer_models_lists_config_dir_models_and_the_registered_user_classes(tmp_path):
    user = write_user_code(tmp_path)
    listed = run_cli("models", user, "--config-dir", str(user["conf"]), "--plugins", "usernet", "tiny", "lenet")
    assert listed.returncode == 0, listed.stderr[-3000:]
    parameters = 8 * 9 + 8 + 8 * 16 * 7 + 7  # conv 3x3 1->8 with bias, linear 128->7 with bias (the table's 7 classes)
    assert f"| `tiny` | {parameters:,} |" in listed.stdout, listed.stdout
    rows = {line.split("|")[1].strip(): line for line in listed.stdout.splitlines() if line.startswith("| `usernet.")}
    assert set(rows) == {"`usernet.TinyNet`", "`usernet.LeNet`"}, listed.stdout
    assert "`tiny`" in rows["`usernet.TinyNet`"] and "`own_lenet`" in rows["`usernet.LeNet`"]
    assert str(user["code"] / "usernet.py") in rows["`usernet.TinyNet`"]

    unknown = run_cli("models", user, "--config-dir", str(user["conf"]), "tinyy")
    assert unknown.returncode == 2 and "no model config named tinyy" in unknown.stderr, unknown.stderr[-2000:]
