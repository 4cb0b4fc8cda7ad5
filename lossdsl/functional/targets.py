"""Targets as each head needs them: one-hot from class indices, label smoothing, ignore masks."""

from __future__ import annotations

import torch
from torch import Tensor


def index_to_one_hot(
    index: Tensor, num_classes: int, ignore_index: int, dtype: torch.dtype = torch.float32,
    background: bool = False, out_of_range_ignored: bool = False,
) -> tuple[Tensor, Tensor]:
    """Class indices ``[N, d1, ...]`` -> one-hot ``[N, C, d1, ...]`` (``dtype``) and the valid mask.

    Positions equal to ``ignore_index`` get an all-zero row; the mask (``[N, 1, d1, ...]``, bool)
    marks the positions that count. With ``background``, index ``C`` (mmdetection's ``num_classes``
    label) is an all-negative row that counts: it is scattered into an extra column, then dropped.
    ``out_of_range_ignored`` treats indices outside the range like ignored ones (for a metric on
    targets whose value check may be read a call later: scattering them would fail on the device).
    """
    index = index.long()
    columns = num_classes + 1 if background else num_classes
    valid = index != ignore_index
    if out_of_range_ignored:
        valid = valid & (index >= 0) & (index < columns)
    safe = torch.where(valid, index, torch.zeros_like(index))
    one_hot = torch.zeros((index.shape[0], columns, *index.shape[1:]), dtype=dtype, device=index.device)
    valid = valid.unsqueeze(1)
    # Scatter the mask itself (1 where valid, 0 where ignored): no second tensor of the full size.
    one_hot.scatter_(1, safe.unsqueeze(1), valid.to(dtype))
    if background:
        one_hot = one_hot[:, :num_classes]
    return one_hot, valid


def smooth_binary(y: Tensor, smoothing: float) -> Tensor:
    """Sigmoid label smoothing: ``y' = y (1 - s) + s / 2`` (each element is its own binary problem)."""
    if smoothing == 0:
        return y
    return y * (1.0 - smoothing) + 0.5 * smoothing


def per_class(values: Tensor, ndim: int) -> Tensor:
    """Shape a per-class vector ``[C]`` to broadcast on dimension 1 of an ``ndim``-dimensional tensor."""
    if values.dim() == 0 or ndim < 2:
        return values
    return values.reshape((1, -1) + (1,) * (ndim - 2))


def zero_ignored(x: Tensor, valid: Tensor) -> Tensor:
    """``x`` with 0 wherever ``valid`` (broadcastable to ``x``) is False.

    An ignored position's logits may be anything, inf and NaN included; computing on 0 there and
    selecting the result away with ``where`` keeps them out of the value and the gradient (a product
    with the mask would still send ``0 * inf = NaN`` through the backward pass).
    """
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))

