"""OmegaConf/Hydra ``${...}`` interpolations resolved into plain or located data, within limits.

Two callers: ``lossdsl.load(cfg)`` with an OmegaConf config or a Hydra file, and the command line
with a Hydra file. Interpolations that reach outside the file (``lossdsl.resolvers``) are resolved
for the first, which records what they gave so that no message shows it, and never for the second.
OmegaConf copies a referenced subtree each time it converts it: ``a1: [${a0}, ${a0}]``,
``a2: [${a1}, ${a1}]``, ... takes minutes at 18 levels in ``OmegaConf.to_container``. Here each
referenced subtree is converted once and shared, and ``located.wrap`` counts the values of the
result against ``MAX_VALUES``. A failed interpolation (a missing key, a cycle, an unset environment
variable, a resolver only Hydra registers) becomes a LossConfigError naming its key, and pointing
into the file when there is one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import Location, LossConfigError
from .located import MAX_DEPTH, Located, Wrapper, is_omegaconf, to_plain, wrap
from .resolvers import Masks, hidden_values, reaches_outside
from .yaml_io import select_key

_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# OmegaConf evaluates an interpolation afresh each time it is read, so s1: "${s0}${s0}",
# s2: "${s1}${s1}", ... costs 2^n evaluations (11 s at 14 levels, about 0.7 ms each). The
# evaluations a loss needs are counted from the plain data before OmegaConf sees it; a loss with
# interpolations needs a few dozen.
MAX_EVALUATIONS = 1_000
_INTERPOLATION = re.compile(r"\$\{([^${}]*)\}")  # the innermost ones, nested ones included


def plain_config(config: Any, hidden: list[tuple[str, str]] | None = None) -> Any:
    """An OmegaConf config as plain dicts and lists, its interpolations resolved. What resolvers
    reaching outside the file gave is added to ``hidden`` (``lossdsl.resolvers.redact``)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        resolved = _plain(config, {}, set(), "", 0)
    except OmegaConfBaseException as error:
        raise interpolation_error(error) from None
    if hidden is not None:
        from omegaconf import OmegaConf

        root, path = _root_and_path(config)
        as_written = lambda: OmegaConf.to_container(config, resolve=False)  # noqa: E731
        hidden += hidden_values(_written(root, path, as_written), resolved)
    return resolved


def select_config(config: Any, key: str, hidden: list[tuple[str, str]] | None = None) -> Any:
    """The value at a dotted key of an OmegaConf config, the interpolations on the way resolved
    (what resolvers gave, for a value that is no mapping or list, added to ``hidden``)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = parent = config
    parts = key.split(".")
    try:
        for index, part in enumerate(parts):
            if isinstance(node, DictConfig) and OmegaConf.is_missing(node, part):
                where = ".".join(parts[: index + 1])
                raise LossConfigError(f"{where} is ???, a mandatory value that was never set",
                                      hint="give it a value in the config or on the command line")
            if not isinstance(node, DictConfig) or part not in node:
                # Say what is there, as for any mapping, without resolving what the loss does not use.
                select_key(wrap(OmegaConf.to_container(config, resolve=False)), key)
            parent, node = node, node[part]
    except OmegaConfBaseException as error:
        raise interpolation_error(error) from None
    if hidden is not None and not isinstance(node, (DictConfig, ListConfig)):
        root, path = _root_and_path(parent)
        as_written = lambda: OmegaConf.to_container(parent, resolve=False)[parts[-1]]  # noqa: E731
        hidden += hidden_values(_written(root, [*path, parts[-1]], as_written), node)
    return node


def _root_and_path(node: Any) -> tuple[Any, list[Any]]:
    """The config a node belongs to, and the keys from there to it (through OmegaConf's parent
    links: its ``_get_full_key`` spells list items ambiguously)."""
    path: list[Any] = []
    try:
        while (parent := node._get_parent()) is not None:
            path.append(node._key())
            node = parent
    except AttributeError:  # another OmegaConf than the one this was written for: the node alone
        return node, []
    return node, path[::-1]


def _written(root: Any, path: list[Any], as_written: Callable[[], Any]) -> Any:
    """The value at ``path`` with only its in-file interpolations resolved (those reaching outside
    the file stay as written), or None when the config has none of these. ``as_written`` gives the
    value with no interpolation resolved: the answer when the in-file ones cannot be resolved
    apart. A copy is resolved: the user's config is left as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    plain = OmegaConf.to_container(root, resolve=False) if is_omegaconf(root) else root
    if not reaches_outside(plain):
        return None
    masks = Masks()
    try:
        node = OmegaConf.create(masks.mask(plain))
        for part in path:
            node = node[part]
        return masks.unmask(_plain(node, {}, set(), "", 0) if isinstance(node, (DictConfig, ListConfig))
                            else node)
    except (OmegaConfBaseException, LossConfigError, LookupError, TypeError):
        return as_written()


def _plain(node: Any, done: dict[int, Any], active: set[int], path: str, depth: int) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if not isinstance(node, (DictConfig, ListConfig)):
        return node  # a value: reading it through its parent resolved it already
    if id(node) in done:  # a subtree that an interpolation names again: converted once, shared
        return done[id(node)]
    if id(node) in active:
        raise LossConfigError("an interpolation here refers to a mapping or list that holds it",
                              path=path or None)
    if depth > MAX_DEPTH:
        raise LossConfigError(f"configuration nested deeper than {MAX_DEPTH} levels", path=path or None)
    active.add(id(node))
    if isinstance(node, DictConfig):
        out: Any = {
            key: "???" if OmegaConf.is_missing(node, key)  # a mandatory value left unset
            else _plain(node[key], done, active, _join(path, str(key)), depth + 1)
            for key in node.keys()
        }
    else:
        out = [_plain(node[i], done, active, f"{path}[{i}]", depth + 1) for i in range(len(node))]
    active.discard(id(node))
    done[id(node)] = out
    return out


def interpolation_error(error: Exception, root: Located | None = None) -> LossConfigError:
    """An OmegaConf error as a LossConfigError at the key it names (in ``root``'s file if given)."""
    message = _shown_message(error)
    key = str(getattr(error, "full_key", "") or "")
    located = LossConfigError(f"cannot resolve an interpolation: {message}", hint=_hint(error, message),
                              path=key or None)
    if root is not None:
        located.located(_location_at(root, key))
    return located


_RAISED_BY_RESOLVER = re.compile(r"(\w+) raised while resolving interpolation: (.*)")


def _shown_message(error: Exception) -> str:
    """OmegaConf's message, unless a resolver raised it or it shows a converted value: those may
    quote what a resolver read outside the file (a secret that oc.decode failed to parse)."""
    from omegaconf.errors import ValidationError

    message = str(error).split("\n")[0]  # OmegaConf appends full_key and object_type lines
    raised = _RAISED_BY_RESOLVER.match(message)
    if raised:
        kind, text = raised.groups()
        if kind == "KeyError" and text.strip('"').startswith("Environment variable"):
            return text.strip('"')  # oc.env's unset variable: names the variable, as written
        return (f"a resolver raised {kind} (its message is not shown: it may hold a value read "
                "from outside the file)")
    if isinstance(error, ValidationError):
        return ("a value does not convert to the type its config declares (the value is not "
                "shown: it may come from outside the file)")
    return message


def _hint(error: Exception, message: str) -> str | None:
    from omegaconf.errors import InterpolationKeyError, UnsupportedInterpolationType

    if "Environment variable" in message:
        return "set the variable, or give a default: ${oc.env:NAME,default}"
    if isinstance(error, UnsupportedInterpolationType):
        return ("only OmegaConf's own resolvers (oc.env...) and those registered with "
                "OmegaConf.register_new_resolver work outside a Hydra application")
    if isinstance(error, InterpolationKeyError):
        return "an interpolation names a key by its full dotted path from the top of the file"
    if "Recursive interpolation" in message:
        return "an interpolation refers back to itself, directly or through others"
    return None


def _location_at(root: Located, key: str) -> Location | None:
    """The location of the deepest value on a dotted key such as ``model.loss.terms[0].gamma``."""
    item, location = root, root.location
    for name, index in _KEY_PART.findall(key):
        if name and item.is_mapping() and name in item.value:
            location = item.key_location(name)
            item = item.value[name]
        elif index and item.is_list() and int(index) < len(item.value):
            item = item.value[int(index)]
        else:
            break
        location = item.location or location
    return location


def resolve_interpolations(
    root: Located, key: str | None, *, outside: bool
) -> tuple[Located, list[tuple[str, str]]]:
    """``root`` (a file's located data) with the interpolations of the loss at ``key`` resolved, and
    what the resolvers reaching outside the file gave (for ``lossdsl.resolvers.redact``).

    With ``outside=False`` (the command line) those are never evaluated: they stay as written. Only
    the loss is resolved: the rest of a Hydra file may use resolvers that only Hydra registers
    (``${now:...}``, ``${hydra:...}``). Values without an interpolation keep their exact locations; a
    resolved one is located at the text it replaced. ``root`` was read by lossdsl's own loader, so the
    file's size and alias limits hold before OmegaConf sees it.
    """
    parts = key.split(".") if key else []
    item = _child(root, parts)
    if item is None or not _has_interpolation(item) or not isinstance(root.value, (dict, list)):
        return root, []  # nothing to resolve (a missing key is reported by whoever selects it)
    plain = to_plain(root)
    if _Evaluations(plain).of_value(to_plain(item), tuple(parts)) > MAX_EVALUATIONS:
        raise LossConfigError(
            f"the interpolations of this loss take more than {MAX_EVALUATIONS} evaluations, the limit",
            hint="an interpolation that uses another one twice, which uses another one twice, ... "
            "doubles the work at each level",
        ).located(item.location, path=key)
    hidden: list[tuple[str, str]] = []
    if reaches_outside(plain):
        # Resolved first without them: in-file mistakes are reported by messages that cannot hold
        # a resolver's value, and what each one gave is known by comparison.
        masks = Masks()
        written = masks.unmask(_resolve_plain(masks.mask(plain), key, root))
        if not outside:
            return _replace(root, parts, _overlay(item, written, Wrapper())), []
        resolved = _resolve_plain(plain, key, root)
        hidden = hidden_values(written, resolved)
    else:
        resolved = _resolve_plain(plain, key, root)
    return _replace(root, parts, _overlay(item, resolved, Wrapper())), hidden


def _resolve_plain(plain: Any, key: str | None, root: Located) -> Any:
    """The loss at ``key`` of plain data, resolved by OmegaConf; errors point into ``root``'s file."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        config = OmegaConf.create(plain)
        node = OmegaConf.select(config, key) if key else config
        is_container = isinstance(node, (DictConfig, ListConfig))
        return _plain(node, {}, set(), key or "", 0) if is_container else node
    except OmegaConfBaseException as error:
        raise interpolation_error(error, root) from None
    except LossConfigError as error:
        raise error.located(_location_at(root, error.path or "")) from None


class _Evaluations:
    """Counts the interpolations OmegaConf evaluates to resolve a value, each value counted once.

    An upper bound, not OmegaConf's grammar: a reference it cannot follow (a resolver, a key that
    is not there) counts as one evaluation, and a mapping or list an interpolation names counts
    once, as ``_plain`` converts it once.
    """

    def __init__(self, root: Any) -> None:
        self.root = root
        self.strings: dict[tuple[Any, ...], int] = {}
        self.containers: set[tuple[Any, ...]] = set()
        self.active: set[tuple[Any, ...]] = set()

    def of_value(self, value: Any, path: tuple[Any, ...]) -> int:
        if isinstance(value, str):
            return self.of_string(value, path)
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
            value, list) else ()
        total = 0
        for key, child in children:
            total += self.of_value(child, (*path, key))
            if total > MAX_EVALUATIONS:
                break
        return total

    def of_string(self, text: str, path: tuple[Any, ...]) -> int:
        total = 0
        for reference in _INTERPOLATION.findall(text):
            total += 1
            target = None if ":" in reference else _target(reference.strip(), path)
            if target is not None and target not in self.active:
                total += self._of_target(target)
            if total > MAX_EVALUATIONS:
                break
        return total

    def _of_target(self, target: tuple[Any, ...]) -> int:
        found, value = _value_at(self.root, target)
        if not found:
            return 0
        if isinstance(value, (dict, list)):
            if target in self.containers:
                return 0
            self.containers.add(target)
        elif target in self.strings:
            return self.strings[target]
        self.active.add(target)  # a cycle: OmegaConf reports it when it meets it
        count = self.of_value(value, target)
        self.active.discard(target)
        if not isinstance(value, (dict, list)):
            self.strings[target] = count
        return count


def _target(reference: str, path: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The path an interpolation names: ``a.b`` from the top, ``.b`` beside the value, ``..b``
    one level up; list items as ``a.0`` or ``a[0]``."""
    dots = len(reference) - len(reference.lstrip("."))
    if dots > len(path):
        return None
    base = path[: len(path) - dots] if dots else ()
    parts = [name or int(index) for name, index in _KEY_PART.findall(reference[dots:])]
    return (*base, *parts)


def _value_at(root: Any, path: tuple[Any, ...]) -> tuple[bool, Any]:
    value = root
    for part in path:
        if isinstance(value, dict) and str(part) in value:
            value = value[str(part)]
        elif isinstance(value, list) and str(part).isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _child(item: Located, parts: list[str]) -> Located | None:
    for part in parts:
        if not item.is_mapping() or part not in item.value:
            return None
        item = item.value[part]
    return item


def _has_interpolation(item: Located) -> bool:
    stack = [item]
    while stack:
        value = stack.pop().value
        if isinstance(value, str) and "${" in value:
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _overlay(item: Located, resolved: Any, wrapper: Wrapper) -> Located:
    """``resolved`` with the locations of ``item``, the same data before resolution. One wrapper
    counts every interpolated value: a hundred interpolations of one large subtree share it."""
    value = item.value
    if isinstance(value, dict) and isinstance(resolved, dict) and list(value) == list(resolved):
        children = {key: _overlay(value[key], resolved[key], wrapper) for key in value}
        return Located(children, item.location, dict(item.key_locations))
    if isinstance(value, list) and isinstance(resolved, list) and len(value) == len(resolved):
        return Located([_overlay(v, r, wrapper) for v, r in zip(value, resolved)], item.location)
    if type(value) is type(resolved) and value == resolved:
        return item  # untouched: keeps its location and, for an expression, its map into the file
    # An interpolated value: every part of it points at the text it came from. An expression built
    # by interpolation loses its character map (its offsets no longer match the file's text).
    try:
        replaced = wrapper.wrap(resolved, 0, "")
    except LossConfigError as error:  # past a limit: point at the interpolation that went past it
        raise error.located(item.location) from None
    _locate_all(replaced, item.location)
    return replaced


def _locate_all(item: Located, location: Location | None) -> None:
    stack = [item]
    while stack:
        current = stack.pop()
        current.location = location
        if current.is_mapping():
            stack.extend(current.value.values())
        elif current.is_list():
            stack.extend(current.value)


def _replace(item: Located, parts: list[str], new: Located) -> Located:
    if not parts:
        return new
    children = dict(item.value)
    children[parts[0]] = _replace(children[parts[0]], parts[1:], new)
    return Located(children, item.location, dict(item.key_locations))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
