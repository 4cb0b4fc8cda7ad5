"""Reductions of a per-element loss to what a term contributes to the sum (SPEC sections 4 and 4b)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# mmdetection's weight_reduce_loss adds float32's eps to avg_factor so that 0 (every label ignored)
# does not divide by zero; kept as is for parity.
AVG_FACTOR_EPS = torch.finfo(torch.float32).eps

# Averages a count over the process group (mmdetection's reduce_mean); identity when not distributed.
CountAverage = Callable[[Tensor], Tensor]


def safe_divide(numerator: Tensor, denominator: Tensor | float) -> Tensor:
    """``numerator / denominator`` where a zero denominator (an all-ignored batch) gives 0, not NaN.

    The denominator is swapped for 1 where it is 0 *before* dividing: the numerator is then a sum of
    zeros and both the value and its gradient are exactly 0 (``torch.where`` after the division would
    still send NaN through the backward pass).
    """
    if not isinstance(denominator, Tensor):
        return numerator / (denominator or 1.0)
    denominator = denominator.to(numerator.dtype)
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def reduce_loss(
    loss: Tensor,
    reduction: str,
    *,
    count: Tensor | float | None = None,
    positives: Tensor | int | None = None,
    batch_size: int = 1,
    avg_factor: Tensor | float | None = None,
    average_count: CountAverage | None = None,
) -> Tensor:
    """Reduce a per-element loss whose ignored positions are already 0.

    Args:
        loss: per-element (or per-position) loss.
        reduction: mean, sum, batchmean, pos_mean or none.
        count: the mean's denominator (valid elements, or the sum of class weights of valid
            positions); defaults to the number of elements.
        positives: the number of positive targets, for pos_mean.
        batch_size: N, for batchmean.
        avg_factor: the call's denominator for mean and pos_mean (mmdetection's convention).
        average_count: averages the positive count over the process group (SPEC 4b).
    """
    if reduction == "none":
        return loss
    return reduce_total(
        loss.sum(), reduction, count=loss.numel() if count is None else count,
        positives=positives, batch_size=batch_size, avg_factor=avg_factor, average_count=average_count,
    )


def reduce_total(
    total: Tensor,
    reduction: str,
    *,
    count: Tensor | float,
    positives: Tensor | int | None = None,
    batch_size: int = 1,
    avg_factor: Tensor | float | None = None,
    average_count: CountAverage | None = None,
) -> Tensor:
    """The same reductions from an already summed loss (fused kernels can sum for us)."""
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / max(batch_size, 1)
    if avg_factor is not None:  # mean and pos_mean: the caller's denominator replaces ours
        return total / (avg_factor + AVG_FACTOR_EPS)
    if reduction == "pos_mean":
        if positives is None:
            raise ValueError("pos_mean needs the number of positive targets")
        positives = torch.as_tensor(positives, dtype=total.dtype, device=total.device)
        if average_count is not None:
            positives = average_count(positives)
        return total / positives.clamp(min=1)
    return safe_divide(total, count)
