"""Device, precision and seeding decisions, made once per run."""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
from pathlib import Path

import torch

from ..errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """auto: the first CUDA GPU if there is one, else the CPU. Asking for CUDA without one is an error.

    With `local_rank` (one of several processes started by torchrun) auto and cuda mean this process's
    own GPU, cuda:local_rank."""
    if local_rank is not None:
        if name.startswith("cuda:"):
            raise ConfigError(f"trainer.device={name} under torchrun: each process uses the GPU of its local rank; "
                              "use trainer.device=auto, cuda or cpu")
        if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
            name = f"cuda:{local_rank}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name} but no CUDA GPU is available here; "
                              "use trainer.device=cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={name} but only {torch.cuda.device_count()} GPU(s) are visible")
        if device.index is not None:
            # Before anything touches CUDA: whatever runs on "the current device" (a process-group
            # collective, a query, a tensor made without a device) then runs on this GPU, and a process of
            # a DDP launch never opens a context on GPU 0 as well.
            torch.cuda.set_device(device)
        return device
    raise ConfigError(f"trainer.device={name} is invalid: use auto, cpu, cuda or cuda:N")


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX), which make bf16 faster than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 where the device runs it natively, else fp16 on older GPUs, else fp32."""
    if name not in ("auto", *DTYPES):
        raise ConfigError(f"trainer.precision={name} is invalid: use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        # bf16 runs natively from Ampere (compute capability 8.0) on; before that (V100, T4) it is emulated
        # and slow, and fp16 with a GradScaler is the fast choice. (torch.cuda.is_bf16_supported() also
        # counts emulation, and asks the current device, not this one.)
        native_bf16 = torch.cuda.get_device_capability(device)[0] >= 8
        if name == "auto":
            return "bf16" if native_bf16 else "fp16"
        if name == "bf16" and not native_bf16:
            log.warning("This GPU (compute capability %d.%d) has no native bf16: it is emulated and slow; "
                        "trainer.precision=fp16 (or auto) is faster", *torch.cuda.get_device_capability(device))
        return name
    if name == "fp16":
        raise ConfigError("trainer.precision=fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    if name == "auto":
        return "bf16" if cpu_supports_bf16() else "fp32"
    if name == "bf16" and not cpu_supports_bf16():
        log.warning("This CPU has no native bf16 support: bf16 will be emulated and slower than fp32")
    return name


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for forward passes (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def synchronize(device: torch.device) -> None:
    """Waits for queued device work; used only to take timings, never per batch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_since_process_start() -> float | None:
    """Wall-clock seconds since this process started (Linux /proc, 10 ms resolution), for the
    startup-time log line."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def fused_on_cuda(optimizer, device: torch.device) -> dict:
    """{"fused": True} when on CUDA the optimizer has a fused kernel and the config did not choose (neither
    fused nor foreach):
    one kernel for all parameters instead of several per tensor. On CPU the fused kernels gave no
    measurable gain (see docs/performance.md), so the default implementation stays."""
    func = getattr(optimizer, "func", optimizer)
    chosen = getattr(optimizer, "keywords", {})
    # fused and foreach exclude each other: a config that chose either keeps its choice
    choose = not {"fused", "foreach"} & {key for key, value in chosen.items() if value is not None}
    if device.type == "cuda" and choose and "fused" in inspect.signature(func).parameters:
        return {"fused": True}
    return {}
