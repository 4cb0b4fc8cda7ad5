"""Human-readable views for the command line: a spec's tree, the catalogue, one name explained."""

from __future__ import annotations

from typing import Any

from .catalogue.base import LossNode
from .catalogue.schedules import is_schedule, spec_schedules
from .catalogue_text import CATEGORIES, catalogue_listing, explain  # noqa: F401  (the CLI's views)
from .printer import format_number, format_value, schedule_to_dict, schedule_to_expr, weight_to_expr
from .spec import LossSpec

# What each kind of module state is, for the tree's last section.
_STATE_NOTES = {
    "ghm_accumulator": "GHM-C bin counts, momentum average (updated in training mode)",
    "kpi_average": "dtp: running key performance indicator per task (training mode)",
    "kpi_seen": "dtp: whether each task's indicator has been observed",
    "log_variance": "uncertainty: log-variance s of the task, starts at 0",
    "scale": "uncertainty (positive form): c of the task, starts at 1",
    "clock": "the schedules' clock: the epoch (set_epoch) and the training steps so far",
    "class_counts": "class counts (online, seesaw), sized by the first training call",
    "pos_grad": "eqlv2: positive gradient statistics per class (training mode)",
    "neg_grad": "eqlv2: negative gradient statistics per class (training mode)",
}


# -- the tree of one spec ------------------------------------------------------------------------


def spec_tree(spec: LossSpec, *, expand: bool = False, module: Any = None) -> str:
    """Each term with weight, reduction and head, each node with all its parameters (defaults
    marked), then the learnable parameters and running buffers of the compiled module (``module``,
    or the spec compiled here), in aligned columns."""
    if expand:
        spec = spec.expand()
    if module is None:
        from .compiler import compile_spec

        module = compile_spec(spec)
    lines = [f"loss: {spec.to_expr()}"]
    lines += _terms_lines(spec, depth=0)
    return "\n".join(lines + _schedule_lines(spec, module) + _state_lines(spec, module))


def clock_reading(module: Any) -> tuple[int, int]:
    """A compiled loss's (epoch, step); a loss without a clock is at its start, (0, 0)."""
    clock = getattr(module, "clock", None)
    return (0, 0) if clock is None else (clock.host_epoch, int(clock.step))


def schedule_rows(spec: LossSpec, module: Any) -> list[dict[str, Any]]:
    """Every schedule of the loss, where it is, and its value at the module's clock now."""
    epoch, step = clock_reading(module)
    rows = []
    for where, schedule in spec_schedules(spec):
        now = schedule.value_at(epoch if schedule.over == "epoch" else step)
        silent = where.endswith("weight") and schedule.over == "epoch" and now == 0
        rows.append({"where": where, "schedule": schedule, "now": now, "computed": not silent})
    return rows


def _schedule_lines(spec: LossSpec, module: Any) -> list[str]:
    rows = schedule_rows(spec, module)
    if not rows:
        return []
    epoch, step = clock_reading(module)
    texts = [(row["where"], schedule_to_expr(row["schedule"])) for row in rows]
    widths = [max(len(text[column]) for text in texts) for column in (0, 1)]
    lines = [f"schedules (epoch {epoch}, step {step}):"]
    for (where, text), row in zip(texts, rows):
        note = "" if row["computed"] else " (the term is not computed)"
        now = format_number(row["now"])
        lines.append(f"  {where.ljust(widths[0])}  {text.ljust(widths[1])}  now {now}{note}")
    return lines


def _state_lines(spec: LossSpec, module: Any) -> list[str]:
    parameters = [(name, _shape(tensor), _note(name)) for name, tensor in module.named_parameters()]
    buffers = [(name, _shape(tensor), _note(name)) for name, tensor in module.named_buffers()
               if _is_state(module, name)]
    # One set of column widths for both sections, so the shapes and notes line up under each other.
    rows = parameters + buffers
    widths = [max((len(row[column]) for row in rows), default=0) for column in (0, 1)]

    def row_line(name: str, shape: str, note: str) -> str:
        return f"  {name.ljust(widths[0])}  {shape.ljust(widths[1])}  {note}".rstrip()

    lines = ["learnable parameters:" + ("" if parameters else " none")]
    lines += [row_line(*row) for row in parameters]
    lines.append("running buffers:" + ("" if buffers else " none"))
    lines += [row_line(*row) for row in buffers]
    return lines


def spec_html(spec: LossSpec, module: Any = None) -> str:
    """The tree as HTML for notebooks: a spec shows its terms; a compiled loss (``module``) adds
    its learnable parameters and running buffers."""
    import html

    lines = [f"loss: {spec.to_expr()}"] + _terms_lines(spec, depth=0)
    if module is not None:
        lines += _schedule_lines(spec, module) + _state_lines(spec, module)
        title = f"lossdsl.compile({spec.to_expr()!r})"
    else:
        title = f"LossSpec {spec.to_expr()}"
    return (
        f"<details open><summary><code>{html.escape(title)}</code></summary>"
        f"<pre>{html.escape(chr(10).join(lines))}</pre></details>"
    )


# -- the same as a JSON document --------------------------------------------------------------


COMPILE_FORMAT = "lossdsl.compile/1"


def spec_document(spec: LossSpec, *, module: Any = None) -> dict[str, Any]:
    """What the tree shows, as plain data (``lossdsl compile --format json``; README "Command line"
    documents the shape). ``loss`` holds the node form, so ``lossdsl.load(doc["loss"])`` (or
    ``lossdsl compile doc.json``, which finds the key) gives the spec back."""
    if module is None:
        from .compiler import compile_spec

        module = compile_spec(spec)

    def rows(named: Any) -> list[dict[str, Any]]:
        return [{"name": name, "dtype": str(tensor.dtype).replace("torch.", ""),
                 "shape": list(tensor.shape), "note": _note(name)} for name, tensor in named]

    # No top-level "expr", "terms", "kind" or "tasks": those would make the document read as a loss
    # itself, where `lossdsl compile doc.json` should find its "loss" member.
    document = {
        "format": COMPILE_FORMAT,
        "expression": spec.to_expr(),
        "expanded": spec.expand().to_expr(),
        "loss": spec.to_dict(),
        "tree": _terms_document(spec, module),
    }
    schedules = schedule_rows(spec, module)
    if schedules:  # a loss with schedules: its clock, and each schedule with its value now
        document["clock"] = dict(zip(("epoch", "step"), clock_reading(module)))
        document["schedules"] = [{**row, "schedule": schedule_to_dict(row["schedule"]),
                                  "expression": schedule_to_expr(row["schedule"])} for row in schedules]
    document["parameters"] = rows(module.named_parameters())
    document["buffers"] = rows((name, b) for name, b in module.named_buffers() if _is_state(module, name))
    return document


def _terms_document(spec: LossSpec, module: Any) -> list[dict[str, Any]]:
    keys = getattr(module, "keys", None) or [None] * len(spec.terms)
    out = []
    for index, (term, key) in enumerate(zip(spec.terms, keys), 1):
        out.append({
            "index": index,
            "key": key,
            "name": term.name,
            "weight": schedule_to_dict(term.weight) if is_schedule(term.weight) else term.weight,
            "reduction": term.reduction,
            "head": getattr(term.loss, "head", None),
            "node": _node_document(term.loss, module),
        })
    return out


def _node_document(node: LossNode, module: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": node.kind_name(), "parameters": {}}
    for name in type(node).model_fields:
        if name == "kind" or name in node.loss_fields or name in node.task_fields or name in node.spec_fields:
            continue
        value = getattr(node, name)
        out["parameters"][name] = {"value": _plain_value(value), "default": value == node.default_for(name)}
    for name in node.loss_fields:
        out[name] = _node_document(getattr(node, name), module)
    for name in node.spec_fields:  # deep supervision's inner loss, compiled as module.inner
        inner = getattr(node, name)
        out[name] = {"expression": inner.to_expr(), "tree": _terms_document(inner, module.inner)}
    for name in node.task_fields:
        out[name] = {
            task: {"expression": task_spec.to_expr(), "tree": _terms_document(task_spec, module.tasks[task])}
            for task, task_spec in getattr(node, name).items()
        }
    return out


def _plain_value(value: Any) -> Any:
    if is_schedule(value):
        return schedule_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def _terms_lines(spec: LossSpec, depth: int) -> list[str]:
    pad = "  " * depth
    lines = []
    for index, term in enumerate(spec.terms, 1):
        node = term.loss
        tasks = getattr(node, "tasks", None)
        if isinstance(tasks, dict):  # multi-task: the weighting, then each task's own terms
            lines += _node_lines(node, depth + 1)
            for name, task in tasks.items():
                lines.append(f"{pad}  task {name}:")
                lines += _terms_lines(task, depth + 2)
            continue
        if node.spec_fields:  # deep supervision: its weights, then the loss at every scale
            lines += _node_lines(node, depth + 1)
            for name in node.spec_fields:
                lines.append(f"{pad}  at every scale:")
                lines += _terms_lines(getattr(node, name), depth + 2)
            continue
        head = getattr(node, "head", None) or (
            "none (regression)" if node.is_regression else "none (no p_t: blocks cannot wrap it)"
        )
        named = f" ({term.name})" if term.name else ""
        lines.append(
            f"{pad}term {index}{named}: weight {weight_to_expr(term.weight)}, reduction {term.reduction}, "
            f"head {head}"
        )
        lines += _node_lines(node, depth + 1)
    return lines


def _node_lines(node: LossNode, depth: int) -> list[str]:
    params = []
    for name in type(node).model_fields:  # on the class: the instance attribute is deprecated
        if name == "kind" or name in node.loss_fields or name in node.task_fields or name in node.spec_fields:
            continue
        value = getattr(node, name)
        shown = f"{name}={format_value(value)}"
        params.append(shown if value != node.default_for(name) else f"{shown} (default)")
    text = "  " * depth + node.kind_name()
    if params:
        text += ": " + ", ".join(params)
    lines = [text]
    for child in node.children():
        lines += _node_lines(child, depth + 1)
    return lines


def _shape(tensor: Any) -> str:
    dtype = str(tensor.dtype).replace("torch.", "")
    return f"{dtype}[{', '.join(str(d) for d in tensor.shape)}]"


def _note(name: str) -> str:
    for key, note in _STATE_NOTES.items():
        if key in name.split("."):
            return note
    return ""


def _is_state(module: Any, name: str) -> bool:
    """Running state is what state_dict saves; constants (class weights) are not listed."""
    return name in module.state_dict()


# -- the catalogue: see lossdsl.catalogue_text -----------------------------------------------------
