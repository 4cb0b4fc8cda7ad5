"""Box and distribution losses of a detector's regression branch (SPEC "Detection losses").

They have no probability for a block to act on; they compose in sums and multi-task dictionaries:
``{cls: varifocal(), box: 2 * giou(), dist: 0.25 * dfl()}``. The formulas are in
``lossdsl.functional.boxes`` and ``lossdsl.functional.dfl``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, Strict

from .base import register
from .regression import RegressionLoss

BoxEps = Annotated[float, Strict(), Field(gt=0, le=1, description="added to every denominator (union, "
                                         "enclosing area, diagonal), as torchvision's eps")]


class BoxLoss(RegressionLoss):
    """An IoU-family loss on boxes ``[..., 4]`` as ``(x1, y1, x2, y2)``, per box."""

    # Which formula of lossdsl.functional.boxes the name computes.
    formula: ClassVar[str] = ""


@register
class IoU(BoxLoss):
    """``1 - IoU`` per box, ``IoU = I / (U + eps)``. mmdetection ``IoULoss(mode='linear')`` (its
    default mode is ``log``); torchvision's ``_loss_inter_union``."""

    kind: Literal["iou"] = "iou"
    eps: BoxEps = 1e-7
    formula = "iou"
    equivalents = (
        "mmdet IoULoss(mode='linear', eps=1e-7) (its default mode is log)",
        '1 - torchvision.ops.box_iou, per aligned pair',
    )
    targets = 'target boxes [..., 4] shaped like the predictions'
    summary = "1 - IoU of predicted and target boxes (x1, y1, x2, y2)"
    paper = "Yu et al. 2016, UnitBox; mmdetection IoULoss(mode='linear')"


@register
class GIoU(BoxLoss):
    """Generalized IoU loss ``1 - IoU + (C - U) / (C + eps)``, ``C`` the enclosing box's area
    (Rezatofighi et al. 2019). torchvision ``generalized_box_iou_loss``; mmdetection ``GIoULoss``."""

    kind: Literal["giou"] = "giou"
    eps: BoxEps = 1e-7
    formula = "giou"
    equivalents = (
        'torchvision.ops.generalized_box_iou_loss(p, t)',
        'mmdet GIoULoss()',
    )
    targets = 'target boxes [..., 4] shaped like the predictions'
    summary = "generalized IoU loss: 1 - IoU + (C - U) / C"
    paper = "Rezatofighi et al. 2019, Generalized Intersection over Union"


@register
class DIoU(BoxLoss):
    """Distance IoU loss ``1 - IoU + rho^2 / (c^2 + eps)``, ``rho`` the distance of the centres, ``c``
    the enclosing box's diagonal (Zheng et al. 2020). torchvision ``distance_box_iou_loss``."""

    kind: Literal["diou"] = "diou"
    eps: BoxEps = 1e-7
    formula = "diou"
    equivalents = (
        'torchvision.ops.distance_box_iou_loss(p, t)',
        'mmdet DIoULoss()',
    )
    targets = 'target boxes [..., 4] shaped like the predictions'
    summary = "distance IoU loss: 1 - IoU + centre distance^2 / enclosing diagonal^2"
    paper = "Zheng et al. 2020, Distance-IoU Loss"


@register
class CIoU(BoxLoss):
    """Complete IoU loss ``diou + alpha v``, ``v = 4/pi^2 (atan(wg/hg) - atan(w/h))^2``,
    ``alpha = v / (1 - IoU + v + eps)`` without gradient, at every IoU (Zheng et al. 2020).
    torchvision ``complete_box_iou_loss``; mmdetection ``CIoULoss`` adds ``alpha v`` only above IoU
    0.5. Finite for degenerate boxes, where torchvision gives NaN."""

    kind: Literal["ciou"] = "ciou"
    eps: BoxEps = 1e-7
    formula = "ciou"
    equivalents = (
        'torchvision.ops.complete_box_iou_loss(p, t)',
        'mmdet CIoULoss() (adds the aspect term above IoU 0.5 only)',
    )
    targets = 'target boxes [..., 4] shaped like the predictions'
    summary = "complete IoU loss: diou plus an aspect-ratio term"
    paper = "Zheng et al. 2020, Distance-IoU Loss (CIoU)"


@register
class DFL(RegressionLoss):
    """Distribution Focal Loss (Li et al. 2020, GFL): logits ``[..., n + 1]`` over the distances
    ``0..n`` (last dimension), target ``y`` in ``[0, n]`` of shape ``[...]``:
    ``(y_r - y) ce(x, y_l) + (y - y_l) ce(x, y_r)``, ``y_l = floor(y)``, ``y_r = y_l + 1`` (``y = n``:
    all the weight on ``n``). mmdetection ``DistributionFocalLoss``. Part of the box-regression
    branch: a regression term for ``uncertainty`` and ``pos_mean``."""

    kind: Literal["dfl"] = "dfl"
    equivalents = (
        'mmdet DistributionFocalLoss()',
    )
    targets = 'distances [...] in [0, n] for logits [..., n + 1]'
    summary = "distribution focal loss over the integer distances 0..n of a box edge (GFL)"
    paper = "Li et al. 2020, Generalized Focal Loss; mmdetection DistributionFocalLoss"
