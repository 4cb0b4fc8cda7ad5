"""Region losses for segmentation (SPEC "Region losses"): terms that compare a whole mask per sample
and class. They add to element losses (``ce() + dice()``, nnU-Net's default) but no block wraps them.

``dice`` (not squared, not log) and ``jaccard`` are Tversky's special cases and expand to it:
``dice(smooth=s)`` is ``tversky(alpha=0.5, beta=0.5, smooth=s/2)``, ``jaccard(smooth=s)`` is
``tversky(alpha=1, beta=1, smooth=s)``. The formulas are in ``lossdsl.functional.region``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field, Strict, model_validator

from .base import Flag, Head, Integer, LossNode, NonNegative, register

if TYPE_CHECKING:  # the catalogue itself needs no torch (lossdsl check runs without it)
    from torch import Tensor

Smooth = Annotated[float, Strict(), Field(ge=0)]
ClassWeights = tuple[NonNegative, ...]


class RegionLoss(LossNode):
    """What every region loss takes: the head, per-class weights and the ignored label."""

    category = "region"
    unwrappable = (
        "a region loss compares whole masks per sample and class, while blocks act element by element "
        "(the focal form of Tversky is its gamma: tversky(gamma=0.75))"
    )
    # Why reduction=pos_mean does not apply.
    positives_reason: ClassVar[str] = (
        "a region loss gives one value per sample and class, not one per element"
    )

    head: Head = "softmax"
    include_background: Flag = True
    weight: ClassWeights | None = None
    ignore_index: Integer = -100

    def region(self, p: Tensor, y: Tensor, valid: Tensor | None) -> Tensor:
        """A plug-in's own region function: probabilities ``p`` and dense targets ``y``
        ``[N, C, d1, ...]`` (0 at ignored positions), the mask ``valid`` ``[N, 1, d1, ...]`` of the
        positions that count (None: all), to the loss ``[N, C]`` per sample and class. The built-in
        names are computed by ``lossdsl.functional.region`` instead."""
        raise NotImplementedError(f"{self.kind_name()}() defines no region function")


class RegionRatio(RegionLoss):
    """Region losses from the per-(sample, class) sums, which can also pool over the batch."""

    batch: Flag = False


@register
class Tversky(RegionRatio):
    """Tversky loss (Salehi et al. 2017), focal Tversky with ``gamma`` (Abraham and Khan 2019), per
    sample and class: ``(1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth))^gamma``, with
    ``TP = sum p y``, ``FP = sum p (1-y)``, ``FN = sum (1-p) y`` over the positions that are not
    ignored. ``alpha`` weighs false positives, ``beta`` false negatives (``beta > alpha`` favours
    recall: small structures). ``gamma`` applies per class, before the mean.

    MONAI ``TverskyLoss(alpha, beta, smooth_nr=smooth, smooth_dr=smooth)``; smp ``TverskyLoss`` (whose
    ``gamma`` applies to the class mean: the two agree for one class).
    """

    kind: Literal["tversky"] = "tversky"
    alpha: NonNegative = 0.5
    beta: NonNegative = 0.5
    gamma: Annotated[float, Strict(), Field(gt=0)] = 1.0
    smooth: Smooth = 1e-5

    summary = "Tversky loss 1 - TP / (TP + alpha FP + beta FN), focal with gamma (segmentation)"
    paper = "Salehi et al. 2017, Tversky loss; Abraham and Khan 2019, focal Tversky"


@register
class Dice(RegionRatio):
    """Soft dice loss (Milletari et al. 2016) per sample and class:
    ``1 - (2 TP + smooth) / (sum p^k + sum y^k + smooth)``, ``k = 2`` if ``squared`` (V-Net) else 1;
    ``log=true`` gives ``-log`` of the ratio. Not squared and not log, it is
    ``tversky(alpha=0.5, beta=0.5, smooth=smooth/2)`` and expands to it.

    MONAI ``DiceLoss(smooth_nr=smooth, smooth_dr=smooth, squared_pred=squared)``; smp
    ``DiceLoss(smooth=smooth/2, log_loss=log)`` (smp pools over the batch and drops absent classes).
    """

    kind: Literal["dice"] = "dice"
    smooth: Smooth = 1e-5
    squared: Flag = False
    log: Flag = False

    category = "region"
    summary = "soft dice loss 1 - 2 TP / (sum p + sum y) (segmentation, nnU-Net's with ce)"
    paper = "Milletari et al. 2016, V-Net; Sudre et al. 2017"

    def expand(self) -> LossNode:
        if self.squared or self.log:  # not a Tversky loss
            return self
        return Tversky(alpha=0.5, beta=0.5, smooth=self.smooth / 2, **_shared(self))


@register
class Jaccard(RegionRatio):
    """Soft Jaccard (IoU) loss per sample and class: ``1 - (TP + smooth) / (TP + FP + FN + smooth)``,
    which is ``tversky(alpha=1, beta=1, smooth=smooth)`` (its expansion).

    MONAI ``DiceLoss(jaccard=True)`` with twice the smoothing; smp ``JaccardLoss(smooth=smooth)``.
    """

    kind: Literal["jaccard"] = "jaccard"
    smooth: Smooth = 1e-5

    summary = "soft Jaccard (IoU) loss 1 - TP / (TP + FP + FN) (segmentation)"
    paper = "Rahman and Wang 2016, IoU loss"

    def expand(self) -> LossNode:
        return Tversky(alpha=1.0, beta=1.0, smooth=self.smooth, **_shared(self))


@register
class GDice(RegionRatio):
    """Generalized dice loss (Sudre et al. 2017), per sample:
    ``1 - (2 sum_c w_c TP_c + smooth) / (sum_c w_c (sum p_c + sum y_c) + smooth)``,
    ``w_c = 1/(sum y_c)^2`` (``square``), ``1/sum y_c`` (``simple``) or 1 (``uniform``); an infinite
    weight (a class absent from the sample) becomes the largest finite one. ``reduction=none`` gives
    ``[N]`` (a scalar per batch with ``batch=true``).

    MONAI ``GeneralizedDiceLoss(w_type=weighting, smooth_nr=smooth, smooth_dr=smooth)``.
    """

    kind: Literal["gdice"] = "gdice"
    weighting: Literal["square", "simple", "uniform"] = "square"
    smooth: Smooth = 1e-5

    @model_validator(mode="after")
    def _weights_its_own_classes(self):
        if self.weight is not None:
            raise ValueError("gdice weighs its classes itself (weighting=square, simple or uniform); "
                             "weight does not apply")
        return self

    summary = "generalized dice loss with class weights 1/(sum y)^2 (very unequal classes)"
    paper = "Sudre et al. 2017, Generalised Dice overlap as a deep learning loss function"


@register
class Lovasz(RegionLoss):
    """Lovász loss (Berman et al. 2018): a convex surrogate of ``1 - IoU`` per class.
    Lovász-Softmax on the softmax head; on the sigmoid head the Lovász hinge per class, averaged over
    classes (smp's multilabel mode flattens all classes into one problem instead). ``per_image``
    computes it per image (else over the whole batch); ``classes=present`` averages over the classes
    present in the target, ``all`` over every class. ``reduction=none`` gives ``[N, C]`` with
    ``per_image``, else ``[C]`` (0 where a class does not count).

    smp ``LovaszLoss(mode, per_image)``; Berman's ``lovasz_softmax`` and ``lovasz_hinge``.
    """

    kind: Literal["lovasz"] = "lovasz"
    per_image: Flag = False
    classes: Literal["present", "all"] = "present"

    summary = "Lovász-Softmax (or hinge) loss, a convex surrogate of 1 - IoU (segmentation)"
    paper = "Berman et al. 2018, The Lovász-Softmax loss"


def _shared(node: RegionRatio) -> dict:
    """The options every region ratio has, passed on to the expansion."""
    return {name: getattr(node, name) for name in ("head", "batch", "include_background", "weight",
                                                    "ignore_index")}
