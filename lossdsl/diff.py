"""Whether two losses are the same, and if not, what differs: ``lossdsl diff A B``.

Three levels, from the text to the numbers:

- **as written**: the specs are equal (defaults resolved, so ``focal()`` equals ``focal(gamma=2)``);
- **after expansion**: named losses rewritten into their blocks (``spec.expand()``), term names
  dropped, equal terms merged (``0.5 * ce() + 0.5 * ce()`` is ``ce()``) and terms in any order;
- **numerically**: both compiled, fed the same random inputs in float64 (class indices with the
  ignored labels either loss names, multi-hot and soft targets, regression targets, boxes, box-edge
  distances: whichever they accept), two training steps each, value and gradient compared with a
  tolerance. One loss refusing an input the other accepts is a difference too.

A and B are the same loss when they are equal after expansion or numerically; the report says which
term and which parameter differ, in words (``term 2: focal(): gamma 2 -> 3``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .catalogue.base import LossNode
from .catalogue.schedules import is_schedule
from .errors import LossConfigError, LossDSLError
from .printer import format_value, node_to_expr, term_to_expr, weight_to_expr
from .spec import LossSpec, Term, per_class_lengths

DIFF_FORMAT = "lossdsl.diff/1"
STEPS = 2  # training steps per input kind: running state (GHM-C momentum, dtp) shows on the second


# -- the result -----------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Both losses on one kind of input: ``outcome`` is "same", "different", "A fails" or "B fails"."""

    inputs: str
    outcome: str
    detail: str = ""
    shapes: str = ""
    value_error: float | None = None  # largest |A - B| of the values
    gradient_error: float | None = None  # largest |A - B| of the gradients w.r.t. the predictions


@dataclass
class LossDiff:
    """What ``compare`` found. ``same`` is the verdict; ``differences`` say what differs in words."""

    first: LossSpec
    second: LossSpec
    as_written: bool
    after_expansion: bool
    differences: list[str]
    expanded_differences: list[str]
    evaluations: list[Evaluation] = field(default_factory=list)
    numeric_note: str = ""  # why there is no numeric comparison, when there is none
    rtol: float = 0.0
    atol: float = 0.0

    @property
    def numerically_same(self) -> bool | None:
        """True/False after evaluating both on common inputs; None when no input suits either."""
        if not self.evaluations:
            return None
        return all(e.outcome == "same" for e in self.evaluations)

    @property
    def same(self) -> bool:
        return self.as_written or self.after_expansion or self.numerically_same is True

    def report(self) -> str:
        lines = [f"A: {self.first.to_expr()}", f"B: {self.second.to_expr()}"]
        lines.append("as written: " + ("the same" if self.as_written else "different"))
        lines += [f"  {line}" for line in self.differences]
        lines.append("after expansion: " + ("the same" if self.after_expansion else "different"))
        if not self.after_expansion and self.expanded_differences != self.differences:
            lines += [f"  {line}" for line in self.expanded_differences]
        lines.append("numerically: " + self._numeric_summary())
        for evaluation in self.evaluations:
            if evaluation.outcome != "same":
                lines.append(f"  {evaluation.inputs} {evaluation.shapes}: {evaluation.outcome}: "
                             f"{evaluation.detail}")
        lines.append("the same loss" if self.same else "different losses")
        return "\n".join(lines)

    def _numeric_summary(self) -> str:
        if not self.evaluations:
            return f"not compared ({self.numeric_note})"
        kinds = "; ".join(e.inputs for e in self.evaluations)
        if self.numerically_same:
            worst_value = max(e.value_error or 0.0 for e in self.evaluations)
            worst_gradient = max(e.gradient_error or 0.0 for e in self.evaluations)
            return (f"the same on {kinds} ({STEPS} steps each, float64, rtol {self.rtol:g}, atol "
                    f"{self.atol:g}; largest differences: value {worst_value:.1e}, gradient "
                    f"{worst_gradient:.1e})")
        return f"different (compared on {kinds})"

    def to_dict(self) -> dict[str, Any]:
        """The ``--format json`` document (README "Command line")."""
        return {
            "format": DIFF_FORMAT,
            "same": self.same,
            "a": self.first.to_expr(),
            "b": self.second.to_expr(),
            "as_written": {"same": self.as_written, "differences": self.differences},
            "after_expansion": {"same": self.after_expansion, "differences": self.expanded_differences},
            "numerically": {
                "same": self.numerically_same,
                "note": self.numeric_note or None,
                "rtol": self.rtol,
                "atol": self.atol,
                "inputs": [
                    {"inputs": e.inputs, "shapes": e.shapes, "outcome": e.outcome, "detail": e.detail or None,
                     "value_error": e.value_error, "gradient_error": e.gradient_error}
                    for e in self.evaluations
                ],
            },
        }


def compare(
    first: Any, second: Any, *, rtol: float = 1e-6, atol: float = 1e-9, seed: int = 0,
    numeric: bool = True,
) -> LossDiff:
    """Compare two losses (expressions, specs, compiled losses, or paths to loss files).

        >>> compare("focal(gamma=2)", "focal(gamma=3)").differences
        ['term 1: focal(): gamma 2 -> 3']
        >>> compare("dice(smooth=2e-5)", "tversky(smooth=1e-5)").same
        True

    ``numeric=False`` skips the evaluation (no torch needed).
    """
    from .api import as_spec

    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise LossConfigError(f"{name} must be a finite number >= 0, got {value}",
                                  hint=f"e.g. --{name} {1e-6 if name == 'rtol' else 1e-9:g}")
    a, b = as_spec(first), as_spec(second)
    result = LossDiff(
        first=a, second=b, as_written=a == b, after_expansion=canonical(a) == canonical(b),
        differences=spec_differences(a, b),
        expanded_differences=spec_differences(a.without_names().expand(), b.without_names().expand()),
        rtol=rtol, atol=atol,
    )
    if numeric:
        result.evaluations, result.numeric_note = evaluate(a, b, rtol=rtol, atol=atol, seed=seed)
    else:
        result.numeric_note = "skipped"
    return result


# -- after expansion ------------------------------------------------------------------------------


def canonical(spec: LossSpec) -> Any:
    """A comparable form of what the loss computes: expanded, names dropped, equal terms merged
    (weights added), terms sorted; a multi-task loss by its weighting and each task's form."""
    spec = spec.without_names().expand()
    first = spec.terms[0].loss
    if first.task_fields:
        tasks = first.tasks
        params = tuple(sorted((k, repr(v)) for k, v in first.parameters().items()
                              if k not in first.task_fields))
        return ("tasks", first.kind_name(), params,
                tuple(sorted((name, canonical(task)) for name, task in tasks.items())))
    weights: dict[tuple[str, str, str], float] = {}
    for term in spec.terms:
        # A scheduled weight is part of the key (counted, not added to numbers).
        schedule = weight_to_expr(term.weight) if is_schedule(term.weight) else ""
        key = (node_to_expr(term.loss), term.reduction, schedule)
        weights[key] = weights.get(key, 0.0) + (1.0 if schedule else term.weight)
    # Added weights are rounded: 0.1 + 0.2 and 0.3 are the same weight.
    return tuple(sorted((text, reduction, schedule, float(f"{weight:.12g}"))
                        for (text, reduction, schedule), weight in weights.items()))


# -- in words -------------------------------------------------------------------------------------


def spec_differences(a: LossSpec, b: LossSpec, prefix: str = "") -> list[str]:
    """What differs between two specs as written, one line per change."""
    a_tasks, b_tasks = _tasks_node(a), _tasks_node(b)
    if a_tasks is not None or b_tasks is not None:
        if a_tasks is None or b_tasks is None:
            which, other = ("A", "B") if a_tasks is not None else ("B", "A")
            return [f"{prefix}{which} weighs named tasks, {other} is a single-task loss"]
        return _task_differences(a_tasks, b_tasks, prefix)
    lines: list[str] = []
    pairs = _align(a.terms, b.terms)
    for i, j in pairs:
        if i is None:
            lines.append(f"{prefix}term {j + 1} only in B: {_term_text(b.terms[j])}")
        elif j is None:
            lines.append(f"{prefix}term {i + 1} only in A: {_term_text(a.terms[i])}")
        else:
            where = f"term {i + 1}" if i == j else f"term {i + 1} (term {j + 1} in B)"
            lines += [f"{prefix}{where}: {change}" for change in _term_changes(a.terms[i], b.terms[j])]
    matched = [(i, j) for i, j in pairs if i is not None and j is not None]
    if not lines and any(i != j for i, j in matched):
        lines.append(f"{prefix}the same terms in another order")
    return lines


def _tasks_node(spec: LossSpec) -> LossNode | None:
    node = spec.terms[0].loss
    return node if node.task_fields and len(spec.terms) == 1 else None


def _task_differences(a: LossNode, b: LossNode, prefix: str) -> list[str]:
    lines = []
    if a.kind_name() != b.kind_name():
        lines.append(f"{prefix}task weighting {_weighting(a)} -> {_weighting(b)}")
    else:
        lines += [f"{prefix}{change}" for change in _parameter_changes(a, b, f"{a.kind_name()}()")]
    for name in a.tasks:
        if name not in b.tasks:
            lines.append(f"{prefix}task {name} only in A: {a.tasks[name].to_expr()}")
    for name in b.tasks:
        if name not in a.tasks:
            lines.append(f"{prefix}task {name} only in B: {b.tasks[name].to_expr()}")
    for name in a.tasks:
        if name in b.tasks:
            lines += spec_differences(a.tasks[name], b.tasks[name], f"{prefix}task {name}: ")
    return lines


def _weighting(node: LossNode) -> str:
    return "{...} (weight 1 each)" if node.bare else f"{node.kind_name()}()"


def _align(a: Sequence[Term], b: Sequence[Term]) -> list[tuple[int | None, int | None]]:
    """Pairs of terms of A and B: equal terms first, then the same loss with another weight,
    reduction or name, then the same outermost name, then the rest in order; what is left over
    is only in A or only in B. Sorted by A's order, B's extra terms last."""
    pairs: dict[int, int] = {}
    taken: set[int] = set()
    rules: list[Callable[[Term, Term], bool]] = [
        lambda s, t: s == t,
        lambda s, t: s.loss == t.loss,
        lambda s, t: s.loss.kind_name() == t.loss.kind_name(),
        lambda s, t: True,
    ]
    for rule in rules:
        for i, s in enumerate(a):
            if i in pairs:
                continue
            for j, t in enumerate(b):
                if j not in taken and rule(s, t):
                    pairs[i] = j
                    taken.add(j)
                    break
    if len(a) != len(b):  # the fallback pairs only terms left in both, which may be unrelated ones
        pairs = {i: j for i, j in pairs.items()
                 if a[i].loss.kind_name() == b[j].loss.kind_name() or a[i].loss == b[j].loss}
    out: list[tuple[int | None, int | None]] = [(i, pairs.get(i)) for i in range(len(a))]
    matched = set(pairs.values())
    out += [(None, j) for j in range(len(b)) if j not in matched]
    return out


def _term_text(term: Term) -> str:
    return term_to_expr(term) + (f" (named {term.name})" if term.name else "")


def _term_changes(a: Term, b: Term) -> list[str]:
    changes = []
    if a.weight != b.weight:
        changes.append(f"weight {weight_to_expr(a.weight)} -> {weight_to_expr(b.weight)}")
    if a.reduction != b.reduction:
        changes.append(f"reduction {a.reduction} -> {b.reduction}")
    if a.name != b.name:
        changes.append(f"name {a.name or '(none)'} -> {b.name or '(none)'}")
    changes += _node_changes(a.loss, b.loss, "")
    return changes


def _node_changes(a: LossNode, b: LossNode, path: str) -> list[str]:
    if a == b:
        return []
    where = f"{path}{a.kind_name()}()"
    if a.kind_name() != b.kind_name():
        return [f"{path}{node_to_expr(a)} -> {node_to_expr(b)}"]
    changes = _parameter_changes(a, b, where)
    for name in a.loss_fields:
        changes += _node_changes(getattr(a, name), getattr(b, name), f"{where} > ")
    return changes


def _parameter_changes(a: LossNode, b: LossNode, where: str) -> list[str]:
    changes = []
    for name in type(a).model_fields:
        if name == "kind" or name in a.loss_fields or name in a.task_fields:
            continue
        before, after = getattr(a, name), getattr(b, name)
        if before != after:
            changes.append(f"{where}: {name} {format_value(before)} -> {format_value(after)}")
    return changes


# -- numerically ----------------------------------------------------------------------------------


@dataclass
class _Shape:
    batch: int
    classes: int
    spatial: tuple[int, ...] = (5, 5)


def evaluate(
    a: LossSpec, b: LossSpec, *, rtol: float, atol: float, seed: int
) -> tuple[list[Evaluation], str]:
    """Both losses on every kind of input that at least one accepts."""
    import torch

    from .compiler import compile_spec

    a_tasks, b_tasks = _tasks_node(a), _tasks_node(b)
    if (a_tasks is None) != (b_tasks is None):
        return [], "one weighs named tasks and the other does not: they take different inputs"
    if a_tasks is not None and set(a_tasks.tasks) != set(b_tasks.tasks):
        return [], "their tasks differ: they take different inputs"
    lengths = per_class_lengths(a) | per_class_lengths(b)
    if a_tasks is not None:
        lengths = set()  # each task is shaped on its own below
    if len(lengths) > 1:
        return [], f"their per-class lists have different lengths ({sorted(lengths)})"
    results = []
    for kind, make in _input_kinds(_special_labels([a, b])):
        batches = _batches_for(a, b, make, torch.Generator().manual_seed(seed))
        outcome = _run_both(a, b, batches, compile_spec, rtol, atol)
        if outcome is not None:
            outcome.inputs, outcome.shapes = kind, batches.shape_text
            results.append(outcome)
    return results, "" if results else "neither accepts any of the generated inputs"


@dataclass
class _Batches:
    steps: list[tuple[Any, Any]]
    shape_text: str


def _input_kinds(labels: Sequence[int | str]) -> list[tuple[str, Callable[..., tuple[Any, Any]]]]:
    """Every kind of input tried. Class indices come plain and then with each label that either
    loss ignores (or reads as background) at a few positions: a loss that does not ignore it
    refuses it, which tells ``focal()`` from ``focal(ignore_index=255)``."""
    with_labels = [
        (f"class indices with {'the background label C' if label == 'background' else f'label {label}'}",
         functools.partial(_indices, label=label))
        for label in labels
    ]
    return [
        ("class indices", _indices),
        *with_labels,
        ("multi-hot targets", _multi_hot),
        ("soft targets", _soft),
        ("regression targets", _regression),
        ("boxes", _boxes),
        ("box-edge distances", _distances),
    ]


def _special_labels(specs: Sequence[LossSpec]) -> list[int | str]:
    """Every ignore_index of the losses (tasks included), and "background" if one reads index C so."""
    ignored: set[int] = set()
    background = False
    stack = [t.loss for spec in specs for t in spec.terms]
    while stack:
        node = stack.pop()
        if "ignore_index" in type(node).model_fields:
            ignored.add(node.ignore_index)
        background = background or bool(getattr(node, "background", False))
        stack += list(node.children())
        for tasks in (getattr(node, name) for name in node.task_fields):
            stack += [t.loss for task in tasks.values() for t in task.terms]
    return [*sorted(ignored), *(["background"] if background else [])]


def _shape_of(specs: Sequence[LossSpec]) -> _Shape:
    lengths = set().union(*(per_class_lengths(s) for s in specs))
    return _Shape(batch=4, classes=max(lengths) if lengths else 3)


def _logits(shape: _Shape, generator: Any) -> Any:
    import torch

    size = (shape.batch, shape.classes, *shape.spatial)
    return torch.randn(size, generator=generator, dtype=torch.float64) * 2


def _indices(shape: _Shape, generator: Any, label: int | str | None = None) -> tuple[Any, Any]:
    import torch

    x = _logits(shape, generator)
    y = torch.randint(0, shape.classes, (shape.batch, *shape.spatial), generator=generator)
    if label is not None:  # three positions of the label
        y.view(-1)[:3] = shape.classes if label == "background" else label
    return x, y


def _multi_hot(shape: _Shape, generator: Any) -> tuple[Any, Any]:
    import torch

    x = _logits(shape, generator)
    return x, (torch.rand(x.shape, generator=generator, dtype=torch.float64) < 0.3).to(torch.float64)


def _soft(shape: _Shape, generator: Any) -> tuple[Any, Any]:
    import torch

    x = _logits(shape, generator)
    return x, torch.rand(x.shape, generator=generator, dtype=torch.float64)


def _regression(shape: _Shape, generator: Any) -> tuple[Any, Any]:
    import torch

    x = _logits(shape, generator)
    return x, torch.randn(x.shape, generator=generator, dtype=torch.float64)


def _boxes(shape: _Shape, generator: Any) -> tuple[Any, Any]:
    import torch

    count = shape.batch * 4
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 10
    size = 1 + 3 * torch.rand(count, 2, generator=generator, dtype=torch.float64)
    target = torch.cat([corner, corner + size], dim=1)
    return target + torch.randn(count, 4, generator=generator, dtype=torch.float64) * 0.5, target


def _distances(shape: _Shape, generator: Any) -> tuple[Any, Any]:
    import torch

    count = shape.batch * 4
    return (torch.randn(count, 4, 17, generator=generator, dtype=torch.float64),
            torch.rand(count, 4, generator=generator, dtype=torch.float64) * 16)


def _batches_for(a: LossSpec, b: LossSpec, make: Callable[..., Any], generator: Any) -> _Batches:
    a_tasks, b_tasks = _tasks_node(a), _tasks_node(b)
    if a_tasks is None:
        shape = _shape_of([a, b])
        steps = [make(shape, generator) for _ in range(STEPS)]
        return _Batches(steps, _shapes_text(steps[0]))
    # Multi-task: every task gets this kind of input, shaped for its own losses.
    steps = []
    for _ in range(STEPS):
        inputs, targets = {}, {}
        for name in a_tasks.tasks:
            shape = _shape_of([a_tasks.tasks[name], b_tasks.tasks[name]])
            inputs[name], targets[name] = make(shape, generator)
        steps.append((inputs, targets))
    return _Batches(steps, "for every task")


def _shapes_text(step: tuple[Any, Any]) -> str:
    x, y = step
    return f"(predictions {list(x.shape)}, targets {list(y.shape)})"


def _run_both(a: LossSpec, b: LossSpec, batches: _Batches, compile_spec: Any, rtol: float,
              atol: float) -> Evaluation | None:
    import torch

    outputs = []
    for spec in (a, b):
        try:
            module = compile_spec(spec.without_names(), distributed=False).double()
            module.train()
            values = []
            for inputs, targets in batches.steps:
                leaves = _leaves(inputs)
                _observe(module, spec)
                value = module(inputs, targets)
                grads = torch.autograd.grad(value.sum(), leaves, allow_unused=True)
                values.append((value.detach(), [g if g is not None else torch.zeros_like(x)
                                                for g, x in zip(grads, leaves)]))
            outputs.append(values)
        except LossDSLError as error:
            outputs.append(error.reason)
        except Exception as error:  # noqa: BLE001 - torch refusing an input lossdsl let through
            outputs.append(f"{type(error).__name__}: {error}")
    failed = [isinstance(o, str) for o in outputs]
    if all(failed):
        return None
    if any(failed):
        who = "A fails" if failed[0] else "B fails"
        reason = outputs[0] if failed[0] else outputs[1]
        return Evaluation("", who, f"{reason} (the other computes a loss)")
    value_error = gradient_error = 0.0
    for step, ((va, ga), (vb, gb)) in enumerate(zip(*outputs), 1):
        if va.shape != vb.shape:
            return Evaluation("", "different", f"step {step}: the loss has shape {list(va.shape)} vs "
                              f"{list(vb.shape)}")
        value_error = max(value_error, float((va - vb).abs().max()) if va.numel() else 0.0)
        if not torch.allclose(va, vb, rtol=rtol, atol=atol):
            shown = (f"value {float(va):.6g} vs {float(vb):.6g}" if va.dim() == 0
                     else f"values differ by up to {value_error:.3g}")
            return Evaluation("", "different", f"step {step}: {shown}", value_error, None)
        for x_grad, y_grad in zip(ga, gb):
            gradient_error = max(gradient_error, float((x_grad - y_grad).abs().max()))
            if not torch.allclose(x_grad, y_grad, rtol=rtol, atol=atol):
                return Evaluation("", "different", f"step {step}: same value, the gradients differ by up "
                                  f"to {gradient_error:.3g}", value_error, gradient_error)
    return Evaluation("", "same", "", value_error, gradient_error)


def _leaves(inputs: Any) -> list[Any]:
    tensors = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    for tensor in tensors:
        tensor.requires_grad_(True)
    return tensors


def _observe(module: Any, spec: LossSpec) -> None:
    """dtp needs an indicator for its regression tasks before each step: the same for A and B."""
    from .multitask import task_is_regression

    node = _tasks_node(spec)
    if node is not None and node.kind_name() == "dtp":
        regression = {name: 0.5 for name, task in node.tasks.items() if task_is_regression(task)}
        if regression:
            module.observe(**regression)


__all__ = ["Evaluation", "LossDiff", "canonical", "compare", "evaluate", "spec_differences"]
