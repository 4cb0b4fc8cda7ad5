"""The base likelihoods as per-element tensors, computed by torch's fused kernels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bce_elementwise(
    x: Tensor, y: Tensor, weight: Tensor | None = None, pos_weight: Tensor | None = None
) -> Tensor:
    """``-[pw*y log p + (1-y) log(1-p)] * weight`` from logits (log-sigmoid, never log(p))."""
    return F.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=pos_weight, reduction="none")


def ce_elementwise(
    x: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, smoothing: float
) -> Tensor:
    """``-sum_c q_c log p_c`` per position, class weights applied, ignored positions 0."""
    return F.cross_entropy(
        x, target, weight=weight, ignore_index=ignore_index, label_smoothing=smoothing, reduction="none"
    )
