"""Regression terms (mse, l1, smooth_l1): same-shape predictions and targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..functional.plan import compute_dtype
from ..functional.regression import regression_elementwise
from ..spec import Term
from .base import TermInputs, TermModule, shape_text


@dataclass
class RegressionInputs(TermInputs):
    x: Tensor
    y: Tensor


class RegressionTerm(TermModule):
    def __init__(self, term: Term, label: str, check_values: bool, distributed: bool = True) -> None:
        super().__init__(term, label, check_values, distributed)
        self.kind = term.loss.kind_name()
        self.beta = float(getattr(term.loss, "beta", 1.0))

    def prepare(self, input: Tensor, target: Tensor) -> RegressionInputs:
        self.check_tensors(input, target)
        if target.shape != input.shape:
            raise self.fail(
                f"target shape {shape_text(target)} does not match input shape {shape_text(input)}",
                hint="regression losses compare predictions and targets element by element",
            )
        dtype = compute_dtype(input)
        return RegressionInputs(input.to(dtype), target.to(dtype))

    def unreduced_shape(self, inputs: RegressionInputs) -> torch.Size:
        return inputs.x.shape

    def compute(self, inputs: RegressionInputs) -> Tensor:
        loss = regression_elementwise(self.kind, inputs.x, inputs.y, self.beta)
        if inputs.weight is not None:
            loss = loss * inputs.weight
        return self.reduce(loss, inputs)
