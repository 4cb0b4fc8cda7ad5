"""The base likelihoods as per-element tensors, computed by torch's fused kernels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bce(
    x: Tensor, y: Tensor, weight: Tensor | None = None, pos_weight: Tensor | None = None,
    reduction: str = "none",
) -> Tensor:
    """``-[pw*y log p + (1-y) log(1-p)] * weight`` from logits (log-sigmoid, never log(p)).

    ``reduction`` is torch's: "none" per element, or "sum" fused into the same kernel.
    """
    return F.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=pos_weight, reduction=reduction)


def ce(
    x: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, smoothing: float,
    reduction: str = "none",
) -> Tensor:
    """``-sum_c q_c log p_c`` per position, class weights applied, ignored positions 0 ("none"),
    or their sum ("sum")."""
    return F.cross_entropy(
        x, target, weight=weight, ignore_index=ignore_index, label_smoothing=smoothing, reduction=reduction
    )
