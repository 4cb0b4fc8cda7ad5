"""Terms of plug-ins with an element-wise loss of their own (lossdsl.catalogue.plugins.ElementLoss)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..catalogue.plugins import ElementLoss
from ..functional.plan import compute_dtype
from ..functional.targets import index_to_one_hot, zero_ignored
from ..spec import Term
from .base import TermInputs, TermModule, shape_of, shape_text


@dataclass
class ElementInputs(TermInputs):
    x: Tensor  # logits in the computation dtype, ignored positions zeroed
    y: Tensor  # dense targets shaped like x
    valid: Tensor | None  # bool [N, 1, d1, ...] (index targets), None when every position counts


class ElementTerm(TermModule):
    """Probabilities and dense targets handed to the plug-in; ignored positions selected away."""

    def __init__(self, term: Term, label: str, check_values: bool, distributed: bool = True) -> None:
        super().__init__(term, label, check_values, distributed)
        self.node: ElementLoss = term.loss
        self.head = self.node.head
        self.ignore_index = self.node.ignore_index

    def prepare(self, input: Tensor, target: Tensor) -> ElementInputs:
        self.check_tensors(input, target)
        if input.dim() < 2 or input.shape[1] == 0:
            raise self.fail(f"{self.node.kind_name()}() needs logits [N, C, ...]; got {shape_text(input)}")
        if self.head == "softmax":
            self.check_softmax_classes(input)
        dtype = compute_dtype(input)
        index_shape = (input.shape[0], *input.shape[2:])
        integer = not target.is_floating_point() and target.dtype != torch.bool
        valid = None
        if tuple(target.shape) == index_shape and integer:
            index, _ = self.class_indices(target, input.shape[1], self.ignore_index)
            y, valid = index_to_one_hot(index, input.shape[1], self.ignore_index, dtype)
        elif target.shape == input.shape:
            y = target.to(dtype)
            self.check_probabilities(y)
        else:
            raise self.fail(
                f"target shape {shape_text(target)} does not fit input shape {shape_text(input)}; expected "
                f"{shape_of(index_shape)} (integer class indices) or {shape_text(input)}"
            )
        x = input.to(dtype)
        return ElementInputs(x=x if valid is None else zero_ignored(x, valid), y=y, valid=valid)

    def unreduced_shape(self, inputs: ElementInputs) -> torch.Size:
        x = inputs.x
        return x.shape if self.head == "sigmoid" else torch.Size((x.shape[0], *x.shape[2:]))

    def compute(self, inputs: ElementInputs) -> Tensor:
        p = torch.sigmoid(inputs.x) if self.head == "sigmoid" else torch.softmax(inputs.x, dim=1)
        function = f"{self.node.kind_name()}.elementwise()"
        loss = self.plugin_output(self.node.elementwise(p, inputs.y), function, p.shape, "element", like=p)
        valid = inputs.valid
        if self.head == "softmax":
            loss = loss.sum(dim=1)
            valid = None if valid is None else valid.squeeze(1)
        if valid is not None:
            loss = zero_ignored(loss, valid)
        if inputs.weight is not None:
            loss = loss * inputs.weight
        count = loss.numel() if valid is None else valid.sum() * (loss.numel() // valid.numel())
        positives = (inputs.y > 0).sum() if self.reduction == "pos_mean" else None
        return self.reduce(loss, inputs, count=count, positives=positives)
