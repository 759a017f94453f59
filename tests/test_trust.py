"""What a user is handed is data, never code; no cache is served wrong; every bad value is one sentence.

Crafted checkpoints (nested `_target_`s, foreign targets, odd meta) through evaluate, predict, export and
a resumed training; crafted CIFAR-100 pickles; FIFOs, sockets and devices in datasets and as paths; a
table of bad config values through the real entrypoints (exit 2, the key named, no traceback); and the
smaller cases: EXIF orientation, export over its own checkpoint, Ctrl-C in the final test evaluation,
malformed FER2013 CSV rows, a byte-order mark, a failing sweep job, runs that never trained.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import pickle
import runpy
import signal
import socket
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

import src.data.decoding as decoding
import src.training.experiment as experiment
from src.data.images import decode_image
from src.entry import run_or_exit
from src.errors import BadImageError, ConfigError, DataError, UserError
from src.inference.model_export import export_checkpoint
from src.inference.predictor import load_model
from src.reporting.run_names import collect_runs
from tests.helpers import (
    ROOT,
    compose_train,
    fast_overrides,
    quote,
    read_fer,
    tiny_trained_checkpoint,
    write_dataset,
    write_fer_csv,
)
from tests.test_cifar100 import make as read_cifar
from tests.test_cifar100 import write_release

# -- running the entrypoints in this process ----------------------------------------------------------------


def run_cli(module: str, *args: str, cwd: Path | None = None) -> tuple[int, str]:
    """`python -m src.<module> args` run in this process (as -m runs it); returns the exit code and all it
    wrote (stdout, stderr, logs). An exception escaping the entrypoint counts as a traceback, exit 1."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    argv, previous_cwd = sys.argv, os.getcwd()
    GlobalHydra.instance().clear()
    sys.argv = [str(ROOT / "src" / f"{module}.py"), *args]
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_module(f"src.{module}", run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 - what Python would print for an uncaught exception
        out.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv = argv
        os.chdir(previous_cwd)
        GlobalHydra.instance().clear()
        for handler in root.handlers:  # Hydra's handlers write into `out`: close them, restore pytest's
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    return code, out.getvalue()


def assert_one_sentence(code: int, output: str, *expected: str, exit_code: int = 2) -> None:
    assert code == exit_code, output[-3000:]
    assert "Traceback" not in output and "Error in call to target" not in output, output[-3000:]
    for text in expected:
        assert text in output, output[-3000:]


@contextlib.contextmanager
def fails_after(seconds: float):
    """Raises TimeoutError if the block runs longer than `seconds` (a read that blocks forever)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: something blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- a real checkpoint, and crafted versions of it -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return tiny_trained_checkpoint(tmp_path_factory.mktemp("trust"))


def crafted(trained: dict, path: Path, change) -> Path:
    """A copy of the real checkpoint with change(content) applied, saved at path."""
    content = copy.deepcopy(trained["content"])
    change(content)
    torch.save(content, path)
    return path


def code_runner(marker: Path) -> dict:
    """A config node Hydra's instantiate would turn into a call: os.makedirs(marker) (observable, and not
    on Hydra's small block list)."""
    return {"_target_": "os.makedirs", "name": str(marker)}


def _set(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree[part]
    tree[last] = value


CODE_CRAFTS = {  # where a crafted checkpoint hides a call in its stored config
    "nested_in_model": lambda c, m: _set(c, "meta.config.model.dropout", code_runner(m)),
    "model_target": lambda c, m: c["meta"]["config"].__setitem__("model", code_runner(m)),
    "call_arguments": lambda c, m: _set(c, "meta.config.model._args_", [code_runner(m)]),
    "nested_in_a_list": lambda c, m: _set(c, "meta.config.model.extra", [1, {"x": code_runner(m)}]),
    "partial_in_model": lambda c, m: _set(c, "meta.config.model.dropout", {**code_runner(m), "_partial_": True}),
}


def entry_args(entry: str, ckpt: Path, trained: dict, tmp_path: Path) -> tuple[str, list[str]]:
    if entry == "evaluate":
        return "evaluate", [f"ckpt_path={quote(ckpt)}", f"paths.output_dir={quote(tmp_path / 'out')}",
                            f"paths.cache_dir={quote(trained['cache'])}"]
    if entry == "predict":
        return "predict", [f"ckpt_path={quote(ckpt)}", f"images=[{quote(trained['root'] / 'test')}]", "faces=false"]
    if entry == "export":
        return "export", [f"ckpt_path={quote(ckpt)}", "format=torchscript", f"output={quote(tmp_path / 'm.pt')}"]
    return "train", [*fast_overrides(trained["root"], trained["cache"]), f"ckpt_path={quote(ckpt)}",
                     f"hydra.run.dir={quote(tmp_path / 'resumed')}"]


# Every craft through evaluate and export; predict and a resumed training share their loading code.
CODE_CASES = [(craft, entry) for craft in sorted(CODE_CRAFTS) for entry in ("evaluate", "export")] + [
    (craft, entry) for craft in ("nested_in_model", "model_target") for entry in ("predict", "train")]


@pytest.mark.parametrize("craft, entry", CODE_CASES)
def test_a_checkpoint_config_that_would_call_code_is_refused(trained, tmp_path, entry, craft):
    marker = tmp_path / "code_ran"
    ckpt = crafted(trained, tmp_path / "shared.pt", lambda c: CODE_CRAFTS[craft](c, marker))
    module, args = entry_args(entry, ckpt, trained, tmp_path)
    code, output = run_cli(module, *args)
    assert_one_sentence(code, output, "shared.pt")
    assert "refused" in output or "trained with other settings" in output  # train: the resume check refuses it
    assert not marker.exists()


def test_a_checkpoint_data_config_that_would_call_code_is_refused(trained, tmp_path):
    marker = tmp_path / "code_ran"
    ckpt = crafted(trained, tmp_path / "shared.pt", lambda c: _set(c, "meta.config.data.root", code_runner(marker)))
    module, args = entry_args("evaluate", ckpt, trained, tmp_path)
    code, output = run_cli(module, *args)
    assert_one_sentence(code, output, "shared.pt was refused", "data.root")
    assert not marker.exists()


def test_a_checkpoint_naming_a_dataset_class_of_another_package_is_refused(trained, tmp_path):
    ckpt = crafted(trained, tmp_path / "shared.pt",
                   lambda c: _set(c, "meta.config.data._target_", "torchvision.datasets.ImageFolder"))
    with pytest.raises(UserError, match="'torchvision.datasets.ImageFolder', which is not a registered data class"):
        run_or_exit_free_evaluate(trained, ckpt, tmp_path)


def run_or_exit_free_evaluate(trained: dict, ckpt: Path, tmp_path: Path):
    from src.evaluation.split_evaluation import run_evaluation
    from tests.test_evaluate import compose_entry

    cfg = compose_entry("eval", [f"ckpt_path={quote(ckpt)}", f"paths.cache_dir={quote(trained['cache'])}",
                                 "trainer.device=cpu"])
    return run_evaluation(cfg, tmp_path / "eval")


def test_stored_strings_are_not_interpolated(trained, tmp_path, monkeypatch):
    """A stored value is a plain string: `${oc.env:...}` is not resolved (it would read the environment)."""
    monkeypatch.setenv("SECRET_PLACE", str(trained["root"]))
    ckpt = crafted(trained, tmp_path / "shared.pt",
                   lambda c: _set(c, "meta.config.data.root", "${oc.env:SECRET_PLACE}"))
    with pytest.raises(DataError, match=r"\$\{oc.env:SECRET_PLACE\} does not exist"):
        run_or_exit_free_evaluate(trained, ckpt, tmp_path)


ODD_META = {  # (where, value, what the error says)
    "classes_a_number": ("meta.data.classes", 5, "meta.data.classes=5 is invalid"),
    "classes_empty": ("meta.data.classes", [], "meta.data.classes=[] is invalid"),
    "classes_repeated": ("meta.data.classes", ["a", "a", "b"], "distinct"),
    "mean_null": ("meta.data.mean", None, "lacks the data description"),
    "mean_strings": ("meta.data.mean", ["a", "b", "c"], "meta.data.mean=[a,b,c] is invalid"),
    "mean_too_short": ("meta.data.mean", [0.5], "one value per channel"),
    "std_zero": ("meta.data.std", [0.0, 0.1, 0.1], "meta.data.std=[0.0,0.1,0.1] is invalid"),
    "channels_two": ("meta.data.channels", 2, "meta.data.channels=2 is invalid"),
    "image_size_text": ("meta.data.image_size", "48", "meta.data.image_size=48 is invalid"),
    "image_size_huge": ("meta.data.image_size", 10**9, "meta.data.image_size=1000000000 is invalid"),
    "input_size_too_big": ("meta.input_size", 1000, "meta.input_size=1000 is invalid"),
    "model_config_text": ("meta.config.model", "lenet", "meta.config.model=lenet is invalid"),
    "model_setting_text": ("meta.config.model.dropout", "abc", "its stored model.dropout=abc is invalid"),
    "unknown_model_setting": ("meta.config.model.depth", 3, "model.depth is not a setting of LeNet"),
    "precision_number": ("meta.config.trainer.precision", 5, "meta.config.trainer.precision=5 is invalid"),
    "eval_batch_zero": ("meta.config.data.eval_batch_size", 0, "eval_batch_size=0 is invalid"),
    "weights_not_tensors": ("model", {"features.0.weight": [1, 2]}, "not a mapping of names to tensors"),
    "weights_of_another_model": ("meta.config.model", {"_target_": "src.models.resnet.ResNet"},
                                 "its weights do not fit the model its config describes"),
}


@pytest.mark.parametrize("case", sorted(ODD_META))
def test_odd_checkpoint_metadata_is_one_sentence(trained, tmp_path, case):
    where, value, message = ODD_META[case]
    ckpt = crafted(trained, tmp_path / "odd.pt", lambda c: _set(c, where, value))
    with pytest.raises(UserError) as info:
        load_model(ckpt)
    assert message in str(info.value) and "odd.pt" in str(info.value) and "\n" not in str(info.value)


def test_odd_checkpoint_metadata_through_the_commands(trained, tmp_path):
    ckpt = crafted(trained, tmp_path / "odd.pt", lambda c: _set(c, "meta.data.classes", 5))
    for entry in ("evaluate", "predict", "export"):
        module, args = entry_args(entry, ckpt, trained, tmp_path)
        code, output = run_cli(module, *args)
        assert_one_sentence(code, output, "odd.pt was refused: its meta.data.classes=5 is invalid")


def test_the_real_checkpoint_still_loads_everywhere(trained, tmp_path):
    for entry in ("evaluate", "predict", "export"):
        module, args = entry_args(entry, trained["ckpt"], trained, tmp_path)
        code, output = run_cli(module, *args)
        assert code == 0, output[-3000:]


def test_a_resumed_checkpoint_with_damaged_training_state_is_one_sentence(trained, tmp_path):
    last = trained["ckpt"].with_name("last.pt")
    content = torch.load(last, weights_only=True)
    content["state"] = {"epoch": "one"}
    torch.save(content, tmp_path / "last.pt")
    cfg = compose_train(fast_overrides(trained["root"], trained["cache"], "trainer.max_epochs=2",
                                       f"ckpt_path={quote(tmp_path / 'last.pt')}"))
    with pytest.raises(UserError, match="last.pt cannot be resumed"):
        experiment.train(cfg, tmp_path / "resumed")


# -- CIFAR-100 pickles --------------------------------------------------------------------------------------------


class _Call:
    """Unpickling this calls os.makedirs(marker): what a crafted release file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def replace_batch(folder: Path, name: str, change) -> None:
    batch = pickle.loads((folder / name).read_bytes())
    change(batch)
    (folder / name).write_bytes(pickle.dumps(batch))


CIFAR_CRAFTS = {
    "call_in_data": lambda batch, marker: batch.__setitem__(b"data", _Call(marker)),
    "call_in_labels": lambda batch, marker: batch.__setitem__(b"fine_labels", [_Call(marker)]),
    "object_array": lambda batch, marker: batch.__setitem__(b"data", np.array([[1, "x"]], dtype=object)),
    "call_as_key": lambda batch, marker: batch.__setitem__(_Call(marker), 1),
}


@pytest.mark.parametrize("craft", sorted(CIFAR_CRAFTS))
def test_a_crafted_cifar_pickle_is_refused_and_runs_nothing(tmp_path, craft):
    folder = write_release(tmp_path)
    marker = tmp_path / "code_ran"
    replace_batch(folder, "train", lambda batch: CIFAR_CRAFTS[craft](batch, marker))
    assert not marker.exists()
    with pytest.raises(DataError) as info:
        read_cifar(tmp_path, download=False)
    assert f"{folder / 'train'} was refused" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (lambda batch: batch.__setitem__(b"data", np.zeros((3, 100), dtype=np.uint8)), "N x 3072 array"),
    (lambda batch: batch.__setitem__(b"fine_labels", [1000] * len(batch[b"fine_labels"])), "labels outside"),
    (lambda batch: batch.__setitem__(b"fine_labels", ["a"] * len(batch[b"fine_labels"])), "integer labels"),
    (lambda batch: batch.__setitem__(b"fine_labels", [0]), "1 labels for 40 images"),
])
def test_a_cifar_file_of_the_wrong_shape_is_one_sentence(tmp_path, change, message):
    folder = write_release(tmp_path)
    replace_batch(folder, "train", change)
    with pytest.raises(DataError, match=message):
        read_cifar(tmp_path, download=False)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_release_reads_whatever_pickle_protocol_wrote_it(tmp_path, protocol):
    folder = write_release(tmp_path)
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(pickle.dumps(pickle.loads((folder / name).read_bytes()), protocol=protocol))
    assert len(read_cifar(tmp_path, download=False).classes) == 4


# -- FIFOs, sockets and devices ---------------------------------------------------------------------------------


@pytest.fixture
def odd_files(make_folder, monkeypatch) -> dict:
    """A dataset whose class folders also hold a FIFO, a socket and a device link, all named like images."""
    root = make_folder(per_class=4, size=16)
    os.mkfifo(root / "top" / "pipe.png")
    monkeypatch.chdir(root / "middle")  # a socket's path is limited to ~100 bytes: bind a relative one
    server = socket.socket(socket.AF_UNIX)
    server.bind("sock.jpg")
    monkeypatch.undo()
    (root / "bottom" / "zero.png").symlink_to("/dev/zero")
    yield {"root": root}
    server.close()


def test_fifos_sockets_and_devices_in_a_dataset_are_skipped_without_blocking(odd_files, caplog):
    with fails_after(30), caplog.at_level(logging.WARNING, logger="src.data.folders"):
        data = decoding.read_folder(odd_files["root"], 1, 16, cache_dir=None)
    assert sum(len(s) for s in data.splits.values()) == 12  # the 12 real images, nothing else
    assert "Skipped 3 entries with image names that are not regular files" in caplog.text


def test_predict_skips_a_fifo_without_blocking(trained, odd_files, tmp_path):
    fifo = odd_files["root"] / "top" / "pipe.png"
    with fails_after(60):
        code, output = run_cli("predict", f"ckpt_path={quote(trained['ckpt'])}",
                               f"images=[{quote(fifo)},{quote(odd_files['root'] / 'top')}]", "faces=false")
    assert code == 0, output[-3000:]
    assert f"{fifo} is not a regular file: skipped" in output and output.count(".png: ") == 4


def test_a_fifo_where_a_file_is_expected_is_refused_at_once(tmp_path, trained):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with fails_after(30):
        with pytest.raises(BadImageError, match="is a FIFO"):
            decode_image(str(fifo), 1, 16)
        with pytest.raises(UserError, match="is a FIFO"):
            load_model(fifo)
        with pytest.raises(DataError, match="is a FIFO"):
            read_fer(fifo)
        with pytest.raises(UserError, match="is a FIFO"):
            collect_runs([_run_dir_with(tmp_path / "run", metrics=fifo)])


def _run_dir_with(run: Path, metrics: Path | None = None, text: str | None = None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "run_info.json").write_text("{}")
    if metrics is not None:
        (run / "metrics.json").symlink_to(metrics)
    if text is not None:
        (run / "metrics.json").write_text(text)
    return run


# -- bad values: one sentence, exit 2, before anything is decoded ---------------------------------------------------

BAD_TRAIN_VALUES = [  # (overrides, what the one sentence says: the key and the value at fault)
    (["optim.lr=abc"], "optim.lr=abc"), (["optim.lr=-1"], "optim.lr=-1"), (["optim.lr=inf"], "optim.lr=inf"),
    (["seed=abc"], "seed=abc"), (["seed=1.5"], "seed=1.5"), (["optim.weight_decay=-1"], "optim.weight_decay=-1"),
    (["optim=sgd", "optim.momentum=abc"], "optim.momentum=abc"),
    (["optim=sgd", "optim.nesterov=maybe"], "optim.nesterov=maybe"),
    (["optim=sgd", "optim.momentum=0"], "Nesterov momentum requires a momentum"),
    (["data.batch_size=1.5"], "data.batch_size=1.5"), (["data.batch_size=abc"], "data.batch_size=abc"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs=abc"), (["data.image_size=abc"], "data.image_size=abc"),
    (["model.dropout=abc"], "model.dropout=abc"), (["data.val_split=abc"], "data.val_split=abc"),
    (["data.per_class_limit={train: -5}"], "data.per_class_limit.train=-5"),
    (["data.per_class_limit={train: {top: 0}}"], "data.per_class_limit.train.top=0"),
    (["data.per_class_limit={tran: 5}"], "data.per_class_limit has key 'tran'"),
    (["trainer.early_stopping_patience=-1"], "trainer.early_stopping_patience=-1"),
    (["trainer.limit_train_batches=abc"], "trainer.limit_train_batches=abc"),
    (["trainer.precision=5"], "trainer.precision=5"), (["data.mean=[a,b,c]"], "data.mean=[a,b,c]"),
    (["data.classes=top"], "data.classes=top"), (["+model.depth=3"], "model.depth is not a setting of LeNet"),
    (["model=resnet18", "model.layers=[2,x]"], "model.layers=[2,x]"), (["tta.mode=fivecrop"], "tta.mode=fivecrop"),
    (["tta.crop_size=0"], "tta.crop_size=0"), (["loss.label_smoothing=abc"], "loss.label_smoothing=abc"),
    (["loss.class_weights=[1,x,1]"], "loss.class_weights=[1,x,1]"), (["resume=maybe"], "resume=maybe"),
    (["aug=fer", "aug.crop.padding=abc"], "aug.crop.padding=abc"), (["aug=fer", "aug.erase.p=2"], "aug.erase.p=2"),
    (["aug.mix={mixup_alpha: x}"], "aug.mix.mixup_alpha=x"), (["sched=step", "sched.gamma=-1"], "sched.gamma=-1"),
    (["sched=plateau", "sched.factor=2"], "sched.factor=2"), (["sched=multistep", "sched.milestones=[a]"],
                                                              "sched.milestones=[a]"),
    (["trainer.ema_decay=abc"], "trainer.ema_decay=abc"), (["data.max_device_bytes=-1"], "data.max_device_bytes=-1"),
    (["data.on_bad_image=ignore"], "data.on_bad_image=ignore"), (["data.split_seed=abc"], "data.split_seed=abc"),
    (["data.root=2024"], "quote it to pass text: data.root='2024'"), (["data.mean=[0.5]"], "data.mean=[0.5]"),
    (["data.std=[0.2,0,0.2]"], "data.std=[0.2, 0, 0.2]"), (["tta.crop_size=40"], "tta.crop_size=40"),
    (["aug=strong", "aug.affine.scale=[2]"], "aug.affine.scale=[2]"),
    (["aug=strong", "aug.resized_crop.ratio=[2,1]"], "aug.resized_crop.ratio=[2,1]"),
    (["aug=fer", "aug.erase.value=black"], "aug.erase.value=black"), (["aug=basic", "aug.flip=true"], "aug.flip=true"),
    (["optim=adam", "optim.betas=[0.9]"], "optim.betas=[0.9]"), (["trainer.device=tpu"], "trainer.device=tpu"),
]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("bad_values") / "data", per_class=4, size=16)


@pytest.fixture
def no_decoding(monkeypatch):
    def refuse(path, *args):
        raise AssertionError(f"{path} was decoded before the bad value was reported")

    monkeypatch.setattr(decoding, "decode_image", refuse)


@pytest.mark.parametrize("overrides, message", BAD_TRAIN_VALUES, ids=[m for _, m in BAD_TRAIN_VALUES])
def test_a_bad_training_value_is_one_sentence_before_decoding(small_data, tmp_path, no_decoding, overrides, message):
    code, output = run_cli("train", *fast_overrides(small_data, tmp_path / "cache"), *overrides,
                           f"paths.output_dir={quote(tmp_path / 'out')}")
    assert_one_sentence(code, output, message)
    assert not any((tmp_path / "out" / "runs").iterdir())  # no empty run directory is left behind
    assert not (tmp_path / "cache").exists()  # nothing was decoded


@pytest.mark.parametrize("entry, args, message", [
    ("evaluate", ["misclassified=-1"], "misclassified=-1"),
    ("evaluate", ["embed=maybe"], "embed=maybe"),
    ("evaluate", ["tta.mode=fivecrop"], "tta.mode=fivecrop"),
    ("evaluate", ["trainer.channels_last=maybe"], "trainer.channels_last=maybe"),
    ("predict", ["top_k=abc"], "top_k=abc"),
    ("predict", ["top_k=0"], "top_k=0"),
    ("predict", ["output=p.txt"], "output=p.txt"),
    ("evaluate", ["data.split=holdout"], "data.split=holdout"),
    ("export", ["format=zip"], "format=zip"),
])
def test_a_bad_value_of_the_other_commands_is_one_sentence(trained, tmp_path, entry, args, message):
    module, base = entry_args(entry, trained["ckpt"], trained, tmp_path)
    code, output = run_cli(module, *base, *args)
    assert_one_sentence(code, output, message)


@pytest.mark.parametrize("entry", ["evaluate", "predict", "export"])
def test_a_missing_ckpt_path_is_one_sentence(tmp_path, entry):
    args = {"evaluate": [f"paths.output_dir={quote(tmp_path / 'out')}"], "predict": ["images=x.png"], "export": []}
    code, output = run_cli(entry, *args[entry])
    assert_one_sentence(code, output, "ckpt_path is not set")
    if entry == "evaluate":  # and no empty results directory is left behind
        assert list((tmp_path / "out" / "eval").iterdir()) == []


# -- the smaller ones ----------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with the tag "rotate 90° clockwise" (orientation 6) is decoded upright."""
    pixels = np.zeros((8, 16), dtype=np.uint8)
    pixels[:, :8] = 255  # stored: left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    Image.fromarray(pixels).save(path, exif=exif)
    decoded = decode_image(str(path), 1, 16)[..., 0].astype(float)
    assert decoded[:8].mean() > 200 and decoded[8:].mean() < 50  # seen upright: the white half is on top
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    plain = decode_image(str(tmp_path / "plain.png"), 1, 16)[..., 0].astype(float)
    assert plain[:, :8].mean() > 200 and plain[:, 8:].mean() < 50  # without the tag: as stored


def test_export_never_overwrites_the_checkpoint_it_reads(trained, tmp_path):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(trained["ckpt"].read_bytes())
    before = ckpt.read_bytes()
    with pytest.raises(ConfigError, match="would overwrite the checkpoint it exports"):
        export_checkpoint(str(ckpt), "torchscript", str(ckpt))
    link = tmp_path / "alias.pt"
    link.symlink_to(ckpt)
    with pytest.raises(ConfigError, match="would overwrite the checkpoint it exports"):
        export_checkpoint(str(ckpt), "torchscript", str(link))
    assert ckpt.read_bytes() == before


def test_ctrl_c_during_the_final_test_evaluation_is_one_sentence(trained, tmp_path, monkeypatch, caplog):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "evaluate_split", interrupt)
    cfg = compose_train(fast_overrides(trained["root"], trained["cache"]))
    with pytest.raises(SystemExit) as exit_info, caplog.at_level(logging.ERROR):
        run_or_exit(lambda: experiment.train(cfg, tmp_path / "run"), logging.getLogger("test"))
    assert exit_info.value.code == 130
    assert "interrupted during the test evaluation" in caplog.text and "best.pt" in caplog.text
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_ctrl_c_anywhere_else_is_one_sentence(caplog):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info, caplog.at_level(logging.ERROR):
        run_or_exit(interrupted, logging.getLogger("test"))
    assert exit_info.value.code == 130 and "Interrupted (Ctrl-C)" in caplog.text


@pytest.mark.parametrize("row, message", [
    ("0,{pixels},Training,extra", "line 3: 4 fields, but the header names 3"),
    ("0,{pixels}", "line 3: 2 fields, but the header names 3"),
])
def test_a_fer2013_csv_row_with_the_wrong_number_of_fields_is_an_error(tmp_path, row, message):
    csv = write_fer_csv(tmp_path / "fer2013.csv")
    lines = csv.read_text().splitlines()
    pixels = lines[1].split(",")[1]
    lines[2] = row.format(pixels=pixels)
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_fer(csv)


def test_a_fer2013_csv_with_a_byte_order_mark_is_read(tmp_path):
    csv = write_fer_csv(tmp_path / "fer2013.csv")
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    assert len(read_fer(csv).splits["train"]) == 3


def test_a_binary_file_as_the_fer2013_csv_is_one_sentence(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="fer2013.csv is not a FER2013 CSV"):
        read_fer(path)


def test_a_run_that_stops_before_training_leaves_no_directory_and_report_skips_such_runs(small_data, tmp_path):
    code, output = run_cli("train", *fast_overrides(small_data, tmp_path / "cache"), "data.batch_size=0",
                           f"paths.output_dir={quote(tmp_path / 'out')}")
    assert_one_sentence(code, output, "data.batch_size=0")
    assert list((tmp_path / "out" / "runs").iterdir()) == []
    # One left by an older version (or killed while decoding) is not a row of a report over the folder.
    never = _run_dir_with(tmp_path / "out" / "runs" / "never")
    (never / ".hydra").mkdir()
    real = tmp_path / "out" / "runs" / "real"
    experiment.train(compose_train(fast_overrides(small_data, tmp_path / "cache")), real)
    assert [run.dir for run in collect_runs([tmp_path / "out"])] == [real]


@pytest.mark.parametrize("file, text, message", [
    ("metrics.json", '{"test/acc": "abc"}', "test/acc=abc is not a number"),
    ("metrics.json", "[1, 2]", "is not a mapping"),
    ("metrics.json", "{not json", "is not valid JSON"),
    ("run_info.json", '{"command": ["rm", "-rf"]}', "command=[rm,-rf] is not a string"),
    (".hydra/overrides.yaml", "!!python/object/apply:os.makedirs ['{marker}']", "is not valid YAML"),
    (".hydra/overrides.yaml", "{a: 1}", "is not a list of overrides"),
    ("history.csv", "epoch,val/acc\n1,abc\n", "val/acc='abc' is not a number"),
])
def test_a_damaged_or_crafted_run_record_is_one_sentence_in_report(tmp_path, file, text, message, caplog):
    from src.report import main as report_main

    run, marker = tmp_path / "run", tmp_path / "code_ran"
    (run / ".hydra").mkdir(parents=True)
    (run / "run_info.json").write_text("{}")
    (run / "metrics.json").write_text(json.dumps({"val/acc": 0.5, "test/acc": 0.5}))
    (run / file).write_text(text.replace("{marker}", str(marker)))
    with caplog.at_level(logging.ERROR):
        assert report_main([str(run), "--out", str(tmp_path / "report")]) == 2
    assert message in caplog.text and "\n" not in caplog.records[-1].getMessage()
    assert not marker.exists()


def test_a_crafted_sweep_record_is_one_sentence_in_report(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "jobs.jsonl").write_text('{"job": "0", "status": "completed", "dir": "/"}\n')
    with pytest.raises(UserError, match=r"jobs.jsonl, line 1 is not a job record"):
        collect_runs([sweep])
