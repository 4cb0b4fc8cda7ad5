"""Box regression terms (iou, giou, diou, ciou) and the distribution focal loss (dfl)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..functional.boxes import box_loss
from ..functional.dfl import distribution_focal
from ..functional.plan import compute_dtype
from ..spec import Term
from .base import TermInputs, TermModule, shape_text


@dataclass
class PairInputs(TermInputs):
    x: Tensor
    y: Tensor


class BoxTerm(TermModule):
    """Predicted and target boxes ``[..., 4]``; the per-box loss has shape ``[...]``."""

    def __init__(self, term: Term, label: str, check_values: bool, distributed: bool = True) -> None:
        super().__init__(term, label, check_values, distributed)
        self.formula = type(term.loss).formula
        self.eps = float(term.loss.eps)

    def prepare(self, input: Tensor, target: Tensor) -> PairInputs:
        self.check_tensors(input, target)
        if input.shape[-1] != 4:
            raise self.fail(
                f"boxes are (x1, y1, x2, y2) in the last dimension; got predictions of shape "
                f"{shape_text(input)}", hint="give boxes of shape [..., 4]",
            )
        if target.shape != input.shape:
            raise self.fail(f"target boxes of shape {shape_text(target)} do not match the predicted "
                            f"boxes' shape {shape_text(input)}")
        # A NaN or inf coordinate gives a NaN loss or a non-finite gradient; refused like bad targets.
        self.check_finite(input, "predicted boxes")
        self.check_finite(target, "target boxes")
        return PairInputs(x=input, y=target)

    def prepare_call(self, input, target, weight=None, avg_factor=None, *args, **options):  # type: ignore[override]
        # mmdetection's IoU losses take a weight per coordinate ([..., 4]) and use its mean per box.
        if isinstance(weight, Tensor) and weight.dim() and weight.shape == input.shape:
            weight = weight.mean(dim=-1)
        return super().prepare_call(input, target, weight, avg_factor, *args, **options)

    def unreduced_shape(self, inputs: PairInputs) -> torch.Size:
        return inputs.x.shape[:-1]

    def compute(self, inputs: PairInputs) -> Tensor:
        loss = box_loss(inputs.x, inputs.y, self.formula, self.eps)
        if inputs.weight is not None:
            loss = loss * inputs.weight
        return self.reduce(loss, inputs)


class DFLTerm(TermModule):
    """Logits ``[..., n + 1]`` over the distances ``0..n``, targets ``[...]`` in ``[0, n]``."""

    def prepare(self, input: Tensor, target: Tensor) -> PairInputs:
        self.check_tensors(input, target)
        if input.shape[-1] < 2:
            raise self.fail(
                f"dfl needs logits over at least two distances in the last dimension; got "
                f"{shape_text(input)}"
            )
        if tuple(target.shape) != tuple(input.shape[:-1]):
            raise self.fail(
                f"target shape {shape_text(target)} does not fit logits of shape {shape_text(input)}; "
                f"expected {shape_text(input[..., 0])} (one distance per distribution)"
            )
        if not target.is_floating_point() and target.dtype == torch.bool:
            raise self.fail(f"dfl targets are distances, got {target.dtype}")
        n = input.shape[-1] - 1
        self.check_range(target.to(compute_dtype(input)), 0, n, "dfl targets",
                         f" (the distances the {n + 1} logits cover)")
        return PairInputs(x=input, y=target)

    def unreduced_shape(self, inputs: PairInputs) -> torch.Size:
        return inputs.x.shape[:-1]

    def compute(self, inputs: PairInputs) -> Tensor:
        loss = distribution_focal(inputs.x, inputs.y)
        if inputs.weight is not None:
            loss = loss * inputs.weight
        return self.reduce(loss, inputs)
