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
import uuid
from collections.abc import Iterator
from typing import Any

from .errors import LossConfigError, LossDSLError
from .located import Located

# OmegaConf's own resolvers that read nothing but the config itself.
INSIDE_RESOLVERS = frozenset(
    {"oc.select", "oc.decode", "oc.create", "oc.deprecated", "oc.dict.keys", "oc.dict.values"}
)
_RESOLVER_NAME = re.compile(r"\s*([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)\s*:")
_SPECIAL_CHARACTERS = "\\${}'\""
_SPECIAL = re.compile(r"[\\${}'\"]")
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
    """Whether the character at ``index`` follows an odd number of backslashes."""
    before = index
    while before > 0 and text[before - 1] == "\\":
        before -= 1
    return (index - before) % 2 == 1


def _interpolation_end(text: str, start: int) -> tuple[int, list[str]]:
    """The index past the ``}`` closing the interpolation at ``start``, and the resolver names used
    in it (nested ones included). An unclosed one runs to the end: OmegaConf reports it. A loop,
    not a recursion: a hostile file may nest ``${`` a million times."""
    names: list[str] = []
    open_ones: list[list[Any]] = []  # per open interpolation: [braces open in it, quote, a resolver?]
    index = start
    while index < len(text):
        if text[index] not in _SPECIAL_CHARACTERS:  # plain text: on to the next character that counts
            found = _SPECIAL.search(text, index)
            index = found.start() if found else len(text)
            continue
        if open_ones and text[index] == "\\":
            index += 2
            continue
        if text.startswith("${", index):
            match = _RESOLVER_NAME.match(text, index + 2)
            if match:
                names.append(match.group(1))
            elif text.startswith("${", index + 2):
                names.append("${...}")  # a resolver chosen by an interpolation: not one of ours
            open_ones.append([0, None, match is not None])
            index += 2
            continue
        char, current = text[index], open_ones[-1]
        if current[1]:
            current[1] = None if char == current[1] else current[1]
        elif char in "'\"" and current[2]:  # quoted resolver arguments may hold braces
            current[1] = char
        elif char == "{":
            current[0] += 1
        elif char == "}" and current[0]:
            current[0] -= 1
        elif char == "}":
            open_ones.pop()
            if not open_ones:
                return index + 1, names
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


class Masks:
    """Interpolations reaching outside the file swapped for markers that no resolver reads, and
    back: OmegaConf then resolves the in-file ones and leaves these as written (without parsing
    them: a hostile file may nest ``${`` thousands of times, which OmegaConf's parser takes
    minutes over)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        # A marker no config holds by chance: private-use characters around this call's own tag.
        self.tag = uuid.uuid4().hex[:8]
        self.marked = re.compile("\ue000" + self.tag + r":(\d+)\ue001")

    def mask(self, data: Any) -> Any:
        if isinstance(data, str):
            return self._mask(data) if "${" in data else data
        if isinstance(data, dict):
            return {key: self.mask(value) for key, value in data.items()}
        if isinstance(data, list):
            return [self.mask(value) for value in data]
        return data

    def _mask(self, text: str) -> str:
        out, last = [], 0
        for start, end in outside_spans(text):
            out += [text[last:start], f"\ue000{self.tag}:{len(self.texts)}\ue001"]
            self.texts.append(text[start:end])
            last = end
        out.append(text[last:])
        return "".join(out)

    def unmask(self, data: Any) -> Any:
        if isinstance(data, str):
            return self.marked.sub(lambda m: self.texts[int(m.group(1))], data) if "\ue000" in data else data
        if isinstance(data, dict):
            return {key: self.unmask(value) for key, value in data.items()}
        if isinstance(data, list):
            return [self.unmask(value) for value in data]
        return data


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
        error.reason = pattern.sub(lambda _, shown=shown: shown, error.reason)
        if error.hint:
            error.hint = pattern.sub(lambda _, shown=shown: shown, error.hint)
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
                written = value[start:end] if end - start <= 80 else value[start : start + 77] + "..."
                errors.append(LossConfigError(
                    f"{written} is not resolved here: lossdsl's command line never reads "
                    "the environment or runs resolvers, so this value cannot be checked",
                    hint="write the value in the file, or load the config in Python: lossdsl.load "
                    "resolves it, and its messages never show the value",
                ).located(location))
    return errors
