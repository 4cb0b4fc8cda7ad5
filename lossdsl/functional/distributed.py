"""Statistics summed over the process group, so N processes with a slice each see the whole batch.

Used for GHM-C's bin counts (and, with multi-task weighting, task indicators). One ``all_reduce``
per call, on the device, without a host synchronisation; a no-op when torch.distributed is not
initialised. Only training-mode calls synchronise (``collectives_allowed``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collectives_allowed(distributed: bool, training: bool) -> bool:
    """Whether a loss may call a collective now (SPEC 4b): asked for, and in training mode, where
    every rank calls the loss each step as DDP requires of the model. A loss in eval mode is often
    computed on one rank only (a validation loss on the main process): a collective there would
    wait for ranks that never come, until the group's timeout."""
    return distributed and training


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


class _AverageGradients(torch.autograd.Function):
    """Identity forward; backward averages the gradients of all inputs over the process group in
    one all_reduce (SPEC 4b: learnable task weights stay identical on every rank)."""

    @staticmethod
    def forward(ctx, *tensors):  # type: ignore[override]
        return tuple(tensor.view_as(tensor) for tensor in tensors)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        flat = torch.stack([grad.reshape(()) for grad in grads])
        averaged = mean_over_processes(flat)
        return tuple(averaged[i].reshape(grad.shape) for i, grad in enumerate(grads))


def with_gradients_averaged(*scalars: Tensor) -> tuple[Tensor, ...]:
    """The 0-d ``scalars`` unchanged, but their gradients averaged over the process group when
    torch.distributed is initialised. Inside a DDP-wrapped module DDP then averages identical
    gradients again, which changes nothing; outside one, this is the only averaging."""
    if not is_distributed():
        return scalars
    return _AverageGradients.apply(*scalars)
