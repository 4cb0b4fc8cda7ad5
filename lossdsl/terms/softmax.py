"""Softmax-head terms: ce and everything built on it (classes compete along dimension 1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..catalogue.base import LossNode
from ..catalogue.likelihoods import CE
from ..catalogue.longtail import LDAM, ClassBalanced, LogitAdjust, Seesaw
from ..functional.likelihoods import ce
from ..functional.longtail import sample_weights
from ..functional.plan import ModulateStep, SampleWeightStep, compute_dtype
from ..functional.softmax_kernel import SoftmaxPlan, softmax_term_elementwise
from ..functional.targets import zero_ignored
from ..spec import Term
from .base import TermInputs, TermModule, shape_of, shape_text
from .longtail import ClassFrequency, long_tail_nodes


@dataclass
class SoftmaxInputs(TermInputs):
    x: Tensor  # logits [N, C, d1, ...] in the computation dtype (float32, or float64)
    target: Tensor  # long class indices [N, d1, ...] or probabilities [N, C, d1, ...] in x's dtype
    is_index: bool
    valid: Tensor | None  # bool [N, d1, ...] for index targets; None when none is ignored
    positives: Tensor | int | None  # valid positions (pos_mean only)
    class_balance: Tensor | None = None  # class_balanced's weight per class [C], set in compute
    # x's ignored positions are zeroed already (the logits a long-tail node shifted): the call's
    # shared zeroed logits are the unshifted ones and must not replace them (see sanitised).
    zeroed: bool = False


class SoftmaxTerm(TermModule):
    """``ce`` and the blocks around it (see functional.softmax_kernel).

    Args:
        base: the node at the bottom of the term: ``ce``, or ``ldam`` or ``seesaw`` (``ce`` on logits
            they shift).
        blocks: the modifier nodes above it, innermost first.
    """

    def __init__(
        self, term: Term, label: str, check_values: bool, base: LossNode,
        blocks: tuple[LossNode, ...] = (), distributed: bool = True,
    ) -> None:
        super().__init__(term, label, check_values, distributed)
        # Set by the compiled loss when another term of the sum needs the same log_softmax.
        self.shared_log_softmax = False
        self.head = "softmax"
        # logit_adjust, class_balanced, ldam, seesaw: counts, shifted logits, sample weights.
        long_tail = long_tail_nodes(base, blocks)
        self.frequency = ClassFrequency(long_tail, label, distributed) if long_tail else None
        # ldam's margin and seesaw's factors are the target class's: class indices only.
        self.index_targets_for = base.kind_name() if isinstance(base, (LDAM, Seesaw)) else None
        # A term with post-hoc logit adjustment predicts with the adjusted logits (loss.predict).
        self.predicts_itself = any(isinstance(node, LogitAdjust) and node.posthoc for node in long_tail)
        if not isinstance(base, CE):
            base = CE(ignore_index=base.ignore_index)
        self.smoothing = base.smoothing
        self.ignore_index = base.ignore_index
        self.class_values("weight", base.weight)
        steps = [SampleWeightStep() if isinstance(block, ClassBalanced) else self.lower_block(block)
                 for block in blocks if not isinstance(block, LogitAdjust)]
        self.plan = SoftmaxPlan(tuple(steps))
        self.only_weighs_samples = bool(steps) and all(isinstance(step, SampleWeightStep) for step in steps)
        # Focusing that weighs the non-target classes on their own (0 != gamma_neg != gamma_pos) needs
        # class indices to tell target from others; otherwise probability targets get (1-p_t)^gamma_pos.
        self.needs_indices = any(
            isinstance(s, ModulateStep) and s.gamma_neg not in (0, s.gamma_pos) for s in steps
        )

    def prepare(self, input: Tensor, target: Tensor) -> SoftmaxInputs:
        self.check_tensors(input, target)
        self.check_softmax_classes(input)
        self.check_class_count("weight", self.weight, input)
        for name in self.alpha_names:
            self.check_class_count("alpha", getattr(self, name), input)
        if self.frequency is not None:
            self.frequency.check(input)
        num_classes = input.shape[1]
        x = input.to(compute_dtype(input))
        index_shape = (input.shape[0], *input.shape[2:])
        integer = not target.is_floating_point() and target.dtype != torch.bool
        if tuple(target.shape) == index_shape and integer:
            target, nothing_ignored = self.class_indices(target, num_classes, self.ignore_index)
            valid = None if nothing_ignored else target != self.ignore_index
            positives = None
            if self.reduction == "pos_mean":
                positives = target.numel() if valid is None else valid.sum()
            return SoftmaxInputs(x, target, True, valid, positives)
        if target.shape == input.shape:
            if self.index_targets_for:
                raise self.fail(
                    f"{self.index_targets_for}() sets each position's logits by its target class and "
                    f"needs class-index targets of shape {shape_of(index_shape)}; got probabilities "
                    f"{shape_text(target)}"
                )
            if self.needs_indices:
                raise self.fail(
                    "asymmetric focusing (gamma_neg other than 0 or gamma_pos) on the softmax head "
                    f"needs class-index targets of shape {shape_of(index_shape)}; "
                    f"got probabilities {shape_text(target)}"
                )
            probabilities = target.to(x.dtype)
            self.check_probabilities(probabilities, "probability targets")
            positives = None
            if self.reduction == "pos_mean":
                positives = probabilities.numel() // num_classes  # every position has a target
            return SoftmaxInputs(x, probabilities, False, None, positives)
        if tuple(target.shape) == index_shape:
            raise self.fail(
                f"targets of shape {shape_text(target)} are read as class indices and must be "
                f"integers, got {target.dtype}"
            )
        raise self.fail(
            f"target shape {shape_text(target)} does not fit input shape {shape_text(input)}; expected "
            f"{shape_of(index_shape)} (integer class indices) or {shape_text(input)} (probabilities)"
        )

    def unreduced_shape(self, inputs: SoftmaxInputs) -> torch.Size:
        return torch.Size((inputs.x.shape[0], *inputs.x.shape[2:]))

    def class_weight(self, x: Tensor) -> Tensor | None:
        return self.constant("weight", x)

    def sanitised(self, inputs: SoftmaxInputs) -> Tensor:
        """The logits with ignored positions zeroed (see functional.targets.zero_ignored), once per
        call when other terms of the call need them too."""
        if inputs.valid is None or inputs.zeroed:
            return inputs.x
        if self.shared_log_softmax and inputs.shared is not None:
            return inputs.shared.sanitised(inputs.x, inputs.valid.unsqueeze(1), self.ignore_index)
        return zero_ignored(inputs.x, inputs.valid.unsqueeze(1))

    def shared_log_p(self, inputs: SoftmaxInputs, x: Tensor) -> Tensor | None:
        """``log_softmax`` shared with the other terms of the call (a region term on the same logits),
        or None when this term computes its own."""
        if not self.shared_log_softmax or inputs.shared is None or self.frequency is not None:
            return None  # (logits a long-tail node shifts are this term's own)
        return inputs.shared.log_softmax(x, self.ignore_index, inputs.valid is not None)

    def plain_ce(self, inputs: SoftmaxInputs, reduction: str, weight: Tensor | None = None) -> Tensor:
        """ce without blocks: torch's fused kernel (ignored positions give 0); from the shared
        log-probabilities when there are some (log_softmax of log-probabilities is themselves, so
        cross_entropy of them is the same loss; without smoothing nll_loss skips that pass).
        ``weight``: class weights instead of ce's own (class_balanced's, ``compute``)."""
        x = self.sanitised(inputs)
        weight = self.class_weight(inputs.x) if weight is None else weight
        log_p = self.shared_log_p(inputs, x)
        # ignore_index selects among class indices; torch refuses it (any but its default) with
        # probability targets, which have nothing to ignore.
        ignore_index = self.ignore_index if inputs.is_index else -100
        if log_p is None:
            return ce(x, inputs.target, weight, ignore_index, self.smoothing, reduction=reduction)
        if self.smoothing == 0 and inputs.is_index:
            return F.nll_loss(log_p, inputs.target, weight=weight, ignore_index=ignore_index,
                              reduction=reduction)
        return ce(log_p, inputs.target, weight, ignore_index, self.smoothing, reduction=reduction)

    def elementwise(self, inputs: SoftmaxInputs) -> Tensor:
        if not self.plan.steps:
            return self.plain_ce(inputs, "none")
        weights = None
        if inputs.class_balance is not None:  # class_balanced's weight of each position
            weights = sample_weights(inputs.class_balance, inputs.target, inputs.valid, inputs.is_index)
        if self.only_weighs_samples:  # class_balanced(ce()): torch's fused ce, then the weights
            return self.plain_ce(inputs, "none") * weights
        alphas = self.slot_values(inputs, inputs.x)
        if weights is not None:  # the last constant (functional.plan.SampleWeightStep)
            alphas = alphas + (weights,)
        log_p = self.shared_log_p(inputs, self.sanitised(inputs)) if self.shared_log_softmax else None
        return softmax_term_elementwise(
            inputs.x, inputs.target, inputs.valid, inputs.is_index, self.plan, self.class_weight(inputs.x),
            self.smoothing, alphas, log_p=log_p,
        )

    def mean_count(self, inputs: SoftmaxInputs) -> Tensor | int:
        """The mean's denominator, as F.cross_entropy: valid positions, or their class weights."""
        if not inputs.is_index:
            return inputs.target.numel() // inputs.x.shape[1]
        weight = self.class_weight(inputs.x)
        if inputs.valid is None:
            return inputs.target.numel() if weight is None else weight[inputs.target].sum()
        if weight is None:
            return inputs.valid.sum()
        safe = torch.where(inputs.valid, inputs.target, torch.zeros_like(inputs.target))
        return (weight[safe] * inputs.valid).sum()

    def with_class_frequency(self, inputs: SoftmaxInputs) -> SoftmaxInputs:
        """The inputs as the term's loss sees them: this call's counts (the running ones updated and
        staged), the logits shifted by logit_adjust, ldam or seesaw, class_balanced's weights."""
        frequency = self.frequency
        counts = frequency.counts(inputs.target, inputs.valid, inputs.is_index, inputs.x.shape[1], inputs)
        x = frequency.shifted_logits(self.sanitised(inputs), inputs.target, inputs.valid, counts,
                                     inputs.clock)
        return dataclasses.replace(inputs, x=x, zeroed=True,
                                   class_balance=frequency.class_weights(counts, x.dtype, inputs.clock))

    def predict(self, logits: Tensor, clock: Any = None) -> Tensor:
        """Class probabilities: ``softmax(z)``, or with post-hoc logit adjustment
        ``softmax(z - log(pi^tau + 1e-12))`` (a scheduled ``tau`` read at the loss's ``clock``)."""
        x = logits.to(compute_dtype(logits))
        adjusted = self.frequency.posthoc_logits(x, clock) if self.frequency is not None else None
        return torch.softmax(x if adjusted is None else adjusted, dim=1)

    def compute(self, inputs: SoftmaxInputs) -> Tensor:
        if self.frequency is not None:
            inputs = self.with_class_frequency(inputs)
        plain = len(self.plan.steps) == 0 and inputs.weight is None  # (dynamo cannot trace `not tuple`)
        # class_balanced(ce()) on class indices: sum_i w_(y_i) ce_i is torch's class-weighted
        # cross-entropy summed, one fused kernel (the mean still divides by the positions' count).
        balanced = (self.only_weighs_samples and inputs.is_index and inputs.weight is None
                    and self.smoothing == 0 and self.weight is None)
        if (plain or balanced) and self.reduction_of(inputs) != "none":  # torch's kernel sums for us
            total = self.plain_ce(inputs, "sum", inputs.class_balance if balanced else None)
            return self.reduce_sum(total, inputs, batch_size=inputs.x.shape[0],
                                   count=self.mean_count(inputs), positives=inputs.positives)
        loss = self.elementwise(inputs)
        if inputs.weight is not None:
            loss = loss * inputs.weight
        return self.reduce(loss, inputs, count=self.mean_count(inputs), positives=inputs.positives)
