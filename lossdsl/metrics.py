"""Metrics that multi-task weighting needs, as tensors on the device (no host synchronisation).

``hamming_loss`` and ``accuracy`` follow scikit-learn's definitions (``sklearn.metrics``), sample
weights included, so ``dtp`` weighs tasks by the same numbers a user would log.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import LossInputError


def _as_tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else torch.as_tensor(value)


def _weights(sample_weight: Any, n: int, like: Tensor) -> Tensor | None:
    if sample_weight is None:
        return None
    weight = _as_tensor(sample_weight).to(device=like.device, dtype=torch.float64).reshape(-1)
    if weight.numel() != n:
        raise LossInputError(f"sample_weight has {weight.numel()} values for {n} samples")
    return weight


def hamming_loss(y_true: Any, y_pred: Any, sample_weight: Any = None) -> Tensor:
    """The fraction of labels that differ, averaged over samples (weighted by ``sample_weight``).

    ``y_true`` and ``y_pred`` are label indicators ``[N, L]`` (or labels ``[N]``). Equal to
    ``sklearn.metrics.hamming_loss``: ``sum_i w_i d_i / (L sum_i w_i)``, ``d_i`` the number of
    differing labels of sample ``i``.
    """
    truth, pred = _as_tensor(y_true), _as_tensor(y_pred)
    if truth.shape != pred.shape:
        raise LossInputError(
            f"y_true and y_pred must have the same shape, got {list(truth.shape)} and {list(pred.shape)}"
        )
    if truth.dim() == 0:
        raise LossInputError("hamming_loss needs at least one sample")
    n = truth.shape[0]
    labels = truth[0].numel() if truth.dim() > 1 else 1
    differing = (truth != pred.to(truth.device)).reshape(n, -1).sum(dim=1).to(torch.float64)
    weight = _weights(sample_weight, n, truth)
    if weight is None:
        return differing.sum() / (n * labels)
    return (weight * differing).sum() / (labels * weight.sum())


def accuracy(y_true: Any, y_pred: Any, sample_weight: Any = None) -> Tensor:
    """The (weighted) fraction of samples whose label, or whole label set, is predicted exactly.

    Equal to ``sklearn.metrics.accuracy_score`` (subset accuracy for indicator matrices).
    """
    truth, pred = _as_tensor(y_true), _as_tensor(y_pred)
    if truth.shape != pred.shape:
        raise LossInputError(
            f"y_true and y_pred must have the same shape, got {list(truth.shape)} and {list(pred.shape)}"
        )
    n = truth.shape[0] if truth.dim() else 1
    exact = (truth == pred.to(truth.device)).reshape(n, -1).all(dim=1).to(torch.float64)
    weight = _weights(sample_weight, n, truth)
    if weight is None:
        return exact.mean()
    return (weight * exact).sum() / weight.sum()


def softmax_hits(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(correct, counted) positions of a softmax head: argmax over dim 1 against class indices,
    ignored positions not counted, nor indices out of range (the loss's value check reports them,
    maybe a call later). Two tensors, so they can be summed over processes."""
    valid = (target != ignore_index) & (target >= 0) & (target < logits.shape[1])
    correct = (logits.argmax(dim=1) == target) & valid
    return correct.sum().to(torch.float64), valid.sum().to(torch.float64)


def sigmoid_hits(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(agreeing, counted) elements of a sigmoid head at logit 0 (probability 1/2): the numerator
    and denominator of ``1 - hamming_loss``."""
    agree = (logits > 0) == (target > 0.5)
    counted = torch.full((), float(agree.numel()), dtype=torch.float64, device=logits.device)
    return agree.sum().to(torch.float64), counted
