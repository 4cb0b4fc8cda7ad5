"""Reductions of a per-element loss to what a term contributes to the sum (SPEC section 4)."""

from __future__ import annotations

import torch
from torch import Tensor


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
) -> Tensor:
    """Reduce a per-element loss whose ignored positions are already 0.

    Args:
        loss: per-element (or per-position) loss.
        reduction: mean, sum, batchmean, pos_mean or none.
        count: the mean's denominator (valid elements, or the sum of class weights of valid
            positions); defaults to the number of elements.
        positives: the number of positive targets, for pos_mean.
        batch_size: N, for batchmean.
    """
    if reduction == "none":
        return loss
    return reduce_total(
        loss.sum(), reduction, count=loss.numel() if count is None else count,
        positives=positives, batch_size=batch_size,
    )


def reduce_total(
    total: Tensor,
    reduction: str,
    *,
    count: Tensor | float,
    positives: Tensor | int | None = None,
    batch_size: int = 1,
) -> Tensor:
    """The same reductions from an already summed loss (fused kernels can sum for us)."""
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / max(batch_size, 1)
    if reduction == "pos_mean":
        if positives is None:
            raise ValueError("pos_mean needs the number of positive targets")
        if not isinstance(positives, Tensor):
            return total / max(positives, 1)
        return total / positives.to(total.dtype).clamp(min=1)
    return safe_divide(total, count)
