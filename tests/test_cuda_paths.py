"""What the CUDA code paths do, checked on the CPU where a CPU can tell: the GPU's precision choice, the
current device, fused optimizers, steps a GradScaler skips, the EMA's per-step cost. (`make gpu-check` runs
the same paths on a GPU.)"""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn

from src.runtime import devices
from src.training.ema import ModelEma
from src.training.run_checkpoints import Resumable
from src.training.trainer import Trainer


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                  ((9, 0), "bf16")])
def test_auto_precision_is_bf16_only_where_the_gpu_runs_it_natively(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16 (slowly; is_bf16_supported() says yes): they get fp16 + GradScaler."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    assert devices.resolve_precision("auto", torch.device("cuda:1")) == expected
    assert asked == [torch.device("cuda:1")]  # this run's GPU, not the current one


def test_a_gpu_process_makes_its_gpu_current_before_anything_else(monkeypatch):
    """Under torchrun each rank must not open a context on GPU 0 (the current device until set)."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert devices.resolve_device("auto", local_rank=1) == torch.device("cuda:1")
    assert current == [torch.device("cuda:1")]


def test_foreach_in_the_config_gets_no_fused_kernel_added():
    assert devices.fused_on_cuda(partial(torch.optim.AdamW, lr=0.1, foreach=True), torch.device("cuda")) == {}
    assert devices.fused_on_cuda(partial(torch.optim.AdamW, lr=0.1), torch.device("cuda")) == {"fused": True}


def _parts(scaler: torch.amp.GradScaler) -> Resumable:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Resumable(model=model, optimizer=optimizer, scheduler=None, scaler=scaler, batch_order=None,
                     inputs=None, device=torch.device("cpu"), ema=None)


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_a_step_the_grad_scaler_skips_is_reported_so_ema_and_schedule_wait(clip):
    """fp16 + GradScaler (here the CPU's): a step whose gradients overflow changes no weight and says so; the
    trainer then neither moves the EMA nor steps a per-step schedule."""
    trainer = Trainer(device="cpu", precision="fp32", gradient_clip_val=clip)
    parts = _parts(torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0 ** 8))
    x = torch.ones(4, 3)
    before = [p.detach().clone() for p in parts.model.parameters()]
    overflow = parts.model(x).sum() * float("inf")
    assert trainer._optimizer_step(parts, overflow) is False
    assert all(torch.equal(a, b) for a, b in zip(before, parts.model.parameters()))
    assert trainer._optimizer_step(parts, parts.model(x).sum()) is True
    assert not all(torch.equal(a, b) for a, b in zip(before, parts.model.parameters()))
    # without a scaler (fp32, bf16) every step counts and nothing is read back from the device
    assert trainer._optimizer_step(_parts(torch.amp.GradScaler("cpu", enabled=False)), parts.model(x).sum())


def test_the_ema_pairs_its_tensors_once_and_follows_in_place_updates(monkeypatch):
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = ModelEma(model, 0.5)
    calls = {"n": 0}
    real = nn.Module.state_dict

    def counted(self, *args, **kwargs):
        calls["n"] += self is model or self is ema.module
        return real(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "state_dict", counted)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    expected = {k: v.clone() for k, v in real(ema.module).items()}
    for _ in range(3):
        model(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
        decay = min(0.5, (1 + ema.steps) / (10 + ema.steps))
        for key, value in real(model).items():
            expected[key] = expected[key] * decay + value * (1 - decay) if value.is_floating_point() else value.clone()
    assert calls["n"] == 2  # one state_dict of each model for the three steps
    for key, value in real(ema.module).items():
        assert torch.allclose(value.float(), expected[key].float()), key


def test_a_checkpoint_from_a_gpu_run_resumes_on_the_cpu(tmp_path, make_folder, train_cfg, caplog):
    """Generator states differ in size between devices: a run moved from a GPU to the CPU (or back) goes on,
    its device streams reseeded with a warning, instead of crashing in set_state."""
    import logging

    from src.training.experiment import train
    from tests.helpers import quote

    root = make_folder(splits={"train": 8, "val": 4, "test": 4})
    train(train_cfg(root, "aug=basic"), tmp_path / "A")
    ckpt = torch.load(tmp_path / "A" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["rng"]["device"] == "cpu" and ckpt["rng"]["cuda"] == []
    # as a CUDA run writes it: its GPU's Philox state (16 bytes) for the device streams, no scaler state
    ckpt["rng"] |= {"device": "cuda", "augment": torch.zeros(16, dtype=torch.uint8),
                    "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    ckpt["scaler"] = {}
    moved = tmp_path / "from_gpu.pt"
    torch.save(ckpt, moved)
    with caplog.at_level(logging.WARNING):
        metrics = train(train_cfg(root, "aug=basic", "trainer.max_epochs=2", f"ckpt_path={quote(moved)}"),
                        tmp_path / "B")
    assert metrics["epochs"] == 2
    assert "written by a run on cuda and resumes on cpu" in caplog.text


def test_an_empty_scaler_state_is_not_loaded_into_an_fp16_run():
    """A bf16/fp32 checkpoint has an empty GradScaler state; resuming it with fp16 starts the scaler afresh."""
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    parts = _parts(scaler)
    from src.training.run_checkpoints import FitState

    content = {"state": FitState().as_dict(), "progress": None, "model": parts.model.state_dict(),
               "optimizer": parts.optimizer.state_dict(), "scaler": {}, "ema": None,
               "rng": {"torch": torch.get_rng_state(), "shuffle": torch.Generator().get_state(), "augment": None,
                       "mix": None, "device": "cpu", "cuda": []}}

    class NoScheduler:
        def load_state_dict(self, state):
            pass

    class NoInputs:
        def set_state(self, state):
            pass

    parts.scheduler, parts.batch_order, parts.inputs = NoScheduler(), torch.Generator(), NoInputs()
    content["scheduler"] = {}
    parts.restore(content, "ckpt.pt")
    assert scaler.get_scale() == 2.0 ** 16  # the default initial scale


def test_the_data_budget_on_a_gpu_is_half_of_its_free_memory(monkeypatch):
    from src.data.memory import DEVICE_FRACTION, HOST_FRACTION, available_host_bytes, device_budget_bytes

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**30, 80 * 2**30))
    assert device_budget_bytes(torch.device("cuda:0")) == int(DEVICE_FRACTION * 10 * 2**30)
    assert device_budget_bytes(torch.device("cuda:0"), 123) == 123  # data.max_device_bytes wins
    # on the CPU: the memory a gathered copy of a split of scattered rows may take
    assert abs(device_budget_bytes(torch.device("cpu")) - HOST_FRACTION * available_host_bytes()) < 2**28


def test_gpu_check_on_a_cpu_machine_says_what_it_skipped(tmp_path, capsys):
    from src import gpu_check

    assert gpu_check.main(["--out", str(tmp_path), "--data-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| skipped | no CUDA GPU here") == 5
    assert (tmp_path / "gpu_check.md").read_text().strip() == printed.strip()


def test_gpu_check_runs_each_step_within_its_limit_and_tabulates_its_figures(tmp_path, monkeypatch, capsys):
    """The orchestration on a faked one-GPU machine, with stand-in steps: figures from what a step wrote, a
    failing step and one over its time limit are FAILED (exit 1), a 2-GPU step is skipped."""
    import json
    import sys

    from src import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    (tmp_path / "data" / "fer2013" / "train").mkdir(parents=True)
    metrics = {"val/acc": 0.5, "test/acc": 0.25, "train/epoch_time_s": 2.0, "train/images_per_s": 1000.0}
    write = f"import json, pathlib; p = pathlib.Path({str(tmp_path / 'out' / 'train')!r}); p.mkdir(); " \
            f"(p / 'metrics.json').write_text(json.dumps({metrics!r}))"
    stand_ins = [
        gpu_check.Step("tests", [sys.executable, "-c", "print('3 passed')"], 30),
        gpu_check.Step("training", [sys.executable, "-c", write], 30, "train"),
        gpu_check.Step("broken", [sys.executable, "-c", "raise SystemExit(3)"], 30),
        gpu_check.Step("hangs", [sys.executable, "-c", "import time; time.sleep(30)"], 1),
        gpu_check.Step("two GPUs", [sys.executable, "-c", "pass"], 30, gpus=2),
    ]
    monkeypatch.setattr(gpu_check, "steps", lambda out: stand_ins)
    code = gpu_check.main(["--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")])
    table = capsys.readouterr().out
    assert code == 1 and "GPU check on Fake GPU" in table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "| passed | 3 passed |" in rows["tests"]
    assert "val acc 0.5000, test acc 0.2500, 2.0 s/epoch, 1,000 img/s" in rows["training"]
    assert "FAILED (exit 3)" in rows["broken"] and "FAILED (over 1 s)" in rows["hangs"]
    assert "| skipped | needs 2 GPUs, 1 here |" in rows["two GPUs"]
    assert json.loads((tmp_path / "out" / "train" / "metrics.json").read_text())["val/acc"] == 0.5
