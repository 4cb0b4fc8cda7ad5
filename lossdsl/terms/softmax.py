"""Softmax-head terms: ce and everything built on it (classes compete along dimension 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..catalogue.likelihoods import CE
from ..functional.likelihoods import ce_elementwise
from ..functional.reduce import reduce_loss
from ..spec import Term
from .base import TermModule, shape_of, shape_text


@dataclass
class SoftmaxInputs:
    x: Tensor  # float32 logits [N, C, d1, ...]
    target: Tensor  # long class indices [N, d1, ...] or float32 probabilities [N, C, d1, ...]
    is_index: bool
    valid: Tensor | None  # bool [N, d1, ...] for index targets
    positives: Tensor | None  # valid positions (pos_mean only)


class SoftmaxTerm(TermModule):
    def __init__(self, term: Term, label: str, check_values: bool, base: CE) -> None:
        super().__init__(term, label, check_values)
        self.smoothing = base.smoothing
        self.ignore_index = base.ignore_index
        self.class_values("weight", base.weight)

    def prepare(self, input: Tensor, target: Tensor) -> SoftmaxInputs:
        self.check_tensors(input, target)
        if input.dim() < 2:
            raise self.fail(
                f"softmax needs logits of shape [N, C, ...]; got {shape_text(input)}",
                hint="for one logit per sample use a sigmoid loss such as bce()",
            )
        self.check_class_count("weight", self.weight, input)
        num_classes = input.shape[1]
        index_shape = (input.shape[0], *input.shape[2:])
        if tuple(target.shape) == index_shape and not target.is_floating_point():
            self.check_indices(target, num_classes, self.ignore_index)
            target = target.long()
            valid = target != self.ignore_index
            positives = valid.sum() if self.reduction == "pos_mean" else None
            return SoftmaxInputs(input.float(), target, True, valid, positives)
        if target.shape == input.shape:
            probabilities = target.float()
            self.check_probabilities(probabilities, "probability targets")
            positives = None
            if self.reduction == "pos_mean":
                positives = torch.tensor(probabilities.numel() // num_classes, device=input.device)
            return SoftmaxInputs(input.float(), probabilities, False, None, positives)
        if tuple(target.shape) == index_shape:
            raise self.fail(
                f"targets of shape {shape_text(target)} are read as class indices and must be "
                f"integers, got {target.dtype}"
            )
        raise self.fail(
            f"target shape {shape_text(target)} does not fit input shape {shape_text(input)}; expected "
            f"{shape_of(index_shape)} (integer class indices) or {shape_text(input)} (probabilities)"
        )

    def class_weight(self, x: Tensor) -> Tensor | None:
        return None if self.weight is None else self.weight.to(x.device)

    def elementwise(self, inputs: SoftmaxInputs) -> Tensor:
        return ce_elementwise(
            inputs.x, inputs.target, self.class_weight(inputs.x), self.ignore_index, self.smoothing
        )

    def mean_count(self, inputs: SoftmaxInputs) -> Tensor | int:
        """The mean's denominator, as F.cross_entropy: valid positions, or their class weights."""
        if not inputs.is_index:
            return inputs.target.numel() // inputs.x.shape[1]
        weight = self.class_weight(inputs.x)
        if weight is None:
            return inputs.valid.sum()
        safe = torch.where(inputs.valid, inputs.target, torch.zeros_like(inputs.target))
        return (weight[safe] * inputs.valid).sum()

    def compute(self, inputs: SoftmaxInputs) -> Tensor:
        loss = self.elementwise(inputs)
        return reduce_loss(
            loss, self.reduction, count=self.mean_count(inputs), positives=inputs.positives,
            batch_size=inputs.x.shape[0],
        )
