"""The compiled loss: an nn.Module that adds its weighted terms."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import LossInputError
from .spec import LossSpec
from .terms.base import TermModule, is_compiling, shape_of
from .terms.shared import SharedComputations


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast disabled on ``device_type`` (nothing to disable on devices autocast
    does not know, such as meta)."""
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None and not available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


class CompiledLoss(nn.Module):
    """``loss(input, target)`` = sum over terms of ``weight * term(input, target)``.

    Attributes:
        spec: the validated ``LossSpec`` this module was built from.
        terms: one module per term (they hold constants, learnable parameters, running buffers).
        last_terms: after each call, every term's reduced value before its weight, detached, under
            the term's canonical expression (for logging; read with ``.item()`` when you log).
    """

    def __init__(self, spec: LossSpec, terms: Sequence[TermModule]) -> None:
        super().__init__()
        self.spec = spec
        self.terms = nn.ModuleList(terms)
        self.weights = [term.weight for term in spec.terms]
        self.unreduced = all(term.reduction == "none" for term in spec.terms)
        self.last_terms: dict[str, Tensor] = {}
        # Terms that need the softmax of the logits (ce, softmax blocks, softmax region losses) share
        # one log_softmax per call when there are several of them (terms.shared).
        softmax_users = [term for term in self.terms if getattr(term, "head", None) == "softmax"
                         and hasattr(term, "shared_log_softmax")]
        self.shares = len(softmax_users) > 1
        for term in softmax_users:
            term.shared_log_softmax = self.shares

    def forward(
        self, input: Tensor, target: Tensor, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None,
    ) -> Tensor:
        """``weight`` multiplies every element term's per-element loss (broadcast from ``[N]``,
        ``[N, C]`` or the full shape); ``avg_factor`` replaces the denominator of ``mean`` and
        ``pos_mean`` (mmdetection's convention: ``sum / (avg_factor + eps)``)."""
        return self.combine(self.prepare(input, target, weight, avg_factor))

    def prepare(
        self, input: Tensor, target: Tensor, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None,
    ) -> list[Any]:
        """Check and convert the inputs for every term. Nothing runs, nothing is updated: all the
        checks of a call happen before any term touches a running buffer."""
        prepared = [term.prepare_call(input, target, weight, avg_factor) for term in self.terms]
        if self.shares:
            shared = SharedComputations()
            for inputs in prepared:
                inputs.shared = shared
        if self.unreduced and len(prepared) > 1:
            self._check_same_shapes(prepared)
        return prepared

    def combine(self, prepared: list[Any]) -> Tensor:
        """Compute every term from its prepared inputs and add them with their weights.

        Autocast is switched off around the arithmetic: the inputs are already in the computation
        dtype (float32 for half precision), and an op that autocast lists (a matmul, a dot product)
        must not drop back to bfloat16 halfway through a loss.
        """
        with autocast_off(prepared[0].x.device.type):
            values = [term.compute(inputs) for term, inputs in zip(self.terms, prepared)]
        total = None
        for weight, value in zip(self.weights, values):
            weighted = value if weight == 1 else weight * value
            total = weighted if total is None else total + weighted
        if not is_compiling():
            self.last_terms = {term.label: value.detach() for term, value in zip(self.terms, values)}
        return total

    def _check_same_shapes(self, prepared: list[Any]) -> None:
        shapes = [term.unreduced_shape(inputs) for term, inputs in zip(self.terms, prepared)]
        for term, shape in zip(self.terms, shapes):
            if shape != shapes[0]:
                raise LossInputError(
                    f"reduction=none terms must have equal shapes to be added: "
                    f"{self.terms[0].label} gives {shape_of(shapes[0])}, {term.label} gives {shape_of(shape)}"
                )

    def __repr__(self) -> str:
        return f"lossdsl.compile({self.spec.to_expr()!r})"
