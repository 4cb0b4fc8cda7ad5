"""What the long-tail names make of the class counts, per class: the curves ``lossdsl plot`` draws
for them (lossdsl.plotting), computed with the library's own functions (functional.longtail).

- ``logit_adjust``: the shift ``log(pi_j^tau + 1e-12)`` added to class j's logit;
- ``ldam``: the margin ``Delta_j`` (times ``s``, as the logits see it) taken off the target's logit;
- ``class_balanced``: the weight ``w_j`` of a sample of class j.

Only given counts (a list or a file) have curves; ``online`` counts exist once training has counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .catalogue.counts import given_counts
from .catalogue.longtail import LDAM, ClassBalanced, LogitAdjust
from .catalogue.modifiers import walk
from .catalogue.schedules import is_schedule
from .errors import LossSpecError
from .functional.longtail import effective_number_weights, ldam_margins, log_prior
from .spec import LossSpec

PER_CLASS = (LogitAdjust, LDAM, ClassBalanced)


@dataclass(frozen=True)
class ClassCurve:
    label: str
    counts: torch.Tensor  # n_j, float64, as given
    values: torch.Tensor  # the per-class quantity


def per_class_nodes(spec: LossSpec) -> list:
    return [node for term in spec.expand().terms for node in walk(term.loss) if isinstance(node, PER_CLASS)]


def at_epoch_0(value: Any) -> tuple[float, str]:
    """A parameter's value as the curves draw it, and what to add to the label: a schedule is drawn
    at epoch and step 0, as the rest of the plot (its course is in the schedules' panel)."""
    if is_schedule(value):
        return value.value_at(0), " at epoch 0"
    return value, ""


def class_curves(spec: LossSpec, label: str) -> list[ClassCurve]:
    """One curve per long-tail node of ``spec`` (expanded), labelled ``label: what it is`` (what it
    is alone when ``label`` is empty)."""
    curves = []
    for node in per_class_nodes(spec):
        counts = given_counts(node.counts)
        if counts is None:
            raise LossSpecError(
                f"{label or spec.to_expr()}: {node.kind_name()}() counts online, so its per-class values "
                "exist only once "
                "training has counted the targets; give counts=[...] (or a counts file) to plot them")
        n = torch.tensor(counts, dtype=torch.float64)
        if isinstance(node, LogitAdjust):
            tau, at = at_epoch_0(node.tau)
            what = f"logit shift log(pi^{tau:g} + 1e-12){at}"
            what += " (at prediction, negated)" if node.posthoc else ""
            values = log_prior(n, tau)
        elif isinstance(node, LDAM):
            what = f"margin s Delta_j (max_m={node.max_m:g}, s={node.s:g})"
            values = ldam_margins(n, node.max_m) * node.s
        else:
            beta, at = at_epoch_0(node.beta)
            what, values = f"class weight w_j (beta={beta:g}{at})", effective_number_weights(n, beta)
        curves.append(ClassCurve(f"{label}: {what}" if label else what, n, values))
    return curves
