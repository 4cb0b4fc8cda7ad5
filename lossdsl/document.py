"""Where the loss sits in a YAML/JSON document, and what its interpolations become.

One rule for the command line, ``lossdsl.load``, ``lossdsl.compile`` and ``lossdsl.argtype``: the
loss is the whole document when it is a loss form itself (``kind:``, ``expr:``, ``terms:``,
``tasks:``, a Hydra ``_target_`` node, or an expression string), else the value of the first key
named ``loss``, searched breadth-first (``train.loss`` before ``experiment.model.loss``). A document
of nested mappings without one is refused with the keys that do hold a loss.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .errors import LossConfigError, LossDSLError
from .interpolation import resolve_interpolations
from .located import Located
from .resolvers import unresolved_sites
from .validate import build_spec, is_loss_mapping
from .yaml_io import located_yaml, select_key

LOSS_KEY = "loss"
# A document without a 'loss' key is searched for values that are losses, to name them in the
# hint: each string that might be an expression is validated, so the search stops early.
_MAX_CANDIDATES = 5
_MAX_ATTEMPTS = 50


@dataclass
class DocumentLoss:
    """The loss found in a document, located, not yet validated."""

    item: Located
    path: str  # its dotted key, for messages ("" for a whole-document loss)
    key: str | None
    # What resolvers reaching outside the file gave (lossdsl.resolvers.redact keeps it out of errors).
    hidden: list[tuple[str, str]] = field(default_factory=list)
    # The interpolations reaching outside the file that were left as written, one error each.
    unresolved: list[LossDSLError] = field(default_factory=list)


def loss_in_document(
    text: str, filename: str | None, key: str | None, *, outside: bool, cli: bool
) -> DocumentLoss:
    """The loss in YAML/JSON text, read through lossdsl's loader (size and alias limits), then, for a
    Hydra file, with the interpolations of the loss resolved by OmegaConf: all of them when
    ``outside`` (the Python API), only those inside the file otherwise (the command line). ``cli``
    words the hints for ``--key`` rather than ``key=``."""
    root = located_yaml(text, filename)
    if key is None:
        key = find_loss_key(root, filename, cli=cli)
    hidden: list[tuple[str, str]] = []
    if "${" in text and _has_omegaconf():  # without OmegaConf, "${" is plain text
        root, hidden = resolve_interpolations(root, key, outside=outside)
    item, path = select_key(root, key, filename)
    return DocumentLoss(item, path, key, hidden, [] if outside else unresolved_sites(item))


def find_loss_key(root: Located, filename: str | None = None, *, cli: bool = False) -> str | None:
    """None when the document is the loss, else the dotted key of the first key named 'loss'."""
    if not root.is_mapping() or is_loss_mapping(root.value):
        return None
    queue = deque([("", root)])
    while queue:
        prefix, item = queue.popleft()
        for key, child in item.value.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if key == LOSS_KEY:
                return dotted
            if child.is_mapping():
                queue.append((dotted, child))
    if not any(child.is_mapping() for child in root.value.values()):
        return None  # a flat mapping, no experiment file: the validator says why it is no loss
    candidates = loss_candidates(root)
    option = "--key" if cli else "key="
    if candidates:
        listed = ", ".join(candidates)
        hint = f"give {_ask(candidates[0], cli)}: the keys that hold a loss here are {listed}"
    else:
        hint = f"give {option} with the dotted key of the loss, e.g. {_ask('model.loss', cli)}"
    # The filename is rendered by the error itself (and by `check` as FILE:LINE:COLUMN).
    raise LossConfigError(
        "no key named 'loss' found, and the document is no loss itself", hint=hint, filename=filename
    ).located(root.location)


def _ask(key: str, cli: bool) -> str:
    return f"--key {key}" if cli else f"key={key!r}"


def loss_candidates(root: Located) -> list[str]:
    """Dotted keys whose values are losses: a mapping in a loss form, or a valid expression
    (breadth-first, the first few)."""
    found: list[str] = []
    attempts = 0
    queue = deque([("", root)])
    while queue and len(found) < _MAX_CANDIDATES and attempts < _MAX_ATTEMPTS:
        prefix, item = queue.popleft()
        for key, child in item.value.items():
            dotted = f"{prefix}.{key}" if prefix else key
            value = child.value
            if isinstance(value, dict) and is_loss_mapping(value):
                found.append(dotted)  # named as the loss even when it has a mistake of its own
            elif isinstance(value, str) and "(" in value:
                attempts += 1
                if _is_loss(child):
                    found.append(dotted)
            elif isinstance(value, dict):
                queue.append((dotted, child))
    return found[:_MAX_CANDIDATES]


def _is_loss(item: Located) -> bool:
    try:
        build_spec(item)
    except LossDSLError:
        return False
    return True


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True
