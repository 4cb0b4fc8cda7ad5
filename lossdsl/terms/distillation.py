"""The distillation term: the student's logits [N, C, ...] and the teacher's, from ``teacher=``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..functional.distillation import kd_elementwise
from ..functional.plan import compute_dtype
from ..spec import Term
from .base import TermInputs, TermModule, shape_text


@dataclass
class KDInputs(TermInputs):
    x: Tensor  # the student's logits in the computation dtype
    teacher: Tensor  # the teacher's logits, detached, same shape and dtype


class KDTerm(TermModule):
    reads = {"teacher": "the teacher's logits, shaped like the input"}

    def __init__(self, term: Term, label: str, check_values: bool, distributed: bool = True) -> None:
        super().__init__(term, label, check_values, distributed)
        self.temperature = float(term.loss.T)

    def prepare(self, input: Tensor, target: Any, teacher: Any) -> KDInputs:
        # The target is not read: it belongs to the other terms of the sum (or is left out).
        if not isinstance(input, Tensor) or not input.is_floating_point():
            got = type(input).__name__ if not isinstance(input, Tensor) else str(input.dtype)
            raise self.fail(f"input must be a floating-point tensor of logits, got {got}")
        if input.dim() < 2 or input.shape[1] == 0:
            raise self.fail(
                f"kd compares class distributions along dimension 1 and needs logits of shape "
                f"[N, C, ...]; got {shape_text(input)}"
            )
        if not isinstance(teacher, Tensor) or not teacher.is_floating_point():
            got = type(teacher).__name__ if not isinstance(teacher, Tensor) else str(teacher.dtype)
            raise self.fail(f"teacher= must be a floating-point tensor of logits, got {got}")
        if teacher.shape != input.shape:
            raise self.fail(
                f"teacher= logits of shape {shape_text(teacher)} do not match the student's "
                f"{shape_text(input)}",
                hint="the teacher must score the same classes at the same positions",
            )
        if teacher.device != input.device:
            raise self.fail(f"teacher= is on {teacher.device} but the input is on {input.device}")
        dtype = compute_dtype(input)
        teacher = teacher.detach().to(dtype)
        self.check_finite(teacher, "teacher= logits")
        return KDInputs(x=input.to(dtype), teacher=teacher)

    def unreduced_shape(self, inputs: KDInputs) -> torch.Size:
        return torch.Size((inputs.x.shape[0], *inputs.x.shape[2:]))

    def compute(self, inputs: KDInputs) -> Tensor:
        loss = kd_elementwise(inputs.x, inputs.teacher, self.temperature)
        if inputs.weight is not None:
            loss = loss * inputs.weight
        return self.reduce(loss, inputs)
