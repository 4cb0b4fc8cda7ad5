"""Regression losses as per-element tensors."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def regression_elementwise(kind: str, x: Tensor, y: Tensor, beta: float = 1.0) -> Tensor:
    if kind == "mse":
        return F.mse_loss(x, y, reduction="none")
    if kind == "l1":
        return F.l1_loss(x, y, reduction="none")
    if kind == "smooth_l1":
        return F.smooth_l1_loss(x, y, reduction="none", beta=beta)
    raise ValueError(f"not a regression loss: {kind}")
