"""A lossdsl expression behind mmdetection's loss calling convention (no mmdetection import needed).

mmdetection builds a head's losses from config dicts and calls them as
``loss(pred, target, weight=None, avg_factor=None, reduction_override=None)``, with integer labels
whose background is ``num_classes`` on a sigmoid head (mmdet/models/losses/focal_loss.py), and QFL's
target as a ``(label, score)`` pair (gfocal_loss.py). ``MMDetLoss`` speaks that convention for any
single-task expression; ``lossdsl.integrations.mmengine`` registers it as ``type='LossDSL'``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..api import compile as compile_loss
from ..api import load, parse
from ..catalogue.base import LossNode
from ..catalogue.likelihoods import BCE
from ..catalogue.modifiers import Density, walk
from ..catalogue.multitask import MultiTask
from ..errors import LossConfigError, LossInputError
from ..spec import LossSpec
from .mmdet_longtail import long_tail_convention

REDUCTIONS = (None, "none", "mean", "sum")


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


class MMDetLoss(nn.Module):
    """``dict(type='LossDSL', expr='poly(focal(), eps=1)', loss_weight=1.0)`` in an mmdetection config.

    Args:
        expr: the loss, as an expression or any form ``lossdsl.load`` accepts (not a multi-task loss:
            an mmdetection head calls each of its losses on its own).
        loss_weight: multiplies the loss, as every mmdetection loss does.
        use_sigmoid: mmdetection heads read this key of the config to size their classifier
            (``num_classes`` outputs on a sigmoid head, ``num_classes + 1`` on a softmax head); it is
            checked against the expression's head when given, and set from it otherwise.
        check_values, distributed: as for ``lossdsl.compile``.
        return_dict: ``seesaw()`` with mmdetection's objectness channels returns its two losses as a
            dict, as mmdetection's ``SeesawLoss`` (False: their sum).
    """

    def __init__(
        self, expr: Any, loss_weight: float = 1.0, use_sigmoid: bool | None = None,
        check_values: bool = True, distributed: bool = True,
        return_dict: bool = True,
    ) -> None:
        super().__init__()
        spec = parse(expr) if isinstance(expr, str) else load(expr)  # a string is an expression
        if any(isinstance(term.loss, MultiTask) for term in spec.terms):
            raise LossConfigError(
                "an mmdetection head calls each of its losses on its own; give one loss per config "
                "entry (loss_cls, loss_bbox, ...) instead of a task dictionary"
            )
        self.spec = LossSpec(terms=tuple(
            term.model_copy(update={"loss": with_background_label(term.loss)}) for term in spec.terms
        ))
        # GHM-C's label weights are a validity mask in mmdetection (GHMC.forward: anchors of weight 0
        # stay out of the bins, avg_factor is not used): a gradient-density term reads them so.
        self.density = next((node for term in self.spec.terms for node in walk(term.loss)
                             if isinstance(node, Density)), None)
        heads = {getattr(term.loss, "head", None) for term in self.spec.terms} - {None}
        sigmoid = heads == {"sigmoid"}
        if use_sigmoid is not None and heads and bool(use_sigmoid) != sigmoid:
            raise LossConfigError(
                f"use_sigmoid={use_sigmoid} contradicts the expression, whose head is "
                f"{'sigmoid' if sigmoid else 'softmax'}: {spec.to_expr()}"
            )
        self.use_sigmoid = sigmoid if use_sigmoid is None else bool(use_sigmoid)
        self.loss_weight = float(loss_weight)
        self.loss = compile_loss(self.spec, check_values=check_values, distributed=distributed)
        # seesaw() and eqlv2() speak mmdetection's SeesawLoss and EQLV2Loss conventions (mmdet_longtail).
        self.long_tail = long_tail_convention(self.spec, return_dict, check_values, distributed)

    def forward(
        self, pred: Tensor, target: Tensor | tuple[Tensor, Tensor], weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None, reduction_override: str | None = None, **_: Any,
    ) -> Tensor:
        if reduction_override not in REDUCTIONS:
            raise LossInputError(
                f"reduction_override must be one of none, mean, sum (or None), got {reduction_override!r}"
            )
        if self.long_tail is not None:
            with reductions_overridden(self.loss, reduction_override):
                return self.long_tail.forward(self, pred, target, weight, avg_factor)
        if isinstance(target, (tuple, list)):
            target = quality_targets(pred, target)
        if self.density is not None and weight is not None and not target.is_floating_point():
            ignore_index = self.density.loss.ignore_index if isinstance(self.density.loss, BCE) else -100
            target = torch.where(weight.reshape(target.shape) > 0, target, ignore_index)
            weight = avg_factor = None
        with reductions_overridden(self.loss, reduction_override):
            value = self.loss(pred, target, weight=weight, avg_factor=avg_factor)
        return self.loss_weight * value

    def extra_repr(self) -> str:
        return f"expr={self.spec.to_expr()!r}, loss_weight={self.loss_weight:g}"

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


@contextmanager
def reductions_overridden(loss: nn.Module, reduction: str | None) -> Iterator[None]:
    """Every term of ``loss`` reduced with ``reduction`` for one call (mmdetection's
    ``reduction_override``): the same modules, so running statistics stay shared."""
    if reduction is None:
        yield
        return
    saved = [term.reduction for term in loss.terms], loss.unreduced
    for term in loss.terms:
        term.reduction = reduction
    loss.unreduced = reduction == "none"
    try:
        yield
    finally:
        for term, previous in zip(loss.terms, saved[0]):
            term.reduction = previous
        loss.unreduced = saved[1]


def quality_targets(pred: Tensor, target: tuple[Tensor, Tensor] | list[Tensor]) -> Tensor:
    """QFL's ``(label, score)`` target (gfocal_loss.py) as the dense soft-target matrix: the score at
    the label class, 0 elsewhere, an all-zero row for the background label ``num_classes``."""
    if len(target) != 2:
        raise LossInputError(f"a tuple target must be (label, score), got {len(target)} elements")
    label, score = target
    num_classes = pred.shape[1]
    dense = torch.zeros(pred.shape[0], num_classes + 1, dtype=pred.dtype, device=pred.device)
    dense.scatter_(1, label.long().clamp(0, num_classes).unsqueeze(1), score.to(pred.dtype).unsqueeze(1))
    return dense[:, :num_classes]


__all__ = ["MMDetLoss", "quality_targets", "reductions_overridden", "with_background_label"]
