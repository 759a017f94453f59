"""`python -m src.gpu_check` (`make gpu-check`): the CUDA path, checked end to end on a GPU machine in
about 8 minutes, as one table.

    python -m src.gpu_check [--data-dir DIR] [--out DIR]

Steps, each a subprocess with its own time limit (so one that hangs cannot eat the others' time):

1. the CUDA tests (`pytest -m cuda`: device-resident data, fp16 + GradScaler, bf16, channels_last,
   cudnn.benchmark, fused optimizers, torch.compile, no host synchronisation in a training step, NCCL DDP
   with 2 GPUs, GPU claims of a parallel sweep, resume across devices);
2. the benchmark (`src.bench`: the runner against a bare loop at the same precision and the reference
   loop) for LeNet and ResNet-18 on FER2013;
3. a 2-minute FER2013 training (ResNet-18, the fer2013_resnet18 recipe cut to 10 epochs): val and test
   accuracy, seconds per epoch;
4. with 2 GPUs or more, the same training under torchrun with 2 processes (NCCL).

On a machine without a CUDA GPU it runs nothing and prints the table of what it skipped (exit 0). FER2013
is looked for in --data-dir (default: $DATA_DIR, else data/), as by the training. Every step's output
is in --out (default outputs/gpu_check/<date>_<time>), and the table in its gpu_check.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Step:
    name: str
    command: list[str]
    timeout_s: int
    result_dir: str | None = None  # where it writes bench.json or metrics.json, under --out
    gpus: int = 1
    status: str = "skipped"
    figures: str = ""
    seconds: float | None = None
    log: Path | None = field(default=None, repr=False)


def steps(out: Path) -> list[Step]:
    python = sys.executable
    bench = ["-m", "src.bench", "data=fer2013", "bench.batches=30", "bench.rounds=1", "bench.startup=false",
             "bench.decode=false", "bench.augment=false"]  # one round: a GPU of its own does not drift
    training = ["experiment=fer2013_resnet18", "trainer.max_epochs=10", "sched.warmup_epochs=1",
                "trainer.progress_bar=false"]
    return [
        Step("CUDA tests", [python, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                            "tests/test_cuda.py"], 180),
        Step("bench LeNet", [python, *bench, "model=lenet", f"hydra.run.dir={out / 'bench_lenet'}"], 90,
             "bench_lenet"),
        Step("bench ResNet-18", [python, *bench, "model=resnet18", f"hydra.run.dir={out / 'bench_resnet18'}"], 120,
             "bench_resnet18"),
        Step("FER2013 training, 10 epochs", [python, "-m", "src.train", *training,
                                             f"hydra.run.dir={out / 'train'}"], 180, "train"),
        Step("DDP, 2 GPUs (NCCL)", [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                    "-m", "src.train", "trainer=ddp", *training, "trainer.max_epochs=3",
                                    f"hydra.run.dir={out / 'ddp'}"], 120, "ddp", gpus=2),
    ]


def _figures(step: Step, out: Path) -> str:
    """What a finished step measured, from the files it wrote (the tests: pytest's last line)."""
    if step.result_dir and (out / step.result_dir / "bench.json").is_file():
        result = json.loads((out / step.result_dir / "bench.json").read_text())
        parts = [f"runner {result['runner_images_per_s']:,.0f} img/s ({result['precision']})",
                 f"bare {result['bare_same_precision_images_per_s']:,.0f}"]
        parts += [f"{key} {value:.2f}" for key, value in (result.get("ratios") or {}).items() if value is not None]
        return "; ".join(parts)
    if step.result_dir:
        metrics = json.loads((out / step.result_dir / "metrics.json").read_text())
        return (f"val acc {metrics['val/acc']:.4f}, test acc {metrics['test/acc']:.4f}, "
                f"{metrics['train/epoch_time_s']:.1f} s/epoch, {metrics['train/images_per_s']:,.0f} img/s")
    return step.log.read_text().strip().splitlines()[-1] if step.log and step.log.exists() else ""


def run(step: Step, out: Path, env: dict) -> None:
    step.log = out / f"{step.name.split(',')[0].lower().replace(' ', '_')}.log"
    start = time.perf_counter()
    try:
        with open(step.log, "w") as log_file:
            result = subprocess.run(step.command, cwd=PROJECT_ROOT, env=env, stdout=log_file,
                                    stderr=subprocess.STDOUT, timeout=step.timeout_s)
        step.status = "passed" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    except subprocess.TimeoutExpired:
        step.status = f"FAILED (over {step.timeout_s} s)"
    step.seconds = time.perf_counter() - start
    try:
        step.figures = _figures(step, out) if step.status == "passed" else f"see {step.log}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        step.figures = f"no figures ({type(exc).__name__}: {exc})"


def table(done: list[Step], machine: str) -> str:
    lines = [f"GPU check on {machine}", "", "| step | result | figures | seconds |", "|---|---|---|---:|"]
    for step in done:
        seconds = f"{step.seconds:.0f}" if step.seconds is not None else ""
        lines.append(f"| {step.name} | {step.status} | {step.figures} | {seconds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"),
                        help="the folder holding fer2013/ (default: $DATA_DIR, else data)")
    parser.add_argument("--out", help="where the steps write (default outputs/gpu_check/<date>_<time>)")
    args = parser.parse_args(argv)
    import torch  # after argparse: --help answers at once

    out = Path(args.out or Path("outputs/gpu_check") / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    machine = ", ".join(torch.cuda.get_device_name(i) for i in range(gpus)) if gpus else "a machine without CUDA"
    has_data = (Path(args.data_dir) / "fer2013" / "train").is_dir()
    env = {**os.environ, "DATA_DIR": str(Path(args.data_dir).resolve())}
    done = []
    for step in steps(out):
        if not gpus:
            step.figures = "no CUDA GPU here (torch.cuda.is_available() is False)"
        elif gpus < step.gpus:
            step.figures = f"needs {step.gpus} GPUs, {gpus} here"
        elif step.result_dir and not has_data:
            step.figures = f"FER2013 not found in {args.data_dir}/fer2013 (--data-dir, or $DATA_DIR)"
        else:
            print(f"{step.name} (at most {step.timeout_s} s) ...", flush=True)
            run(step, out, env)
        done.append(step)
    text = table(done, machine)
    (out / "gpu_check.md").write_text(text + "\n")
    print(text)
    return 1 if any(step.status.startswith("FAILED") for step in done) else 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
