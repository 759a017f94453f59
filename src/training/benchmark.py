"""`python -m src.bench`: the runner's speed next to plain PyTorch loops, measured in one run.

For the configured model, data, precision and batch size it measures, one after the other:
- the runner's steady-state training images/s (the real Trainer, after warm-up batches);
- a bare loop with the runner's precision and memory format (pre-normalized tensor, index gather,
  no augmentation): the compute ceiling, so runner / bare is the runner's own overhead;
- the course-project loop and the fp32 bare loop of the reference loop (tools/reference_loop.py,
  `--mode seed` and `--mode bare`), when the data is a folder dataset;
- decoding (first time, without cache) and loading from the cache;
- the time from the command to the first training step (a real `python -m src.train` process);
- a plain evaluation pass and a ten-crop one;
- peak memory.
It prints a table and writes bench.json and bench.md into its run directory.
"""
from __future__ import annotations

import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ..command_rules import BENCH_RULES, check_values
from ..config import build
from ..data.decoding import read_folder
from ..data.inputs import ModelInput
from ..fileio import atomic_write_json, atomic_write_text
from ..inference.predictor import Predictor
from ..runtime.devices import autocast, synchronize
from ..runtime.run_info import PROJECT_ROOT, device_name
from .losses import make_criterion
from .run_checkpoints import RunCheckpoints
from .trainer import Recipe

log = logging.getLogger(__name__)


def _timed_images_per_s(step, batches: int, warmup: int, batch_size: int, device: torch.device) -> float:
    """Runs step(i) for warmup + batches steps; images/s over the timed ones."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + batches):
        step(i)
    synchronize(device)
    return batches * batch_size / (time.perf_counter() - start)


def runner_images_per_s(cfg: DictConfig, data, batches: int, warmup: int) -> tuple[float, object]:
    """The real Trainer for warmup + batches steps of one epoch (no validation), steady-state images/s."""
    trainer = build(OmegaConf.merge(cfg.trainer, {"max_epochs": 1, "limit_train_batches": warmup + batches,
                                                   "warmup_batches": warmup, "progress_bar": False}))
    kept = {name: data.splits.pop(name) for name in ("val", "test") if name in data.splits}
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, num_classes=len(data.classes), in_channels=data.channels)
    inputs = ModelInput.for_training(data.mean, data.std, build(cfg.aug), trainer.channels_last)
    recipe = Recipe(build(cfg.optim), build(cfg.sched), make_criterion(cfg.loss, data.class_counts), inputs, cfg.seed)
    with tempfile.TemporaryDirectory() as checkpoints:
        state = trainer.fit(model, data, recipe, RunCheckpoints(checkpoints))
    data.splits.update(kept)
    return state.history[0]["train/images_per_s"], trainer


def bare_images_per_s(cfg: DictConfig, data, trainer, batches: int, warmup: int) -> float:
    """The compute ceiling at the runner's precision and memory format: the whole split pre-normalized
    on the device, batches by index gather, no augmentation, the reference loop's SGD."""
    device, channels_last = trainer.device, trainer.channels_last
    split = data.splits["train"]
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    x = (split.images.to(device).float() / 255 - mean) / std
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = split.labels.to(device)
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, num_classes=len(data.classes), in_channels=data.channels).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # fp16 trains with a loss scaler, as the runner does (its cost belongs to the ceiling too)
    scaler = torch.amp.GradScaler(device.type, enabled=trainer.precision == "fp16")
    order = torch.randperm(len(y), device=device)
    bs = data.batch_size

    def step(i: int) -> None:
        index = order[(i * bs) % (len(y) - bs):][:bs]
        with autocast(device, trainer.precision):
            out = model(x[index])
            loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y[index])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return _timed_images_per_s(step, batches, warmup, bs, device)


def reference_images_per_s(script: Path, mode: str, root: Path, model_cfg: DictConfig, data, batches: int,
                           warmup: int) -> float | None:
    """The reference loop (bench.reference) in a subprocess, on the composed model config (a conf/model file,
    a `--config-dir` one or a plugin's class: the subprocess sees this process's import path); None when it
    fails."""
    with tempfile.TemporaryDirectory() as tmp:
        model_yaml = Path(tmp) / "model.yaml"
        model_yaml.write_text(OmegaConf.to_yaml(model_cfg, resolve=True))
        command = [sys.executable, str(script), "--root", str(root / "train"), "--mode", mode, "--model-yaml",
                   str(model_yaml), "--channels", str(data.channels), "--size", str(data.image_size),
                   "--batch-size", str(data.batch_size), "--limit-batches", str(warmup + batches),
                   "--warmup-batches", str(warmup)]
        env = os.environ | {"PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env)
    if result.returncode != 0:
        log.warning("reference loop --mode %s failed: %s", mode, result.stderr.strip().splitlines()[-1:])
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["images_per_s"]


def startup_seconds(overrides: list[str]) -> dict:
    """A real `python -m src.train` with these overrides, stopped after its first training step: seconds
    from the process start to the start of that step, to its end, and the wall time seen from outside."""
    command = [sys.executable, "-m", "src.train", *overrides, "trainer.max_epochs=1", "logger=none",
               "trainer.progress_bar=false", f"hydra.run.dir={tempfile.mkdtemp(prefix='bench-startup-')}"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=PROJECT_ROOT)
    try:
        for line in process.stdout:
            match = re.search(r"First training step started ([\d.]+) s .* \(done at ([\d.]+) s\)", line)
            if match:
                return {"to_first_step_s": float(match.group(1)), "first_step_done_s": float(match.group(2)),
                        "wall_s": time.perf_counter() - start}
    finally:
        process.kill()
        process.wait()
    return {"to_first_step_s": None, "first_step_done_s": None, "wall_s": None}


def eval_seconds(data, trainer, model, images: int, crop_size: int | None) -> dict:
    """A plain evaluation pass and a ten-crop one over the first `images` test (or val) images."""
    split = data.splits.get("test") or data.splits["val"]
    subset = split.images[:images]
    out = {}
    for tta in ("none", "tencrop"):
        inputs = ModelInput(data.mean, data.std, channels_last=trainer.channels_last)
        predictor = Predictor(model, inputs, trainer.device, trainer.precision, tta, crop_size, data.eval_batch_size)
        predictor.log_probs(subset[:data.eval_batch_size])  # warm-up
        start = time.perf_counter()
        predictor.log_probs(subset)
        out[tta] = time.perf_counter() - start
    return {"images": len(subset), "plain_s": out["none"], "tencrop_s": out["tencrop"],
            "tencrop_over_plain": out["tencrop"] / out["none"]}


def run_benchmark(cfg: DictConfig, run_dir: str | Path, overrides: list[str], model_name: str | None) -> dict:
    check_values(cfg, BENCH_RULES)
    run_dir = Path(run_dir)
    b = cfg.bench
    data = build(cfg.data)
    root = Path(str(data.root)).expanduser() if getattr(data, "root", None) else None
    folder = root is not None and (root / "train").is_dir() and not getattr(data, "csv", None)
    result: dict = {"model": model_name, "data": str(root) if folder else type(data).__name__,
                    "batch_size": data.batch_size, "image_size": data.image_size, "channels": data.channels}

    if b.decode and folder:
        with tempfile.TemporaryDirectory() as empty_cache:
            start = time.perf_counter()
            read_folder(root, data.channels, data.image_size, empty_cache)
            result["decode_first_s"] = time.perf_counter() - start
            start = time.perf_counter()
            read_folder(root, data.channels, data.image_size, empty_cache)
            result["decode_cached_s"] = time.perf_counter() - start
    data.setup()
    result["train_images"] = len(data.splits["train"])

    script = PROJECT_ROOT / Path(b.reference).expanduser() if b.reference else None  # relative: to the repository
    if b.reference and not (script and script.is_file() and folder):
        log.warning("reference loop skipped: needs %s and a folder dataset with train/", script)
        script = None
    rounds, trainer = [], None
    for _ in range(b.rounds):  # interleaved: on a shared machine the load drifts; loops side by side compare
        ips, trainer = runner_images_per_s(cfg, data, b.batches, b.warmup)
        row = {"runner_images_per_s": ips,
               "bare_same_precision_images_per_s": bare_images_per_s(cfg, data, trainer, b.batches, b.warmup)}
        for mode in b.reference_modes if script else ():
            row[f"reference_{mode}_images_per_s"] = reference_images_per_s(script, mode, root, cfg.model, data,
                                                                           b.batches, b.warmup)
        rounds.append(row)
    result |= {key: _median([row[key] for row in rounds]) for key in rounds[0]}  # each loop's median round
    result |= {"device": str(trainer.device), "device_name": device_name(trainer.device),
               "cpu_threads": torch.get_num_threads(), "precision": trainer.precision,
               "channels_last": trainer.channels_last, "rounds": rounds,
               "runner_epoch_s": result["train_images"] / result["runner_images_per_s"]}
    if b.startup:
        result["startup"] = startup_seconds(overrides)
    if b.eval:
        torch.manual_seed(cfg.seed)
        model = build(cfg.model, num_classes=len(data.classes), in_channels=data.channels).to(trainer.device)
        if trainer.channels_last:
            model = model.to(memory_format=torch.channels_last)
        result["eval"] = eval_seconds(data, trainer, model, b.eval_images, cfg.tta.crop_size)
    if b.augment:
        result["augment_images_per_s"] = augment_images_per_s(cfg, data.splits["train"].images[:data.batch_size],
                                                              trainer.device)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    if trainer.device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**30
    result["ratios"] = ratios(result)
    atomic_write_json(result, run_dir / "bench.json")
    table = bench_table(result)
    atomic_write_text(table + "\n", run_dir / "bench.md")
    print(table)
    print(json.dumps(result))
    return result


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratios(r: dict) -> dict:
    """The runner against each other loop: the median over the rounds of the ratio within each round."""
    def ratio(a, b):
        return _median([row[a] / row[b] if row.get(a) is not None and row.get(b) else None
                        for row in r.get("rounds") or [r]])

    return {"runner_over_seed": ratio("runner_images_per_s", "reference_seed_images_per_s"),
            "runner_over_reference_bare": ratio("runner_images_per_s", "reference_bare_images_per_s"),
            "runner_over_bare_same_precision": ratio("runner_images_per_s", "bare_same_precision_images_per_s")}


def bench_table(r: dict) -> str:
    def num(value, fmt="{:,.1f}"):
        return "–" if value is None else fmt.format(value)

    rows = [
        ("runner (this project)", num(r["runner_images_per_s"]),
         f"{r['precision']}, channels_last={r['channels_last']}, aug as configured"),
        ("bare loop, runner's precision and format", num(r["bare_same_precision_images_per_s"]),
         "pre-normalized tensor, index gather, no augmentation"),
    ]
    for mode, what in (("seed", "course-project loop: ImageFolder, PIL transforms, DataLoader, fp32"),
                       ("bare", "reference compute ceiling, fp32")):
        if f"reference_{mode}_images_per_s" in r:
            rows.append((f"reference `--mode {mode}`", num(r[f"reference_{mode}_images_per_s"]), what))
    rounds = len(r.get("rounds") or [r])
    lines = [f"{r['model']} on {r['data']} ({r['train_images']:,} training images, batch {r['batch_size']}, "
             f"{r['channels']}x{r['image_size']}x{r['image_size']}), {r['device']} ({r['device_name']}, "
             f"{r['cpu_threads']} threads); each loop's median of {rounds} interleaved rounds, each ratio the "
             "median of the rounds' ratios", "", "| loop | images/s | notes |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    q = r["ratios"]
    lines += ["", "| measure | value |", "|---|---:|",
              f"| runner / reference seed | {num(q['runner_over_seed'], '{:.2f}x')} |",
              f"| runner / reference bare (fp32) | {num(q['runner_over_reference_bare'], '{:.2f}x')} |",
              f"| runner / bare at the runner's precision | {num(q['runner_over_bare_same_precision'], '{:.3f}')} |",
              f"| runner epoch time (from images/s) | {num(r['runner_epoch_s'], '{:.1f} s')} |"]
    if "decode_first_s" in r:
        lines += [f"| first decode (no cache) | {r['decode_first_s']:.1f} s |",
                  f"| later load (cache) | {r['decode_cached_s']:.2f} s |"]
    if r.get("startup"):
        lines.append(f"| command to first training step (its end) | {num(r['startup']['to_first_step_s'], '{:.1f} s')} "
                     f"({num(r['startup']['first_step_done_s'], '{:.1f} s')}) |")
    if r.get("eval"):
        e = r["eval"]
        lines += [f"| eval of {e['images']} images: plain / ten-crop | {e['plain_s']:.2f} s / {e['tencrop_s']:.2f} s "
                  f"({e['tencrop_over_plain']:.1f}x) |"]
    if r.get("augment_images_per_s"):
        a = r["augment_images_per_s"]
        kornia = f" / {a['kornia']:,.0f}" if "kornia" in a else " (kornia not installed)"
        lines.append(f"| augmentation alone, images/s: this project's ops{' / kornia' if 'kornia' in a else ''} | "
                     f"{a['own']:,.0f}{kornia} |")
    lines.append(f"| peak resident memory (bench process) | {r['peak_rss_gib']:.2f} GiB |")
    if "peak_gpu_gib" in r:
        lines.append(f"| peak GPU memory | {r['peak_gpu_gib']:.2f} GiB |")
    return "\n".join(lines)


def augment_images_per_s(cfg: DictConfig, images: torch.Tensor, device: torch.device, repeats: int = 30) -> dict:
    """The configured augmentation alone (this project's batched ops) and, when kornia is installed, the
    closest kornia pipeline (per-sample parameters too), on the same batch: images/s of each."""
    x = images.to(device).float() / 255
    augment = build(cfg.aug)
    generator = torch.Generator(device).manual_seed(0)
    out = {"own": _timed_images_per_s(lambda i: augment(x, generator), repeats, 3, len(x), device)}
    kornia_pipeline = _kornia_equivalent(cfg.aug, x.shape[-1])
    if kornia_pipeline is not None:
        kornia_pipeline = kornia_pipeline.to(device)
        out["kornia"] = _timed_images_per_s(lambda i: kornia_pipeline(x), repeats, 3, len(x), device)
    return out


def _kornia_equivalent(aug_cfg: DictConfig, size: int):
    """kornia.augmentation ops matching crop / flip / affine / erase of the aug config (None without kornia)."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    ops = []
    if aug_cfg.get("crop"):
        ops.append(K.RandomCrop((size, size), padding=aug_cfg.crop.padding, padding_mode=aug_cfg.crop.padding_mode))
    if aug_cfg.get("flip"):
        ops.append(K.RandomHorizontalFlip(p=aug_cfg.flip.p))
    if aug_cfg.get("affine"):
        ops.append(K.RandomAffine(degrees=aug_cfg.affine.degrees, p=aug_cfg.affine.get("p", 1.0)))
    if aug_cfg.get("erase"):
        ops.append(K.RandomErasing(p=aug_cfg.erase.p, scale=tuple(aug_cfg.erase.scale)))
    return K.AugmentationSequential(*ops) if ops else None
