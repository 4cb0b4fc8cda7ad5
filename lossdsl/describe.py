"""Human-readable views of a spec, for the command line."""

from __future__ import annotations

from .catalogue.base import LossNode
from .printer import format_number, format_value
from .spec import LossSpec


def spec_tree(spec: LossSpec, *, expand: bool = False) -> str:
    """Every term with its weight, reduction and head, then each node with all its parameters."""
    if expand:
        spec = spec.expand()
    lines = [f"loss: {spec.to_expr()}"]
    for index, term in enumerate(spec.terms, 1):
        # getattr: a plug-in node need not declare a head (catalogue.head_of treats it as None).
        head = getattr(term.loss, "head", None) or (
            "none (regression)" if term.loss.is_regression else "none"
        )
        lines.append(
            f"term {index}: weight {format_number(term.weight)}, reduction {term.reduction}, head {head}"
        )
        lines += _node_lines(term.loss, depth=1)
    return "\n".join(lines)


def _node_lines(node: LossNode, depth: int) -> list[str]:
    params = []
    for name in type(node).model_fields:  # on the class: the instance attribute is deprecated
        if name == "kind" or name in node.loss_fields:
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
