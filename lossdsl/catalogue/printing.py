"""Specs back to text and to plain data: the canonical expression and the structured node form.

One small function per shape (the sqlglot generator pattern). Parameters print in declaration order
and defaults are left out, so equal specs print equal text.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .base import LossNode
from .schedules import ScheduleBase

if TYPE_CHECKING:  # specs are printed by shape (their terms), not imported: spec.py imports this module
    from .spec import LossSpec, Term


def _is_spec(value: Any) -> bool:
    return hasattr(value, "terms") and not isinstance(value, LossNode)


def format_number(value: float | int) -> str:
    """Shortest text that parses back to the same number (2.0 -> '2', 1e-08 -> '1e-08')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float)):
        return format_number(value)
    if isinstance(value, str):
        if value.isidentifier() and value not in ("true", "false", "none", "True", "False", "None", "null"):
            return value
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, LossNode):
        return node_to_expr(value)
    if isinstance(value, ScheduleBase):
        return schedule_to_expr(value)
    if _is_spec(value):
        return spec_to_expr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot print {type(value).__name__}")


def schedule_to_expr(schedule: ScheduleBase) -> str:
    """``steps([0, 0.9999], at=[160])``, ``ramp(0, 1, end=10)``: arguments at their defaults left out."""
    values = schedule.values
    args = [format_value(values)] if schedule.name == "steps" else [format_value(v) for v in values]
    args += [f"{name}={format_value(value)}" for name, value in _schedule_arguments(schedule)]
    return f"{schedule.name}({', '.join(args)})"


def schedule_to_dict(schedule: ScheduleBase) -> dict[str, Any]:
    """The mapping form of a schedule: ``{schedule: ramp, values: [0, 1], end: 10}``."""
    out: dict[str, Any] = {"schedule": schedule.name, "values": list(schedule.values)}
    out.update((name, list(value) if isinstance(value, tuple) else value)
               for name, value in _schedule_arguments(schedule))
    return out


def _schedule_arguments(schedule: ScheduleBase) -> list[tuple[str, Any]]:
    """The arguments besides the values that differ from their defaults, ``over`` last."""
    fields = type(schedule).model_fields
    names = [name for name in fields if name not in ("schedule", "values", "over")] + ["over"]
    return [(name, getattr(schedule, name)) for name in names
            if getattr(schedule, name) != fields[name].default]


def weight_to_expr(weight: float | ScheduleBase) -> str:
    return format_value(weight) if isinstance(weight, ScheduleBase) else format_number(weight)


def _is_negative(weight: float | ScheduleBase) -> bool:
    """Printed after a minus sign: a negative number, or a schedule that is never positive."""
    if isinstance(weight, ScheduleBase):
        return max(weight.values) <= 0 and min(weight.values) < 0
    return weight < 0


def _negated(weight: float | ScheduleBase) -> float | ScheduleBase:
    return weight.scaled(-1.0) if isinstance(weight, ScheduleBase) else -weight


def node_to_expr(node: LossNode, extra: dict[str, Any] | None = None, full: bool = False) -> str:
    """``name(positional, key=value, ...)``; ``full`` also prints the numeric parameters of blocks
    at their defaults (``gamma=2``), for explanations rather than canonical text."""
    params = node.parameters()
    if full and node.category != "likelihood":
        params = {
            name: value for name in type(node).model_fields
            if name != "kind" and (value := getattr(node, name)) is not None
            and (name in params or (isinstance(value, (int, float)) and not isinstance(value, bool)))
            # gamma is unused once gamma_pos/gamma_neg are given
            and not (name == "gamma" and getattr(node, "gamma_pos", None) is not None)
        }
    if node.bare and not extra and list(params) == [node.positional]:
        return format_value(params[node.positional])
    args = []
    if node.positional and node.positional in params:
        child = params.pop(node.positional)
        nested = full and isinstance(child, LossNode)
        args.append(node_to_expr(child, full=True) if nested else format_value(child))
    args += [f"{name}={format_value(value)}" for name, value in params.items()]
    # Extras are the term's reduction, an enumerated name: printed bare, so reduction=none reads as
    # written (format_value would quote "none" to keep it apart from the null value).
    args += [f"{name}={value}" for name, value in (extra or {}).items()]
    return f"{node.kind_name()}({', '.join(args)})"


def term_to_expr(term: Term, *, with_weight: bool = True) -> str:
    """A term as text; its reduction prints on the outermost call, where the syntax puts it."""
    extra = {"reduction": term.reduction} if term.reduction != term.loss.default_reduction else None
    text = node_to_expr(term.loss, extra)
    if with_weight and term.weight != 1:
        text = f"{weight_to_expr(term.weight)} * {text}"
    return text


def spec_to_expr(spec: LossSpec) -> str:
    """The canonical expression. Term names have no syntax and are left out (``spec_to_dict`` keeps
    them)."""
    parts: list[str] = []
    for term in spec.terms:
        if not parts:
            parts.append(term_to_expr(term))
        elif _is_negative(term.weight):
            flipped = term.model_copy(update={"weight": _negated(term.weight)})
            parts.append(f"- {term_to_expr(flipped)}")
        else:
            parts.append(f"+ {term_to_expr(term)}")
    return " ".join(parts)


def _plain(value: Any) -> Any:
    if isinstance(value, LossNode):
        return node_to_dict(value)
    if isinstance(value, ScheduleBase):
        return schedule_to_dict(value)
    if _is_spec(value):
        return spec_to_dict(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, str):  # a counts file is written as its path (catalogue.counts.CountsFile)
        return str(value)
    return value


def node_to_dict(node: LossNode) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": node.kind_name()}
    out.update({name: _plain(value) for name, value in node.parameters().items()})
    return out


def spec_to_dict(spec: LossSpec) -> dict[str, Any]:
    if len(spec.terms) == 1 and spec.terms[0].weight == 1 and spec.terms[0].name is None:
        term = spec.terms[0]
        out = node_to_dict(term.loss)
        if term.reduction != term.loss.default_reduction:
            out["reduction"] = term.reduction
        return out
    terms = []
    for term in spec.terms:
        item: dict[str, Any] = {"loss": node_to_dict(term.loss)}
        if term.weight != 1:
            item["weight"] = _plain(term.weight)
        if term.reduction != term.loss.default_reduction:
            item["reduction"] = term.reduction
        if term.name is not None:
            item["name"] = term.name
        terms.append(item)
    return {"terms": terms}
