"""Plain configuration data that remembers where each piece came from.

The expression parser and the YAML loader both produce a tree of ``Located`` values: plain data (dicts,
lists, strings, numbers, booleans, None) where every value carries the location of its text and every
mapping the locations of its keys. The validator walks that one structure, so an error in a YAML file
and an error in an expression point at the exact character in the same way. Data that comes without
text (a dict built in Python, an OmegaConf config) is wrapped with no locations; errors then name the
dotted path instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import Location, LossConfigError

# The plain-data shape of a call's positional argument, before the validator knows which field of the
# named model receives it ("loss" for modifiers, "tasks" for multi-task weighting).
POSITIONAL = "<positional>"

# Deeper structures are refused with a message rather than left to hit Python's recursion limit.
MAX_DEPTH = 64
# YAML anchors and aliases, OmegaConf interpolations and shared Python objects can all repeat a
# subtree many times; a config never needs this many values.
MAX_VALUES = 100_000


@dataclass
class Located:
    """A value with the location of its text; mappings also keep the location of each key."""

    value: Any
    location: Location | None = None
    key_locations: dict[str, Location | None] = field(default_factory=dict)
    # Character offset in the expression text; only the expression parser uses it.
    offset: int = 0
    # For a string holding an expression inside a file: maps an offset in the string to a location
    # in the file, so errors inside the expression point into the file.
    locate: Callable[[int], Location] | None = None

    def is_mapping(self) -> bool:
        return isinstance(self.value, dict)

    def is_list(self) -> bool:
        return isinstance(self.value, list)

    def get(self, key: str) -> Located | None:
        return self.value.get(key) if isinstance(self.value, dict) else None

    def key_location(self, key: str) -> Location | None:
        return self.key_locations.get(key) or self.location

    def to_plain(self) -> Any:
        """The data without locations (lists stay lists; the models turn them into tuples)."""
        return to_plain(self)


def to_plain(item: Located) -> Any:
    value = item.value
    if isinstance(value, dict):
        return {key: to_plain(child) for key, child in value.items()}
    if isinstance(value, list):
        return [to_plain(child) for child in value]
    return value


def wrap(data: Any, *, path: str = "") -> Located:
    """Wrap plain Python data (a dict from code, an OmegaConf/Hydra config) without locations."""
    return Wrapper().wrap(data, 0, path)


class Wrapper:
    """Counts the values it wraps: data shared between places (a list holding the same dict
    twice, at every level) is wrapped once per place, so its size is what must be bounded. One
    instance wraps every piece of one config, so the bound holds for the pieces together."""

    def __init__(self, hidden: list[tuple[str, str]] | None = None) -> None:
        self.values = 0
        # What resolvers reaching outside the file gave in an OmegaConf config, when the caller
        # keeps it out of its messages (lossdsl.resolvers.redact).
        self.hidden = hidden

    def wrap(self, data: Any, depth: int, path: str) -> Located:
        if depth > MAX_DEPTH:
            raise LossConfigError(f"configuration nested deeper than {MAX_DEPTH} levels", path=path or None)
        self.values += 1
        if self.values > MAX_VALUES:
            raise LossConfigError(
                f"configuration expands to more than {MAX_VALUES} values (shared or interpolated parts?)",
                path=path or None,
            )
        if is_omegaconf(data):
            from .interpolation import plain_config  # a module built on this one

            data = plain_config(data, self.hidden)
        if isinstance(data, Located):
            return data
        if isinstance(data, Mapping):
            out: dict[str, Located] = {}
            for key, child in data.items():
                if not isinstance(key, str):
                    raise LossConfigError(
                        f"configuration keys must be strings, got {key!r}", path=path or None
                    )
                out[key] = self.wrap(child, depth + 1, _join(path, key))
            return Located(out)
        if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            return Located([self.wrap(child, depth + 1, f"{path}[{i}]") for i, child in enumerate(data)])
        return Located(data)


def is_omegaconf(data: Any) -> bool:
    module = type(data).__module__ or ""
    return module.startswith("omegaconf")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
