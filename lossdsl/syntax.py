"""Expression text -> located plain data.

The grammar lives in ``grammar/lossdsl.lark`` (shipped inside the package as ``lossdsl.grammar``). The
Transformer evaluates the numeric arithmetic (weights) and flattens sums, producing the same plain
structure the YAML loader produces:

- a call ``focal(gamma=2)`` -> ``{"kind": "focal", "gamma": 2}``; its positional argument sits under
  ``POSITIONAL`` until the validator knows which field receives it;
- a weighted sum -> ``{"terms": [{"weight": 0.5, "loss": {...}}, ...]}``;
- a bare name -> ``{"ref": "name"}`` (a ``define:`` or a catalogue name called with defaults);
- ``{seg: ce(), ...}`` -> ``{"tasks": {"seg": ..., ...}}``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer_NonRecursive, UnexpectedInput, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, VisitError

from .catalogue.schedules import SCHEDULES
from .errors import Location, LossDSLError, LossSyntaxError, offset_locator
from .located import MAX_DEPTH, POSITIONAL, Located

# Bounds on untrusted text: a loss expression is a line or a paragraph, never a megabyte.
MAX_CHARS = 20_000

Locate = Callable[[int], Location]

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}

_TOKEN_WORDS = {
    "RPAR": "')'",
    "LPAR": "'('",
    "COMMA": "','",
    "EQUAL": "'='",
    "COLON": "':'",
    "NUMBER": "a number",
    "NAME": "a name",
    "STRING": "a string",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "$END": "the end of the expression",
}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH"}


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(_grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _grammar_text() -> str:
    """The grammar installed inside the package, or, in a source checkout that was never
    installed, the repository's grammar/ folder beside the package."""
    try:
        return resources.files("lossdsl.grammar").joinpath("lossdsl.lark").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        source = Path(__file__).resolve().parent.parent / "grammar" / "lossdsl.lark"
        return source.read_text(encoding="utf-8")


# -- intermediate values of the arithmetic ------------------------------------------------------------


class _Number:
    """A numeric factor in the arithmetic, kept apart from losses until it becomes a weight."""

    __slots__ = ("value", "offset")

    def __init__(self, value: float, offset: int) -> None:
        self.value = value
        self.offset = offset


class _Terms:
    """A weighted sum of losses: [(weight, loss)], where each loss is a Located call/ref/mapping."""

    __slots__ = ("items", "offset")

    def __init__(self, items: list[tuple[float, Located]], offset: int) -> None:
        self.items = items
        self.offset = offset


class _Schedule:
    """A schedule call (``ramp(0, 1, end=10)``): a term's weight when it multiplies a loss, or a
    parameter's value. ``located`` is the plain mapping the YAML node form gives for it."""

    __slots__ = ("located", "offset")

    def __init__(self, located: Located, offset: int) -> None:
        self.located = located
        self.offset = offset


def _as_terms(value: Any) -> _Terms:
    if isinstance(value, _Terms):
        return value
    return _Terms([(1.0, value)], _offset_of(value))


def _offset_of(value: Any) -> int:
    return value.offset


class _Build(Transformer_NonRecursive):
    """Tree -> plain located data. Non-recursive: a thousand-term sum must not exhaust the stack."""

    def __init__(self, text: str, locate: Locate) -> None:
        super().__init__()
        self.text = text
        self.locate = locate

    # -- helpers
    def _error(self, reason: str, offset: int, hint: str | None = None) -> LossSyntaxError:
        return LossSyntaxError(reason, hint=hint).located(self.locate(offset))

    def _located(self, value: Any, offset: int) -> Located:
        return Located(value, self.locate(offset), offset=offset)

    def _need_loss(self, value: Any, op: str) -> None:
        if isinstance(value, _Number):
            raise self._error(
                f"cannot {op} a number and a loss: a constant has no gradient",
                value.offset,
                hint="weights multiply losses: write 0.5 * ce(), not ce() + 0.5",
            )
        if isinstance(value, _Schedule):
            raise self._error(
                f"cannot {op} a schedule and a loss: a schedule weighs a loss", value.offset,
                hint="multiply the loss by it: ramp(0, 1, end=10) * dice()",
            )

    # -- numbers and values
    def number(self, children: list[Token]) -> _Number:
        token = children[0]
        return _Number(self._number_value(token, 1), token.start_pos)

    def negative_number(self, children: list[Token]) -> _Number:
        token = children[0]
        return _Number(self._number_value(token, -1), token.start_pos - 1)

    def _number_value(self, token: Token, sign: int) -> float | int:
        text = str(token)
        if any(c in text for c in ".eE"):
            value: float | int = float(text)
            if not math.isfinite(value):
                raise self._error(f"number {text} is too large", token.start_pos)
        else:
            try:
                value = int(text)
            except ValueError:  # Python refuses int() of more than 4300 digits; keep it a LossDSLError
                raise self._error(f"number {text[:20]}... is too long", token.start_pos) from None
        return sign * value

    def word(self, children: list[Token]) -> Located:
        token = children[0]
        words = {"true": True, "false": False, "none": None, "True": True, "False": False,
                 "None": None, "null": None}
        value = words.get(str(token), str(token))
        return self._located(value, token.start_pos)

    def string(self, children: list[Token]) -> Located:
        token = children[0]
        raw = str(token)[1:-1]
        # Only the escapes a config needs; anything else stays literal (no eval, no surprises).
        text = raw.replace("\\\\", "\0").replace('\\"', '"').replace("\\'", "'").replace("\0", "\\")
        return self._located(text, token.start_pos)

    @v_args(meta=True)
    def list(self, meta: Any, children: list[Any]) -> Located:
        items = []
        for child in children:
            if isinstance(child, _Schedule):
                raise self._error("a list holds numbers, names or strings, not schedules", child.offset,
                                  hint="a whole parameter can be a schedule: eps=ramp(0, 1, end=10)")
            if child is not None:
                items.append(self._value(child))
        return self._located(items, meta.start_pos if not meta.empty else 0)

    def _value(self, child: Any) -> Located:
        if isinstance(child, _Number):
            return self._located(child.value, child.offset)
        if isinstance(child, _Schedule):
            return child.located
        if isinstance(child, Located) and child.is_mapping() and "kind" in child.value:
            # poly(loss=bce()): the grammar reads a call here so that schedules can be values.
            raise self._error(
                "a parameter value cannot be a call; the wrapped loss is the positional argument",
                self.text.index("(", child.offset),
                hint="for example poly(focal(gamma=2), eps=1)",
            )
        return child

    # -- losses
    def call(self, children: list[Any]) -> Located | _Schedule:
        name, arguments = children
        if str(name) in SCHEDULES:
            return self._schedule(name, arguments or [])
        params: dict[str, Located] = {"kind": self._located(str(name), name.start_pos)}
        keys: dict[str, Location | None] = {}
        for kind, key, value in arguments or []:
            if kind == "positional":
                value = self._positional_loss(value)
                if POSITIONAL in params:
                    raise self._error(
                        f"{name}() takes one positional loss; this is a second one", value.offset,
                        hint="combine losses with + outside the call: poly(a) + poly(b)",
                    )
                params[POSITIONAL] = value
                keys[POSITIONAL] = self.locate(value.offset)
            else:
                if key in params:
                    raise self._error(f"{key}= is given twice in {name}()", key.start_pos)
                params[str(key)] = value
                keys[str(key)] = self.locate(key.start_pos)
        node = self._located(params, name.start_pos)
        node.key_locations = keys
        return node

    def arguments(self, children: list[Any]) -> list[tuple[str, Any, Any]]:
        return [child for child in children if child is not None]

    def positional(self, children: list[Any]) -> tuple[str, Any, Any]:
        return ("positional", None, children[0])  # a loss's, or a schedule's values

    def _positional_loss(self, value: Any) -> Located:
        if isinstance(value, _Number) or (isinstance(value, Located) and value.is_list()):
            raise self._error(
                "a positional argument must be a loss; numbers are passed by name",
                value.offset, hint="for example poly(focal(), eps=1)",
            )
        if isinstance(value, _Schedule):
            raise self._error(
                "a positional argument must be a loss, not a schedule", value.offset,
                hint="a schedule weighs a loss (ramp(0, 1, end=10) * dice()) or is a parameter's "
                "value (gamma=ramp(0, 2, end=5))",
            )
        return self._loss(value)

    def _schedule(self, name: Token, arguments: list[tuple[str, Any, Any]]) -> _Schedule:
        """``steps([v0, v1], at=[t1])`` or ``ramp(a, b, end=t)`` as the plain mapping the YAML node
        form gives (``{schedule: ramp, values: [a, b], end: t}``); the validator checks the rest."""
        positional = [value for kind, _, value in arguments if kind == "positional"]
        params: dict[str, Located] = {"schedule": self._located(str(name), name.start_pos)}
        keys: dict[str, Location | None] = {}
        where = positional[0].offset if positional else name.start_pos
        if str(name) == "steps":
            if len(positional) != 1 or not (isinstance(positional[0], Located) and positional[0].is_list()):
                raise self._error("steps() takes its values as one list", where,
                                  hint="for example steps([0, 0.9999], at=[160])")
            params["values"] = positional[0]
        else:
            if len(positional) != 2 or not all(isinstance(v, _Number) for v in positional):
                raise self._error("ramp() takes two numbers, the value before start and the value from "
                                  "end on", where, hint="for example ramp(0, 1, end=10)")
            params["values"] = self._located([self._value(v) for v in positional], where)
        keys["values"] = self.locate(where)
        for kind, key, value in arguments:
            if kind != "keyword":
                continue
            if key in params:
                raise self._error(f"{key}= is given twice in {name}()", key.start_pos)
            if value.is_mapping():
                raise self._error(f"{name}()'s arguments are numbers and names, not schedules",
                                  value.offset)
            params[str(key)] = value
            keys[str(key)] = self.locate(key.start_pos)
        node = self._located(params, name.start_pos)
        node.key_locations = keys
        return _Schedule(node, name.start_pos)

    def keyword(self, children: list[Any]) -> tuple[str, Token, Located]:
        key, value = children
        return ("keyword", key, self._value(value))

    def ref(self, children: list[Token]) -> Located:
        token = children[0]
        return self._located({"ref": self._located(str(token), token.start_pos)}, token.start_pos)

    def group(self, children: list[Any]) -> Any:
        return children[0]

    @v_args(meta=True)
    def mapping(self, meta: Any, children: list[Any]) -> Located:
        tasks: dict[str, Located] = {}
        keys: dict[str, Location | None] = {}
        for name, value in (child for child in children if child is not None):
            if name in tasks:
                raise self._error(f"task '{name}' is given twice", name.start_pos)
            tasks[str(name)] = self._loss(value)
            keys[str(name)] = self.locate(name.start_pos)
        offset = meta.start_pos
        inner = self._located(tasks, offset)
        inner.key_locations = keys
        return self._located({"tasks": inner}, offset)

    def entry(self, children: list[Any]) -> tuple[Token, Any]:
        return children[0], children[1]

    # -- arithmetic
    def add(self, children: list[Any]) -> _Terms:
        left, right = children
        return self._combine(left, right, 1.0, "add")

    def sub(self, children: list[Any]) -> _Terms:
        left, right = children
        return self._combine(left, right, -1.0, "subtract")

    def _combine(self, left: Any, right: Any, sign: float, op: str) -> _Terms:
        if isinstance(left, (_Number, _Schedule)) and isinstance(right, (_Number, _Schedule)):
            raise self._error(
                "a sum needs at least one loss; this one only adds numbers", left.offset,
                hint="a loss is a call such as ce() or focal(gamma=2)",
            )
        self._need_loss(left, op)
        self._need_loss(right, op)
        terms = _as_terms(left)
        # Reuse the left list: each intermediate sum is consumed exactly once, so no copy is needed.
        offset = _offset_of(right)
        terms.items.extend((self._times(sign, w, offset), loss) for w, loss in _as_terms(right).items)
        return terms

    def mul(self, children: list[Any]) -> Any:
        left, right = children
        if isinstance(left, _Number) and isinstance(right, _Number):
            try:  # 0.5 * 10**400: a float times a huge integer overflows instead of giving inf
                return _Number(left.value * right.value, left.offset)
            except OverflowError:
                raise self._error("number is too large", right.offset) from None
        factors = (_Number, _Schedule)
        if isinstance(left, factors) and isinstance(right, factors):  # 2 * ramp(0, 1, end=10)
            return self._times(left, right, right.offset)
        if not isinstance(left, factors) and not isinstance(right, factors):
            raise self._error(
                "cannot multiply two losses; only a number or a schedule can weight a loss",
                _offset_of(right),
                hint="write a weighted sum instead, for example 0.5 * ce() + 0.5 * focal()",
            )
        factor, loss = (left, right) if isinstance(left, factors) else (right, left)
        return self._scale(loss, factor.value if isinstance(factor, _Number) else factor)

    def div(self, children: list[Any]) -> Any:
        left, right = children
        if isinstance(right, _Schedule):
            raise self._error("cannot divide by a schedule; only by a number", right.offset,
                              hint="multiply by a schedule instead: ramp(1, 0.5, end=10) * ce()")
        if not isinstance(right, _Number):
            raise self._error("cannot divide by a loss; only by a number", _offset_of(right))
        if right.value == 0:
            raise self._error("division by zero", right.offset)
        try:  # huge integers (10**400 / 3) overflow a float division: an error, not an OverflowError
            if isinstance(left, _Number):
                return _Number(left.value / right.value, left.offset)
            if isinstance(left, _Schedule):
                return self._times(left, _Number(1.0 / right.value, right.offset), right.offset)
            return self._scale(left, 1.0 / right.value)
        except OverflowError:
            raise self._error("number is too large", right.offset) from None

    def neg(self, children: list[Any]) -> Any:
        value = children[0]
        if isinstance(value, _Number):
            return _Number(-value.value, value.offset - 1)
        if isinstance(value, _Schedule):
            return self._times(value, _Number(-1.0, value.offset), value.offset)
        return self._scale(value, -1.0)

    def _scale(self, value: Any, factor: float | _Schedule) -> _Terms:
        if not isinstance(factor, _Schedule):
            try:
                factor = float(factor)  # an integer weight of 400 digits does not fit a float
            except OverflowError:
                factor = math.inf
        terms = _as_terms(value)
        offset = _offset_of(value)
        items = [(self._times(w, factor, offset), loss) for w, loss in terms.items]
        # Check the products too: each factor of ce()*2*2*...*2 is finite, the weight is not.
        if not all(isinstance(w, _Schedule) or math.isfinite(w) for w, _ in items):
            raise self._error("weight is too large", offset)
        terms.items = items
        return terms

    def _times(self, a: Any, b: Any, offset: int) -> Any:
        """A product of weights: numbers (floats or ``_Number``) and at most one schedule, whose
        values are then multiplied (``2 * ramp(0, 1, end=10)`` is ``ramp(0, 2, end=10)``)."""
        a_value = a.value if isinstance(a, _Number) else a
        b_value = b.value if isinstance(b, _Number) else b
        if isinstance(a_value, _Schedule) and isinstance(b_value, _Schedule):
            raise self._error("cannot multiply two schedules; a term's weight is one schedule",
                              b_value.offset, hint="fold the numbers into one schedule's values")
        if not isinstance(a_value, _Schedule) and not isinstance(b_value, _Schedule):
            product = a_value * b_value
            return _Number(product, a.offset) if isinstance(a, _Number) else product
        schedule, factor = (a_value, b_value) if isinstance(a_value, _Schedule) else (b_value, a_value)
        return schedule if factor == 1 else self._scaled_schedule(schedule, factor)

    def _scaled_schedule(self, schedule: _Schedule, factor: float) -> _Schedule:
        values = schedule.located.value.get("values")
        if values is None or not values.is_list():
            raise self._error("a schedule needs its values to be scaled", schedule.offset)
        scaled = []
        for item in values.value:
            if isinstance(item.value, bool) or not isinstance(item.value, (int, float)):
                raise self._error("a schedule's values are numbers", item.offset)
            try:
                product = float(item.value) * factor
            except OverflowError:
                product = math.inf
            if not math.isfinite(product):
                raise self._error("weight is too large", item.offset)
            scaled.append(Located(product, item.location, offset=item.offset))
        params = dict(schedule.located.value)
        params["values"] = Located(scaled, values.location, offset=values.offset)
        node = Located(params, schedule.located.location, dict(schedule.located.key_locations),
                       offset=schedule.offset)
        return _Schedule(node, schedule.offset)

    def _loss(self, value: Any) -> Located:
        """A loss-valued expression as located plain data: one call, or a sum of weighted terms."""
        if isinstance(value, (_Number, _Schedule)):
            what = "a number" if isinstance(value, _Number) else "a schedule, which weighs a loss"
            raise self._error(
                f"expected a loss, got {what}", value.offset,
                hint="a loss is a call such as ce() or focal(gamma=2)",
            )
        if isinstance(value, Located):
            return value
        terms = []
        for weight, loss in value.items:
            weight = weight.located if isinstance(weight, _Schedule) else self._located(weight, loss.offset)
            term = self._located({"weight": weight, "loss": loss}, loss.offset)
            terms.append(term)
        return self._located({"terms": self._located(terms, value.offset)}, value.offset)

    def finish(self, value: Any) -> Located:
        return self._loss(value)


def parse_text(text: str, locate: Locate | None = None) -> Located:
    """Parse an expression into located plain data. Raises LossSyntaxError with a caret."""
    if not isinstance(text, str):
        raise LossSyntaxError(f"an expression must be a string, got {type(text).__name__}")
    locate = locate or offset_locator(text)
    if len(text) > MAX_CHARS:
        raise LossSyntaxError(
            f"expression is {len(text)} characters long; the limit is {MAX_CHARS}",
            hint="split it with define: names in a YAML file",
        ).located(locate(MAX_CHARS))
    if not text.strip():
        raise LossSyntaxError("empty expression: expected a loss such as ce()").located(locate(0))
    unclosed = _check_brackets(text, locate)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc, locate, unclosed) from None
    builder = _Build(text, locate)
    try:
        return builder.finish(builder.transform(tree))
    except VisitError as exc:  # an error raised inside the Transformer arrives wrapped
        if isinstance(exc.orig_exc, LossDSLError):
            raise exc.orig_exc from None
        raise


def _check_brackets(text: str, locate: Locate) -> list[tuple[str, int]]:
    """Bound the nesting depth and report stray closing brackets where they are, before LALR does.

    Returns the brackets still open at the end, for the message when the text stops too early.
    """
    stack: list[tuple[str, int]] = []
    quote = None
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 2
                continue
            if char == quote or char == "\n":
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
            continue
        elif char in _OPENERS:
            stack.append((char, i))
            if len(stack) > MAX_DEPTH:
                raise LossSyntaxError(
                    f"expression nested deeper than {MAX_DEPTH} levels"
                ).located(locate(i))
        elif char in _CLOSERS:
            if not stack:
                raise LossSyntaxError(f"unmatched '{char}'").located(locate(i))
            opener, where = stack.pop()
            if _OPENERS[opener] != char:
                raise LossSyntaxError(
                    f"expected '{_OPENERS[opener]}' to close the '{opener}' at "
                    f"column {locate(where).column}, got '{char}'"
                ).located(locate(i))
        i += 1
    return stack


def _syntax_error(
    text: str, exc: UnexpectedInput, locate: Locate, unclosed: list[tuple[str, int]]
) -> LossSyntaxError:
    token = getattr(exc, "token", None)
    at_end = isinstance(exc, UnexpectedEOF) or (token is not None and token.type == "$END")
    if at_end:
        offset = len(text.rstrip())
    else:
        offset = getattr(exc, "pos_in_stream", None)
        if offset is None:
            offset = getattr(token, "start_pos", None)
        if offset is None:
            offset = len(text.rstrip())
    before = text[:offset].rstrip()
    previous = before[-1:] if before else ""
    if isinstance(exc, UnexpectedCharacters):
        char = text[offset] if offset < len(text) else ""
        if char in "\"'":
            reason = "unterminated string: missing closing quote"
        else:
            reason = f"unexpected character {char!r}"
        return LossSyntaxError(reason).located(locate(offset))
    got = "the end of the expression" if at_end else f"'{token}'"
    expected = set(getattr(exc, "expected", ()) or ())
    hint = None
    if previous == "=":
        reason = f"expected a value after '=', got {got}"
    elif at_end and unclosed:
        opener, where = unclosed[-1]
        opened = locate(where)
        reason = f"missing '{_OPENERS[opener]}'"
        hint = f"the '{opener}' at line {opened.line}, column {opened.column} is never closed"
    elif previous in "+-*/" and previous:
        reason = f"expected a loss or a number after '{previous}', got {got}"
    elif previous == ",":
        reason = f"expected an argument after ',', got {got}"
    elif token is not None and token.type == "LPAR" and re.search(r"\w\s*=\s*[A-Za-z_]\w*$", before):
        # poly(loss=bce()): keyword values are literals, so the parser stops at the '(' of the call.
        reason = "a parameter value cannot be a call; the wrapped loss is the positional argument"
        hint = "for example poly(focal(gamma=2), eps=1)"
    elif token is not None and token.type == "EQUAL":
        reason = "'=' must follow a parameter name, as in gamma=2"
    elif "RPAR" in expected and "COMMA" in expected:
        # LALR merges look-ahead sets, so ',' and ')' are "expected" even outside any call (after
        # `ce()` in `ce() bce()`): name what the brackets open at this point really allow.
        reason = f"expected {_join_words(_allowed_here(text, offset, locate, expected))}, got {got}"
    elif {"NAME", "NUMBER"} <= expected:
        reason = f"expected a loss, a parameter or a number, got {got}"
    elif expected:
        words = sorted({_TOKEN_WORDS.get(name, name) for name in expected - _OPERATORS - {"$END"}})
        if expected & _OPERATORS:
            words.append("an operator")
        if "$END" in expected:  # lark's name for it never reaches the user
            words.append(_TOKEN_WORDS["$END"])
        reason = f"expected {_join_words(words)}, got {got}"
        if "$END" in expected and token is not None and token.type == "COMMA":
            hint = "terms of a sum are joined with '+', as in focal() + ghm()"
    else:
        reason = f"unexpected {got}"
    return LossSyntaxError(reason, hint=hint).located(locate(offset))


def _allowed_here(text: str, offset: int, locate: Locate, expected: set[str]) -> list[str]:
    """What may follow a complete value at ``offset``, from the brackets still open there."""
    try:
        still_open = _check_brackets(text[:offset], locate)
    except LossSyntaxError:
        still_open = []
    operator = ["an operator"] if expected & _OPERATORS else []
    if not still_open:
        return operator + ["the end of the expression"]
    opener, where = still_open[-1]
    closer = f"'{_OPENERS[opener]}'"
    if opener == "[":
        return ["','", closer]
    is_call = opener == "(" and text[:where].rstrip()[-1:].isidentifier()
    if opener == "(" and not is_call:  # a group: (a + b)
        return operator + [closer]
    return ["','", closer] if not operator else ["','", *operator, closer]


def _join_words(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]
