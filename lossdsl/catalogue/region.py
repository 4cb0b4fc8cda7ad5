"""Region losses for segmentation (SPEC "Region losses"): terms that compare a whole mask per sample
and class. They add to element losses (``ce() + dice()``, nnU-Net's default) but no block wraps them.

``dice`` (not squared, not log) and ``jaccard`` are Tversky's special cases and expand to it:
``dice(smooth=s)`` is ``tversky(alpha=0.5, beta=0.5, smooth=s/2)``, ``jaccard(smooth=s)`` is
``tversky(alpha=1, beta=1, smooth=s)``. The formulas are in ``lossdsl.functional.region``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field, Strict, model_validator

from .base import Flag, HeadChoice, IgnoreIndex, LossNode, NonNegative, described, register

if TYPE_CHECKING:  # the catalogue itself needs no torch (lossdsl check runs without it)
    from torch import Tensor

Smooth = Annotated[float, Strict(), Field(ge=0)]
SmoothTerm = Annotated[float, Strict(), Field(ge=0, description="added to the numerator and the "
                                              "denominator of the ratio (MONAI's smooth_nr = smooth_dr)")]
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

    head: HeadChoice = "softmax"
    include_background: described(Flag, "count class 0; false drops it from the loss (MONAI's "
                                        "include_background)") = True
    weight: described(ClassWeights | None, "multiplies each class's value: one per class (or one per "
                                           "class but the background)") = None
    ignore_index: IgnoreIndex = -100

    def region(self, p: Tensor, y: Tensor, valid: Tensor | None) -> Tensor:
        """A plug-in's own region function: probabilities ``p`` and dense targets ``y``
        ``[N, C, d1, ...]`` (0 at ignored positions), the mask ``valid`` ``[N, 1, d1, ...]`` of the
        positions that count (None: all), to the loss ``[N, C]`` per sample and class (a
        floating-point tensor on ``p``'s device; anything else is an error naming this function).
        The built-in names are computed by ``lossdsl.functional.region`` instead."""
        raise NotImplementedError(f"{self.kind_name()}() defines no region function")


class RegionRatio(RegionLoss):
    """Region losses from the per-(sample, class) sums, which can also pool over the batch."""

    batch: described(Flag, "sum over the whole batch per class instead of per sample (MONAI's "
                           "batch)") = False


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
    alpha: described(NonNegative, "weight of the false positives") = 0.5
    beta: described(NonNegative, "weight of the false negatives (above alpha favours recall)") = 0.5
    gamma: Annotated[float, Strict(), Field(gt=0, description="focal Tversky exponent, per class "
                                            "(1: plain Tversky)")] = 1.0
    smooth: SmoothTerm = 1e-5

    equivalents = (
        'monai.losses.TverskyLoss(alpha, beta, smooth_nr=s, smooth_dr=s, softmax=True, to_onehot_y=True)',
        "smp TverskyLoss('multiclass', alpha=a, beta=b, gamma=g) (its gamma on the class mean)",
    )
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
    smooth: SmoothTerm = 1e-5
    squared: described(Flag, "squares in the denominator, sum p^2 + sum y^2 (V-Net; MONAI's "
                             "squared_pred)") = False
    log: described(Flag, "-log of the dice ratio instead of 1 - it (smp's log_loss)") = False

    category = "region"
    equivalents = (
        'monai.losses.DiceLoss(smooth_nr=s, smooth_dr=s, softmax=True, to_onehot_y=True)',
        "smp DiceLoss('multiclass', smooth=s/2): pooled over the batch, absent classes dropped",
    )
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
    smooth: SmoothTerm = 1e-5

    equivalents = (
        'monai.losses.DiceLoss(jaccard=True, smooth_nr=2 s, smooth_dr=2 s, softmax=True, to_onehot_y=True)',
        "smp JaccardLoss('multiclass', smooth=s)",
    )
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
    weighting: described(Literal["square", "simple", "uniform"], "class weights: 1/(sum y)^2, "
                                                                 "1/sum y, or 1 (MONAI's w_type)") = "square"
    smooth: SmoothTerm = 1e-5

    @model_validator(mode="after")
    def _weights_its_own_classes(self):
        if self.weight is not None:
            raise ValueError("gdice weighs its classes itself (weighting=square, simple or uniform); "
                             "weight does not apply")
        return self

    equivalents = (
        "monai.losses.GeneralizedDiceLoss(w_type='square', softmax=True, to_onehot_y=True)",
    )
    summary = "generalized dice loss with class weights 1/(sum y)^2 (very unequal classes)"
    paper = "Sudre et al. 2017, Generalised Dice overlap as a deep learning loss function"


@register
class Lovasz(RegionLoss):
    """Lovász loss (Berman et al. 2018): a convex surrogate of ``1 - IoU`` per class.
    Lovász-Softmax on the softmax head; on the sigmoid head the Lovász hinge per class, averaged over
    classes (smp's multilabel mode flattens all classes into one problem instead). ``per_image``
    computes it per image (else over the whole batch); ``classes=present`` averages over the classes
    present in the target, ``all`` over every class. The default follows the head: ``present`` on the
    softmax head (Berman's ``lovasz_softmax``), ``all`` on the sigmoid head, so that predicting
    foreground on an empty mask costs something (Berman's binary ``lovasz_hinge``, smp's binary mode).
    ``reduction=none`` gives ``[N, C]`` with ``per_image``, else ``[C]`` (0 where a class does not
    count).

    smp ``LovaszLoss(mode, per_image)``; Berman's ``lovasz_softmax`` and ``lovasz_hinge``.
    """

    kind: Literal["lovasz"] = "lovasz"
    per_image: described(Flag, "one loss per image, then their mean (else one over the whole "
                               "batch)") = False
    classes: described(Literal["present", "all"], "average over the classes present in the target, "
                                                  "or over all") = "present"
    head_defaults = {"classes": ("all", "present")}  # the sigmoid head's binary hinge counts every class

    equivalents = (
        "smp LovaszLoss('multiclass', per_image=False)",
        "Berman et al.'s lovasz_softmax(probas, labels)",
    )
    summary = "Lovász-Softmax (or hinge) loss, a convex surrogate of 1 - IoU (segmentation)"
    paper = "Berman et al. 2018, The Lovász-Softmax loss"


def _shared(node: RegionRatio) -> dict:
    """The options every region ratio has, passed on to the expansion."""
    return {name: getattr(node, name) for name in ("head", "batch", "include_background", "weight",
                                                    "ignore_index")}
