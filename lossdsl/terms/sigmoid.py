"""Sigmoid-head terms: bce and everything built on it (each element an independent binary problem)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..catalogue.base import LossNode
from ..catalogue.detection import Varifocal
from ..catalogue.likelihoods import BCE
from ..catalogue.modifiers import Clip, Density, Modulate
from ..functional.plan import DensityStep, VarifocalStep, compute_dtype
from ..functional.sigmoid_kernel import SigmoidPlan, sigmoid_term_elementwise
from ..functional.targets import index_to_one_hot, per_class, smooth_binary
from ..running import Bounds
from ..spec import Term
from .base import TermInputs, TermModule, shape_of, shape_text


@dataclass
class SigmoidInputs(TermInputs):
    x: Tensor  # logits in the computation dtype (float32, or float64)
    y: Tensor  # targets in the same dtype, smoothed, same shape as x (they keep their autograd graph)
    valid: Tensor | None  # bool mask broadcastable to x, None when nothing is ignored
    count: Tensor | int  # number of elements that count (the mean's denominator)
    positives: Tensor | None  # number of positive targets (pos_mean only)


class SigmoidTerm(TermModule):
    """``bce`` and the blocks around it, evaluated in one pass (see functional.sigmoid_kernel).

    Args:
        base: the bce node at the bottom of the term.
        blocks: the modifier nodes above it, innermost first.
        synchronise: sum GHM-C's bin counts over the process group when distributed.
    """

    reads_background = True  # bce's background=true reads index C as an all-negative row

    def __init__(
        self, term: Term, label: str, check_values: bool, base: BCE,
        blocks: tuple[LossNode, ...] = (), synchronise: bool = True,
    ) -> None:
        super().__init__(term, label, check_values, synchronise)
        self.smoothing = base.smoothing
        self.ignore_index = base.ignore_index
        self.background = base.background
        self.class_values("weight", base.weight)
        self.class_values("pos_weight", base.pos_weight)
        steps = []
        margin = 0.0
        self.has_density = False
        quality = any(isinstance(block, Modulate) and block.focus == "quality" for block in blocks)
        for block in blocks:
            if isinstance(block, Clip):
                margin = self.parameter(block.margin)
            elif isinstance(block, Varifocal):
                steps.append(VarifocalStep(block.alpha, block.gamma, block.iou_weighted))
            elif isinstance(block, Density):
                self.has_density = True
                steps.append(DensityStep(block.bins, block.momentum, synchronise))
                if block.momentum > 0:
                    # Running state: saved in state_dict, updated in training mode only.
                    self.register_running_buffer("ghm_accumulator", torch.zeros(block.bins))
            else:
                steps.append(self.lower_block(block))
        self.plan = SigmoidPlan(margin, tuple(steps), quality)
        # The same plan with GHM-C's counts kept local, for calls that make no collective call.
        self.local_plan = SigmoidPlan(margin, tuple(
            replace(step, synchronise=False) if isinstance(step, DensityStep) else step for step in steps
        ), quality)

    def statistic_bounds(self, name: str) -> Bounds:
        return Bounds("GHM-C's running bin counts")  # its only running statistic

    def prepare(self, input: Tensor, target: Tensor) -> SigmoidInputs:
        self.check_tensors(input, target)
        self.check_class_count("weight", self.weight, input)
        self.check_class_count("pos_weight", self.pos_weight, input)
        for name in self.alpha_names:
            self.check_class_count("alpha", getattr(self, name), input)
        dtype = compute_dtype(input)
        index_shape = (input.shape[0], *input.shape[2:]) if input.dim() >= 2 else None
        if target.shape == input.shape:
            y = target.to(dtype)
            self.check_probabilities(y)
            valid, count = None, y.numel()
        elif index_shape is not None and tuple(target.shape) == index_shape:
            if target.is_floating_point() or target.dtype == torch.bool:
                raise self.fail(
                    f"targets of shape {shape_text(target)} are read as class indices and must be "
                    f"integers, got {target.dtype}"
                )
            index, _ = self.class_indices(target, input.shape[1], self.ignore_index, self.background)
            y, valid = index_to_one_hot(index, input.shape[1], self.ignore_index, dtype, self.background)
            count = valid.sum() * input.shape[1]
        else:
            expected = f"{shape_text(input)} (multi-hot or soft targets)"
            if index_shape is not None:
                expected += f" or {shape_of(index_shape)} (integer class indices)"
            raise self.fail(
                f"target shape {shape_text(target)} does not fit input shape {shape_text(input)}; "
                f"expected {expected}"
            )
        if self.has_density:
            self.check_finite(input, "GHM-C bins |p - y| per element, so the logits", valid)
        positives = None
        if self.reduction == "pos_mean":  # a positive's target is > 0 before smoothing (IoU targets too)
            positives = (y > 0).sum()
        return SigmoidInputs(input.to(dtype), smooth_binary(y, self.smoothing), valid, count, positives)

    def unreduced_shape(self, inputs: SigmoidInputs) -> torch.Size:
        return inputs.x.shape

    def constants(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        weight, pos_weight = self.constant("weight", x), self.constant("pos_weight", x)
        weight = None if weight is None else per_class(weight, x.dim())
        pos_weight = None if pos_weight is None else per_class(pos_weight, x.dim())
        return weight, pos_weight

    def call_constants(self, inputs: SigmoidInputs) -> tuple[Tensor, ...]:
        """Constants of blocks computed from each call's inputs, after those of the plan's slots
        (class_balanced's sample weights: terms.longtail.ClassBalancedSigmoidTerm)."""
        return ()

    def compute(self, inputs: SigmoidInputs) -> Tensor:
        weight, pos_weight = self.constants(inputs.x)
        if inputs.weight is not None:  # the call's weight multiplies the per-element loss, as bce's
            weight = inputs.weight if weight is None else weight * inputs.weight
        alphas = self.slot_values(inputs, inputs.x, lambda value: per_class(value, inputs.x.dim()))
        alphas = alphas + self.call_constants(inputs)  # class_balanced's weights come last
        accumulator = getattr(self, "ghm_accumulator", None)
        plan = self.plan if self.synchronises() else self.local_plan
        summed = self.reduction_of(inputs) != "none"  # the kernel sums: no per-element loss is kept
        loss, new_accumulator = sigmoid_term_elementwise(
            inputs.x, inputs.y, plan, weight, pos_weight, inputs.valid, accumulator, alphas, summed
        )
        if new_accumulator is not None and self.training:
            self.stage_update(inputs, accumulator, new_accumulator)
        if summed:
            return self.reduce_sum(loss, inputs, batch_size=inputs.x.shape[0] if inputs.x.dim() else 1,
                                   count=inputs.count, positives=inputs.positives)
        return self.reduce(loss, inputs, count=inputs.count, positives=inputs.positives)
