"""Interpolations that reach outside the file: ``${oc.env:...}`` and any resolver but OmegaConf's
in-file ones (SPEC section 5).

The command line never evaluates them: ``lossdsl check`` is a pre-commit hook that CI runs on
untrusted pull requests, whose logs anyone can read, so a config must not be able to print the
environment there. They stay as written, and each value holding one is reported as one that cannot
be checked. The Python API evaluates them (it runs in the user's own process, as the training does),
but its messages never show what they gave: an error is redacted, each value a resolver produced
replaced by the interpolation as written.

Plain data in, plain data out: OmegaConf itself is driven by ``lossdsl.interpolation``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .errors import LossConfigError, LossDSLError
from .located import Located

# OmegaConf's own resolvers that read nothing but the config itself.
INSIDE_RESOLVERS = frozenset(
    {"oc.select", "oc.decode", "oc.create", "oc.deprecated", "oc.dict.keys", "oc.dict.values"}
)
_RESOLVER_NAME = re.compile(r"\s*([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)\s*:")
# A value of at most this many characters is redacted only where it stands alone: "2" from a
# resolver must not turn every 2 of a message ("at most 2") into the interpolation.
_SHORT = 3


def outside_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each top-level ``${...}`` of ``text`` that is, or holds, a resolver
    reaching outside the file. ``\\${`` is OmegaConf's escape for a literal ``${``."""
    spans = []
    start = text.find("${")
    while start >= 0:
        if _escaped(text, start):
            start = text.find("${", start + 2)
            continue
        end, names = _interpolation_end(text, start)
        if any(name not in INSIDE_RESOLVERS for name in names):
            spans.append((start, end))
        start = text.find("${", end)
    return spans


def _escaped(text: str, index: int) -> bool:
    backslashes = len(text[:index]) - len(text[:index].rstrip("\\"))
    return backslashes % 2 == 1


def _interpolation_end(text: str, start: int) -> tuple[int, list[str]]:
    """The index past the ``}`` closing the interpolation at ``start``, and the resolver names used
    in it (nested ones included). An unclosed one runs to the end: OmegaConf reports it."""
    match = _RESOLVER_NAME.match(text, start + 2)
    names = [match.group(1)] if match else []
    if not match and text.startswith("${${", start):
        names.append("${...}")  # a resolver chosen by an interpolation: whatever it is, not ours
    index, depth, quote = start + 2, 0, None
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if text.startswith("${", index):
            index, inner = _interpolation_end(text, index)
            names += inner
            continue
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"" and match:  # quoted resolver arguments may hold braces
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return index + 1, names
            depth -= 1
        index += 1
    return len(text), names


def leaves(data: Any) -> Iterator[Any]:
    """Every value of plain data that is no mapping or list (dict keys excluded), None left out."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif value is not None:
            yield value


def reaches_outside(data: Any) -> bool:
    """Whether plain data holds an interpolation that reaches outside the file."""
    return any(isinstance(text, str) and "${" in text and outside_spans(text) for text in leaves(data))


def escape_outside(data: Any) -> Any:
    """Plain data with every interpolation that reaches outside the file escaped, so that OmegaConf
    resolves the in-file ones and gives these back as written."""
    if isinstance(data, str):
        return _escape(data) if "${" in data else data
    if isinstance(data, dict):
        return {key: escape_outside(value) for key, value in data.items()}
    if isinstance(data, list):
        return [escape_outside(value) for value in data]
    return data


def _escape(text: str) -> str:
    out, last = [], 0
    for start, end in outside_spans(text):
        out.append(text[last:start])
        # Every ${ inside the span too: an escaped outer one leaves the inner ones live otherwise.
        span = text[start:end]
        out.append("".join("\\" + part if part.startswith("${") and not _escaped(span, i) else part
                           for i, part in _split_at_openings(span)))
        last = end
    out.append(text[last:])
    return "".join(out)


def _split_at_openings(span: str) -> Iterator[tuple[int, str]]:
    cuts = [i for i in range(len(span)) if span.startswith("${", i)] + [len(span)]
    if cuts[0] != 0:
        yield 0, span[: cuts[0]]
    for begin, end in zip(cuts, cuts[1:]):
        yield begin, span[begin:end]


def hidden_values(written: Any, resolved: Any) -> list[tuple[str, str]]:
    """``(text, interpolation)`` for each value a resolver gave: ``written`` is the loss with only
    its in-file interpolations resolved, ``resolved`` the same loss with all of them."""
    pairs: list[tuple[str, str]] = []
    stack = [(written, resolved)]
    while stack:
        before, after = stack.pop()
        if isinstance(before, str) and "${" in before and outside_spans(before):
            pairs += _values_of(before, after)
        elif isinstance(before, dict) and isinstance(after, dict):
            stack.extend((value, after[key]) for key, value in before.items() if key in after)
        elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            stack.extend(zip(before, after))
    return [(text, shown) for text, shown in pairs if text]


def _values_of(written: str, resolved: Any) -> list[tuple[str, str]]:
    spans = outside_spans(written)
    if isinstance(resolved, str):
        # The text between the interpolations is the file's own: what lies between is theirs.
        pattern, last = ["^"], 0
        for start, end in spans:
            pattern += [re.escape(written[last:start]), "(.*?)"]
            last = end
        pattern += [re.escape(written[last:]), "$"]
        match = re.match("".join(pattern), resolved, re.DOTALL)
        # The whole value first (the longest is redacted first): where it is shown whole, no split
        # of it between two interpolations can leave a piece behind.
        whole = [(resolved, written)]
        if match:
            return whole + [(text, written[start:end]) for text, (start, end) in zip(match.groups(), spans)]
        return whole
    return [(str(leaf), written) for leaf in leaves(resolved)]


def redact(error: LossDSLError, hidden: list[tuple[str, str]]) -> LossDSLError:
    """``error`` with every value a resolver gave shown as the interpolation that gave it."""
    for text, shown in sorted(hidden, key=lambda pair: -len(pair[0])):
        pattern = re.compile((r"(?<![\w.])" + re.escape(text) + r"(?![\w.])") if len(text) <= _SHORT
                             else re.escape(text))
        error.reason = pattern.sub(lambda _: shown, error.reason)
        if error.hint:
            error.hint = pattern.sub(lambda _: shown, error.hint)
        if error.source:
            error.source, error.column = _redact_source(error, pattern, shown)
    error.args = (error.reason,)
    return error


def _redact_source(error: LossDSLError, pattern: re.Pattern[str], shown: str) -> tuple[str, int | None]:
    """The source with the value replaced, and the caret's column moved by what that added before
    it on its line."""
    column = error.column
    if error.line is not None and column is not None:
        lines = error.source.split("\n")
        if 1 <= error.line <= len(lines):
            line = lines[error.line - 1]
            before = [m for m in pattern.finditer(line) if m.end() <= column - 1]
            column += sum(len(shown) - (m.end() - m.start()) for m in before)
    return pattern.sub(lambda _: shown, error.source), column


def unresolved_sites(item: Located) -> list[LossConfigError]:
    """One error per interpolation reaching outside the file in a loss left unresolved (the
    command line's reading), located at the interpolation."""
    errors = []
    stack = [item]
    while stack:
        current = stack.pop()
        value = current.value
        if isinstance(value, dict):
            stack.extend(reversed(list(value.values())))
        elif isinstance(value, list):
            stack.extend(reversed(value))
        elif isinstance(value, str) and "${" in value:
            for start, end in outside_spans(value):
                location = current.locate(start) if current.locate else current.location
                errors.append(LossConfigError(
                    f"{value[start:end]} is not resolved here: lossdsl's command line never reads "
                    "the environment or runs resolvers, so this value cannot be checked",
                    hint="write the value in the file, or load the config in Python: lossdsl.load "
                    "resolves it, and its messages never show the value",
                ).located(location))
    return errors
