"""OmegaConf/Hydra ``${...}`` interpolations resolved into plain or located data, within limits.

Two callers: ``lossdsl.load(cfg)`` with an OmegaConf config, and the command line with a Hydra file.
OmegaConf copies a referenced subtree each time it converts it: ``a1: [${a0}, ${a0}]``,
``a2: [${a1}, ${a1}]``, ... takes minutes at 18 levels in ``OmegaConf.to_container``. Here each
referenced subtree is converted once and shared, and ``located.wrap`` counts the values of the
result against ``MAX_VALUES``. A failed interpolation (a missing key, a cycle, an unset environment
variable, a resolver only Hydra registers) becomes a LossConfigError naming its key, and pointing
into the file when there is one.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import Location, LossConfigError
from .located import MAX_DEPTH, Located, Wrapper, to_plain, wrap
from .yaml_io import select_key

_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def plain_config(config: Any) -> Any:
    """An OmegaConf config as plain dicts and lists, its interpolations resolved."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _plain(config, {}, set(), "", 0)
    except OmegaConfBaseException as error:
        raise interpolation_error(error) from None


def select_config(config: Any, key: str) -> Any:
    """The value at a dotted key of an OmegaConf config, the interpolations on the way resolved."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = config
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
            node = node[part]
    except OmegaConfBaseException as error:
        raise interpolation_error(error) from None
    return node


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
    message = str(error).split("\n")[0]  # OmegaConf appends full_key and object_type lines
    # A resolver's own KeyError (oc.env's unset variable) arrives wrapped in words about KeyError.
    message = message.removeprefix("KeyError raised while resolving interpolation: ").strip('"')
    key = str(getattr(error, "full_key", "") or "")
    located = LossConfigError(f"cannot resolve an interpolation: {message}", hint=_hint(error, message),
                              path=key or None)
    if root is not None:
        located.located(_location_at(root, key))
    return located


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


def resolve_interpolations(root: Located, key: str | None) -> Located:
    """``root`` (a file's located data) with the interpolations of the loss at ``key`` resolved.

    Only the loss is resolved: the rest of a Hydra file may use resolvers that only Hydra registers
    (``${now:...}``, ``${hydra:...}``). Values without an interpolation keep their exact locations; a
    resolved one is located at the text it replaced. ``root`` was read by lossdsl's own loader, so the
    file's size and alias limits hold before OmegaConf sees it.
    """
    parts = key.split(".") if key else []
    item = _child(root, parts)
    if item is None or not _has_interpolation(item) or not isinstance(root.value, (dict, list)):
        return root  # nothing to resolve (a missing key is reported by whoever selects it)
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        config = OmegaConf.create(to_plain(root))
        node = OmegaConf.select(config, key) if key else config
        is_container = isinstance(node, (DictConfig, ListConfig))
        resolved = _plain(node, {}, set(), key or "", 0) if is_container else node
    except OmegaConfBaseException as error:
        raise interpolation_error(error, root) from None
    except LossConfigError as error:
        raise error.located(_location_at(root, error.path or "")) from None
    return _replace(root, parts, _overlay(item, resolved, Wrapper()))


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
