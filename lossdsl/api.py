"""The public entry points: parse, load, compile, json_schema.

Each one accepts the user's input, lets inner code raise bare ``LossDSLError`` reasons with locations,
and never lets a parser's or validator's own exception type escape.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .catalogue.counts import names_a_file
from .document import find_loss_key, loss_in_document
from .errors import LossConfigError, LossDSLError
from .interpolation import select_config
from .located import Located, Wrapper, is_omegaconf, wrap
from .resolvers import redact
from .spec import LossSpec
from .syntax import parse_text
from .validate import build_spec
from .yaml_io import read_config_file, select_key

if TYPE_CHECKING:  # checking a config needs no torch; compiling one imports it
    from .module import CompiledLoss
    from .multitask import MultiTaskLoss

Source = Union[LossSpec, str, Mapping, os.PathLike]


def parse(expression: str) -> LossSpec:
    """Parse and validate an expression such as ``"poly(focal(gamma=2), eps=1) + 0.5 * ghm()"``.

    Results are cached by text (specs are immutable), so parsing in a training loop costs nothing.
    Raises LossDSLError with the line, column and a caret under the offending character.
    """
    # Checked before the cache, which would hash the argument first: parse(["ce()"]) must say what
    # is wrong, not raise "unhashable type: 'list'".
    if not isinstance(expression, str):
        raise LossConfigError(f"parse() expects an expression string, got {type(expression).__name__}")
    spec = _parse_cached(expression)
    if names_a_file(spec):  # a counts file read from disk: read it again, it may have changed
        return build_spec(parse_text(expression))
    return spec


@functools.lru_cache(maxsize=512)
def _parse_cached(expression: str) -> LossSpec:
    return build_spec(parse_text(expression))


# The cache's own controls stay on parse(): whoever registers a plug-in can drop specs cached before.
parse.cache_clear = _parse_cached.cache_clear  # type: ignore[attr-defined]
parse.cache_info = _parse_cached.cache_info  # type: ignore[attr-defined]


def load(source: Any, key: str | None = None) -> LossSpec:
    """Load a loss from a YAML/JSON file (``pathlib.Path``), YAML text, or a mapping.

    Without ``key`` the loss is the whole document, or the value of its first key named ``loss``
    (searched breadth-first), as on the command line. The interpolations of a Hydra file or an
    OmegaConf config are resolved, ``${oc.env:...}`` and other resolvers included; no error message
    shows a value one of these gave (it names the interpolation as written instead).

    Args:
        source: a path; YAML text (which may be just an expression); a Mapping such as a dict or an
            OmegaConf/Hydra config; or a LossSpec (returned as is).
        key: a dotted key of the loss inside the document, e.g. ``"model.loss"``.
    """
    if key is not None and not isinstance(key, str):
        raise LossConfigError(
            f"key must be a dotted key string such as 'model.loss', or None; got {type(key).__name__}"
        )
    if isinstance(source, LossSpec) and key is None:
        return source
    hidden: list[tuple[str, str]] = []
    if is_omegaconf(source):
        item, path = _in_omegaconf(source, key, hidden)
    elif isinstance(source, (os.PathLike, str)):
        text, filename = _text_of(source)
        document = loss_in_document(text, filename, key, outside=True, cli=False)
        item, path, hidden = document.item, document.path, document.hidden
    elif isinstance(source, (Mapping, Located)):
        root = Wrapper(hidden).wrap(source, 0, "")
        item, path = select_key(root, key if key is not None else find_loss_key(root))
    else:
        raise LossConfigError(
            f"cannot load a loss from {type(source).__name__}; expected a path, YAML text or a mapping"
        )
    try:
        return build_spec(item, path=path)
    except LossDSLError as error:
        raise redact(error, hidden) if hidden else error from None


def _in_omegaconf(config: Any, key: str | None, hidden: list[tuple[str, str]]) -> tuple[Located, str]:
    """The loss in an OmegaConf config. Only the loss is resolved: the rest of a Hydra config may be
    large, or use resolvers that only work inside the application."""
    from omegaconf import OmegaConf

    if key is None:
        key = find_loss_key(wrap(OmegaConf.to_container(config, resolve=False)))
    if not key:
        return Wrapper(hidden).wrap(config, 0, ""), ""
    return Wrapper(hidden).wrap(select_config(config, key, hidden), 0, key), key


def _text_of(source: str | os.PathLike) -> tuple[str, str | None]:
    if isinstance(source, os.PathLike) or _looks_like_file(source):
        path = Path(source.strip() if isinstance(source, str) else source)
        return read_config_file(path), str(path)
    return source, None


def _looks_like_file(text: str) -> bool:
    # No is_file() check: a mistyped path must say the file cannot be read, not that '.' is an
    # unexpected character (such a string is no valid expression or YAML loss anyway).
    return "\n" not in text and text.strip().endswith((".yaml", ".yml", ".json"))


def compile(  # noqa: A001
    source: Source, *, key: str | None = None, check_values: bool | str = "deferred",
    distributed: bool = True,
) -> CompiledLoss | MultiTaskLoss:
    """Build the nn.Module for a loss.

    Args:
        source: a LossSpec; an expression string; a path (a ``pathlib.Path``, or a string ending in
            .yaml, .yml or .json, or naming an existing file with a folder in it: ``configs/loss``);
            or a mapping (any form ``load`` accepts).
        key: a dotted key of the loss inside a file or mapping, e.g. ``"model.loss"``.
        check_values: check target values (class index range, probabilities in [0, 1], finite
            boxes). ``"deferred"`` (default): the first call is checked before it computes, later
            calls on the device, read by a later call without stalling it (the error names the
            call); ``True``: every call before it computes (one host synchronisation per call);
            ``False``: never. Skipped automatically under torch.compile (lossdsl.value_checks).
        distributed: when torch.distributed is initialised, sum GHM-C's bin counts and dtp's
            indicators over the process group (one all_reduce per use); False keeps them local.
    """
    from .compiler import compile_spec  # torch is imported here, when a loss is compiled

    return compile_spec(as_spec(source, key), check_values=check_values, distributed=distributed)


def as_spec(source: Any, key: str | None = None) -> LossSpec:
    """The spec of anything ``compile`` accepts, or of a compiled loss (its ``spec``)."""
    if isinstance(source, LossSpec) and key is None:
        return source
    if isinstance(source, str) and not is_path_string(source):
        if key is not None:
            raise LossConfigError(
                f"key={key!r} selects a loss inside a file or mapping, not in an expression"
            )
        return parse(source)
    if isinstance(source, str):
        return load(Path(source.strip()), key=key)
    if isinstance(getattr(source, "spec", None), LossSpec) and key is None:  # a compiled loss
        return source.spec
    return load(source, key=key)  # a path or a mapping


def is_path_string(text: str) -> bool:
    """Whether a string given for a loss names a file: it ends in .yaml, .yml or .json (read even
    when missing, so the error says the file cannot be read), or it names an existing file and has
    a folder in it (a bare ``focal`` stays an expression whatever files the folder holds)."""
    if _looks_like_file(text):
        return True
    if "\n" in text or os.sep not in text and "/" not in text:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a long expression is no file name (ENAMETOOLONG)
        return False


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 7) of the YAML/mapping form of a loss, for editors and CI."""
    from .schema import loss_json_schema

    return loss_json_schema()


__all__ = ["parse", "load", "compile", "json_schema", "as_spec", "is_path_string"]
