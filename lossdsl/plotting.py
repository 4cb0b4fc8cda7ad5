"""Loss and gradient against p_t, for positive and negative targets: what ``lossdsl plot`` draws.

The curves are computed with the library itself (each term with ``reduction=none`` on a batch of
logits spanning p in (0, 1)), so a plot shows exactly what training will see. Drawing needs
matplotlib, an optional extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .catalogue.base import lookup
from .errors import LossConfigError, LossSpecError
from .spec import LossSpec


@dataclass
class Curves:
    label: str
    p_t: torch.Tensor  # probability given to the target, increasing
    positive: tuple[torch.Tensor, torch.Tensor]  # (loss, |dloss/dlogit|) for target 1
    negative: tuple[torch.Tensor, torch.Tensor]  # (loss, |dloss/dlogit|) for target 0


def loss_curves(spec: LossSpec, label: str, points: int = 400) -> Curves:
    """Per-element loss and gradient magnitude over a grid of p_t in (0, 1)."""
    from .compiler import compile_spec

    terms = spec.expand().terms
    heads = {getattr(t.loss, "head", None) for t in terms}
    if any(t.loss.is_regression for t in terms) or getattr(terms[0].loss, "tasks", None) is not None:
        raise LossSpecError(f"plot shows classification losses against p_t; {label} has no p_t")
    unreduced = LossSpec(terms=tuple(t.model_copy(update={"reduction": "none"}) for t in terms))
    loss = compile_spec(unreduced, check_values=False)
    p_t = torch.linspace(1e-3, 1 - 1e-3, points, dtype=torch.float64)
    results = []
    for target_is_positive in (True, False):
        p = p_t if target_is_positive else 1 - p_t  # probability of class "1"
        logit = torch.logit(p).float()
        if "softmax" in heads:  # two classes: logits [l, 0] give p(class 0) = sigmoid(l)
            x = torch.stack([logit, torch.zeros_like(logit)], dim=1).requires_grad_(True)
            target = torch.full((points,), 0 if target_is_positive else 1, dtype=torch.long)
            if "sigmoid" in heads or None in heads:
                raise LossSpecError("plot cannot mix softmax and sigmoid terms in one expression")
        else:
            x = logit.unsqueeze(1).requires_grad_(True)
            target = torch.full((points, 1), 1.0 if target_is_positive else 0.0)
        value = loss(x, target).reshape(points, -1).sum(dim=1)
        (grad,) = torch.autograd.grad(value.sum(), x)
        # d loss / d logit of class "1" (sigmoid) or of the target's logit (softmax).
        slope = grad[:, 0] if grad.dim() == 2 else grad
        results.append((value.detach(), slope.abs().reshape(points).detach()))
    return Curves(label, p_t.float(), results[0], results[1])


def sweep_values(sweep: str) -> tuple[str, list[float]]:
    """``"gamma=0:4:5"`` -> ("gamma", [0, 1, 2, 3, 4])."""
    try:
        name, span = sweep.split("=", 1)
        start, stop, count = span.split(":")
        count_value = int(count)
        start_value, stop_value = float(start), float(stop)
    except ValueError:
        raise LossConfigError(
            f"--sweep expects PARAM=START:STOP:COUNT, e.g. gamma=0:4:5; got {sweep!r}"
        ) from None
    if count_value < 1 or count_value > 50:
        raise LossConfigError(f"--sweep COUNT must be between 1 and 50, got {count_value}")
    if count_value == 1:
        return name.strip(), [start_value]
    step = (stop_value - start_value) / (count_value - 1)
    return name.strip(), [start_value + i * step for i in range(count_value)]


def with_parameter(spec: LossSpec, name: str, value: float) -> LossSpec:
    """The spec with ``name`` set on the outermost node that has such a parameter."""
    from .api import load

    data = spec.to_dict()
    nodes = [term["loss"] for term in data["terms"]] if "terms" in data else [data]
    stack = list(nodes)
    while stack:
        node = stack.pop(0)
        field = lookup(node["kind"]).model_fields.get(name)
        if field is not None and name != "kind":
            # Integer parameters (bins) take integers; the sweep's values are floats.
            is_integer = isinstance(field.default, int) and not isinstance(field.default, bool)
            node[name] = int(round(value)) if is_integer else value
            return load(data)
        if isinstance(node.get("loss"), dict):
            stack.append(node["loss"])
    raise LossConfigError(f"no loss in {spec.to_expr()} has a parameter '{name}' to sweep")


def draw(curves: Sequence[Curves], out: str, title: str | None = None) -> None:
    """A 2 x 2 figure: loss and |gradient| against p_t, for positive and negative targets."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LossConfigError(
            "lossdsl plot needs matplotlib: pip install 'lossdsl[plot]' (or pip install matplotlib)"
        ) from None
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for curve in curves:
        for column, (value, slope) in enumerate((curve.positive, curve.negative)):
            axes[0][column].plot(curve.p_t, value, label=curve.label)
            axes[1][column].plot(curve.p_t, slope, label=curve.label)
    for column, who in enumerate(("positive target (y = 1)", "negative target (y = 0)")):
        axes[0][column].set_title(who)
        axes[0][column].set_ylabel("loss")
        axes[1][column].set_ylabel("|d loss / d logit|")
        axes[1][column].set_xlabel("p_t, the probability given to the target")
        for row in (0, 1):
            axes[row][column].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    # The format follows the suffix, PNG without one: given explicitly, matplotlib writes to `out`
    # itself (it appended ".png" to a bare name, so "wrote NAME" named a file that did not exist).
    image_format = Path(out).suffix[1:].lower() or "png"
    try:
        figure.savefig(out, dpi=110, format=image_format)
    except OSError as error:  # a missing folder or a read-only place: a user error, not a traceback
        raise LossConfigError(f"cannot write {out}: {error.strerror or error}") from None
    except ValueError as error:  # an unsupported suffix ("Format 'xyz' is not supported ...")
        raise LossConfigError(f"cannot write {out}: {error}") from None
    finally:
        plt.close(figure)
