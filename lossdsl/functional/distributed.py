"""Statistics summed over the process group, so N processes with a slice each see the whole batch.

Used for GHM-C's bin counts (and, with multi-task weighting, task indicators). One ``all_reduce``
per call, on the device, without a host synchronisation; a no-op when torch.distributed is not
initialised.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_processes(tensor: Tensor) -> Tensor:
    """The elementwise sum of ``tensor`` over every process of the default group."""
    if not is_distributed():
        return tensor
    summed = tensor.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed


def mean_over_processes(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over the processes of the default group (mmdetection's reduce_mean)."""
    if not is_distributed():
        return tensor
    return sum_over_processes(tensor) / dist.get_world_size()
