"""Rank and world helpers over ``torch.distributed`` for ``torchrun`` jobs (ROS-free).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`from_environment` joins that job (gloo on the CPU, NCCL on CUDA with one GPU per rank:
``cuda:LOCAL_RANK``). Without those variables, or with ``WORLD_SIZE=1``, everything here is a
no-op on a single process, so the trainer has one code path.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

__all__ = ['Distributed', 'from_environment', 'SINGLE', 'data_parallel', 'train_sampler']

TIMEOUT = datetime.timedelta(minutes=30)  # longest wait at a collective (data preparation on rank 0)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this object initialised the process group (and destroys it)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics, TensorBoard and progress."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per rank (``cuda:LOCAL_RANK``) when training on CUDA, else ``requested``. The GPU is made
        current (``set_device``): pinned memory and new tensors otherwise open a context on GPU 0 too."""
        if requested.type != 'cuda':
            return requested
        if self.active:
            requested = torch.device('cuda', self.local_rank)
        if requested.index is not None:
            torch.cuda.set_device(requested)
        return requested

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on every rank."""
        if not self.active:
            return bool(flag)
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def close(self) -> None:
        """Leave the job (only when this object joined it)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Distributed()


def from_environment(device_type: str) -> Distributed:
    """Join the ``torchrun`` job described by the environment, or :data:`SINGLE` without one.

    ``device_type``: ``'cuda'`` selects NCCL, anything else gloo.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return SINGLE
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    owns = False
    if not dist.is_initialized():
        backend = 'nccl' if device_type == 'cuda' else 'gloo'
        if backend == 'nccl':
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)
        owns = True
    if rank != 0:  # the other ranks log nothing but errors
        logging.getLogger('hr_depth_ros').setLevel(logging.ERROR)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, owns_group=owns)


class _Step(nn.Module):
    """The training step as one module, so that one DistributedDataParallel covers every network."""

    def __init__(self, modules: Sequence[nn.Module], step: Callable[[Any], Any]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.step = step

    def forward(self, batch: Any) -> Any:
        return self.step(batch)


def data_parallel(context: Distributed, modules: Sequence[nn.Module], step: Callable[[Any], Any],
                  device: torch.device) -> Callable[[Any], Any]:
    """``step`` (batch -> loss, info over ``modules``) under DistributedDataParallel, or ``step`` itself.

    Gradients are averaged over the ranks in ``backward``; parameters are broadcast from rank 0
    when wrapped, buffers (batch-norm statistics) at every step. ``find_unused_parameters``: the
    encoders' unused heads, the pose network under TF poses and frozen / warm-up phases take no
    gradient.
    """
    if not context.active:
        return step
    return DistributedDataParallel(_Step(modules, step), device_ids=[device.index] if device.type == 'cuda' else None,
                                   find_unused_parameters=True)


def train_sampler(context: Distributed, dataset: Any, seed: int) -> DistributedSampler | None:
    """Each rank's shard of the training samples (reshuffled per epoch by ``set_epoch``), or None."""
    if not context.active:
        return None
    return DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed)


def torchrun_command(config: Any, nproc: int, module: str) -> list[str]:
    """The ``torchrun`` command running ``python -m module`` with ``config`` as its command line on ``nproc``
    local processes (loopback rendezvous). ``module``: a command line generated from the option table (the
    caller names it: the core knows no tool)."""
    from hr_depth_ros.core.training.options import args_from_config

    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
            '-m', module, *args_from_config(config)]
