"""Human-readable views for the command line: a spec's tree, the catalogue, one name explained."""

from __future__ import annotations

from typing import Any

from .catalogue.base import LossNode
from .catalogue_text import CATEGORIES, catalogue_listing, explain  # noqa: F401  (the CLI's views)
from .printer import format_number, format_value
from .spec import LossSpec

# What each kind of module state is, for the tree's last section.
_STATE_NOTES = {
    "ghm_accumulator": "GHM-C bin counts, momentum average (updated in training mode)",
    "kpi_average": "dtp: running key performance indicator per task (training mode)",
    "kpi_seen": "dtp: whether each task's indicator has been observed",
    "log_variance": "uncertainty: log-variance s of the task, starts at 0",
    "scale": "uncertainty (positive form): c of the task, starts at 1",
}


# -- the tree of one spec ------------------------------------------------------------------------


def spec_tree(spec: LossSpec, *, expand: bool = False) -> str:
    """Each term with weight, reduction and head, each node with all its parameters (defaults
    marked), then the learnable parameters and running buffers the compiled module holds."""
    from .compiler import compile_spec

    if expand:
        spec = spec.expand()
    lines = [f"loss: {spec.to_expr()}"]
    lines += _terms_lines(spec, depth=0)
    module = compile_spec(spec)
    lines.append("learnable parameters:" + ("" if any(True for _ in module.parameters()) else " none"))
    for name, parameter in module.named_parameters():
        lines.append(f"  {name}  {_shape(parameter)}  {_note(name)}")
    buffers = [(name, buffer) for name, buffer in module.named_buffers() if _is_state(module, name)]
    lines.append("running buffers:" + ("" if buffers else " none"))
    for name, buffer in buffers:
        lines.append(f"  {name}  {_shape(buffer)}  {_note(name)}")
    return "\n".join(lines)


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
        head = getattr(node, "head", None) or (
            "none (regression)" if node.is_regression else "none (no p_t: blocks cannot wrap it)"
        )
        lines.append(
            f"{pad}term {index}: weight {format_number(term.weight)}, reduction {term.reduction}, "
            f"head {head}"
        )
        lines += _node_lines(node, depth + 1)
    return lines


def _node_lines(node: LossNode, depth: int) -> list[str]:
    params = []
    for name in type(node).model_fields:  # on the class: the instance attribute is deprecated
        if name == "kind" or name in node.loss_fields or name in node.task_fields:
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
