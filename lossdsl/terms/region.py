"""Region terms: a whole mask per sample and class (tversky, dice, jaccard, gdice, lovasz, and
plug-ins that bring a region function of their own).

Inputs are logits ``[N, C, d1, ...]`` with targets as class indices ``[N, d1, ...]`` (positions equal
to ``ignore_index`` left out), probabilities (softmax head) or masks (sigmoid head) shaped like the
logits. The probabilities come from the logits with ignored positions zeroed first, so nothing of an
ignored logit (inf, NaN) reaches the value or the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..catalogue.region import GDice, Lovasz, RegionLoss, RegionRatio, Tversky
from ..functional.plan import compute_dtype
from ..functional.region import (
    dice,
    generalized_dice,
    lovasz_hinge,
    lovasz_softmax,
    mean_over_counted,
    region_stats,
    tversky,
)
from ..functional.targets import index_to_one_hot, zero_ignored
from ..spec import Term
from .base import TermInputs, TermModule, shape_of, shape_text


@dataclass
class RegionInputs(TermInputs):
    x: Tensor  # logits in the computation dtype (RegionTerm.logits zeroes the ignored positions)
    target: Tensor  # long class indices [N, d1, ...], or probabilities / masks shaped like x
    valid: Tensor | None  # bool [N, 1, d1, ...]: the positions that count (None: all of them)


class RegionTerm(TermModule):
    """One region loss; the per-(sample, class) values are reduced by the term's reduction."""

    accepts_weight = False

    def __init__(self, term: Term, label: str, check_values: bool, distributed: bool = True) -> None:
        super().__init__(term, label, check_values, distributed)
        node: RegionLoss = term.loss
        self.node = node
        self.head = node.head
        self.ignore_index = node.ignore_index
        self.include_background = node.include_background
        self.batch = getattr(node, "batch", False)
        self.class_values("class_weight", node.weight)
        # Set by the compiled loss when an element term of the same sum computes log_softmax too.
        self.shared_log_softmax = False
        # What to compute, as plain values read once here (forward reads no pydantic model: they do
        # not trace under torch.compile).
        if isinstance(node, Lovasz):
            self.formula = "lovasz"
            self.options = {"per_image": node.per_image, "classes": node.classes}
        elif not isinstance(node, RegionRatio) or type(node).region is not RegionLoss.region:
            self.formula = "plugin"
            self.options = {}
        elif isinstance(node, Tversky):
            self.formula = "tversky"
            self.options = {name: getattr(node, name) for name in ("alpha", "beta", "gamma", "smooth")}
        elif isinstance(node, GDice):
            self.formula = "gdice"
            self.options = {"weighting": node.weighting, "smooth": node.smooth}
        else:  # dice that is not a Tversky special case (squared or log); the others were expanded
            self.formula = "dice"
            self.options = {"smooth": node.smooth, "squared": node.squared, "log": node.log}

    # -- inputs
    def prepare(self, input: Tensor, target: Tensor) -> RegionInputs:
        self.check_tensors(input, target)
        if input.dim() < 2 or input.shape[1] == 0:
            raise self.fail(
                f"a region loss needs logits of shape [N, C, d1, ...] with at least one class; got "
                f"{shape_text(input)}"
            )
        classes = input.shape[1]
        if not self.include_background and classes < 2:
            raise self.fail(
                f"include_background=false leaves no class of the {classes} in {shape_text(input)}"
            )
        if self.head == "softmax":
            self.check_softmax_classes(input)
        self._check_weight(classes)
        dtype = compute_dtype(input)
        index_shape = (input.shape[0], *input.shape[2:])
        integer = not target.is_floating_point() and target.dtype != torch.bool
        valid = None
        if tuple(target.shape) == index_shape and integer:
            target, nothing_ignored = self.class_indices(target, classes, self.ignore_index)
            if not nothing_ignored:
                valid = (target != self.ignore_index).unsqueeze(1)
        elif target.shape == input.shape:
            target = target.to(dtype)
            self.check_probabilities(target, "masks" if self.head == "sigmoid" else "probability targets")
        else:
            raise self.fail(
                f"target shape {shape_text(target)} does not fit input shape {shape_text(input)}; "
                f"expected {shape_of(index_shape)} (integer class indices) or {shape_text(input)} "
                f"({'masks' if self.head == 'sigmoid' else 'probabilities'})"
            )
        return RegionInputs(x=input.to(dtype), target=target, valid=valid)

    def _check_weight(self, classes: int) -> None:
        weight = self.class_weight
        if weight is None:
            return
        counted = classes if self.include_background else classes - 1
        if weight.numel() not in (classes, counted):
            raise self.fail(
                f"weight has {weight.numel()} values but the input has {classes} classes"
                + ("" if self.include_background else f" ({counted} without the background)")
            )

    def unreduced_shape(self, inputs: RegionInputs) -> torch.Size:
        n, classes = inputs.x.shape[:2]
        counted = classes if self.include_background else classes - 1
        if self.formula == "gdice":
            return torch.Size(() if self.batch else (n,))
        if self.formula == "lovasz":
            return torch.Size((n, counted) if self.options["per_image"] else (counted,))
        return torch.Size((counted,) if self.batch else (n, counted))

    # -- computation
    def logits(self, inputs: RegionInputs) -> Tensor:
        """The logits with ignored positions zeroed, so that nothing of an ignored logit (inf, NaN)
        reaches the value or the gradient; shared with the other terms of the call that need them."""
        if inputs.valid is None:
            return inputs.x
        if self.shared_log_softmax and inputs.shared is not None:
            return inputs.shared.sanitised(inputs.x, inputs.valid, self.ignore_index)
        return zero_ignored(inputs.x, inputs.valid)

    def shared_log_probabilities(self, inputs: RegionInputs) -> Tensor | None:
        """The ``log_softmax`` a cross-entropy term of the call computes too, or None."""
        if self.head == "sigmoid" or not self.shared_log_softmax or inputs.shared is None:
            return None
        return inputs.shared.log_softmax(self.logits(inputs), self.ignore_index, inputs.valid is not None)

    def probabilities(self, inputs: RegionInputs) -> Tensor:
        x = self.logits(inputs)
        if self.head == "sigmoid":
            return torch.sigmoid(x)
        if self.shared_log_softmax and inputs.shared is not None:
            return inputs.shared.softmax(x, self.ignore_index, inputs.valid is not None)
        return torch.softmax(x, dim=1)

    def dense_target(self, inputs: RegionInputs) -> Tensor:
        if inputs.target.is_floating_point():
            return inputs.target
        one_hot, _ = index_to_one_hot(inputs.target, inputs.x.shape[1], self.ignore_index, inputs.x.dtype)
        return one_hot

    def per_class(self, inputs: RegionInputs) -> tuple[Tensor, Tensor | None]:
        """The loss per sample and class (per sample for gdice), and which rows count (lovasz)."""
        if self.formula == "lovasz":
            y = self.dense_target(inputs)
            if self.head == "sigmoid":
                loss, counted = lovasz_hinge(self.logits(inputs), y, inputs.valid, **self.options)
            else:
                loss, counted = lovasz_softmax(self.probabilities(inputs), y, inputs.valid, **self.options)
            return self._without_background(loss), self._without_background(counted)
        if self.formula == "plugin":
            return self._plugin(inputs), None
        squared = self.options.get("squared", False)
        log_p = self.shared_log_probabilities(inputs)
        stats = region_stats(self.probabilities(inputs) if log_p is None else log_p, inputs.target,
                             inputs.valid, batch=self.batch, powers=(2,) if squared else (1,),
                             log=log_p is not None)
        if not self.include_background:
            stats = stats.select(slice(1, None))
        function = {"tversky": tversky, "gdice": generalized_dice, "dice": dice}[self.formula]
        return function(stats, **self.options), None

    def _plugin(self, inputs: RegionInputs) -> Tensor:
        """A registered region loss's own function on the whole mask: probabilities and dense targets
        ``[N, C, d1, ...]`` (ignored positions 0 in both) and the mask of the positions that count."""
        p = self.probabilities(inputs)
        y = self.dense_target(inputs)
        if inputs.valid is not None:
            p, y = zero_ignored(p, inputs.valid), zero_ignored(y, inputs.valid)
        function = f"{self.node.kind_name()}.region()"
        value = self.plugin_output(self.node.region(p, y, inputs.valid), function, p.shape[:2],
                                   "sample and class", like=p)
        return self._without_background(value)

    def _without_background(self, value: Tensor) -> Tensor:
        return value if self.include_background else value[..., 1:]

    def _weighted(self, value: Tensor, like: Tensor) -> Tensor:
        weight = self.constant("class_weight", like)
        if weight is None or self.formula == "gdice":
            return value
        if weight.numel() == like.shape[1] and not self.include_background:
            weight = weight[1:]
        return value * weight

    def compute(self, inputs: RegionInputs) -> Tensor:
        value, counted = self.per_class(inputs)
        value = self._weighted(value, inputs.x)
        if self.reduction_of(inputs) == "none":
            return value
        n = inputs.x.shape[0]
        if counted is not None and self.reduction_of(inputs) == "mean" and inputs.avg_factor is None:
            return mean_over_counted(value, counted)  # Berman's mean over the classes that count
        return self.reduce_sum(value.sum(), inputs, batch_size=n, count=value.numel())


__all__ = ["RegionInputs", "RegionTerm"]
