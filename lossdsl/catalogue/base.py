"""What every catalogue entry is: a frozen pydantic model, registered under its ``kind``.

A catalogue name is one model (its parameters, ranges and formula docstring) plus, in the compiler,
one function. Named losses also define ``expand()``, a pure rewrite into primitive blocks. Third
parties add names with ``lossdsl.register``: the validator, the printer, the JSON Schema and the
``lossdsl list`` command all read the same registry.
"""

from __future__ import annotations

import contextvars
import functools
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from ..errors import LossDSLError, LossSpecError
from .spellings import unknown_loss_hint

# Scalars are strict (no "2" -> 2.0, no true -> 1.0) but an int is accepted where a float is expected.
Number = Annotated[float, Strict()]
# Integers reach tensors (ignore_index is compared with int64 targets): bounded to int64 at parse time
# rather than overflowing at call time.
Integer = Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1)]
Flag = Annotated[bool, Strict()]
NonNegative = Annotated[float, Strict(), Field(ge=0)]
Probability = Annotated[float, Strict(), Field(ge=0, le=1)]
Smoothing = Annotated[float, Strict(), Field(ge=0, lt=1)]
PerClass = tuple[Number, ...]
Head = Literal["sigmoid", "softmax"]


def described(annotation: Any, description: str) -> Any:
    """``annotation`` with its meaning attached: every parameter is described once, on its field
    (the JSON Schema, ``lossdsl explain``, ``lossdsl list --params`` and the README read it there)."""
    return Annotated[annotation, Field(description=description)]


# Parameters several names share, described once.
HeadChoice = described(Head, "how logits become probabilities: sigmoid (each element its own binary "
                              "problem) or softmax (classes compete along dimension 1)")
IgnoreIndex = described(Integer, "class index whose positions count for nothing (with class-index targets)")
Background = described(Flag, "read class index C as an all-negative row (mmdetection's num_classes "
                             "label) instead of refusing it (sigmoid head)")

REDUCTIONS = ("mean", "sum", "batchmean", "pos_mean", "none")
Reduction = Literal["mean", "sum", "batchmean", "pos_mean", "none"]

# Where a child loss sits in a node's JSON Schema; json_schema() swaps the marker for a reference to
# the union of every registered name, so plug-ins appear in editors' completion too.
NODE_SCHEMA_MARKER = "x-lossdsl-node"
LOSS_SCHEMA_MARKER = "x-lossdsl-loss"


class LossNode(BaseModel):
    """Base of every catalogue entry. Subclasses declare ``kind: Literal["name"] = "name"``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # One line for `lossdsl list`; the class docstring carries the formula and the paper.
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    # "likelihood", "regression", "modifier", "named", "multitask" or "plugin".
    category: ClassVar[str] = "plugin"
    # The field that receives the call's positional argument, if the name takes one.
    positional: ClassVar[str | None] = None
    # Fields holding one child loss (validated recursively by the validator).
    loss_fields: ClassVar[tuple[str, ...]] = ()
    # Fields holding named tasks, each a whole loss (multi-task weighting).
    task_fields: ClassVar[tuple[str, ...]] = ()
    # Fields holding one whole loss, a sum included (deep supervision's inner loss).
    spec_fields: ClassVar[tuple[str, ...]] = ()
    # Print only the positional argument (the {...} of a plain task dictionary).
    bare: ClassVar[bool] = False
    # Why no block may wrap this name (None: a block may, when the name has a probability).
    unwrappable: ClassVar[str | None] = None
    # The same loss in other libraries, as calls (lossdsl explain prints them).
    equivalents: ClassVar[tuple[str, ...]] = ()
    # The targets the compiled term accepts, in words (None: the head's or category's usual ones).
    targets: ClassVar[str | None] = None
    # The reduction of a term of this loss that names none (kd: batchmean, as the KD literature).
    default_reduction: ClassVar[str] = "mean"
    # Parameters whose default follows the head: name -> (sigmoid default, softmax default).
    head_defaults: ClassVar[dict[str, tuple[Any, Any]]] = {}

    @classmethod
    def kind_name(cls) -> str:
        return cls.model_fields["kind"].default

    # Subclasses say which head their probability lives on with a `head` property (or, for named
    # losses, a `head` parameter); read it through head_of(), which treats a missing one as None.

    @property
    def is_regression(self) -> bool:
        return False

    def without_positives(self) -> str | None:
        """Why ``reduction=pos_mean`` (a division by the positive count) does not apply, or None."""
        if self.is_regression:
            return f"{self.kind_name()} is a regression loss and has none"
        return getattr(self, "positives_reason", None)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            # A node built in Python with a bad value: the same LossDSLError family as from text.
            raise _node_error(type(self), exc) from None

    def children(self) -> tuple[LossNode, ...]:
        return tuple(getattr(self, name) for name in self.loss_fields)

    def expand(self) -> LossNode:
        """This node rewritten into primitive blocks (named losses override; others recurse)."""
        if not self.loss_fields:
            return self
        return self.model_copy(update={name: getattr(self, name).expand() for name in self.loss_fields})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "expand" in cls.__dict__:
            cls.expand = _until_primitive(cls.__dict__["expand"])  # type: ignore[method-assign]

    @model_validator(mode="before")
    @classmethod
    def _defaults_for_head(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.head_defaults:
            on_sigmoid = data.get("head", cls._default_head()) == "sigmoid"
            missing = {k: v[0] if on_sigmoid else v[1] for k, v in cls.head_defaults.items() if k not in data}
            data = {**data, **missing}
        return data

    @classmethod
    def _default_head(cls) -> Any:
        field = cls.model_fields.get("head")
        return field.default if field is not None else "sigmoid"

    def default_for(self, name: str) -> Any:
        """The value a parameter takes when it is not given (some depend on other parameters, such
        as the head: ``head_defaults``)."""
        if name in self.head_defaults:
            sigmoid, softmax = self.head_defaults[name]
            return sigmoid if getattr(self, "head", self._default_head()) == "sigmoid" else softmax
        return type(self).model_fields[name].get_default(call_default_factory=True)

    def parameters(self) -> dict[str, Any]:
        """Every parameter that differs from its default, in declaration order (for printing)."""
        out = {}
        for name in type(self).model_fields:
            if name == "kind":
                continue
            value = getattr(self, name)
            if name in self.loss_fields or value != self.default_for(name):
                out[name] = value
        return out


# A plug-in's expand() may return a name that expands further (focal(gamma=3)), which may hold
# another: expansions nest, up to this depth (a plug-in expanding back into itself stops here).
MAX_EXPANSION_DEPTH = 32
_expansion_depth = contextvars.ContextVar("lossdsl_expansion_depth", default=0)


def _until_primitive(expand: Callable[[Any], LossNode]) -> Callable[[Any], LossNode]:
    """A class's own ``expand``, applied again to its result until nothing changes: every caller
    of ``node.expand()`` (the compiler, ``spec.expand()``, the blocks' checks) gets primitive blocks
    whatever a plug-in's rewrite returns."""

    @functools.wraps(expand)
    def until_primitive(self: LossNode) -> LossNode:
        depth = _expansion_depth.get()
        if depth >= MAX_EXPANSION_DEPTH:
            raise LossSpecError(
                f"{self.kind_name()}() expands more than {MAX_EXPANSION_DEPTH} levels deep",
                hint="does a plug-in's expand() return a loss that expands back into it?",
            )
        token = _expansion_depth.set(depth + 1)
        try:
            node = expand(self)
            if node == self:
                return node
            further = node.expand()
            return node if further == node else further
        finally:
            _expansion_depth.reset(token)

    return until_primitive


class NodeArgumentsError(LossSpecError):
    """A node built with arguments pydantic refused; ``validation_error`` keeps pydantic's own report
    (the text validator reads it to point at the offending parameter in the user's text)."""

    def __init__(self, reason: str, validation_error: ValidationError) -> None:
        super().__init__(reason)
        self.validation_error = validation_error


def _node_error(cls: type[LossNode], exc: ValidationError) -> LossDSLError:
    """The first problem pydantic found with a node's arguments, as a LossSpecError."""
    first = exc.errors(include_url=False)[0]
    original = first.get("ctx", {}).get("error")
    if isinstance(original, LossDSLError):
        return original
    # Union branches appear in the location under their type's name ("constrained-float"): left out.
    where = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or part.isidentifier())
    reason = str(original) if original is not None else first["msg"]
    return NodeArgumentsError(f"{cls.kind_name()}(): {where + ': ' if where else ''}{reason}", exc)


# How a child given as a plain dict (from Python code) becomes a node: the validator's job, handed in
# by lossdsl.validate when it is imported (the catalogue sits below the validator and imports nothing
# of it).
CHILD_BUILDER: Callable[[dict[str, Any]], LossNode] | None = None


def _coerce_child(value: Any) -> Any:
    """Let Python users pass a plain dict for a child loss: it is validated through the registry."""
    if isinstance(value, LossNode):
        return value
    if isinstance(value, dict) and CHILD_BUILDER is not None:
        return CHILD_BUILDER(value)
    raise ValueError(f"expected a loss, got {type(value).__name__}")


Child = Annotated[
    LossNode,
    BeforeValidator(_coerce_child),
    WithJsonSchema({NODE_SCHEMA_MARKER: True}),
]


def node_taking(node: LossNode, parameter: str) -> LossNode | None:
    """The node of a loss as written, ``node`` itself or one it wraps (outermost first), that takes
    ``parameter``; None when none does. Hints name it, so that they suggest only what the loss
    accepts (``focal(background=true)``, ``ce(ignore_index=255)`` inside ``poly(ce())``)."""
    if parameter in type(node).model_fields:
        return node
    for child in node.children():
        found = node_taking(child, parameter)
        if found is not None:
            return found
    return None


def head_of(node: LossNode) -> str | None:
    """'sigmoid' or 'softmax' when the loss has a probability p_t that modifiers can use, else None."""
    return getattr(node, "head", None)


CATALOGUE: dict[str, type[LossNode]] = {}


def register(cls: type[LossNode]) -> type[LossNode]:
    """Add a name to the catalogue (a class decorator; also the plug-in entry point).

    The class must subclass ``LossNode`` and declare ``kind: Literal["name"] = "name"``. A name that is
    already taken is refused, so a plug-in cannot silently replace a built-in loss.
    """
    if not (isinstance(cls, type) and issubclass(cls, LossNode)):
        raise LossSpecError(f"register() expects a LossNode subclass, got {cls!r}")
    field = cls.model_fields.get("kind")
    annotation = field.annotation if field else None
    if field is None or typing.get_origin(annotation) is not Literal or field.default is None:
        raise LossSpecError(
            f"{cls.__name__} must declare kind: Literal['name'] = 'name' to be registered"
        )
    name = field.default
    if not name.isidentifier():
        raise LossSpecError(f"catalogue names must be identifiers, got {name!r}")
    if name in CATALOGUE and CATALOGUE[name] is not cls:
        raise LossSpecError(f"'{name}' is already in the catalogue ({CATALOGUE[name].__name__})")
    CATALOGUE[name] = cls
    return cls


def lookup(name: str) -> type[LossNode]:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise LossSpecError(
            f"unknown loss '{name}'", hint=unknown_loss_hint(name, CATALOGUE, "losses")
        ) from None
