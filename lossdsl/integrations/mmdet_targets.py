"""mmdetection's target conventions, turned into the targets and masks a compiled term reads.

Each function follows one piece of mmdetection 3.3.0's source (mmdet/models/losses/):
``quality_targets`` gfocal_loss.py ``quality_focal_loss``, ``replace_ignore_index``
cross_entropy_loss.py ``CrossEntropyLoss.forward`` (its call-time ``ignore_index``), and
``label_weights_as_mask`` ghm_loss.py ``GHMC.forward``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import LossInputError
from ..functional.plan import compute_dtype
from ..terms.base import shape_text


def quality_targets(pred: Tensor, target: tuple[Tensor, Tensor] | list[Tensor]) -> Tensor:
    """QFL's ``(labels, scores)`` target as the dense soft-target matrix ``[N, C]``: the score at the
    label's class and 0 elsewhere. As in ``quality_focal_loss``, a label outside ``[0, C)`` (the
    background ``num_classes``, a negative label, anything larger) marks a negative: an all-zero row
    whose score is not read."""
    if len(target) != 2:
        raise LossInputError(f"a tuple target must be (labels, scores), got {len(target)} elements")
    labels, scores = target
    for name, value in (("labels", labels), ("scores", scores)):
        if not isinstance(value, Tensor):
            raise LossInputError(f"the (labels, scores) target: {name} must be a tensor, got "
                                 f"{type(value).__name__}")
    if pred.dim() != 2:
        raise LossInputError(f"a (labels, scores) target needs pred of shape [N, C], got {shape_text(pred)}")
    rows, num_classes = pred.shape
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise LossInputError(
            f"the (labels, scores) target: labels must be integer class indices, got {labels.dtype}",
            hint="the pair is (labels, scores), labels first, as mmdetection's QualityFocalLoss takes it",
        )
    if not scores.is_floating_point():
        raise LossInputError(
            f"the (labels, scores) target: scores must be floating point, got {scores.dtype}"
        )
    for name, value in (("labels", labels), ("scores", scores)):
        if tuple(value.shape) != (rows,):
            hint = None
            if value.dim() == 2 and value.shape[1] == 1 and value.shape[0] == rows:
                # mmdetection's quality_focal_loss fails on [N, 1] labels too (its positive
                # indices come out [P, 2]): one shape is accepted, and the fix is one call.
                hint = f"flatten them: {name}.view(-1)"
            raise LossInputError(
                f"the (labels, scores) target: {name} of shape {shape_text(value)} do not fit pred of "
                f"shape {shape_text(pred)}; expected [{rows}], one per row of pred", hint=hint,
            )
        if value.device != pred.device:
            raise LossInputError(f"the (labels, scores) target: {name} are on {value.device} but pred "
                                 f"is on {pred.device}")
    labels = labels.long()  # compared as integers whatever their dtype (uint8, int8, int32)
    positive = (labels >= 0) & (labels < num_classes)
    # Negatives scatter into an extra column, dropped afterwards: their scores are never read.
    column = torch.where(positive, labels, torch.full_like(labels, num_classes))
    dense = torch.zeros(rows, num_classes + 1, dtype=compute_dtype(pred), device=pred.device)
    dense = dense.scatter(1, column.unsqueeze(1), scores.to(dense.dtype).unsqueeze(1))
    return dense[:, :num_classes]


def replace_ignore_index(
    target: Any, pred: Tensor, ignore_index: Any, own: set[int], expression: str
) -> Tensor:
    """The class-index ``target`` with the call's ``ignore_index`` replaced by the expression's own
    ignore value, so that the call's value is ignored for this call (mmdetection's
    ``CrossEntropyLoss.forward(..., ignore_index=...)``). ``own`` holds the ignore values of the
    expression's likelihoods."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise LossInputError(f"ignore_index must be an integer, got {ignore_index!r}")
    if not own:
        raise LossInputError(
            f"ignore_index={ignore_index} was given, but {expression} reads no class indices with an "
            "ignore value (box and regression losses compare every element)",
        )
    if len(own) > 1:
        raise LossInputError(
            f"ignore_index={ignore_index} was given, but the terms of {expression} ignore different "
            f"values ({', '.join(str(v) for v in sorted(own))}); one call-time value cannot replace both",
            hint="give each term the ignore_index it needs in the expression instead",
        )
    if not isinstance(target, Tensor) or target.is_floating_point() or target.dtype == torch.bool \
            or target.shape == pred.shape:
        what = "a (labels, scores) pair" if not isinstance(target, Tensor) else (
            f"{target.dtype} of shape {shape_text(target)}")
        raise LossInputError(
            f"ignore_index applies to integer class-index targets, but the target is {what}",
            hint="mark ignored elements with a weight of 0 instead",
        )
    (value,) = own
    target = target.long()  # a uint8 target would wrap a negative ignore value
    return torch.where(target == ignore_index, torch.full_like(target, value), target)


def label_weights_as_mask(inputs: Any) -> None:
    """GHM-C's label weights as mmdetection's ``GHMC`` reads them: an element counts where its
    weight is > 0 (it is binned, and it is in ``tot``, the mean's denominator), every other element
    is left out; the weights multiply nothing, and ``avg_factor`` is not used. ``inputs`` are a
    sigmoid term's prepared inputs, whose call weight is already shaped to broadcast."""
    counts = inputs.weight > 0
    valid = counts if inputs.valid is None else inputs.valid & counts
    inputs.valid = valid
    inputs.count = torch.broadcast_to(valid, inputs.x.shape).sum()
    inputs.weight = inputs.avg_factor = None


__all__ = ["label_weights_as_mask", "quality_targets", "replace_ignore_index"]
