"""Distribution Focal Loss (Li et al. 2020, Generalized Focal Loss), per distribution.

A box edge's distance is predicted as a categorical distribution over the integers ``0..n``
(logits ``x``, ``n + 1`` of them). A target distance ``y`` in ``[0, n]`` sits between
``y_l = floor(y)`` and ``y_r = y_l + 1``; the loss is the cross-entropy towards both neighbours,
each weighted by its nearness:

    ``(y_r - y) ce(x, y_l) + (y - y_l) ce(x, y_r)``

At ``y = n`` exactly all the weight is on ``n`` (``y_l = n - 1``, ``y_r = n``: the same value, and no
index ``n + 1``). mmdetection's ``distribution_focal_loss`` indexes ``n + 1`` there and fails, which
is why its callers clip targets to ``n - 0.01``.

As the two weights sum to 1, the loss is ``logsumexp(x) - ((y_r - y) x_l + (y - y_l) x_r)``: one
log-sum-exp and two gathers instead of two cross-entropies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .plan import compute_dtype


def distribution_focal(logits: Tensor, target: Tensor) -> Tensor:
    """Per-distribution DFL.

    Args:
        logits: ``[..., n + 1]`` scores of the distances ``0..n`` along the *last* dimension
            (mmdetection's layout: ``[N, n + 1]``, or ``[N, 4, n + 1]`` for the four edges of ``N``
            boxes), ``n >= 1``.
        target: ``[...]`` (``logits.shape[:-1]``), distances in ``[0, n]``, any real dtype.

    Returns:
        The loss ``[...]`` in the computation dtype (float32 for half precision, float64 kept),
        differentiable w.r.t. ``logits`` and, where it requires grad, ``target``
        (``dL/dy = x_l - x_r``).

    Targets outside ``[0, n]`` are the caller's value check. Here they index nothing out of range:
    the neighbours are clamped to ``0..n`` (``y_l`` to ``0..n-1``), so such a target extrapolates the
    weights linearly (a NaN target gives a NaN loss at index 0).
    """
    n = logits.shape[-1] - 1
    if n < 1:
        raise ValueError(f"distribution_focal needs at least 2 logits in the last dimension, got {n + 1}")
    dtype = compute_dtype(logits)
    x = logits.to(dtype)
    y = target.to(dtype)
    # Integer conversion before the clamp: a NaN or infinite target becomes some integer, then a
    # valid index (a float clamp would keep the NaN, and NaN -> int is out of range).
    left = torch.floor(y.detach()).long().clamp_(0, n - 1)
    neighbours = x.gather(-1, torch.stack((left, left + 1), dim=-1))
    nearness_right = y - left.to(dtype)  # y - y_l; the left neighbour weighs y_r - y = 1 - this
    mixed = torch.lerp(neighbours[..., 0], neighbours[..., 1], nearness_right)
    return torch.logsumexp(x, dim=-1) - mixed
