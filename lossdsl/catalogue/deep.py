"""Deep supervision: one loss applied at every output scale of a decoder, the scales weighted.

``deep(ce() + dice(), weights=exp)`` is called with a list of predictions at decreasing resolution
(a U-Net's decoder outputs, nnU-Net's deep supervision) and one full-resolution target, resized to
each scale. The inner loss is any loss, a sum included; the weighting follows MONAI's
``DeepSupervisionLoss`` (its weight modes, its interpolation). The computation is in
``lossdsl.deep``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, Strict, WithJsonSchema, field_validator

from .base import LOSS_SCHEMA_MARKER, LossNode, described, register
from .spec import LossSpec

WEIGHT_MODES = ("exp", "two", "same")
ScaleWeight = Annotated[float, Strict(), Field(ge=0)]
# (allOf keeps the description beside the reference, which draft 7 would ignore next to a $ref)
InnerLoss = Annotated[LossSpec, WithJsonSchema({"allOf": [{LOSS_SCHEMA_MARKER: True}]})]


def scale_weights(weights: str | tuple[float, ...], levels: int) -> tuple[float, ...]:
    """The weight of each of ``levels`` scales, the full resolution first: MONAI's modes (``exp``:
    ``max(0.5^l, 0.0625)``; ``two``: 1 then 0.5; ``same``: 1), or the given list."""
    if not isinstance(weights, str):
        return tuple(weights)
    if weights == "exp":
        return tuple(max(0.5**level, 0.0625) for level in range(levels))
    if weights == "two":
        return tuple(1.0 if level == 0 else 0.5 for level in range(levels))
    return (1.0,) * levels


@register
class Deep(LossNode):
    """Deep supervision (Lee et al. 2015, Deeply-Supervised Nets; nnU-Net's halving weights):
    ``sum_l w_l L(pred_l, resize(target, pred_l))`` over predictions at decreasing resolution.

    The target is resized to each prediction's spatial size from the full-resolution original:
    ``nearest-exact`` for class indices (integer targets, as MONAI), ``area`` for probabilities and
    soft masks (float targets, so they stay probabilities). ``weights``: ``exp`` (MONAI's default,
    ``max(0.5^l, 0.0625)``), ``two`` (1, then 0.5), ``same`` (1 each), or a list with one weight per
    prediction. A single tensor instead of a list is the inner loss itself. Running statistics of
    the inner loss (GHM-C's momentum counts) are updated from the full-resolution scale only.
    Same as MONAI ``DeepSupervisionLoss(loss, weight_mode=..., weights=...)``.
    """

    kind: Literal["deep"] = "deep"
    loss: described(InnerLoss, "the loss applied at every scale (any loss, a sum included)")
    weights: described(Literal["exp", "two", "same"] | tuple[ScaleWeight, ...],
                       "weight of each scale, full resolution first: exp (1, 0.5, 0.25, ... down to "
                       "0.0625), two (1, 0.5, 0.5, ...), same (1 each), or one number per "
                       "prediction") = "exp"

    category = "deep"
    positional = "loss"
    # Holds a whole loss (a sum) rather than one node: the validator builds it as a loss.
    spec_fields: ClassVar[tuple[str, ...]] = ("loss",)
    unwrappable = "deep() supervises a whole loss at every scale; put blocks inside it"
    positives_reason: ClassVar[str] = "deep() reduces each scale with its inner loss's own reductions"
    targets = ("one full-resolution target, as the inner loss takes it; the input is a list of "
               "predictions at decreasing resolution (or one tensor)")
    summary = "deep supervision: the loss at every decoder scale, weighted exp|two|same or a list"
    paper = "Lee et al. 2015, Deeply-Supervised Nets; Isensee et al. 2021, nnU-Net"
    equivalents = (
        'monai.losses.DeepSupervisionLoss(loss, weight_mode="exp"): deep(loss, weights=exp)',
    )

    @field_validator("loss")
    @classmethod
    def _plain_inner_loss(cls, spec: LossSpec) -> LossSpec:
        for term in spec.terms:
            if term.loss.task_fields or term.loss.spec_fields:
                what = "a task dictionary" if term.loss.bare else f"{term.loss.kind_name()}()"
                raise ValueError(
                    f"{what} inside deep() is not supported: deep supervision applies one loss to "
                    "every scale of one prediction"
                )
        return spec

    @field_validator("weights")
    @classmethod
    def _some_weights(cls, weights: Any) -> Any:
        if isinstance(weights, tuple) and not weights:
            raise ValueError("weights needs one number per prediction, or exp, two or same")
        return weights

    @property
    def head(self) -> None:  # each scale's terms have their own heads; no block wraps deep()
        return None

    def expand(self) -> LossNode:
        return self.model_copy(update={"loss": self.loss.expand()})
