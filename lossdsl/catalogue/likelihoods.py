"""Base likelihoods: the cross-entropies every classification term is built on."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict

from .base import Flag, Integer, LossNode, Smoothing, register

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
    weight: ClassWeights | None = None
    ignore_index: Integer = -100
    smoothing: Smoothing = 0.0

    summary = "softmax cross-entropy (class weights, ignore_index, label smoothing)"
    paper = "torch.nn.functional.cross_entropy; label smoothing: Szegedy et al. 2016"
    category = "likelihood"

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
    weight: NonNegativeNumber | ClassWeights | None = None
    pos_weight: NonNegativeNumber | ClassWeights | None = None
    smoothing: Smoothing = 0.0
    ignore_index: Integer = -100
    # Opt-in, so that a 1-based label map cannot silently lose its last class.
    background: Flag = False

    summary = "sigmoid binary cross-entropy (weight, pos_weight, label smoothing)"
    paper = "torch.nn.functional.binary_cross_entropy_with_logits"
    category = "likelihood"

    @property
    def head(self) -> str:
        return "sigmoid"


