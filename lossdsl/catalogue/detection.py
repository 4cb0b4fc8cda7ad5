"""Detection losses (SPEC "Detection losses"): quality-aware classification of a one-stage head.

- ``qfocal``: GFL's Quality Focal Loss, an expansion: ``modulate(bce(), gamma=beta, focus=quality)``;
- ``varifocal``: VarifocalNet's loss, its own leaf: its weight (the target's IoU on positives, a focal
  weight on negatives) is discontinuous at ``y = 0``, which no composition of blocks expresses.

Box and distribution losses (``iou``, ``giou``, ``diou``, ``ciou``, ``dfl``) live in ``boxes.py``.
"""

from __future__ import annotations

from typing import Literal

from .base import Flag, LossNode, NonNegative, Probability, described, register
from .likelihoods import BCE
from .modifiers import Modulate


@register
class QFocal(LossNode):
    """Quality Focal Loss (Li et al. 2020, Generalized Focal Loss): ``bce(x, y) * |y - p|^beta``.

    Soft targets ``y`` in [0, 1]: the IoU of the predicted box at its label class, 0 elsewhere (a
    background anchor is an all-zero row). For hard targets it is ``modulate(bce(), gamma=beta)``, a
    focal loss without alpha. mmdetection's ``QualityFocalLoss`` averages per-anchor sums over anchors:
    that is ``reduction=batchmean`` here, or pass ``avg_factor``.
    """

    kind: Literal["qfocal"] = "qfocal"
    beta: described(NonNegative, "focusing exponent on |y - p|, the distance to the quality "
                                 "target") = 2.0

    equivalents = (
        'mmdet QualityFocalLoss(use_sigmoid=True, beta=2.0): qfocal(reduction=batchmean), targets '
        '(labels, scores) as the dense matrix',
    )
    targets = 'soft IoU targets shaped like the logits: the IoU at the label class, 0 elsewhere'
    summary = "quality focal loss bce(x, y) |y - p|^beta on soft IoU targets (GFL)"
    paper = "Li et al. 2020, Generalized Focal Loss; mmdetection QualityFocalLoss"
    category = "named"

    @property
    def head(self) -> str:
        return "sigmoid"

    def expand(self) -> LossNode:
        return Modulate(loss=BCE(), gamma=self.beta, focus="quality")


@register
class Varifocal(LossNode):
    """Varifocal Loss (Zhang et al. 2021, VarifocalNet): ``bce(x, y) * w`` on soft IoU targets, with
    ``w = y`` where ``y > 0`` (1 when ``iou_weighted=false``) and ``w = alpha p^gamma`` where ``y = 0``.

    Positives are weighted by their quality, negatives down-weighted focally; the weight carries its
    gradient w.r.t. the logits, as in mmdetection's ``varifocal_loss``. No block wraps it. mmdetection's
    default mean averages over every element, as ``mean`` here (or pass ``avg_factor``).
    """

    kind: Literal["varifocal"] = "varifocal"
    alpha: described(Probability, "weight of the negatives' focal term alpha p^gamma") = 0.75
    gamma: described(NonNegative, "focusing exponent of negatives") = 2.0
    iou_weighted: described(Flag, "weight positives by their IoU target (else by 1)") = True

    equivalents = (
        'mmdet VarifocalLoss(use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True): '
        'varifocal() (its mean is over every element too) or avg_factor',
    )
    targets = 'soft IoU targets shaped like the logits: the IoU at the label class, 0 elsewhere'
    summary = "varifocal loss: positives weighted by their IoU target, negatives by alpha p^gamma"
    paper = "Zhang et al. 2021, VarifocalNet: An IoU-aware Dense Object Detector; mmdetection VarifocalLoss"
    category = "named"
    # Blocks cannot wrap it (catalogue.modifiers.Modifier reads this).
    unwrappable = "varifocal() weighs its elements itself (IoU on positives, alpha p^gamma on negatives)"

    @property
    def head(self) -> str:
        return "sigmoid"

    def expand(self) -> LossNode:
        return self
