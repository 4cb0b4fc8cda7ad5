"""YAML text -> located plain data, through PyYAML's safe loader only.

Every value keeps the file, line and column it came from, and every string that holds an expression
gets a map from its characters back into the file, so an error inside ``expr: "focal(gama=2)"``
points at ``gama`` in the file. Tags that would construct Python objects are refused before anything
is built, and aliases cannot blow a small file up into a huge structure.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from .errors import Location, LossConfigError, offset_locator, unknown_name_hint
from .located import MAX_DEPTH, MAX_VALUES, Located

MAX_YAML_CHARS = 1_000_000
# Anchors and aliases can repeat a subtree many times; a config never needs this many values.
MAX_YAML_VALUES = MAX_VALUES

_MERGE = "tag:yaml.org,2002:merge"


def read_config_file(path: str | os.PathLike) -> str:
    """The text of a config file, reading at most ``MAX_YAML_CHARS + 1`` characters.

    Every place that reads a config file goes through here: reading a file whole before checking
    its size lets ``/dev/zero`` (or a multi-gigabyte log passed by mistake) exhaust memory.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(MAX_YAML_CHARS + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise LossConfigError(f"cannot read {path}: {exc.__class__.__name__}: {exc}") from None
    if len(text) > MAX_YAML_CHARS:
        raise LossConfigError(
            f"the file is longer than {MAX_YAML_CHARS} characters, the limit for a config file",
            hint="is it the YAML or JSON file of an experiment?", filename=str(path),
        )
    return text


def located_yaml(text: str, filename: str | None = None) -> Located:
    """Parse YAML text into Located data (safe loader; locations point into ``text``)."""
    locate = offset_locator(text, filename)
    if len(text) > MAX_YAML_CHARS:
        raise LossConfigError(
            f"YAML text is {len(text)} characters long; the limit is {MAX_YAML_CHARS}"
        ).located(Location(1, 1, text, filename))
    try:
        # Inside the try: the reader rejects characters such as NUL in its constructor already.
        loader = _Loader(text, locate)
    except yaml.reader.ReaderError as exc:
        raise LossConfigError(
            f"invalid YAML: the character {chr(exc.character)!r} is not allowed"
            if isinstance(exc.character, int) else f"invalid YAML: {exc.reason}"
        ).located(locate(exc.position)) from None
    except yaml.YAMLError as exc:
        raise LossConfigError(f"invalid YAML: {exc}", filename=filename) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise LossConfigError("the YAML document is empty; expected a loss").located(
                Location(1, 1, text, filename)
            )
        data = loader.construct_document(node)
        return _Builder(text, locate).build(node, data, 0)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, text, filename) from None
    except yaml.YAMLError as exc:
        raise LossConfigError(f"invalid YAML: {exc}", filename=filename) from None
    except RecursionError:
        raise LossConfigError(f"YAML nested too deeply (limit {MAX_DEPTH} levels)",
                              filename=filename) from None
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.MarkedYAMLError, text: str, filename: str | None) -> LossConfigError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "invalid YAML"
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
        tag = problem.split("tag", 1)[1].strip(" '")
        short = tag.replace("tag:yaml.org,2002:", "!!")
        reason = (
            f"YAML tag {short} is not allowed: lossdsl reads YAML with the safe loader and never "
            "builds Python objects or runs code"
        )
    else:
        reason = f"invalid YAML: {problem}"
        if exc.context:
            reason += f" ({exc.context})"
    hint = next((text for words, text in _YAML_HINTS if words in problem), None)
    error = LossConfigError(reason, hint=hint)
    if mark is not None:
        # From the mark's character index, not its line: PyYAML also breaks lines at a lone "\r",
        # "\x85" or "\u2028", where every other location (and the excerpt) counts "\n" only.
        error.located(offset_locator(text, filename)(mark.index))
    else:
        error.filename = filename
    return error


# PyYAML's words for the usual indentation mistakes, and what to look at.
_YAML_HINTS = (
    ("mapping values are not allowed here",
     "is this line indented deeper than the key above it? The keys of one mapping start in the same "
     "column. A value holding ': ' (an expression with a task dictionary) must be quoted: "
     "loss: \"uncertainty({seg: ce(), depth: l1()})\""),
    ("expected <block end>",
     "is this line indented differently from the lines above it? The keys of one mapping, and the "
     "items of one list, start in the same column"),
    ("found character '\\t'", "YAML indents with spaces only: replace the tab with spaces"),
)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with merge keys resolved as YAML says and scalars that cannot be
    built (``!!int abc``, a date with month 13) reported where they are, as LossConfigErrors."""

    def __init__(self, text: str, locate: Callable[[int], Location]) -> None:
        super().__init__(text)
        self.locate = locate

    def _error(self, reason: str, node: yaml.Node) -> LossConfigError:
        return LossConfigError(reason).located(self.locate(node.start_mark.index))

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """Resolve ``<<`` merge keys in place (PyYAML calls this before building each mapping).

        The mapping's own keys win over merged ones, and with ``<<: [*a, *b]`` a key of ``a`` wins
        over the same key of ``b`` (the YAML merge spec; PyYAML's own result depends on whether the
        key strings happen to be interned). A key written twice in the mapping itself is an error.
        Duplicates are dropped here, so merging the same anchor again and again cannot double the
        size of a mapping at each level.
        """
        merges = [value for key, value in node.value if key.tag == _MERGE]
        own = [(key, value) for key, value in node.value if key.tag != _MERGE]
        node.value = own  # first, so a mapping that merges itself stops here when it recurses
        pairs: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for value in merges:
            for source in self._merge_sources(value):
                self.flatten_mapping(source)
                for pair in source.value:
                    pairs.setdefault(_key_identity(pair[0]), pair)
        written: set[Any] = set()
        for key, value in own:
            identity = _key_identity(key)
            if identity in written:
                raise self._error(f"duplicate key '{key.value}'", key)
            written.add(identity)
            if key.tag == "tag:yaml.org,2002:value":  # what PyYAML does with a '=' key
                key.tag = "tag:yaml.org,2002:str"
            pairs[identity] = (key, value)  # an own key keeps the merged key's place, as PyYAML
        node.value = list(pairs.values())

    def _merge_sources(self, value: yaml.Node) -> list[yaml.MappingNode]:
        items = value.value if isinstance(value, yaml.SequenceNode) else [value]
        for item in items:
            if not isinstance(item, yaml.MappingNode):
                raise self._error("<< merges a mapping or a list of mappings into this one", item)
        return items


def _key_identity(node: yaml.Node) -> Any:
    return (node.tag, node.value) if isinstance(node, yaml.ScalarNode) else id(node)


# Tags whose constructor can fail on a scalar's text: what the value is, and what it must look like.
_SCALAR_KINDS = {
    "int": ("an integer", "an integer"),
    "float": ("a number", "a number"),
    "bool": ("a boolean", "a boolean (true/false, yes/no, on/off)"),
    "timestamp": ("a date", "a date (YYYY-MM-DD) or a timestamp (YYYY-MM-DD hh:mm:ss)"),
}


def _checked_scalar(name: str):
    construct = getattr(SafeConstructor, f"construct_yaml_{name}")

    def construct_checked(loader: _Loader, node: yaml.ScalarNode) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError, OverflowError):
            # int('abc'), bool_values['maybe'], a failed date match, month 13...: PyYAML's own
            # constructors let these escape as Python errors with no position.
            raise loader._error(_scalar_reason(loader, node, name), node) from None

    return construct_checked


def _scalar_reason(loader: _Loader, node: yaml.ScalarNode, name: str) -> str:
    value = str(node.value)
    shown = repr(value if len(value) <= 40 else value[:37] + "...")
    noun, what = _SCALAR_KINDS[name]
    digits = value.lstrip("+-").replace("_", "")
    limit = sys.get_int_max_str_digits()
    if name == "int" and digits.isdigit() and 0 < limit < len(digits):
        return f"the integer {shown} has {len(digits)} digits; the limit is {limit}"
    if loader.resolve(yaml.ScalarNode, value, (True, False)) == node.tag:
        # No tag was written: YAML took the text for this type by its look (2001-13-45 as a date).
        return f"YAML reads {shown} as {noun}, but it is not a valid one; quote it to keep it a string"
    return f"{shown} is not {what} (tag !!{name})"


for _name in _SCALAR_KINDS:
    _Loader.add_constructor(f"tag:yaml.org,2002:{_name}", _checked_scalar(_name))


class _Builder:
    """Walks the composed node tree beside the constructed data, recording locations."""

    def __init__(self, text: str, locate) -> None:
        self.text = text
        self.locate = locate
        self.values = 0

    def build(self, node: yaml.Node, data: Any, depth: int) -> Located:
        self.values += 1
        if self.values > MAX_YAML_VALUES:
            raise LossConfigError(
                f"YAML expands to more than {MAX_YAML_VALUES} values (anchors and aliases?)"
            ).located(self._at(node))
        if depth > MAX_DEPTH:
            raise LossConfigError(f"YAML nested deeper than {MAX_DEPTH} levels").located(self._at(node))
        location = self._at(node)
        if isinstance(node, yaml.MappingNode):
            items: dict[str, Located] = {}
            keys: dict[str, Location | None] = {}
            for key_node, value_node in node.value:
                key = _scalar_key(key_node)
                if key is None:
                    raise LossConfigError("mapping keys must be plain names").located(self._at(key_node))
                if key in items:
                    raise LossConfigError(f"duplicate key '{key}'").located(self._at(key_node))
                child = data.get(key) if isinstance(data, dict) else None
                items[key] = self.build(value_node, child, depth + 1)
                keys[key] = self._at(key_node)
            return Located(items, location, keys)
        if isinstance(node, yaml.SequenceNode):
            children = data if isinstance(data, list) else [None] * len(node.value)
            return Located([self.build(n, d, depth + 1) for n, d in zip(node.value, children)], location)
        item = Located(data, location)
        if isinstance(data, str):
            item.locate = self._string_locator(node, data)
        return item

    def _at(self, node: yaml.Node) -> Location:
        return self.locate(node.start_mark.index)

    def _string_locator(self, node: yaml.ScalarNode, value: str):
        """Map offsets in a string value to the file, whatever its quoting, folding or indentation.

        The value's characters appear in the file's text in order; the file only adds quotes,
        escapes, indentation and line breaks. A greedy alignment recovers each character's place.
        """
        start, end = node.start_mark.index, node.end_mark.index
        text = self.text
        places: list[int] = []
        j = start
        if node.style in ("|", ">"):  # skip the block indicator line
            newline = text.find("\n", j)
            j = end if newline < 0 else newline + 1
        double_quoted = node.style == '"'
        for char in value:
            if double_quoted and j < end and text[j] == "\\":
                # An escape (\t, \x41, \u00e9, \\) is one character of the value but several of the
                # file: without this, the search below runs to the end of the string.
                while text.startswith(("\\\n", "\\\r"), j):  # a line continuation yields nothing
                    j += 2
                    while j < end and text[j] in " \t\r\n":
                        j += 1
                if j < end and text[j] == "\\":
                    places.append(j)
                    j += {"x": 4, "u": 6, "U": 10}.get(text[j + 1 : j + 2], 2)
                    continue
            if char in " \n":
                # Folding turns a line break plus indentation into one space (or a newline).
                while j < end and text[j] in " \t\r\n" and text[j] != char:
                    j += 1
            while j < end and text[j] != char:
                j += 1
            places.append(min(j, max(end - 1, start)))
            j += 1
        places.append(min(j, end))
        locate = self.locate

        def locator(offset: int) -> Location:
            return locate(places[max(0, min(offset, len(places) - 1))])

        return locator


def _scalar_key(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.ScalarNode):
        return str(node.value)
    return None


def select_key(root: Located, key: str | None, filename: str | None = None) -> tuple[Located, str]:
    """The value at a dotted key such as ``model.loss`` (and that key, as the path for messages)."""
    if not key:
        return root, ""
    current = root
    walked: list[str] = []
    for part in key.split("."):
        if not current.is_mapping():
            where = ".".join(walked) or "the document"
            raise LossConfigError(
                f"cannot look up '{part}': {where} is not a mapping", filename=filename
            ).located(current.location)
        if part not in current.value:
            where = ".".join(walked) or "the top level"
            raise LossConfigError(
                f"key '{key}' not found: no '{part}' at {where}",
                hint=unknown_name_hint(part, current.value, "keys here"), filename=filename,
            ).located(current.location)
        walked.append(part)
        current = current.value[part]
    return current, key
