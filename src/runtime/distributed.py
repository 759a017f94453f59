"""DistributedDataParallel under torchrun: ranks, the process group, reductions and sharding.

`torchrun --nproc_per_node=N -m src.train trainer=ddp` starts N processes (ranks); so does a job of the
submitit launcher with N tasks (`hydra.launcher.tasks_per_node`, `nodes`: adopt_submitit_tasks). Each trains on its
share of every epoch (`data.loader.shard_order`), evaluates its share of each split (`map_shards`), and all of
them reach the same numbers: every decision (best epoch, early stopping, a plateau schedule) is then
taken identically on every rank without further messages. Rank 0 alone writes files.

In a single process (no torchrun, or one rank) every helper here is a no-op or returns its input:
that code path stays as it was, without collectives or extra synchronisation.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "nccl", "gloo")

_store: dist.Store | None = None  # torchrun's rendezvous store, shared by the resolvers and the process group
_device: torch.device | None = None  # where collectives put their tensors: the rank's GPU (nccl) or the CPU (gloo)


# -- what torchrun says (environment variables, readable before any process group exists) -----------------


def adopt_submitit_tasks() -> None:
    """A job of Hydra's submitit launcher with several tasks (hydra.launcher.tasks_per_node, nodes: on
    SLURM, or locally with submitit_local) is one DDP run whose processes submitit started, one per task:
    this exports the environment torchrun would have set (MASTER_ADDR/PORT from the job's first host and
    job id, RANK, WORLD_SIZE, LOCAL_RANK), after which everything here works as under torchrun. Does
    nothing outside such a job, under torchrun, or with one task."""
    if "SUBMITIT_EXECUTOR" not in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def launched_world_size() -> int:
    """The number of processes torchrun (or a submitit job's tasks) started; 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its machine: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _rendezvous_store() -> dist.Store:
    """The key-value store of torchrun's rendezvous (env://: MASTER_ADDR, MASTER_PORT), created once per
    process. It needs no backend, so the run directory can be agreed on before the trainer config
    (which names the backend) is built; the process group is later built on the same store."""
    global _store
    if _store is None:
        _store, _, _ = next(dist.rendezvous("env://"))
    return _store


def rank_zero_value(key: str, value: str) -> str:
    """Rank 0's `value` on every rank of a torchrun launch; `value` itself in a single process.

    Used by the `${run_id:}` and `${start_time:}` resolvers: each process computes its own, and the run
    directory must be the same for all of them."""
    if launched_world_size() <= 1:
        return value
    store = _rendezvous_store()
    # A restarted worker group (torchrun --max-restarts) must not read the previous attempt's value.
    key = f"src/rank_zero_value/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{key}"
    if launched_rank() == 0:
        store.set(key, value)
        return value
    return store.get(key).decode()  # waits until rank 0 has set it


# -- the process group ------------------------------------------------------------------------------------


def init(backend: str, device: torch.device) -> int:
    """Joins the process group of a torchrun launch (trainer=ddp) and returns the world size.

    backend auto: nccl for CUDA devices, gloo for the CPU. Without torchrun (or with one process) there
    is nothing to join: the run trains in this one process, as with the default trainer."""
    if backend not in BACKENDS:
        raise ConfigError(f"trainer.backend={backend} is invalid: use {', '.join(BACKENDS)}")
    world = launched_world_size()
    if world <= 1:
        log.info("trainer=ddp without torchrun (or with one process): training in this one process; "
                 "launch with torchrun --nproc_per_node=N -m src.train trainer=ddp for N processes")
        return 1
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"trainer.backend=nccl needs CUDA devices, but this run trains on {device}; "
                          "use trainer.backend=gloo or auto")
    global _device
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl and object collectives use the current device
        # The same prefix init_process_group gives the store it creates itself (the store is shared).
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", _rendezvous_store()),
                                rank=launched_rank(), world_size=world)
    _device = device if backend == "nccl" else torch.device("cpu")
    log.info("DistributedDataParallel: rank %d of %d on %s (%s)", rank(), world, device, backend)
    return world


def shutdown() -> None:
    """Leaves the process group at the end of a successful run (torch warns about one left open)."""
    global _device
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _device = None


def is_distributed() -> bool:
    return _device is not None


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes files (and every single process)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier(device_ids=[_device.index] if _device.type == "cuda" else None)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block before the others: it decodes the dataset and fills the cache, which the
    other ranks then read instead of decoding it again at the same time."""
    if is_distributed() and not is_main():
        barrier()
    yield
    if is_distributed() and is_main():
        barrier()


# -- reductions -------------------------------------------------------------------------------------------


def all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """`tensor` reduced in place over the ranks with op "sum", "min" or "max"; unchanged in one process."""
    if is_distributed():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
                                    "max": dist.ReduceOp.MAX}[op])
    return tensor


def sum_over_ranks(*values: float | torch.Tensor) -> list[float]:
    """Numbers or one-element tensors summed over the ranks, as Python numbers (one collective for all;
    float64, exact for counts). In one process, the values themselves."""
    numbers = [v.item() if isinstance(v, torch.Tensor) else v for v in values]
    if not is_distributed():
        return numbers
    return all_reduce(torch.tensor(numbers, dtype=torch.float64, device=_device), "sum").tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank."""
    if not is_distributed():
        return flag
    return bool(all_reduce(torch.tensor([int(flag)], device=_device), "max").item())


def gather_to_main(value) -> list | None:
    """Every rank's `value` (any picklable object), in rank order, on rank 0; None on the other ranks.
    [value] in one process."""
    if not is_distributed():
        return [value]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank. DDP syncs them at the start of
    each training forward, so after the last step of an epoch each rank has updated them with its own
    batch; evaluating rank 0's buffers evaluates exactly the model that rank 0 saves."""
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


# -- the model and the data -------------------------------------------------------------------------------


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model in DistributedDataParallel (gradients averaged over the ranks during backward, rank 0's
    weights broadcast once here); the model itself in one process."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def map_shards(fn: Callable[[torch.Tensor], torch.Tensor], items: torch.Tensor) -> torch.Tensor:
    """fn over this rank's contiguous share of `items`, the results of all ranks concatenated in order
    on every rank: each item is computed exactly once, and every rank gets the whole result (the same
    tensor, so metrics computed from it agree to the bit). fn(items) in one process.

    fn must return a CPU tensor with one row per item; shares differ in length by at most one."""
    if not is_distributed():
        return fn(items)
    world, me = world_size(), rank()
    start, end = len(items) * me // world, len(items) * (me + 1) // world
    part = fn(items[start:end]) if end > start else None  # fewer items than ranks: some have none
    parts: list[torch.Tensor | None] = [None] * world
    dist.all_gather_object(parts, part)
    return torch.cat([p for p in parts if p is not None])


# -- logging ----------------------------------------------------------------------------------------------


def quiet_other_ranks() -> None:
    """On ranks other than 0: no log file (Hydra opened the run directory's train.log in every process;
    rank 0 writes it) and only warnings and errors on the console, so that the run logs once."""
    if launched_world_size() <= 1 or launched_rank() == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)
