"""A lossdsl expression behind mmdetection's loss calling convention (no mmdetection import needed).

mmdetection builds a head's losses from config dicts and calls them as
``loss(pred, target, weight=None, avg_factor=None, reduction_override=None)`` (and
``CrossEntropyLoss`` also with ``ignore_index=None``), with integer labels
whose background is ``num_classes`` on a sigmoid head (mmdet/models/losses/focal_loss.py), and QFL's
target as a ``(label, score)`` pair (gfocal_loss.py). ``MMDetLoss`` speaks that convention for any
single-task expression; ``lossdsl.integrations.mmengine`` registers it as ``type='LossDSL'``. The
target conventions themselves are in ``lossdsl.integrations.mmdet_targets``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from ..api import compile as compile_loss
from ..api import load, parse
from ..catalogue.base import LossNode
from ..catalogue.likelihoods import BCE
from ..catalogue.modifiers import walk
from ..catalogue.multitask import MultiTask
from ..errors import LossConfigError, LossInputError
from ..module import CompiledLoss
from ..spec import LossSpec
from ..state_updates import StateUpdates
from .mmdet_longtail import long_tail_convention
from .mmdet_targets import label_weights_as_mask, quality_targets, replace_ignore_index

# mmdetection's reductions (weight_reduce_loss): its "mean" is the mean of whatever its loss
# function returns per element, which for a lossdsl term is the term's own kind of mean (QFL's
# per-anchor mean is batchmean here; RetinaNet's mean over positives, pos_mean).
REDUCTIONS = ("none", "mean", "sum")
MEANS = ("mean", "batchmean", "pos_mean")


def with_background_label(node: LossNode) -> LossNode:
    """The node with every sigmoid likelihood reading index ``C`` as background (mmdetection's
    ``num_classes`` label), through named losses (expanded) and blocks."""
    node = node.expand()
    if isinstance(node, BCE):
        return node.model_copy(update={"background": True})
    if not node.loss_fields:
        return node
    children = {name: with_background_label(getattr(node, name)) for name in node.loss_fields}
    return node.model_copy(update=children)


def term_reduction(own: str, mmdet: str | None, avg_factor: bool) -> str | None:
    """The lossdsl reduction of a term whose expression says ``own`` when mmdetection asks for
    ``mmdet`` (None: the term's own), in a call with or without ``avg_factor``."""
    if mmdet in (None, "mean") and own in MEANS:
        # weight_reduce_loss: with avg_factor, every mean is sum / avg_factor (mean and pos_mean
        # take avg_factor as their denominator; batchmean has none to replace).
        return "mean" if avg_factor and own == "batchmean" else None
    return mmdet


def default_reduction(reduction: Any, spec: LossSpec, expression: str) -> str | None:
    """The constructor's ``reduction`` (mmdetection's default for calls without an override),
    checked against the expression's: it may say what the expression says, or fill in the
    expression's default ``mean``; it may not contradict a reduction the expression states."""
    if reduction is None:
        return None
    if reduction not in REDUCTIONS:
        raise LossConfigError(f"reduction must be one of none, mean, sum, got {reduction!r}")
    for term in spec.terms:
        agrees = term.reduction in MEANS if reduction == "mean" else term.reduction in (reduction, "mean")
        if not agrees:
            raise LossConfigError(
                f"reduction={reduction!r} contradicts the expression, whose reduction is "
                f"{term.reduction}: {expression}",
                hint="leave reduction out of the config (the expression's applies) or make them agree",
            )
    return reduction


def checked_loss_weight(loss_weight: Any) -> float:
    if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)) \
            or not math.isfinite(loss_weight):
        raise LossConfigError(f"loss_weight must be a finite number, got {loss_weight!r}")
    return float(loss_weight)


class MMDetLoss(nn.Module):
    """``dict(type='LossDSL', expr='poly(focal(), eps=1)', loss_weight=1.0)`` in an mmdetection config.

    Args:
        expr: the loss, as an expression or any form ``lossdsl.load`` accepts (not a multi-task loss:
            an mmdetection head calls each of its losses on its own).
        loss_weight: multiplies the loss, as every mmdetection loss does.
        reduction: mmdetection's default reduction for calls without ``reduction_override``
            (``none``, ``mean``, ``sum``). It may fill in the expression's default ``mean`` or say
            what the expression says (``mean`` is any mean of the expression: ``batchmean`` for
            QFL, ``pos_mean``); a contradiction is a LossConfigError. Left out, the expression's
            reduction applies.
        use_sigmoid: mmdetection heads read this key of the config to size their classifier
            (``num_classes`` outputs on a sigmoid head, ``num_classes + 1`` on a softmax head); it is
            checked against the expression's head when given, and set from it otherwise.
        check_values, distributed: as for ``lossdsl.compile``.
        return_dict: ``seesaw()`` with mmdetection's objectness channels returns its two losses as a
            dict, as mmdetection's ``SeesawLoss`` (False: their sum).
    """

    def __init__(
        self, expr: Any, loss_weight: float = 1.0, reduction: str | None = None,
        use_sigmoid: bool | None = None, check_values: bool = True, distributed: bool = True,
        return_dict: bool = True,
    ) -> None:
        super().__init__()
        spec = parse(expr) if isinstance(expr, str) else load(expr)  # a string is an expression
        if any(isinstance(term.loss, MultiTask) for term in spec.terms):
            raise LossConfigError(
                "an mmdetection head calls each of its losses on its own; give one loss per config "
                "entry (loss_cls, loss_bbox, ...) instead of a task dictionary"
            )
        self.expression = spec.to_expr()  # as written, for messages
        self.spec = LossSpec(terms=tuple(
            term.model_copy(update={"loss": with_background_label(term.loss)}) for term in spec.terms
        ))
        heads = {getattr(term.loss, "head", None) for term in self.spec.terms} - {None}
        sigmoid = heads == {"sigmoid"}
        if use_sigmoid is not None and heads and bool(use_sigmoid) != sigmoid:
            raise LossConfigError(
                f"use_sigmoid={use_sigmoid} contradicts the expression, whose head is "
                f"{'sigmoid' if sigmoid else 'softmax'}: {spec.to_expr()}"
            )
        self.use_sigmoid = sigmoid if use_sigmoid is None else bool(use_sigmoid)
        self.loss_weight = checked_loss_weight(loss_weight)
        self.reduction = default_reduction(reduction, self.spec, self.expression)
        # The values the expression's likelihoods ignore (a call-time ignore_index replaces them).
        self.ignore_values = {node.ignore_index for term in self.spec.terms for node in walk(term.loss)
                              if isinstance(getattr(node, "ignore_index", None), int)}
        self.loss = compile_loss(self.spec, check_values=check_values, distributed=distributed)
        # seesaw() and eqlv2() speak mmdetection's SeesawLoss and EQLV2Loss conventions (mmdet_longtail).
        self.long_tail = long_tail_convention(self.spec, return_dict, check_values, distributed)

    def forward(
        self, pred: Tensor, target: Tensor | tuple[Tensor, Tensor], weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None, reduction_override: str | None = None,
        ignore_index: int | None = None, **unknown: Any,
    ) -> Tensor:
        """mmdetection's call. ``ignore_index`` (as ``CrossEntropyLoss`` takes it) is ignored for
        this call in place of the expression's own value; a GHM-C term reads ``weight`` as its
        label weights (a validity mask, ``avg_factor`` unused), every other term multiplies by it."""
        if unknown:
            raise LossInputError(
                f"{', '.join(sorted(unknown))}: not an argument of this loss; it takes pred, target, "
                "weight, avg_factor, reduction_override and ignore_index",
            )
        if reduction_override is not None and reduction_override not in REDUCTIONS:
            raise LossInputError(
                f"reduction_override must be one of none, mean, sum (or None), got {reduction_override!r}"
            )
        if ignore_index is not None:
            target = replace_ignore_index(target, pred, ignore_index, self.ignore_values, self.expression)
        requested = reduction_override or self.reduction
        if self.long_tail is not None:
            return self.long_tail.forward(self, pred, target, weight, avg_factor, requested)
        if isinstance(target, (tuple, list)):
            target = quality_targets(pred, target)
        return self.loss_weight * self.call(self.loss, pred, target, weight, avg_factor, requested)

    @staticmethod
    def call(
        loss: CompiledLoss, pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Any,
        requested: str | None,
    ) -> Tensor:
        """``loss``'s forward with mmdetection's reduction ``requested`` for this call (None: the
        terms' own). Nothing is stored on the shared terms, so concurrent and nested calls of one
        module do not see each other's reductions."""
        reductions = [term_reduction(term.reduction, requested, avg_factor is not None)
                      for term in loss.spec.terms]
        updates = StateUpdates()
        with loss.value_checks.call(loss.check_values):
            prepared = loss.prepare(pred, target, weight, avg_factor, updates=updates, reductions=reductions)
        for term, inputs in zip(loss.terms, prepared):
            # (None: a term whose scheduled weight is 0 this epoch, which is not computed)
            if inputs is not None and getattr(term, "has_density", False) and inputs.weight is not None:
                label_weights_as_mask(inputs)
        value = loss.combine(prepared)
        updates.commit()
        loss._advance_step()  # a step schedule counts this successful call, as in forward
        return value

    def extra_repr(self) -> str:
        reduction = f", reduction={self.reduction!r}" if self.reduction else ""
        return f"expr={self.spec.to_expr()!r}, loss_weight={self.loss_weight:g}{reduction}"

    # mmdetection's RoI head asks these of its loss_cls (bbox_head.py): a long-tail term sizes the
    # classifier, scores the RoIs at test time and names its logged accuracies (mmdet_longtail).
    @property
    def custom_cls_channels(self) -> bool:
        return self.long_tail is not None

    custom_activation = custom_accuracy = custom_cls_channels

    def get_cls_channels(self, num_classes: int) -> int:
        return self.long_tail.cls_channels(num_classes)

    def get_activation(self, cls_score: Tensor) -> Tensor:
        return self.long_tail.activation(self.loss, cls_score)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return self.long_tail.accuracy(cls_score, labels)


__all__ = ["MMDetLoss", "term_reduction", "with_background_label"]
