"""mmdetection's conventions for its long-tail classification losses, where they differ from the
classification form of ``seesaw()`` and ``eqlv2()`` (``MMDetLoss`` uses them when the expression is
one such term).

mmdetection's RoI head asks its ``loss_cls`` for the classifier's width (``get_cls_channels``), the
test-time scores (``get_activation``) and the logged accuracies (``get_accuracy``) when the loss sets
``custom_cls_channels`` and ``custom_activation`` (mmdet/models/roi_heads/bbox_heads/bbox_head.py).

- ``seesaw()``: mmdetection's ``SeesawLoss`` (mmdet/models/losses/seesaw_loss.py) gives the
  classifier ``C + 2`` outputs: ``C`` classes, then two objectness channels (foreground, background).
  Labels are ``0..C`` (``C`` background). The loss is a dict: ``loss_cls_classes``, seesaw over the
  foreground RoIs' class channels, and ``loss_cls_objectness``, cross-entropy of the objectness
  channels against ``label == C``, both with the RoIs' ``label_weights`` and ``avg_factor``. The
  test-time scores are the classes' softmax times the foreground probability, then the background
  probability (``C + 1`` columns). The seesaw counts are lossdsl's: they count the foreground labels
  (mmdetection's ``cum_samples`` also counts the background, in a column its loss never reads) in
  training mode only, summed over the process group.
- ``eqlv2()``: labels ``0..C`` for ``C + 1`` sigmoid channels are already the classification form.
  The test-time scores are EQLv2's own (``sigmoid``, the classes scaled by ``1 - p_bg``: the
  reference's ``get_activation``; mmdetection 3.3's ``EQLV2Loss`` does not set
  ``custom_activation``, so its RoI head applies a softmax instead). ``label_weights`` and
  ``avg_factor`` act as for every mmdetection loss (``EQLV2Loss`` overwrites both: with all-ones
  weights and ``avg_factor = N``, what the RoI head passes for sampled RoIs, the two agree).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..api import compile as compile_loss
from ..catalogue.longtail import EQLv2, Seesaw
from ..errors import LossInputError
from ..spec import LossSpec


def mmdet_accuracy(scores: Tensor, labels: Tensor) -> Tensor:
    """mmdetection's top-1 ``accuracy`` (mmdet/models/losses/accuracy.py): a percentage, 0 for no
    rows."""
    if scores.shape[0] == 0:
        return scores.new_tensor(0.0)
    return (scores.argmax(dim=1) == labels).to(scores.dtype).mean() * 100


class LongTailConvention:
    """What ``MMDetLoss`` does differently for one long-tail term."""

    extra_channels = 1  # the classifier's outputs beyond num_classes

    def cls_channels(self, num_classes: int) -> int:
        return num_classes + self.extra_channels

    def activation(self, loss: Any, cls_score: Tensor) -> Tensor:
        raise NotImplementedError

    def accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return {"acc": mmdet_accuracy(cls_score, labels)}

    def forward(self, owner: Any, pred: Tensor, target: Tensor, weight: Tensor | None,
                avg_factor: Any, requested: str | None) -> Tensor | dict[str, Tensor]:
        """The loss of one call; ``requested`` is mmdetection's reduction for it (None: the
        expression's own), passed with the call (``MMDetLoss.call``)."""
        return owner.loss_weight * owner.call(owner.loss, pred, target, weight, avg_factor, requested)


class EQLv2Convention(LongTailConvention):
    def activation(self, loss: Any, cls_score: Tensor) -> Tensor:
        return loss.predict(cls_score)


class SeesawObjectness(LongTailConvention):
    """``seesaw()`` with mmdetection's two objectness channels."""

    extra_channels = 2

    def __init__(self, return_dict: bool, check_values: bool, distributed: bool) -> None:
        self.return_dict = return_dict
        self.objectness = compile_loss("ce()", check_values=check_values, distributed=distributed)

    @staticmethod
    def split(cls_score: Tensor) -> tuple[Tensor, Tensor]:
        if cls_score.dim() != 2 or cls_score.shape[1] < 4:
            raise LossInputError(
                f"mmdetection's seesaw scores are [N, C + 2] (C classes, then 2 objectness channels); "
                f"got {list(cls_score.shape)}")
        return cls_score[:, :-2], cls_score[:, -2:]

    def activation(self, loss: Any, cls_score: Tensor) -> Tensor:
        classes, objectness = self.split(cls_score)
        scores = torch.softmax(classes, dim=-1)
        objectness = torch.softmax(objectness, dim=-1)
        return torch.cat([scores * objectness[:, :1], objectness[:, 1:]], dim=-1)

    def accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        classes, objectness = self.split(cls_score)
        foreground = labels < classes.shape[1]
        return {"acc_objectness": mmdet_accuracy(objectness, (~foreground).long()),
                "acc_classes": mmdet_accuracy(classes[foreground], labels[foreground])}

    def forward(self, owner: Any, pred: Tensor, target: Tensor, weight: Tensor | None,
                avg_factor: Any, requested: str | None) -> Tensor | dict[str, Tensor]:
        classes, objectness = self.split(pred)
        if not isinstance(target, Tensor) or target.shape != pred.shape[:1]:
            raise LossInputError(f"mmdetection's seesaw labels are [N] in 0..C (C the background) for "
                                 f"scores [N, C + 2]; got {getattr(target, 'shape', type(target).__name__)}")
        foreground = target < classes.shape[1]
        if weight is not None:
            weight = weight.reshape(target.shape)
        class_weight = None if weight is None else weight[foreground]
        loss_classes = owner.call(owner.loss, classes[foreground], target[foreground], class_weight,
                                  avg_factor, requested)
        # The objectness takes the reduction the classes take (the call's, or the expression's).
        reduction = requested or owner.loss.spec.terms[0].reduction
        loss_objectness = owner.call(self.objectness, objectness, (~foreground).long(), weight,
                                     avg_factor, reduction)
        losses = {"loss_cls_objectness": owner.loss_weight * loss_objectness,
                  "loss_cls_classes": owner.loss_weight * loss_classes}
        if self.return_dict:
            return losses
        if reduction == "none":  # per-RoI values of different lengths: only the dict holds both
            raise LossInputError("reduction='none' gives the classes' and the objectness' losses "
                                 "per RoI (foreground RoIs only for the classes): use return_dict=True")
        return losses["loss_cls_objectness"] + losses["loss_cls_classes"]


def long_tail_convention(spec: LossSpec, return_dict: bool, check_values: bool,
                         distributed: bool) -> LongTailConvention | None:
    """The convention of a one-term ``seesaw()`` or ``eqlv2()`` expression, else None."""
    if len(spec.terms) != 1:
        return None
    node = spec.terms[0].loss.expand()
    if isinstance(node, Seesaw):
        return SeesawObjectness(return_dict, check_values, distributed)
    if isinstance(node, EQLv2):
        return EQLv2Convention()
    return None
