"""The compiled deep-supervision loss: one inner loss at every scale of a list of predictions.

``loss([p0, p1, p2], target)`` resizes the full-resolution target to each prediction and adds the
inner loss of every scale with its weight (``lossdsl.catalogue.deep``; MONAI's
``DeepSupervisionLoss``). Every scale's inputs are checked before any scale computes, as the terms
of a sum are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .catalogue.deep import Deep, scale_weights
from .clock import Clock
from .errors import LossDSLError, LossInputError
from .functional.tracing import is_compiling
from .module import CompiledLoss, LossModule
from .spec import LossSpec
from .state_updates import StateUpdates
from .terms.base import shape_of, shape_text


@dataclass
class DeepCall:
    """A call's prepared scales: the weight of each (None: one tensor, the inner loss itself)."""

    weights: tuple[float, ...] | None
    scales: list[list[Any]]


def in_scale(level: int, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``step(*args, **kwargs)`` for scale ``level``: an input error says which scale it is about."""
    try:
        return step(*args, **kwargs)
    except LossDSLError as error:
        error.reason = f"scale {level}: {error.reason}"
        error.args = (error.reason,)
        raise


def resized_target(target: Any, prediction: Tensor, level: int) -> Any:
    """The full-resolution target at ``prediction``'s spatial size: ``nearest-exact`` for class
    indices (any integer or bool target, as MONAI), ``area`` for probabilities and soft masks (so
    they stay probabilities). A target whose layout is not the prediction's is returned as it is,
    for the inner loss to refuse with its own message."""
    if not isinstance(target, Tensor) or not isinstance(prediction, Tensor) or prediction.dim() < 3:
        return target
    if target.dim() == prediction.dim() and target.shape[1] == prediction.shape[1]:
        spatial, channel = target.shape[2:], True
    elif target.dim() == prediction.dim() - 1:
        spatial, channel = target.shape[1:], False
    else:
        return target
    size = tuple(prediction.shape[2:])
    if tuple(spatial) == size:
        return target
    if any(p > t for p, t in zip(size, spatial)):
        raise LossInputError(
            f"scale {level}: the prediction of shape {shape_text(prediction)} is larger than the "
            f"target ({shape_of(spatial)} spatially); predictions go from the target's resolution down",
            hint="list the predictions from the full resolution to the coarsest",
        )
    source = target if channel else target.unsqueeze(1)
    if source.is_floating_point():
        resized = F.interpolate(source, size=size, mode="area")
    else:  # selects, never mixes: float64 holds every class index exactly
        resized = F.interpolate(source.double(), size=size, mode="nearest-exact").to(target.dtype)
    return resized if channel else resized.squeeze(1)


class DeepSupervisionLoss(LossModule):
    """``loss([p0, p1, ...], target)`` = ``sum_l w_l inner(p_l, resize(target, p_l))``; one tensor
    is the inner loss itself. ``last_terms`` holds each scale's value before its weight
    (``scale0``, ``scale1``, ...; each term of the inner loss too, ``scale0/ce()``, when it has
    several) and ``total``."""

    def __init__(self, spec: LossSpec, node: Deep, inner: CompiledLoss) -> None:
        super().__init__()
        self.spec = spec
        self.node = node
        self.inner = inner
        inner.records_expression = False
        self.reads = inner.reads
        self.last_terms = {}

    @property
    def terms(self) -> Sequence[Any]:
        """The inner loss's terms (what a multi-task loss reads of its tasks)."""
        return self.inner.terms

    def forward(
        self, input: Tensor | Sequence[Tensor], target: Any = None, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None, **inputs: Any,
    ) -> Tensor:
        """``input``: predictions from the full resolution down (or one tensor); ``target``: at the
        full resolution; ``weight``, ``avg_factor`` and named inputs go to every scale (a named input
        given as a list has one entry per scale)."""
        updates = StateUpdates()
        with self.value_checks.call(self.check_values):
            prepared = self.prepare(input, target, weight, avg_factor, updates=updates, inputs=inputs)
        total = self.combine(prepared)
        updates.commit()
        self._advance_step()
        return total

    def _epoch_changed(self, epoch: int) -> None:
        self.inner._epoch_changed(epoch)

    def prepare(
        self, input: Any, target: Any, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None, *, updates: StateUpdates | None = None,
        inputs: dict[str, Any] | None = None, clock: Clock | None = None,
    ) -> DeepCall:
        inputs = inputs or {}
        clock = clock if clock is not None else self.clock
        if isinstance(input, Tensor):
            return DeepCall(None, [self.inner.prepare(input, target, weight, avg_factor, updates=updates,
                                                      inputs=inputs, clock=clock)])
        if not isinstance(input, (list, tuple)) or not input:
            got = type(input).__name__ if not isinstance(input, (list, tuple)) else "an empty list"
            raise LossInputError(f"{self.spec.to_expr()} takes a list of predictions (or one tensor), "
                                 f"got {got}")
        weights = self._weights(len(input))
        scales = []
        for level, prediction in enumerate(input):
            # Running statistics (GHM-C's momentum counts) follow the full-resolution scale only.
            staged = updates if level == 0 else StateUpdates()
            target_l = resized_target(target, prediction, level)
            inputs_l = {name: self._at_scale(name, value, level, len(input))
                        for name, value in inputs.items()}
            scales.append(in_scale(level, self.inner.prepare, prediction, target_l, weight, avg_factor,
                                   updates=staged, inputs=inputs_l, clock=clock))
        return DeepCall(weights, scales)

    def combine(self, call: DeepCall) -> Tensor:
        if call.weights is None:
            logged: dict[str, Tensor] = {}
            total = self.inner.combine(call.scales[0], logged)
            if not is_compiling():
                self._log(call, logged)
            return total
        total = None
        logged: dict[str, Tensor] = {}
        for level, (weight, prepared) in enumerate(zip(call.weights, call.scales)):
            terms: dict[str, Tensor] = {}
            value = in_scale(level, self.inner.combine, prepared, terms)
            weighted = value if weight == 1 else weight * value
            total = weighted if total is None else total + weighted
            if not is_compiling():
                logged[f"scale{level}"] = value.detach()
                if len(self.inner.terms) > 1:
                    logged.update((f"scale{level}/{key}", term) for key, term in terms.items()
                                  if key != "total")
        if not is_compiling():
            logged["total"] = total.detach()
            self._log(call, logged)
        return total

    def _log(self, call: DeepCall, logged: dict[str, Tensor]) -> None:
        """``last_terms`` replaced when the whole call commits (the call of the full-resolution
        scale carries the call's updates), as CompiledLoss does."""
        updates = next((item.updates for item in call.scales[0] if item is not None), None)
        if updates is None:
            self.last_terms = logged
        else:
            updates.defer(lambda: setattr(self, "last_terms", logged))

    def _weights(self, levels: int) -> tuple[float, ...]:
        weights = self.node.weights
        if not isinstance(weights, str) and len(weights) != levels:
            raise LossInputError(
                f"deep() has {len(weights)} weights but was given {levels} predictions",
                hint="give one weight per prediction, or weights=exp, two or same",
            )
        return scale_weights(weights, levels)

    @staticmethod
    def _at_scale(name: str, value: Any, level: int, levels: int) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        if len(value) != levels:
            raise LossInputError(f"{name}= has {len(value)} entries but there are {levels} predictions",
                                 hint=f"give {name}= one tensor for every scale, or one for all")
        return value[level]
