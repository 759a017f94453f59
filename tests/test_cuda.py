"""The CUDA path on a GPU (`pytest -m cuda`, run by `python -m src.gpu_check` / `make gpu-check`); every test
here is skipped on a machine without one. What a CPU can tell about the same code is in test_cuda_paths.py."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from src.training.experiment import train
from tests.helpers import ROOT, TIMING_KEYS, compose_train, fast_overrides, quote, read_metrics, write_dataset

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]

SPLITS = {"train": 16, "val": 4, "test": 4}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("cuda") / "data", splits=SPLITS)


def gpu_cfg(root, cache, *overrides):
    return compose_train(fast_overrides(root, cache, "trainer.device=cuda", "aug=fer", "model.dropout=0.2",
                                        "trainer.max_epochs=2", *overrides))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
def test_training_on_the_gpu_at_each_precision(tmp_path, data_root, precision):
    metrics = train(gpu_cfg(data_root, tmp_path / "cache", f"trainer.precision={precision}",
                            "trainer.ema_decay=0.9", "trainer.gradient_clip_val=1.0"), tmp_path / "run")
    assert metrics["device"].startswith("cuda") and 0 <= metrics["test/acc"] <= 1
    major = torch.cuda.get_device_capability()[0]
    if precision == "auto":
        assert metrics["precision"] == ("bf16" if major >= 8 else "fp16")
    assert torch.backends.cudnn.benchmark


def test_the_split_lives_on_the_gpu_and_a_step_never_waits_for_the_host(data_root, tmp_path):
    """Device-resident data, batched augmentation, forward, backward, fused optimizer step: with CUDA's sync
    debug mode set to error, any host synchronisation in them raises."""
    from hydra.utils import instantiate

    from src.data import DeviceLoader
    from src.data.inputs import ModelInput
    from src.runtime.devices import fused_on_cuda

    cfg = gpu_cfg(data_root, tmp_path / "cache", "aug=strong", "aug.mix={mixup_alpha: 0.2, cutmix_alpha: 1.0}")
    data = instantiate(cfg.data)
    data.setup()
    device = torch.device("cuda")
    loader = DeviceLoader(data.splits["train"], 8, device, shuffle=True, seed=0)
    assert loader.on_device and loader.images.is_cuda
    inputs = ModelInput.for_training(data.mean, data.std, instantiate(cfg.aug), channels_last=True)
    inputs.seed(0, device)
    inputs.start_epoch(1, 2, data.image_size)
    model = instantiate(cfg.model, num_classes=len(data.classes), in_channels=data.channels).to(
        device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, **fused_on_cuda(torch.optim.SGD, device))
    assert optimizer.defaults.get("fused") is True
    batches = list(loader.iterate(0))  # the order is drawn (and copied) once per epoch, before the steps
    inputs.training_batch(*batches[0], len(data.classes))  # constants moved to the GPU once, on first use
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images, labels in batches[:3]:
            x, targets, _ = inputs.training_batch(images, labels, len(data.classes))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_split_over_the_gpu_budget_streams_through_pinned_buffers_the_same_batches():
    """Over data.max_device_bytes: two pinned staging buffers, copies overlapping the steps, and the batches
    (kept past the next one, as a training step keeps them) equal those of a GPU-resident copy."""
    from src.data import DeviceLoader
    from tests.test_data import epoch, indexed_split

    split = indexed_split([70, 110, 50])
    split = split.subset(torch.randperm(230, generator=torch.Generator().manual_seed(1))[:200])  # scattered rows
    resident = DeviceLoader(split, 16, "cuda", shuffle=True, seed=3)
    streamed = DeviceLoader(split, 16, "cuda", shuffle=True, seed=3, budget_bytes=1)
    assert not streamed.on_device and streamed.images is None  # no (pinned) copy of the whole split
    a, b = epoch(resident), epoch(streamed)
    assert torch.equal(a[0].cpu(), b[0].cpu()) and torch.equal(a[1].cpu(), b[1].cpu())
    assert all(buffer.is_pinned() for buffer, _, _ in streamed._staging)


def test_the_validation_split_is_uploaded_once_per_run(tmp_path, data_root, monkeypatch):
    """Validation runs every epoch: its split goes to the GPU once, not from pageable host memory each epoch."""
    from src.training.trainer import Trainer

    kept = []
    real = Trainer._eval_split

    def spy(self, data, name):
        part = real(self, data, name)
        kept.append((name, part))
        return part

    monkeypatch.setattr(Trainer, "_eval_split", spy)
    train(gpu_cfg(data_root, tmp_path / "cache", "trainer.max_epochs=3"), tmp_path / "run")
    vals = [part for name, part in kept if name == "val"]
    assert len(vals) == 3 and all(part is vals[0] for part in vals) and vals[0].source.is_cuda


def test_torch_compile_trains(tmp_path, data_root):
    metrics = train(gpu_cfg(data_root, tmp_path / "cache", "trainer.compile=true", "trainer.max_epochs=1"),
                    tmp_path / "run")
    assert metrics["test/acc"] is not None


def test_a_cpu_checkpoint_resumes_on_the_gpu_and_back(tmp_path, data_root, caplog):
    cache = tmp_path / "cache"
    train(compose_train(fast_overrides(data_root, cache, "aug=fer", "model.dropout=0.2")), tmp_path / "cpu")
    with caplog.at_level(logging.WARNING):
        gpu = train(gpu_cfg(data_root, cache, f"ckpt_path={quote(tmp_path / 'cpu' / 'checkpoints' / 'last.pt')}"),
                    tmp_path / "gpu")
    assert gpu["epochs"] == 2 and "resumes on cuda" in caplog.text
    back = train(compose_train(fast_overrides(data_root, cache, "aug=fer", "model.dropout=0.2", "trainer.max_epochs=3",
                                              f"ckpt_path={quote(tmp_path / 'gpu' / 'checkpoints' / 'last.pt')}")),
                 tmp_path / "back")
    assert back["epochs"] == 3


def test_fp16_resumes_a_bf16_checkpoint(tmp_path, data_root):
    cache = tmp_path / "cache"
    train(gpu_cfg(data_root, cache, "trainer.precision=bf16", "trainer.max_epochs=1"), tmp_path / "bf16")
    metrics = train(gpu_cfg(data_root, cache, "trainer.precision=fp16",
                            f"ckpt_path={quote(tmp_path / 'bf16' / 'checkpoints' / 'last.pt')}"), tmp_path / "fp16")
    assert metrics["epochs"] == 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_ddp_on_two_gpus_equals_one_gpu_with_the_global_batch(tmp_path, data_root):
    cache, out = tmp_path / "cache", tmp_path / "out"
    common = fast_overrides(data_root, cache, "trainer.device=auto", "trainer.precision=fp32")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "src.train",
               "trainer=ddp", *common, f"paths.output_dir={quote(out)}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (out / "runs").iterdir()
    ddp = read_metrics(run_dir)
    single = train(compose_train(fast_overrides(data_root, cache, "trainer.device=cuda", "trainer.precision=fp32",
                                                "data.batch_size=16")), tmp_path / "single")
    assert ddp["world_size"] == 2
    for key in ("val/acc", "test/acc"):  # GPU kernels are not bit-exact across batch splits: close, not equal
        assert ddp[key] == pytest.approx(single[key], abs=0.1), key
    assert set(ddp) - TIMING_KEYS >= set(single) - TIMING_KEYS - {"world_size"}
