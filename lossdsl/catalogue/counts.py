"""Class counts, the statistic every long-tail loss reads (SPEC "Long-tail losses"), in three forms:

- a list, one positive number per class: ``counts=[5000, 2997, 1796]``;
- a quoted file path, ``counts="lvis_counts.json"``: a JSON list, or numbers separated by white
  space (google-research's ``base_probs.txt``), resolved relative to the YAML file that names it (the
  working directory for a bare expression or a config built in Python) and read when the config is
  validated, so ``lossdsl check`` reports a missing or malformed file where the path is written;
- ``online``: counted from the targets of every training-mode call (the compiled term's buffer).

Only the ratios of the counts matter (the prior is ``n_j / sum n``), so a file of probabilities
serves as well as one of counts. A zero count is refused, naming the class: its log prior is -inf.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PlainValidator, WithJsonSchema

from .printing import format_value

ONLINE = "online"
# A counts file is read whole; this bounds what a wrong path (a log, /dev/zero) can cost. 1,000,000
# characters hold ~100,000 classes; LVIS has 1,203, ImageNet-21k 21,841.
MAX_COUNTS_FILE_CHARS = 1_000_000
# The folder relative paths are read from while a node is validated: lossdsl.validate sets it to the
# folder of the YAML file the node comes from (None: the working directory). A context variable, not
# pydantic's validation context, which does not reach models with an __init__ of their own.
_BASE_FOLDER: ContextVar[str | None] = ContextVar("lossdsl_counts_folder", default=None)


@contextmanager
def files_read_from(folder: str | None) -> Iterator[None]:
    """Counts files named while this is active are read relative to ``folder``."""
    token = _BASE_FOLDER.set(folder)
    try:
        yield
    finally:
        _BASE_FOLDER.reset(token)


class CountsFile(str):
    """A counts file as written in the config (its path: that is how it prints and saves), carrying
    the counts read from it. Two are equal when both the path and the counts are."""

    counts: tuple[float, ...]

    def __new__(cls, path: str, counts: tuple[float, ...] = ()) -> CountsFile:
        value = super().__new__(cls, path)
        value.counts = tuple(counts)
        return value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CountsFile):
            return str(self) == str(other) and self.counts == other.counts
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash((str(self), self.counts))

    def __repr__(self) -> str:
        return f"CountsFile({str(self)!r}, {len(self.counts)} classes)"


def given_counts(value: Any) -> tuple[float, ...] | None:
    """The per-class counts a ``counts`` value fixes (a list or a file), or None for ``online``."""
    if isinstance(value, CountsFile):
        return value.counts
    if isinstance(value, tuple):
        return value
    return None


# Problems are ValueErrors: pydantic reports them at the parameter, and the validator turns them into
# a LossSpecError pointing at the counts in the user's text.


def _checked_numbers(values: list[Any], where: str = "") -> tuple[float, ...]:
    """Positive, finite numbers, one per class; errors name the class (0-based, as indices)."""
    if not values:
        raise ValueError(f"{where}no numbers; expected one count per class")
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}the count of class {index} must be a number, got {format_value(value)}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}the count of class {index} is {value}; counts must be finite and > 0")
        if value == 0:
            raise ValueError(
                f"{where}class {index} has a count of 0, so its prior would be 0 and its log -inf; "
                "give every class a count > 0 (1 for a class never seen), or use counts=online"
            )
    numbers = tuple(float(value) for value in values)
    if not math.isfinite(sum(numbers)):
        raise ValueError(f"{where}the counts add up to more than the largest float")
    return numbers


def read_counts_file(written: str, base_folder: str | None) -> tuple[float, ...]:
    """The counts in the file ``written`` (relative to ``base_folder``, or the working directory)."""
    path = Path(base_folder or ".") / os.path.expanduser(written)
    where = f"counts file {written!r}"
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(MAX_COUNTS_FILE_CHARS + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if written.isidentifier():
            reason += "; counts=online (unquoted) counts the training targets, a file is a quoted path"
        elif not Path(written).is_absolute():
            reason += (f" (a relative path is read from the folder of the YAML file that names it, "
                       f"else the working directory: here {os.path.abspath(path.parent)})")
        raise ValueError(f"cannot read {where}: {reason}") from None
    if len(text) > MAX_COUNTS_FILE_CHARS:
        raise ValueError(f"{where} is longer than {MAX_COUNTS_FILE_CHARS} characters, the limit for a "
                         "counts file (one number per class)")
    stripped = text.strip()
    if stripped.startswith(("[", "{", '"')):
        try:
            values = json.loads(stripped)
        except ValueError as exc:
            raise ValueError(f"{where} is not valid JSON ({exc}); expected a list such as "
                             "[5000, 2997, 1796]") from None
        if not isinstance(values, list):
            kind = {dict: "mapping", str: "string"}.get(type(values), type(values).__name__)
            raise ValueError(f"{where} holds a JSON {kind}; expected a list of numbers, one per class")
        return _checked_numbers(values, f"{where}: ")
    values = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        for token in line.split():
            try:
                values.append(float(token))
            except ValueError:
                raise ValueError(
                    f"{where}, line {line_number}: {token[:40]!r} is not a number; expected a JSON "
                    "list, or numbers separated by white space"
                ) from None
    return _checked_numbers(values, f"{where}: ")


def _counts(value: Any) -> Any:
    if isinstance(value, CountsFile):  # already read (a node copied or built from another one)
        return value
    if isinstance(value, str):
        if value == ONLINE:
            return ONLINE
        if not value.strip():
            raise ValueError("an empty file path; give a list, a quoted file path or online")
        return CountsFile(value, read_counts_file(value, _BASE_FOLDER.get()))
    if isinstance(value, (list, tuple)):
        return _checked_numbers(list(value))
    raise ValueError(f"expected a list of numbers, a quoted file path or online, got {type(value).__name__}")


# What a config may give (read by `lossdsl explain`, the JSON Schema and the tests' generators); the
# validator below does the checking, so its errors say what is wrong with the counts themselves.
Counts = Annotated[
    tuple[Annotated[float, Field(gt=0)], ...] | str,
    PlainValidator(_counts),
    WithJsonSchema({"anyOf": [
        {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1},
        {"type": "string"},
    ]}),
]

COUNTS_DESCRIPTION = (
    "the training set's count of each class: a list [n_1, ..., n_C], a quoted path of a file holding "
    "them (a JSON list or numbers separated by white space, relative to the YAML file that names it), "
    "or online (counted from the targets of each training-mode call)"
)


def names_a_file(spec: Any) -> bool:
    """Whether a spec holds a counts file anywhere (in any term or task): its counts were read from
    disk when it was built."""
    stack = [term.loss for term in spec.terms]
    while stack:
        node = stack.pop()
        if any(isinstance(getattr(node, name), CountsFile) for name in type(node).model_fields):
            return True
        stack += list(node.children())
        stack += [term.loss for task in getattr(node, "tasks", {}).values() for term in task.terms]
    return False
