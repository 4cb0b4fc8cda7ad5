"""The ZLPR term: multi-label logits [N, C, ...] with same-shape targets (positives where > 0.5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..functional.plan import compute_dtype
from ..functional.zlpr import zlpr_elementwise
from .base import TermInputs, TermModule, shape_text


@dataclass
class ZLPRInputs(TermInputs):
    x: Tensor
    positive: Tensor


class ZLPRTerm(TermModule):
    def prepare(self, input: Tensor, target: Tensor) -> ZLPRInputs:
        self.check_tensors(input, target)
        if input.dim() < 2 or input.shape[1] == 0:
            raise self.fail(
                f"zlpr needs logits of shape [N, C, ...] with at least one class; got {shape_text(input)}"
            )
        if target.shape != input.shape:
            raise self.fail(
                f"target shape {shape_text(target)} does not match input shape {shape_text(input)}",
                hint="zlpr takes multi-hot targets shaped like the logits",
            )
        dtype = compute_dtype(input)
        y = target.to(dtype)
        self.check_probabilities(y)
        return ZLPRInputs(input.to(dtype), y > 0.5)

    def unreduced_shape(self, inputs: ZLPRInputs) -> torch.Size:
        return torch.Size((inputs.x.shape[0], *inputs.x.shape[2:]))

    def compute(self, inputs: ZLPRInputs) -> Tensor:
        loss = zlpr_elementwise(inputs.x, inputs.positive)
        if inputs.weight is not None:
            loss = loss * inputs.weight
        positives = inputs.positive.sum() if self.reduction == "pos_mean" else None
        return self.reduce(loss, inputs, positives=positives)
