"""What each job of a parallel sweep (hydra/launcher=joblib) takes of the machine: one GPU, and its share
of the CPU cores.

A job whose trainer.device is `auto` claims the first GPU nobody else holds, with an exclusive lock
on <sweep dir>/.gpu_locks/<host>/<index>.lock, and waits when all are taken. The lock is released when
the job ends, after its cached GPU memory is handed back (a joblib worker lives on to run the next job),
or when its process dies (the kernel drops flock locks of dead processes, so a crash frees its GPU).
Only jobs that share a machine claim: the locks are per host (a sweep directory on a shared filesystem
serves several machines), and jobs of the SLURM launcher, each in its own allocation with its own GPUs,
claim nothing. Where the filesystem has no flock, jobs do not claim (a warning says so).
On the CPU, each job takes cores / jobs threads (cpu_threads_for_sweep_job).

A job's failure is kept for the sweep callback (record_job_error, take_job_error): src/entry.py's run_or_exit
lets a failed job end normally, so that Hydra goes on with the sweep, and the callback writes the error into
the sweep's table.
"""
from __future__ import annotations

import fcntl
import gc
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def claim_gpu(lock_dir: str | os.PathLike, count: int, poll_s: float = 2.0) -> Iterator[int]:
    """Holds the lock of one of `count` GPUs for the duration of the `with` block; yields its index.
    Raises OSError where the filesystem does not lock (some network filesystems)."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(count):
            handle = open(lock_dir / f"{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if not waited:
            log.info("All %d GPUs are in use by other jobs of the sweep: waiting for one", count)
            waited = True
        time.sleep(poll_s)


@contextmanager
def gpu_for_sweep_job(cfg, hydra_cfg) -> Iterator[None]:
    """In a multirun on a CUDA machine, a job with trainer.device=auto trains on a GPU it claims for
    itself (sets trainer.device=cuda:<index>); otherwise nothing changes."""
    import torch
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from .distributed import launched_world_size

    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    if (hydra_cfg.mode != RunMode.MULTIRUN or cfg.trainer.device != "auto" or launched_world_size() > 1
            or not torch.cuda.is_available() or launcher.endswith("SlurmLauncher")):
        yield
        return
    lock_dir = Path(hydra_cfg.sweep.dir) / ".gpu_locks" / socket.gethostname()
    try:
        claim = claim_gpu(lock_dir, torch.cuda.device_count())
        index = claim.__enter__()
    except OSError as exc:
        log.warning("No GPU claims in %s (%s): the jobs of this sweep on this machine may share GPUs", lock_dir,
                    exc.strerror or exc)
        yield
        return
    try:
        cfg.trainer.device = f"cuda:{index}"
        log.info("This job trains on cuda:%d (one GPU per job of the sweep)", index)
        yield
    finally:
        gc.collect()  # the job's model and data, then the memory the caching allocator kept of them, before
        torch.cuda.empty_cache()  # the next job of this worker process (or another process) gets the GPU
        claim.__exit__(None, None, None)


def cpu_threads_for_sweep_job(cfg, hydra_cfg) -> None:
    """With a parallel launcher running K jobs at once (hydra.launcher.n_jobs=K; -1: one per core), the
    jobs share the machine's cores: each trains with cores // K threads unless trainer.threads is set.
    Left to torch's default, every job would start one thread per core, and K jobs on the same cores wait
    for each other at every op (two 2-thread trainings on 2 cores ran 10-30x slower than one alone)."""
    import os

    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if hydra_cfg.mode != RunMode.MULTIRUN or cfg.trainer.get("threads") is not None:
        return
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    cores = os.cpu_count() or 1
    if not isinstance(n_jobs, int) or n_jobs == 1 or n_jobs == 0:
        return
    jobs = cores if n_jobs < 0 else min(n_jobs, cores)
    cfg.trainer.threads = max(1, cores // jobs)
    log.info("%d jobs at once on %d cores: this job uses %d CPU thread(s) (trainer.threads)", jobs, cores,
             cfg.trainer.threads)


_job_error: str | None = None  # the failure of the multirun job this process ran last, for the sweep callback


def error_line(error: BaseException) -> str:
    """"ConfigError: the first line of its message": how a failed job appears in the sweep's table."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def record_job_error(error: BaseException) -> None:
    global _job_error
    _job_error = error_line(error)


def take_job_error() -> str | None:
    """The error of the job that just ended in this process (see record_job_error), once."""
    global _job_error
    error, _job_error = _job_error, None
    return error
