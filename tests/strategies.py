"""Hypothesis strategies for random VALID loss specs, read off the catalogue registry.

Nothing here names a catalogue entry: every registered model is introspected when a value is drawn
(field annotations, ``annotated_types`` bounds, ``Literal`` choices, per-class tuples, ``Optional``,
the ``loss_fields`` that hold a child loss), so names registered later (modifiers, named losses,
plug-ins) are generated too. Combinations that a model's own validators refuse are retried, then
rejected; the strategies never decide validity by calling the printer.

Each generated spec is built from plain data through the validator (the same path a dict or YAML
takes), and also directly from the pydantic models, so tests can check both agree.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types as at
from hypothesis import reject
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic.fields import FieldInfo

import lossdsl
from lossdsl.catalogue import CATALOGUE, LossNode
from lossdsl.located import wrap
from lossdsl.spec import LossSpec, Term
from lossdsl.validate import build_spec

REDUCED = ("mean", "sum", "batchmean", "pos_mean")
MAX_DEPTH = 3
# How often a draw is retried when a model validator refuses the combination (e.g. a modifier that
# needs a sigmoid child), before the example is rejected as a whole.
ATTEMPTS = 8


@dataclass(frozen=True)
class Gen:
    """A generated value twice: as plain config data (lists, dicts) and as the model expects it."""

    plain: Any
    value: Any


@dataclass(frozen=True)
class GeneratedSpec:
    plain: dict[str, Any]  # {"terms": [{"loss": {...}, "weight": w, "reduction": r}, ...]}
    spec: LossSpec  # built from ``plain`` by the validator
    direct: LossSpec  # built from the models without the validator


# -- constraints --------------------------------------------------------------------------------------


@dataclass
class Bounds:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_len: int = 0
    max_len: int | None = None

    def add(self, meta: Any) -> None:
        for name in ("ge", "gt", "le", "lt"):
            value = getattr(meta, name, None)
            if value is not None and isinstance(meta, (at.Ge, at.Gt, at.Le, at.Lt, at.Interval)):
                setattr(self, name, value)
        if isinstance(meta, at.MinLen):
            self.min_len = meta.min_length
        if isinstance(meta, at.MaxLen):
            self.max_len = meta.max_length
        if isinstance(meta, at.Len):
            self.min_len = meta.min_length
            self.max_len = meta.max_length

    def lower(self) -> tuple[float | None, bool]:
        if self.gt is not None:
            return self.gt, True
        return self.ge, False

    def upper(self) -> tuple[float | None, bool]:
        if self.lt is not None:
            return self.lt, True
        return self.le, False


def _flatten(metadata: list[Any]) -> list[Any]:
    out: list[Any] = []
    for meta in metadata:
        if isinstance(meta, FieldInfo):
            out += _flatten(list(meta.metadata))
        elif isinstance(meta, at.GroupedMetadata) and not isinstance(meta, (at.Interval, at.Len)):
            out += _flatten(list(meta))
        else:
            out.append(meta)
    return out


def _bounds(metadata: list[Any]) -> Bounds:
    bounds = Bounds()
    for meta in _flatten(metadata):
        bounds.add(meta)
    return bounds


# -- values of one annotation -------------------------------------------------------------------------


def _floats(bounds: Bounds) -> st.SearchStrategy[Gen]:
    low, exclude_low = bounds.lower()
    high, exclude_high = bounds.upper()
    parts = [
        st.floats(
            min_value=low, max_value=high, exclude_min=exclude_low and low is not None,
            exclude_max=exclude_high and high is not None, allow_nan=False, allow_infinity=False,
        )
    ]
    # Whole numbers too: an int is a valid value for a float parameter and prints without a point.
    int_low = None if low is None else (math.floor(low) + 1 if exclude_low else math.ceil(low))
    int_high = None if high is None else (math.ceil(high) - 1 if exclude_high else math.floor(high))
    int_low = -1000 if int_low is None else int_low
    int_high = int_low + 1000 if int_high is None else int_high
    if int_low <= int_high:
        parts.append(st.integers(int_low, int_high))
    return st.one_of(parts).map(lambda v: Gen(v, v))


def _integers(bounds: Bounds) -> st.SearchStrategy[Gen]:
    low, exclude_low = bounds.lower()
    high, exclude_high = bounds.upper()
    low = None if low is None else (math.floor(low) + 1 if exclude_low else math.ceil(low))
    high = None if high is None else (math.ceil(high) - 1 if exclude_high else math.floor(high))
    return st.integers(min_value=low, max_value=high).map(lambda v: Gen(v, v))


def _strings() -> st.SearchStrategy[Gen]:
    text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
    return text.map(lambda v: Gen(v, v))


def _sequence(element: st.SearchStrategy[Gen], bounds: Bounds) -> st.SearchStrategy[Gen]:
    max_size = 5 if bounds.max_len is None else bounds.max_len
    items = st.lists(element, min_size=bounds.min_len, max_size=max(max_size, bounds.min_len))
    return items.map(lambda gens: Gen([g.plain for g in gens], tuple(g.value for g in gens)))


def values_for(annotation: Any, metadata: list[Any], depth: int) -> st.SearchStrategy[Gen] | None:
    """A strategy for one parameter's values, or None when the annotation is not understood."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        return values_for(base, list(metadata) + meta, depth)
    if origin in (typing.Union, types.UnionType):
        options = [values_for(arg, metadata, depth) for arg in typing.get_args(annotation)]
        options = [o for o in options if o is not None]
        return st.one_of(options) if options else None
    if annotation is type(None):
        return st.just(Gen(None, None))
    if origin is Literal:
        return st.sampled_from(typing.get_args(annotation)).map(lambda v: Gen(v, v))
    bounds = _bounds(metadata)
    if annotation is bool:
        return st.booleans().map(lambda v: Gen(v, v))
    if annotation is int:
        return _integers(bounds)
    if annotation is float:
        return _floats(bounds)
    if annotation is str:
        return _strings()
    if origin in (tuple, list):
        args = typing.get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed-length tuple
            parts = [values_for(arg, [], depth) for arg in args]
            if any(p is None for p in parts):
                return None
            return st.tuples(*parts).map(
                lambda gens: Gen([g.plain for g in gens], tuple(g.value for g in gens))
            )
        element = values_for(args[0], [], depth) if args else None
        return None if element is None else _sequence(element, bounds)
    if isinstance(annotation, type) and issubclass(annotation, LossNode):
        if depth <= 0:
            return None
        return nodes(depth - 1)
    return None


# -- nodes and specs ----------------------------------------------------------------------------------


def catalogue_classes(*, leaves_only: bool = False) -> list[type[LossNode]]:
    classes = [CATALOGUE[name] for name in sorted(CATALOGUE)]
    if leaves_only:
        classes = [cls for cls in classes if not cls.loss_fields]
    return classes


@functools.cache
def _field_strategy(cls: type[LossNode], name: str, depth: int) -> st.SearchStrategy[Gen] | None:
    # Cached per class object: building strategies afresh on every draw costs more than drawing.
    if name in cls.loss_fields:
        return nodes(depth - 1) if depth > 0 else None
    field = cls.model_fields[name]
    return values_for(field.annotation, list(field.metadata), depth)


@functools.cache
def _choose(options: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(options)


@st.composite
def node_params(draw: st.DrawFn, cls: type[LossNode], depth: int) -> Gen | None:
    """Plain parameters for ``cls`` (child losses as plain dicts), and the validated node.

    None when the model's own validators refuse the drawn combination, or when a required parameter
    has an annotation these strategies do not understand.
    """
    plain: dict[str, Any] = {"kind": cls.kind_name()}
    params: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if name == "kind":
            continue
        required = field.is_required()
        strategy = _field_strategy(cls, name, depth)
        if strategy is None:
            if required:
                return None
            continue
        if not required and name not in cls.loss_fields and draw(st.booleans()):
            continue  # leave it to its default
        gen = draw(strategy)
        plain[name] = gen.plain
        params[name] = gen.value
    try:
        node = cls.model_validate(params)
    except (ValidationError, lossdsl.LossDSLError):
        return None
    return Gen(plain, node)


@st.composite
def _node(draw: st.DrawFn, depth: int) -> Gen:
    classes = tuple(catalogue_classes(leaves_only=depth <= 0))  # read at draw time: new names join
    for _ in range(ATTEMPTS):
        cls = draw(_choose(classes))
        gen = draw(node_params(cls, depth))
        if gen is not None:
            return gen
    reject()


@functools.cache
def nodes(depth: int = MAX_DEPTH) -> st.SearchStrategy[Gen]:
    """One catalogue node (Gen: plain dict with 'kind', validated LossNode), children to ``depth``."""
    return _node(depth)


@functools.cache
def weights() -> st.SearchStrategy[float]:
    """Finite non-zero weights: negative ones, tiny and huge exponents, whole numbers."""
    return st.one_of(
        st.sampled_from([1.0, -1.0, 0.5, 2, 0.1, 1e-300, -1e300, 5e-324, 1.7976931348623157e308]),
        st.integers(-1000, 1000).filter(bool),
        st.floats(allow_nan=False, allow_infinity=False).filter(bool),
    )


@functools.cache
def _term_nodes(max_terms: int, depth: int) -> st.SearchStrategy[list[Gen]]:
    return st.lists(nodes(depth), min_size=1, max_size=max_terms)


@st.composite
def generated_specs(draw: st.DrawFn, max_terms: int = 4, depth: int = MAX_DEPTH) -> GeneratedSpec:
    drawn = draw(_term_nodes(max_terms, depth))
    unreduced = draw(st.integers(0, 4)) == 0
    terms_plain = []
    terms = []
    for gen in drawn:
        weight = draw(weights())
        if unreduced:
            reduction = "none"
        else:
            allowed = [r for r in REDUCED if not (r == "pos_mean" and gen.value.is_regression)]
            reduction = draw(_choose(tuple(allowed)))
        term: dict[str, Any] = {"loss": gen.plain, "weight": weight}
        if reduction != gen.value.default_reduction or draw(st.booleans()):
            term["reduction"] = reduction
        terms_plain.append(term)
        terms.append(Term(loss=gen.value, weight=weight, reduction=reduction))
    plain = {"terms": terms_plain}
    try:
        spec = build_spec(wrap(plain))
    except lossdsl.LossDSLError:
        # A rule of the sum or of the catalogue these strategies do not know about.
        reject()
    return GeneratedSpec(plain=plain, spec=spec, direct=LossSpec(terms=tuple(terms)))


def specs(max_terms: int = 4, depth: int = MAX_DEPTH) -> st.SearchStrategy[LossSpec]:
    """Random valid LossSpecs over the whole registered catalogue."""
    return generated_specs(max_terms, depth).map(lambda g: g.spec)
