"""Checkpoints that unpickle safely but cannot run: the tensors themselves are crafted.

torch.load rebuilds whatever a file describes: a stride-0 expansion of one number (a weight of any size, tiny
on disk), a view keeping a larger storage, an int, complex, sparse or meta weight, NaN or infinite values, a
batch-norm buffer that makes every output NaN, weights whose outputs overflow. Each one, through the real
commands (a tiny real training's checkpoint, changed), ends with one sentence naming the file and exit code 2,
before memory for the model is allocated; an ensemble names its member at fault. The default run takes
each craft through one of the commands in this process (as `python -m` runs them) and the model that would
need 36 GB through a subprocess limited to 8 GB of address space; the slow tests take every craft through
evaluate, predict and export, and one craft of each kind through each in a bounded subprocess.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.checkpoint_file import load_checkpoint
from src.models.alexnet import AlexNet
from src.models.resnet import ResNet
from tests.helpers import ROOT, fast_overrides, quote, tiny_trained_checkpoint
from tests.test_trust import assert_one_sentence, crafted, entry_args, fails_after, run_cli

# torch warns that it validates a sparse tensor it loads (the sparse_weight craft)
pytestmark = pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants:UserWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny real training (LeNet on a synthetic folder): its checkpoint is what the crafts change."""
    return tiny_trained_checkpoint(tmp_path_factory.mktemp("crafted"))


WEIGHT = "features.8.weight"  # LeNet's first fully connected layer, (120, 400)


def weight(change):
    """A craft replacing WEIGHT by change(WEIGHT)."""
    return lambda content: content["model"].__setitem__(WEIGHT, change(content["model"][WEIGHT]))


def one_value(value: float):
    def change(w: torch.Tensor) -> torch.Tensor:
        w = w.clone()
        w.view(-1)[7] = value
        return w
    return weight(change)


# A tiny ResNet (batch norm) in place of the trained LeNet, with its initial weights: a checkpoint that runs
# (test_the_batch_norm_checkpoint_runs) until one of its buffers is changed.
BN_MODEL = {"_target_": "src.models.resnet.ResNet", "layers": [1], "widths": [4], "stem": "cifar"}


def batch_norm(key: str, change):
    def craft(content: dict) -> None:
        torch.manual_seed(0)
        model = ResNet(num_classes=3, in_channels=3, **{k: v for k, v in BN_MODEL.items() if k != "_target_"})
        content["meta"]["config"]["model"] = dict(BN_MODEL)
        content["model"] = {k: v.clone() for k, v in model.state_dict().items()}
        content["model"][key] = change(content["model"][key])
    return craft


def huge_model(content: dict) -> None:
    """An AlexNet whose config implies 36 GB of weights, each a stride-0 expansion of one zero (the file
    stays small)."""
    content["meta"]["config"]["model"] = {"_target_": "src.models.alexnet.AlexNet", "classifier_width": 10**6}
    with torch.device("meta"):
        shapes = AlexNet(num_classes=3, in_channels=3, classifier_width=10**6).state_dict()
    content["model"] = {k: torch.zeros(1, dtype=v.dtype).expand(v.shape) for k, v in shapes.items()}


def overflowing_hidden_layer(content: dict) -> None:
    """The first hidden layer outputs ones whatever the image, the second sums 120 of them times 1e37: inf
    (export checks the outputs on a random batch, so the overflow must not depend on the image)."""
    content["model"]["features.8.weight"].zero_()
    content["model"]["features.8.bias"].fill_(1.0)
    content["model"]["features.10.weight"].fill_(1e37)


CRAFTS = {  # name: (craft, what the one sentence says)
    "stride_0_expansion": (weight(lambda w: torch.zeros(1).expand(w.shape)), "elements overlap"),
    "overlapping_rows": (weight(lambda w: torch.randn(sum(w.shape)).as_strided(w.shape, (1, 1))), "elements overlap"),
    "every_other_element": (weight(lambda w: torch.randn(w.shape[0], 2 * w.shape[1])[:, ::2]), "leave gaps"),
    "larger_storage": (weight(lambda w: torch.randn(4 * w.numel())[:w.numel()].view(w.shape)),
                       "keeps 768000 bytes of storage for 192000 bytes of values"),
    "int_weight": (weight(lambda w: w.round().to(torch.int32)), "is int32, where the model has float32"),
    "complex_weight": (weight(lambda w: w.to(torch.complex64)), "is complex64, where the model has float32"),
    "sparse_weight": (weight(lambda w: w.to_sparse()), "is a sparse_coo tensor"),
    "meta_weight": (weight(lambda w: torch.empty(w.shape, device="meta")), "is a meta tensor"),
    "nan_weight": (one_value(float("nan")), f"its weight {WEIGHT} holds NaN or infinite values"),
    "inf_weight": (one_value(float("inf")), f"its weight {WEIGHT} holds NaN or infinite values"),
    "minus_inf_bias": (lambda c: c["model"]["head.1.bias"].__setitem__(1, float("-inf")),
                       "its weight head.1.bias holds NaN or infinite values"),
    "bn_mean_nan": (batch_norm("stem.1.running_mean", lambda t: t.fill_(float("nan"))),
                    "its weight stem.1.running_mean holds NaN or infinite values"),
    "bn_var_inf": (batch_norm("stem.1.running_var", lambda t: t.fill_(float("inf"))),
                   "its weight stem.1.running_var holds NaN or infinite values"),
    "bn_var_negative": (batch_norm("stem.1.running_var", lambda t: t.fill_(-1.0)),
                        "its batch-norm variance stem.1.running_var holds negative values"),
    "bn_counter_float": (batch_norm("stem.1.num_batches_tracked", lambda t: t.double()),
                         "stem.1.num_batches_tracked is float64, where the model has int64"),
    # finite weights whose outputs overflow float32: only the outputs show it
    "overflowing_weights": (weight(lambda w: torch.full(w.shape, 1e37)), "gives outputs that are not finite"),
    "overflowing_hidden_layer": (overflowing_hidden_layer, "gives outputs that are not finite"),
}
ENTRIES = ("evaluate", "predict", "export")


def refused(trained: dict, tmp_path: Path, craft: str) -> Path:
    return crafted(trained, tmp_path / f"{craft}.pt", CRAFTS[craft][0])


def error_line(output: str, message: str) -> str:
    """The line that says `message` (evaluate logs it with a time stamp, predict and export print it)."""
    return next(line for line in output.splitlines() if message in line)


# Each craft but a few variants through one command (in turn), in this process: the same code as
# `python -m src.<entry>`. The slow tests take the rest.
VARIANTS = ("overlapping_rows", "every_other_element", "minus_inf_bias", "bn_var_inf")
DEFAULT_CASES = [(craft, ENTRIES[i % 3]) for i, craft in enumerate(c for c in CRAFTS if c not in VARIANTS)]


@pytest.mark.parametrize("craft, entry", DEFAULT_CASES)
def test_a_checkpoint_that_cannot_run_is_one_sentence(trained, tmp_path, craft, entry):
    ckpt = refused(trained, tmp_path, craft)
    module, args = entry_args(entry, ckpt, trained, tmp_path)
    with fails_after(60):
        code, output = run_cli(module, *args)
    assert_one_sentence(code, output, CRAFTS[craft][1])
    assert f"checkpoint {ckpt}" in error_line(output, CRAFTS[craft][1])  # the sentence names the file
    assert not (tmp_path / "m.pt").exists()  # export wrote nothing


def test_the_batch_norm_checkpoint_runs(trained, tmp_path):
    """The craft of the bn_ cases is a runnable checkpoint until one buffer is changed."""
    ckpt = crafted(trained, tmp_path / "bn.pt", batch_norm("stem.1.running_var", lambda t: t))
    module, args = entry_args("predict", ckpt, trained, tmp_path)
    code, output = run_cli(module, *args)
    assert code == 0, output[-3000:]


@pytest.mark.parametrize("craft, entry", [("nan_weight", "evaluate"), ("overflowing_weights", "evaluate"),
                                          ("overflowing_hidden_layer", "predict")])
def test_an_ensemble_names_its_member_at_fault(trained, tmp_path, craft, entry):
    bad = refused(trained, tmp_path, craft)
    module, args = entry_args(entry, bad, trained, tmp_path)
    args = [f"ckpt_path=[{quote(trained['ckpt'])},{quote(bad)}]" if a.startswith("ckpt_path=") else a for a in args]
    code, output = run_cli(module, *args)
    assert_one_sentence(code, output, CRAFTS[craft][1])
    line = error_line(output, CRAFTS[craft][1])
    assert bad.name in line and trained["ckpt"].name not in line, line


def test_a_crafted_optimizer_state_is_refused_before_resuming(trained, tmp_path):
    """Adam's step would write into a stride-0 moment in place: refused when the checkpoint is read."""
    last = torch.load(trained["ckpt"].with_name("last.pt"), weights_only=True)
    moment = last["optimizer"]["state"][0]["exp_avg"]
    last["optimizer"]["state"][0]["exp_avg"] = torch.zeros(1).expand(moment.shape)
    torch.save(last, tmp_path / "last.pt")
    code, output = run_cli("train", *fast_overrides(trained["root"], trained["cache"], "trainer.max_epochs=2"),
                           f"ckpt_path={quote(tmp_path / 'last.pt')}", f"hydra.run.dir={quote(tmp_path / 'resumed')}")
    assert_one_sentence(code, output, "last.pt was refused: its tensor optimizer.state.0.exp_avg", "elements overlap")


def test_nan_weights_are_refused_before_resuming(trained, tmp_path):
    """Resuming from a last.pt whose weights hold a NaN would train on and end in the loss guard's advice to
    lower the learning rate: the weights are checked as evaluate checks them."""
    last = torch.load(trained["ckpt"].with_name("last.pt"), weights_only=True)
    one_value(float("nan"))(last)
    torch.save(last, tmp_path / "last.pt")
    code, output = run_cli("train", *fast_overrides(trained["root"], trained["cache"], "trainer.max_epochs=2"),
                           f"ckpt_path={quote(tmp_path / 'last.pt')}", f"hydra.run.dir={quote(tmp_path / 'resumed')}")
    assert_one_sentence(code, output, f"last.pt was refused: its weight {WEIGHT} holds NaN or infinite values")


def test_the_real_training_state_passes_the_tensor_checks(trained):
    """Every tensor a run writes (channels_last convolutions, optimizer moments, random streams) is dense."""
    for name in ("best.pt", "last.pt"):
        load_checkpoint(trained["ckpt"].with_name(name))


# -- in a subprocess, with its memory bounded -----------------------------------------------------------------

ADDRESS_SPACE = 8 * 2**30  # a command refusing a checkpoint needs ~1 GB; the model of huge_model 36 GB


def run_bounded(entry: str, ckpt: Path, trained: dict, folder: Path, timeout: float = 120) -> tuple[int, str, float]:
    """`python -m src.<entry>` on ckpt in a subprocess limited to ADDRESS_SPACE, on the CPU: (exit code, its
    output, its peak resident memory in MB). The output goes to a file in `folder`."""
    module, args = entry_args(entry, ckpt, trained, folder)
    if entry != "export":
        args.append("trainer.device=cpu")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    log = folder / f"{entry}.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", f"src.{module}", *args], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                   preexec_fn=limit)
        deadline = time.monotonic() + timeout
        while True:  # os.wait4, not Popen.wait: it gives this child's own peak memory
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"python -m src.{module} on {ckpt.name} still ran after {timeout} s")
            time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped above: Popen must not wait for it again
    return process.returncode, log.read_text(), usage.ru_maxrss / 1024


def test_a_model_of_36_gb_in_a_small_file_is_refused_in_bounded_memory(trained, tmp_path):
    ckpt = crafted(trained, tmp_path / "huge.pt", huge_model)
    assert ckpt.stat().st_size < 10**6
    start = time.monotonic()
    code, output, peak_mb = run_bounded("evaluate", ckpt, trained, tmp_path)
    assert_one_sentence(code, output, "huge.pt was refused: its tensor model.features.0.weight", "elements overlap")
    assert peak_mb < 2500 and time.monotonic() - start < 60, (peak_mb, time.monotonic() - start)


@pytest.mark.slow
@pytest.mark.parametrize("craft, entry", [(craft, entry) for craft in CRAFTS for entry in ENTRIES
                                          if (craft, entry) not in DEFAULT_CASES])
def test_every_craft_through_every_command(trained, tmp_path, craft, entry):
    ckpt = refused(trained, tmp_path, craft)
    module, args = entry_args(entry, ckpt, trained, tmp_path)
    code, output = run_cli(module, *args)
    assert_one_sentence(code, output, CRAFTS[craft][1])
    assert f"checkpoint {ckpt}" in error_line(output, CRAFTS[craft][1])


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES)
def test_one_craft_of_each_kind_through_every_command_in_bounded_memory(trained, tmp_path, entry):
    crafts = {"huge_model": (huge_model, "elements overlap"),
              **{name: CRAFTS[name] for name in ("larger_storage", "complex_weight", "nan_weight", "bn_var_negative",
                                                 "overflowing_weights")}}
    for name, (craft, message) in crafts.items():
        folder = tmp_path / name
        folder.mkdir()
        ckpt = crafted(trained, folder / f"{name}.pt", craft)
        code, output, peak_mb = run_bounded(entry, ckpt, trained, folder)
        assert_one_sentence(code, output, f"checkpoint {ckpt}", message)
        assert peak_mb < 2500, (name, peak_mb)
