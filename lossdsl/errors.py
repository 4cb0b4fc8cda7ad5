"""The one error type of lossdsl, and how its messages point at the user's text.

Inner code raises these with a bare reason and, where it knows one, a position; the public entry points
attach the source text once, so every message a user sees shows their own line with a caret under the
offending character and never an internal traceback (the einops pattern).
"""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A 1-based line and column in a source text (an expression, or a whole YAML file)."""

    line: int
    column: int
    text: str | None = None
    filename: str | None = None



def offset_locator(text: str, filename: str | None = None) -> Callable[[int], Location]:
    """Offsets in ``text`` -> Locations, in O(log n) per call (the parser locates every token)."""
    newlines = [i for i, char in enumerate(text) if char == "\n"]

    def locate(offset: int) -> Location:
        offset = max(0, min(offset, len(text)))
        line = bisect.bisect_left(newlines, offset)
        start = newlines[line - 1] + 1 if line else 0
        end = newlines[line] if line < len(newlines) else len(text)
        if _in_trailing_returns(text, offset, start, end):
            # The excerpt drops a line's trailing "\r"s (a CRLF file's line ends): a column inside
            # or past them would put the caret beyond the shown line, so it goes just past its end.
            offset = start + len(text[start:end].rstrip("\r"))
        return Location(line + 1, offset - start + 1, text, filename)

    return locate


def _in_trailing_returns(text: str, offset: int, start: int, end: int) -> bool:
    """Whether ``offset`` sits in (or just after) the run of "\r"s that ends a line; cheap unless
    a "\r" is next to it, so locating every token of a long line stays fast."""
    near_return = text[offset : offset + 1] == "\r" or (offset > start and text[offset - 1] == "\r")
    return near_return and not text[offset:end].strip("\r")


class LossDSLError(ValueError):
    """Base of every error lossdsl raises on bad input (text, YAML, parameters or tensors).

    Attributes:
        reason: the message without location or source excerpt.
        line, column: 1-based position in ``source`` when the error points at text, else None.
        source: the text the position refers to (an expression or a whole YAML file).
        filename: the file the text came from, when it came from one.
        path: where in a YAML/mapping config the error sits, e.g. ``model.loss.terms[0].gamma``.
        hint: an extra line such as "did you mean 'gamma'?".
    """

    def __init__(
        self,
        reason: str,
        *,
        line: int | None = None,
        column: int | None = None,
        source: str | None = None,
        filename: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        self.source = source
        self.filename = filename
        self.path = path
        self.hint = hint
        super().__init__(reason)

    def located(self, location: Location | None = None, *, path: str | None = None) -> LossDSLError:
        """Fill in location details that are still missing (the innermost, most precise one wins)."""
        if self.line is None and location is not None:
            self.line, self.column = location.line, location.column
            self.source = location.text
            if self.filename is None:
                self.filename = location.filename
        if self.path is None and path:
            self.path = path
        return self

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        # Frameworks that report an exception by its repr (Hydra's instantiate) show the whole
        # message: the position, the source line with its caret and the hint, on lines of their own.
        return f"{type(self).__name__}: {self.render()}"

    def render(self) -> str:
        """``file:line:col: reason``, then the source line and a caret, then the hint."""
        where = []
        if self.filename:
            where.append(self.filename)
        if self.line is not None:
            where.append(str(self.line))
            if self.column is not None:
                where.append(str(self.column))
        head = ":".join(where)
        parts = [f"{head}: {self.reason}" if head else self.reason]
        if self.path and self.line is None:
            parts[0] += f" (at {self.path})"
        excerpt = self.excerpt()
        if excerpt:
            parts.append(excerpt)
        if self.hint:
            parts.append(self.hint)
        return "\n".join(parts)

    def excerpt(self) -> str:
        if self.source is None or self.line is None:
            return ""
        # Lines are split on "\n" only, as offset_locator counts them: splitlines() also breaks at
        # "\r", "\f", "\u2028"..., which put the caret under another line than the one counted.
        lines = self.source.split("\n")
        if not 1 <= self.line <= len(lines):
            return ""
        text = lines[self.line - 1].rstrip("\r")
        # Long lines are cut around the caret so the excerpt stays readable in a terminal.
        column = max(1, self.column or 1)
        start = max(0, column - 60)
        # Tabs and other unprintable characters (a stray "\r", NUL) show as one space each, so the
        # caret stays under the right character and the terminal is not disturbed.
        shown = "".join(c if c.isprintable() else " " for c in text[start : start + 100])
        prefix = "..." if start else ""
        caret = " " * (len(prefix) + column - 1 - start) + "^"
        return f"    {prefix}{shown}\n    {caret}"


class LossSyntaxError(LossDSLError):
    """The text of an expression does not follow the grammar."""


class LossSpecError(LossDSLError):
    """Well-formed text naming something the catalogue does not define, or a value out of range."""


class LossConfigError(LossDSLError):
    """A YAML file, mapping or key that does not hold a loss in one of the accepted forms."""


class LossInputError(LossDSLError):
    """Tensors given to a compiled loss that do not fit it (shapes, dtypes, values)."""


class MissingDependencyError(LossConfigError, ImportError):
    """An optional dependency a feature needs is not installed (matplotlib for plots). Both a
    LossDSLError (the command line prints it without a traceback) and an ImportError."""


def suggest(name: str, valid: Iterable[str]) -> str | None:
    """The closest valid spelling of ``name``, or None when nothing is close."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if close:
        return close[0]
    lowered = {v.lower(): v for v in valid}
    return lowered.get(name.lower())


def unknown_name_hint(name: str, valid: Iterable[str], what: str) -> str:
    """'did you mean X?' plus the list of what is valid, for unknown names and parameters."""
    valid = sorted(valid)
    best = suggest(name, valid)
    listed = ", ".join(valid) if valid else "none"
    if best:
        return f"did you mean '{best}'? valid {what}: {listed}"
    return f"valid {what}: {listed}"
