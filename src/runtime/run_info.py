"""What a run directory records about how its results were produced (run_info.json): the command,
the code version (git commit, and whether the tree had uncommitted changes), package versions, the
device and the host."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "torchvision", "hydra-core", "omegaconf", "numpy", "scikit-learn", "pillow", "tensorboard")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _command() -> str:
    """The command line as typed: `python -m src.train key=value ...` (argv[0] is the module's file)."""
    entry = Path(sys.argv[0]).resolve()
    program = (f"python -m {'.'.join(entry.relative_to(PROJECT_ROOT).with_suffix('').parts)}"
               if entry.is_relative_to(PROJECT_ROOT) else f"python {sys.argv[0]}")
    return " ".join([program, *(shlex.quote(arg) for arg in sys.argv[1:])])


def earlier_commands(run_info_file: Path) -> list[str]:
    """The commands that trained a run before a process resumed it (first first): the `earlier_commands` and
    `command` of the run_info.json beside the checkpoint it resumes from. None when there is no readable
    record there (a checkpoint copied out of its run directory)."""
    try:
        previous = json.loads(run_info_file.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(previous, dict) or not isinstance(previous.get("command"), str):
        return []
    earlier = previous.get("earlier_commands")
    return [*(c for c in earlier if isinstance(c, str)), previous["command"]] if isinstance(earlier, list) \
        else [previous["command"]]


def collect_run_info(device: torch.device, precision: str) -> dict:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "command": _command(),
        "cwd": str(Path.cwd()),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": {"commit": commit, "dirty": bool(status) if commit else None},
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision,
        "cpu_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }
