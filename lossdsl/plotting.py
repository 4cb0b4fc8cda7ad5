"""What a loss does, drawn: ``lossdsl.plot`` (a matplotlib Figure) and ``lossdsl plot`` (a file).

Classification losses are drawn against ``p_t``, the probability given to the target: the loss and
its gradient with respect to the logits, for a positive and a negative target (sigmoid head) or for
the target class (softmax head, with a stated number of classes). Region losses (dice, tversky,
jaccard, gdice, lovasz, and sums holding one) compare whole masks and have no ``p_t`` per element:
they are drawn against the predicted foreground fraction of a fixed mask. Box losses, ``dfl`` and
regression losses have no probability to draw against, and say so.

The curves are computed with the library itself (each term with ``reduction=none``, or the whole
loss per mask), so a plot shows exactly what training will see. Drawing needs matplotlib, an
optional extra (``pip install 'lossdsl[plot]'``). Figures are built without pyplot, so a notebook
shows the returned figure once and nothing stays registered behind it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .catalogue.base import lookup
from .catalogue.boxes import DFL, BoxLoss
from .catalogue.modifiers import Density
from .catalogue.region import RegionLoss
from .catalogue.schedules import spec_schedules
from .class_curves import class_curves, per_class_nodes
from .errors import LossConfigError, LossSpecError, MissingDependencyError
from .plotting_schedules import NOTE as SCHEDULE_NOTE
from .plotting_schedules import add_schedule_panels
from .spec import LossSpec, per_class_lengths

POINTS = 400
DEFAULT_CLASSES = 10
# The batch GHM-C's weights are computed in (its density of g = |p - y| is what sets them): most
# elements easy, as in a detector's dense head. Stated on the figure.
GHM_BATCH = 10_000
GHM_EASY = 0.9
# The region plot's mask: one sample, MASK positions, the first FOREGROUND of them foreground.
MASK = 1000
FOREGROUND = 0.25
REGION_LOGIT = 6.0  # predicted positions get p = sigmoid(6) = 0.9975, the others 1 - that
REGION_POINTS = 101

INSTALL_HINT = "pip install 'lossdsl[plot]' (or pip install matplotlib)"
# Float64 tensors of [points, classes] a curve holds at once: the logits and their gradient, the
# targets, and at least three intermediates of the loss (a lower bound, checked before allocating).
HELD_AT_ONCE = 6


@dataclass
class Curves:
    """One loss drawn against p_t (``kind == "p_t"``) or against the predicted foreground fraction
    (``kind == "region"``, ``negative`` None, ``slope`` unused)."""

    label: str
    kind: str
    x: torch.Tensor
    positive: tuple[torch.Tensor, torch.Tensor]  # (loss, d loss / d z_t) for target 1 / the target class
    negative: tuple[torch.Tensor, torch.Tensor] | None  # for target 0 (sigmoid head only)
    notes: tuple[str, ...] = ()


# -- the public function ---------------------------------------------------------------------------


def plot(
    loss: Any,
    sweep: str | tuple[str, Sequence[float]] | None = None,
    *,
    ax: Any = None,
    log_y: bool = False,
    signed: bool = False,
    classes: int | None = None,
    batch: Sequence[float] | torch.Tensor | None = None,
) -> Any:
    """Draw a loss and return the matplotlib ``Figure``.

    Args:
        loss: an expression, a ``LossSpec``, a compiled loss, or a list of them (one curve each).
        sweep: one curve per value of a parameter: ``"gamma_neg=0:4:5"`` (START:STOP:COUNT) or
            ``("gamma_neg", [0, 2, 4])``; set on the outermost node that has the parameter.
        ax: a matplotlib ``Axes`` to draw the loss into (positive targets solid, negative dashed);
            without one, a new figure with the loss and its gradient, per target.
        log_y: logarithmic loss axis (and gradient axis: symmetric-log when ``signed``).
        signed: draw ``d loss / d z_t`` with its sign (``z_t`` the target's logit: negative values
            push ``p_t`` up) instead of its size; a loss that rewards wrong predictions, such as
            ``poly(focal(), eps=-1)`` near ``p_t = 0``, shows up above zero.
        classes: the class count softmax losses are drawn with (the target's logit swept, the others
            0); default: the length of the loss's per-class lists, else 10.
        batch: for GHM-C (``ghm``, ``density``), whose weights depend on the whole batch: the values
            of ``g = |p - y|`` of the batch the plotted elements sit in. Default: 10,000 elements,
            90% easy (``g`` < 0.1) and 10% spread evenly, as in a detector's dense head.

    Raises ``MissingDependencyError`` (an ImportError) without matplotlib, and ``LossSpecError`` for a
    loss with nothing to draw against (boxes, ``dfl``, regression, multi-task).
    """
    figure, _ = build_figure(loss, sweep, ax=ax, log_y=log_y, signed=signed, classes=classes, batch=batch)
    return figure


def build_figure(loss: Any, sweep: Any = None, **options: Any) -> tuple[Any, int]:
    """``plot``'s figure and the number of curves on it (what ``lossdsl plot`` reports)."""
    figure_class = _figure_class()
    ax = options.pop("ax", None)
    sources = list(loss) if isinstance(loss, (list, tuple)) else [loss]
    if not sources:
        raise LossConfigError("plot needs at least one loss")
    specs = [_spec_of(source) for source in sources]
    variants = []
    for spec in specs:
        if sweep:
            name, values = sweep_values(sweep) if isinstance(sweep, str) else (sweep[0], list(sweep[1]))
            for value in values:
                variant = with_parameter(spec, name, value)
                label = variant.to_expr() if len(specs) > 1 else f"{name}={value:g}"
                variants.append((label, variant))
        else:
            variants.append((spec.to_expr(), spec))
    kinds = {_kind(spec, label) for label, spec in variants}
    if len(kinds) > 1:
        raise LossSpecError(
            "plot cannot draw region losses (against the predicted foreground) and element losses "
            "(against p_t) in one figure; plot them separately"
        )
    batch = options.pop("batch", None)
    long_title = False
    if kinds == {"region"}:
        curves = [region_curves(spec, label) for label, spec in variants]
    elif kinds == {"classes"}:
        long_title = True
        curves = [Curves(curve.label, "classes", torch.arange(len(curve.counts)).float(),
                         (curve.values.float(), curve.counts.float()), None,
                         ("per class j, as the counts n_j are given (under the axis)",))
                  for label, spec in variants
                  for curve in class_curves(spec, label if len(variants) > 1 else "")]
    else:
        curves = [loss_curves(spec, label, classes=options.get("classes"), batch=batch)
                  for label, spec in variants]
    title = None
    if len(sources) == 1:
        first = sources[0] if isinstance(sources[0], str) else specs[0].to_expr()
        sweep_text = sweep if isinstance(sweep, str) else (f"{sweep[0]}" if sweep else "")
        title = first + (f"  (sweep {sweep_text})" if sweep else "")
    if long_title and title:  # the counts make long expressions
        title = textwrap.fill(title, 90)
    scheduled = ax is None and any(spec_schedules(spec) for _, spec in variants)
    if scheduled:  # the loss is drawn at epoch 0; the schedules' course goes in a panel below
        curves[0].notes = (*curves[0].notes, SCHEDULE_NOTE)
    figure = _draw(figure_class, curves, title, ax, options.get("log_y", False), options.get("signed", False))
    if scheduled:
        add_schedule_panels(figure, [spec for _, spec in variants])
    return figure, len(curves)


def save(figure: Any, out: str) -> None:
    """Write a figure; the format follows the suffix, PNG without one."""
    # Given explicitly, matplotlib writes to `out` itself (it appended ".png" to a bare name, so
    # "wrote NAME" named a file that did not exist).
    image_format = Path(out).suffix[1:].lower() or "png"
    try:
        figure.savefig(out, dpi=110, format=image_format)
    except OSError as error:  # a missing folder or a read-only place: a user error, not a traceback
        raise LossConfigError(f"cannot write {out}: {error.strerror or error}") from None
    except ValueError as error:  # an unsupported suffix ("Format 'xyz' is not supported ...")
        raise LossConfigError(f"cannot write {out}: {error}") from None


def _figure_class() -> Any:
    try:
        import matplotlib  # noqa: F401 - first: a missing package fails here, whatever is cached
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(f"lossdsl plot needs matplotlib: {INSTALL_HINT}") from None
    return Figure


def _spec_of(source: Any) -> LossSpec:
    from .api import as_spec

    return as_spec(source)


def _kind(spec: LossSpec, label: str) -> str:
    """'region' or 'p_t': what a loss is drawn against; a LossSpecError when neither applies."""
    terms = spec.expand().terms
    if getattr(terms[0].loss, "tasks", None) is not None:
        raise LossSpecError(
            f"plot draws one loss at a time; {label} weighs several tasks: plot each task's loss"
        )
    if terms[0].loss.spec_fields:  # deep supervision: the same loss at every scale
        inner = spec.terms[0].loss.loss.to_expr()
        raise LossSpecError(f"{label} applies {inner} at every scale of a list of predictions; plot {inner}")
    if any(isinstance(t.loss, RegionLoss) for t in terms):
        return "region"
    if per_class_nodes(spec):  # logit_adjust, ldam, class_balanced: their values per class
        return "classes"
    for term in terms:
        node = term.loss
        if isinstance(node, BoxLoss):
            raise LossSpecError(
                f"{label}: {node.kind_name()}() compares boxes, so it has no p_t and no mask to plot "
                "against; plot does not apply"
            )
        if isinstance(node, DFL):
            raise LossSpecError(
                f"{label}: dfl() is a cross-entropy over box-edge distances; it has no p_t to plot "
                "against (plot ce() for its shape); plot does not apply"
            )
        if node.is_regression:
            raise LossSpecError(
                f"plot shows classification losses against p_t (and region losses against the "
                f"predicted foreground); {label} has no p_t"
            )
    return "p_t"


# -- curves against p_t ----------------------------------------------------------------------------


def _class_count(spec: LossSpec, classes: int | None, floor: int) -> int:
    lengths = per_class_lengths(spec)
    if len(lengths) > 1:
        raise LossSpecError(f"per-class lists of different lengths ({sorted(lengths)}) in {spec.to_expr()}")
    if lengths:
        (length,) = lengths
        if classes is not None and classes != length:
            raise LossConfigError(f"classes={classes}, but {spec.to_expr()} has per-class lists of {length}")
        return length
    if classes is not None and classes < floor:
        raise LossConfigError(f"classes must be at least {floor}, got {classes}")
    return classes if classes is not None else (DEFAULT_CLASSES if floor > 1 else 1)


def _refuse_if_too_large(rows: int, count: int) -> None:
    from .memory import refuse_if_too_large

    refuse_if_too_large(
        rows * count * 8 * HELD_AT_ONCE,
        f"drawing with {count:,} classes ({rows:,} points x {count:,} classes of float64; a curve "
        f"holds at least {HELD_AT_ONCE} tensors of that size at once)",
        hint="draw with fewer classes (--classes)",
    )


def loss_curves(
    spec: LossSpec, label: str, points: int = POINTS, *, classes: int | None = None,
    batch: Sequence[float] | torch.Tensor | None = None,
) -> Curves:
    """Per-element loss and ``d loss / d z_t`` over a grid of ``p_t`` in (0, 1).

    Sigmoid head: one element per point (class 0 of ``classes`` identical columns when the loss has
    per-class lists), target 1 then target 0, ``z_t = x`` resp. ``-x``. Softmax head: the target is
    class 0 of ``C`` classes, its logit ``z_t`` swept so that ``softmax`` gives it ``p_t``, the
    other logits 0.
    """
    from .compiler import compile_spec

    terms = spec.expand().terms
    heads = {getattr(t.loss, "head", None) for t in terms}
    if "softmax" in heads and ("sigmoid" in heads or None in heads):
        raise LossSpecError("plot cannot mix softmax and sigmoid terms in one expression")
    softmax = "softmax" in heads
    unreduced = LossSpec(terms=tuple(t.model_copy(update={"reduction": "none", "name": None}) for t in terms))
    loss = compile_spec(unreduced, check_values=False, distributed=False)
    p_t = torch.linspace(1e-3, 1 - 1e-3, points, dtype=torch.float64)
    notes: list[str] = []
    has_density = any(_has_density(t.loss) for t in terms)
    if softmax:
        count = _class_count(spec, classes, floor=2)
        _refuse_if_too_large(points, count)
        notes.append(f"softmax: {count} classes assumed; the target's logit z_t swept, the other "
                     f"{count - 1} logits 0")
        # p_t = e^z / (e^z + C - 1)  <=>  z = log(p_t (C - 1) / (1 - p_t))
        z = torch.log(p_t * (count - 1) / (1 - p_t))
        x = torch.zeros(points, count, dtype=torch.float64)
        x[:, 0] = z
        x.requires_grad_(True)
        value = loss(x, torch.zeros(points, dtype=torch.long))
        (grad,) = torch.autograd.grad(value.sum(), x)
        positive = (value.detach().reshape(points), grad[:, 0].detach())
        if has_density:
            notes.append("GHM-C weights depend on the batch: computed on the plotted points alone")
        return Curves(label, "p_t", p_t.float(), _as_float(positive), None, tuple(notes))
    count = _class_count(spec, classes, floor=1)
    background = None
    if has_density:
        background, text = _ghm_background(batch)
        notes.append(f"GHM-C weights depend on the batch: drawn for {text}")
    _refuse_if_too_large(points + (0 if background is None else background.shape[0]), count)
    results = []
    for target_is_positive in (True, False):
        p = p_t if target_is_positive else 1 - p_t  # probability of class "1"
        value, slope = _sigmoid_curve(loss, torch.logit(p), 1.0 if target_is_positive else 0.0, count,
                                      background, _momentum(terms))
        results.append((value, slope if target_is_positive else -slope))  # d/dz_t, z_t = +-x
    return Curves(label, "p_t", p_t.float(), _as_float(results[0]), _as_float(results[1]), tuple(notes))


def _sigmoid_curve(
    loss: Any, logit: torch.Tensor, target: float, count: int, background: torch.Tensor | None,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    points = logit.shape[0]
    x = logit.unsqueeze(1).expand(points, count)
    y = torch.full((points, count), target, dtype=torch.float64)
    if background is not None:  # the batch GHM-C's bins are counted in, after the plotted points
        g = background.to(torch.float64).clamp(1e-6, 1 - 1e-6)
        x = torch.cat([x, torch.logit(g).unsqueeze(1).expand(-1, count)])  # negatives with p = g
        y = torch.cat([y, torch.zeros(g.shape[0], count, dtype=torch.float64)])
        if momentum > 0:  # the running counts settle on this batch first, as in training
            loss.train()
            with torch.no_grad():
                for _ in range(min(2000, math.ceil(math.log(1e-4) / math.log(momentum)))):
                    loss(x, y)
        loss.eval()
    x = x.clone().requires_grad_(True)
    value = loss(x, y)
    (grad,) = torch.autograd.grad(value.sum(), x)
    value = value.detach().reshape(x.shape[0], -1)[:points]
    grad = grad[:points]
    column = value[:, 0] if value.shape[1] == count else value.sum(dim=1)  # zlpr: one value per row
    return column, grad[:, 0]


def _has_density(node: Any) -> bool:
    return isinstance(node, Density) or any(_has_density(child) for child in node.children())


def _momentum(terms: Sequence[Any]) -> float:
    found = [0.0]
    stack = [t.loss for t in terms]
    while stack:
        node = stack.pop()
        if isinstance(node, Density):
            found.append(node.momentum)
        stack += list(node.children())
    return max(found)


def _ghm_background(batch: Any) -> tuple[torch.Tensor, str]:
    if batch is not None:
        g = torch.as_tensor(batch, dtype=torch.float64).reshape(-1)
        if g.numel() == 0 or not bool(((g >= 0) & (g <= 1)).all()):
            raise LossConfigError("batch: the values of g = |p - y| must lie in [0, 1]")
        return g, f"a batch of {g.numel():,} elements with the given g = |p - y|, plus the plotted points"
    generator = torch.Generator().manual_seed(0)
    easy = int(GHM_BATCH * GHM_EASY)
    g = torch.cat([torch.rand(easy, generator=generator, dtype=torch.float64) * 0.1,
                   torch.rand(GHM_BATCH - easy, generator=generator, dtype=torch.float64)])
    text = (f"a batch of {GHM_BATCH:,} elements, {GHM_EASY:.0%} easy (g = |p - y| < 0.1) and "
            f"{1 - GHM_EASY:.0%} with g spread evenly, plus the plotted points")
    return g, text


def _as_float(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return pair[0].float(), pair[1].float()


# -- region losses against the predicted foreground -----------------------------------------------


def region_curves(spec: LossSpec, label: str, points: int = REGION_POINTS) -> Curves:
    """The whole loss on one mask of ``MASK`` positions, ``FOREGROUND`` of them foreground, when the
    prediction covers a fraction ``f`` of the positions (the true foreground first, then background:
    below the true fraction it misses foreground, above it adds false positives)."""
    from .compiler import compile_spec

    terms = spec.expand().terms
    heads = {getattr(t.loss, "head", None) for t in terms}
    if heads - {"softmax", "sigmoid"} or len(heads) > 1:
        raise LossSpecError("plot cannot mix softmax and sigmoid terms in one expression")
    softmax = heads == {"softmax"}
    lengths = per_class_lengths(spec)
    classes = 2 if softmax else 1
    if lengths - {classes}:
        raise LossSpecError(
            f"the region plot uses {classes} class{'es' if classes > 1 else ''} (background and "
            f"foreground on the softmax head, foreground alone on the sigmoid head); {label} has "
            f"per-class lists of {sorted(lengths)}"
        )
    loss = compile_spec(spec.without_names(), check_values=False, distributed=False)
    loss.eval()
    fractions = torch.linspace(0, 1, points, dtype=torch.float64)
    foreground = int(MASK * FOREGROUND)
    truth = torch.zeros(MASK, dtype=torch.long)
    truth[:foreground] = 1
    values, slopes = [], []
    for fraction in fractions:
        predicted = torch.zeros(MASK, dtype=torch.bool)
        predicted[: int(round(float(fraction) * MASK))] = True
        sign = torch.where(predicted, 1.0, -1.0).to(torch.float64)
        if softmax:  # class 1 is the foreground: p_1 = sigmoid(sign * REGION_LOGIT)
            x = torch.stack([-sign, sign]).mul(REGION_LOGIT / 2).unsqueeze(0)
            target = truth.unsqueeze(0)
        else:
            x = (sign * REGION_LOGIT).reshape(1, 1, MASK)
            target = truth.to(torch.float64).reshape(1, 1, MASK)
        x.requires_grad_(True)
        value = loss(x, target)
        (grad,) = torch.autograd.grad(value.sum(), x)
        values.append(value.detach().sum())
        slopes.append(grad.abs().sum())
    notes = (
        f"one mask of {MASK:,} positions, {FOREGROUND:.0%} foreground (dotted line); the prediction "
        f"gives p = {torch.sigmoid(torch.tensor(REGION_LOGIT)).item():.4f} on a fraction of the positions, "
        "the true foreground first",
        ("softmax: 2 classes (background, foreground)" if softmax else "sigmoid: 1 class (foreground)"),
    )
    curve = (torch.stack(values).float(), torch.stack(slopes).float())
    return Curves(label, "region", fractions.float(), curve, None, notes)


# -- sweeps ---------------------------------------------------------------------------------------


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


# -- drawing --------------------------------------------------------------------------------------

LOSS_LABEL = "loss"
SIZE_LABEL = "|d loss / d logit|"
SIGNED_LABEL = "d loss / d z_t  (< 0 raises p_t)"
P_T_LABEL = "p_t, the probability given to the target"
REGION_LABEL = "predicted foreground fraction"


def _draw(figure_class: Any, curves: Sequence[Curves], title: str | None, ax: Any, log_y: bool,
          signed: bool) -> Any:
    notes = list(dict.fromkeys(note for curve in curves for note in curve.notes))
    region = curves[0].kind == "region"
    if ax is not None:
        figure = ax.figure
        _draw_single(ax, curves, region, log_y)
        if title or notes:
            ax.set_title("\n".join(([title] if title else []) + notes), fontsize=8)
        return figure
    if curves[0].kind == "classes":  # long-tail names: a value per class, the counts under the axis
        figure = figure_class(figsize=(7, 5.5))
        ax = figure.add_subplot(1, 1, 1)
        for curve in curves:
            ax.plot(curve.x, curve.positive[0], marker="o", label=curve.label)
        counts = curves[0].positive[1]
        ticks = [f"{j}\n{n:g}" for j, n in enumerate(counts.tolist())]
        ax.set_xticks(curves[0].x.tolist(), ticks, fontsize=7)
        ax.set_xlabel("class j, and its count n_j")
        ax.set_ylabel("per-class value")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    elif region:
        figure = figure_class(figsize=(7, 5.5))
        ax = figure.add_subplot(1, 1, 1)
        _draw_single(ax, curves, region, log_y)
    else:
        columns = 2 if any(curve.negative is not None for curve in curves) else 1
        figure = figure_class(figsize=(5.5 * columns, 8))
        axes = figure.subplots(2, columns, sharex=True, squeeze=False)
        whom = ("positive target (y = 1)", "negative target (y = 0)") if columns == 2 else ("target class",)
        for curve in curves:
            for column in range(columns):
                pair = curve.positive if column == 0 else curve.negative
                if pair is None:
                    continue
                value, slope = pair
                axes[0][column].plot(curve.x, value, label=curve.label)
                axes[1][column].plot(curve.x, slope if signed else slope.abs(), label=curve.label)
        for column in range(columns):
            top, bottom = axes[0][column], axes[1][column]
            top.set_title(whom[column])
            top.set_ylabel(LOSS_LABEL)
            bottom.set_ylabel(SIGNED_LABEL if signed else SIZE_LABEL)
            bottom.set_xlabel(P_T_LABEL)
            if signed:
                bottom.axhline(0, color="black", linewidth=0.8)
            if log_y:
                top.set_yscale("log")
                if signed:
                    bottom.set_yscale("symlog", linthresh=1e-3)
                else:
                    bottom.set_yscale("log")
            for ax_ in (top, bottom):
                ax_.grid(alpha=0.3)
        if columns == 2 and any(curve.negative is None for curve in curves):
            notes.append("softmax curves: one target class per position, left column only")
        axes[0][0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    # Notes are wrapped to the figure's width (about 15 characters an inch at 8 points).
    width = int(figure.get_figwidth() * 15)
    lines = [line for note in notes for line in textwrap.wrap(note, width)]
    bottom_margin = 0.02 + 0.022 * len(lines) * 8 / figure.get_figheight()
    if lines:
        figure.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom")
    figure.tight_layout(rect=(0, bottom_margin, 1, 1))
    return figure


def _draw_single(ax: Any, curves: Sequence[Curves], region: bool, log_y: bool) -> None:
    for curve in curves:
        (line,) = ax.plot(curve.x, curve.positive[0], label=curve.label)
        if curve.negative is not None:
            ax.plot(curve.x, curve.negative[0], linestyle="--", color=line.get_color())
    if region:
        ax.axvline(FOREGROUND, color="black", linestyle=":", linewidth=0.8)
        ax.set_xlabel(REGION_LABEL)
    else:
        dashed = any(c.negative is not None for c in curves)
        ax.set_xlabel(P_T_LABEL + ("  (dashed: negative target)" if dashed else ""))
    ax.set_ylabel(LOSS_LABEL)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


__all__ = ["Curves", "build_figure", "loss_curves", "plot", "region_curves", "save", "sweep_values",
           "with_parameter"]
