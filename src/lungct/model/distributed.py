"""Multi-process training with torch.distributed (torchrun): process group, DDP wrapping, samplers.

Under ``torchrun --nproc-per-node N -m lungct train ...`` every process runs the same pipeline on the
same cached data; only :func:`lungct.model.train.fit` is distributed: the model is wrapped in
DistributedDataParallel (gloo on CPU, nccl when every process has a GPU), each process draws its own
shard of every epoch from a DistributedSampler with a per-process batch of ``batch_size / N`` (same
global batch as one process), and gradients are averaged. Rank 0 writes the run folder; the other
ranks write into a throw-away folder (see :func:`lungct.cli`), so nothing is written twice.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("lungct")


def world_size() -> int:
    """Processes in this job (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(timeout_s: float = 1800) -> bool:
    """Join the process group torchrun describes in the environment; True when this is a multi-process job.

    Backend: nccl when CUDA is available, else gloo (CPU)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module) -> nn.Module:
    """The model wrapped for data-parallel training when in a process group, else unchanged."""
    if world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (checkpoints and inference use it)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any process (every process gets the same answer: they stop together)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
