"""Base classes for plug-ins that bring their own computation (SPEC section 5).

A plug-in is a registered ``LossNode``. One that only rewrites into existing names defines
``expand()``; one with a computation of its own subclasses one of these and defines one method:

- ``ElementLoss.elementwise(p, y)``: a loss per element from the prepared probabilities
  (``sigmoid(x)`` or ``softmax(x, 1)``) and dense targets (index targets are turned into one-hot,
  smoothing is not applied, ignored positions are selected away afterwards);
- ``RegionLoss.region(p, y, valid)`` (``lossdsl.catalogue.region``): a loss per sample and class from
  the whole mask.

Either way the name parses, validates, prints, appears in the JSON Schema, ``lossdsl list`` and
``explain``, composes in sums and multi-task dictionaries, takes the usual reductions and compiles.
Blocks do not wrap them (they act on a likelihood's ``p_t``, which a plug-in does not declare).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import HeadChoice, IgnoreIndex, LossNode

if TYPE_CHECKING:  # the catalogue itself needs no torch
    from torch import Tensor


class ElementLoss(LossNode):
    """Base of plug-ins with an element-wise loss of their own. Subclasses declare
    ``kind: Literal["name"] = "name"``, their parameters, and ``elementwise``."""

    unwrappable = "a plug-in's own element loss has no p_t for a block to act on"

    head: HeadChoice = "sigmoid"
    ignore_index: IgnoreIndex = -100

    def elementwise(self, p: Tensor, y: Tensor) -> Tensor:
        """The loss per element: ``p`` probabilities ``[N, C, d1, ...]`` (sigmoid or softmax of the
        logits), ``y`` dense targets of the same shape (multi-hot or soft on the sigmoid head, one-hot
        or probabilities on the softmax head). Returns a floating-point tensor of ``p``'s shape on
        its device (anything else is an error naming this function); on the softmax head the loss
        of a position is its sum over classes."""
        raise NotImplementedError(f"{self.kind_name()}() defines no element-wise function")
