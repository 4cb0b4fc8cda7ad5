"""How a parameter's type and allowed range read in messages and in ``lossdsl explain``.

Derived from the pydantic annotations of the catalogue models, so a new name documents itself.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt

from .catalogue.base import LossNode
from .catalogue.schedules import accepts_schedule
from .printer import format_value


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _union_args(annotation: Any) -> tuple[Any, ...]:
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def describe_type(annotation: Any) -> str:
    words = []
    for arg in _union_args(annotation):
        arg = _unwrap(arg)
        origin = typing.get_origin(arg)
        if arg is type(None):
            words.append("none")
        elif arg is bool:
            words.append("true or false")
        elif arg is int:
            words.append("an integer")
        elif arg is float:
            words.append("a number")
        elif arg is str:
            words.append("a string")
        elif origin is Literal:
            words.append("one of " + ", ".join(map(str, typing.get_args(arg))))
        elif origin is tuple:
            inner = describe_type(typing.get_args(arg)[0])
            words.append(f"a list of {_plural(inner)}")
        elif origin is dict:
            words.append("a mapping")
        elif isinstance(arg, type) and issubclass(arg, LossNode):
            words.append("a loss")
        elif accepts_schedule(arg):
            words.append("a schedule (steps or ramp)")
        else:
            words.append(getattr(arg, "__name__", str(arg)))
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _plural(text: str) -> str:
    return {"a number": "numbers", "an integer": "integers", "a string": "strings"}.get(text, text)


def literal_values(annotation: Any) -> list[str]:
    values: list[str] = []
    for arg in _union_args(annotation):
        arg = _unwrap(arg)
        if typing.get_origin(arg) is Literal:
            values += [str(v) for v in typing.get_args(arg)]
    return values


def bounds_text(annotation: Any, field_metadata: list[Any] = ()) -> str | None:
    """The allowed range declared on a field (or on the elements of its list), e.g. 'in [0, 1)'.

    Pydantic moves a field's own constraints from its annotation into ``field_metadata``.
    """
    lower = upper = None
    stack = [annotation]
    pending = [list(field_metadata)]
    while stack or pending:
        if pending:
            metadata = pending.pop()
        else:
            current = stack.pop()
            if typing.get_origin(current) is not typing.Annotated:
                stack.extend(typing.get_args(current))
                continue
            base, *metadata = typing.get_args(current)
            stack.append(base)
        for meta in _flatten_metadata(metadata):
            if isinstance(meta, Ge):
                lower = ("[", meta.ge)
            elif isinstance(meta, Gt):
                lower = ("(", meta.gt)
            elif isinstance(meta, Le):
                upper = ("]", meta.le)
            elif isinstance(meta, Lt):
                upper = (")", meta.lt)
    if lower and upper:
        return f"in {lower[0]}{format_value(lower[1])}, {format_value(upper[1])}{upper[0]}"
    if lower:
        return (">= " if lower[0] == "[" else "> ") + format_value(lower[1])
    if upper:
        return ("<= " if upper[0] == "]" else "< ") + format_value(upper[1])
    return None


def _flatten_metadata(metadata: list[Any]) -> list[Any]:
    out = []
    for meta in metadata:
        nested = getattr(meta, "metadata", None)
        if nested:
            out += list(nested)
        else:
            out.append(meta)
    return out
