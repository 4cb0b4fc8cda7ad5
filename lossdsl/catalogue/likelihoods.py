"""Base likelihoods: the cross-entropies every classification term is built on."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict

from .base import Background, IgnoreIndex, LossNode, Smoothing, described, register

NonNegativeNumber = Annotated[float, Strict(), Field(ge=0)]
ClassWeights = tuple[NonNegativeNumber, ...]


@register
class CE(LossNode):
    """Softmax cross-entropy, ``-sum_c q_c log p_c`` per position, ``p = softmax(x, dim=1)``.

    ``q`` is the one-hot target smoothed as ``(1-s)*onehot + s/C``, or a given probability target.
    With class weights the mean is the weighted mean of ``F.cross_entropy``; positions equal to
    ``ignore_index`` count for nothing. Exactly ``torch.nn.functional.cross_entropy``.
    """

    kind: Literal["ce"] = "ce"
    weight: described(ClassWeights | None, "one weight per class; the mean becomes the weighted mean, as "
                                          "F.cross_entropy's") = None
    ignore_index: IgnoreIndex = -100
    smoothing: described(Smoothing, "label smoothing s: the target becomes (1-s) onehot + s/C") = 0.0

    summary = "softmax cross-entropy (class weights, ignore_index, label smoothing)"
    paper = "torch.nn.functional.cross_entropy; label smoothing: Szegedy et al. 2016"
    category = "likelihood"
    equivalents = (
        'torch.nn.functional.cross_entropy(x, t, weight=w, ignore_index=i, label_smoothing=s)',
        'timm LabelSmoothingCrossEntropy(smoothing=s) (index targets), SoftTargetCrossEntropy '
        '(probabilities)',
        'mmdet CrossEntropyLoss(use_sigmoid=False, class_weight=w, ignore_index=i)',
    )

    @property
    def head(self) -> str:
        return "softmax"


@register
class BCE(LossNode):
    """Sigmoid binary cross-entropy, ``-[pw*y log p + (1-y) log(1-p)] * weight``, ``p = sigmoid(x)``.

    Each element is independent. ``weight`` and ``pos_weight`` are a scalar or one value per class,
    broadcast on the class dimension 1. Smoothing moves targets towards 1/2: ``y' = y(1-s) + s/2``.
    Integer targets of the logits' shape without dimension 1 are class indices turned into one-hot,
    with positions equal to ``ignore_index`` masked; with ``background=true`` the index ``C``
    (mmdetection's ``num_classes`` label) is an all-negative row. Exactly
    ``torch.nn.functional.binary_cross_entropy_with_logits`` (computed exactly at every logit).
    """

    kind: Literal["bce"] = "bce"
    weight: described(NonNegativeNumber | ClassWeights | None,
                      "multiplies the loss: one number, or one per class (dimension 1)") = None
    pos_weight: described(NonNegativeNumber | ClassWeights | None,
                          "weight of the positive part pw y log p: one number, or one per class") = None
    smoothing: described(Smoothing, "label smoothing s: targets move to y (1-s) + s/2") = 0.0
    ignore_index: IgnoreIndex = -100
    # Opt-in, so that a 1-based label map cannot silently lose its last class.
    background: Background = False

    summary = "sigmoid binary cross-entropy (weight, pos_weight, label smoothing)"
    paper = "torch.nn.functional.binary_cross_entropy_with_logits"
    category = "likelihood"
    equivalents = (
        'torch.nn.functional.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw)',
        'timm BinaryCrossEntropy(smoothing=s): bce(smoothing=s)',
        'smp SoftBCEWithLogitsLoss(smooth_factor=f): bce(smoothing=2 f)',
    )

    @property
    def head(self) -> str:
        return "sigmoid"


