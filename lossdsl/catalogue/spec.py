"""The validated loss: a weighted sum of terms, each a tree of catalogue nodes.

``LossSpec`` is what ``lossdsl.parse`` and ``lossdsl.load`` return and what ``lossdsl.compile`` takes.
It is frozen and compared structurally, so ``parse(spec.to_expr()) == spec`` is a meaningful check;
sums are always flat (``2 * (a + b)`` is the two terms ``2*a`` and ``2*b``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import LossDSLError, LossSpecError
from .base import CATALOGUE, Child, LossNode, Reduction
from .printing import spec_to_dict, spec_to_expr
from .schedules import Schedule

# A term's name keys its value in ``loss.last_terms`` and in logged metrics, so it is a plain ASCII
# identifier (safe in every metric store: MLflow accepts only [/\w.\- ]); ``total`` is the sum's key.
TERM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_TERM_NAMES = ("total",)


def term_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a term, or None."""
    if not isinstance(name, str) or not TERM_NAME.fullmatch(name):
        shown = repr(name) if isinstance(name, str) else type(name).__name__
        return (f"a term name must be an identifier (letters, digits, _; not starting with a digit), "
                f"got {shown}")
    if name in RESERVED_TERM_NAMES:
        return f"'{name}' is reserved (last_terms['{name}'] holds the whole loss)"
    return None


class _RaisesOwnErrors(BaseModel):
    """pydantic wraps whatever a validator raises as a ValueError in a ValidationError; a rule of
    ours that a term or spec built in Python breaks must reach the user as the LossDSLError it is."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            own = _lossdsl_error(exc)
            if own is None:
                raise
            raise own from None


class Term(_RaisesOwnErrors):
    """One addend of a loss: ``weight * reduce(loss)``, reduced on its own before the sum.

    ``name`` (optional, YAML ``name:``) is the term's key in ``loss.last_terms`` and
    ``loss.logged_terms()`` instead of its expression. It does not change the numbers, and the
    expression syntax has no place for it: ``to_expr`` leaves it out, ``to_dict``/``to_yaml`` keep it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    loss: Child
    # A number, or a schedule (ramp(0, 1, end=10) * dice(): the weight follows the epoch or step).
    weight: Annotated[float, Strict()] | Schedule = 1.0
    reduction: Reduction = "mean"
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _loss_default_reduction(cls, data: Any) -> Any:
        """A term that names no reduction takes its loss's default (``mean``; kd's ``batchmean``)."""
        if isinstance(data, dict) and "reduction" not in data:
            loss = data.get("loss")
            kind = loss.get("kind") if isinstance(loss, dict) else None
            node = loss if isinstance(loss, LossNode) else CATALOGUE.get(kind) if isinstance(kind, str) \
                else None
            if node is not None:
                data = {**data, "reduction": node.default_reduction}
        return data

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str | None) -> str | None:
        problem = None if name is None else term_name_problem(name)
        if problem:
            raise LossSpecError(problem)
        return name


@dataclass(frozen=True)
class CompositionProblem:
    """A rule of the sum that a list of terms breaks, and the term it is about."""

    term: int
    reason: str
    hint: str
    # The term's reduction is what is wrong (the walker then points at it rather than at the term).
    about_reduction: bool = False
    # The term's name is what is wrong.
    about_name: bool = False


def composition_problem(terms: Sequence[Term]) -> CompositionProblem | None:
    """The first rule of a sum that ``terms`` break, or None.

    The rules live here once: the text walker adds the source location, and ``LossSpec`` applies them
    to specs built in Python, which would otherwise compile to something else than they say.
    """
    for index, term in enumerate(terms):
        whole = term.loss.task_fields or term.loss.spec_fields
        if whole and (len(terms) > 1 or term.weight != 1 or term.reduction != term.loss.default_reduction):
            what = "a task dictionary" if term.loss.bare else f"{term.loss.kind_name()}()"
            does, where = (("weighs whole tasks", "each task's loss") if term.loss.task_fields
                           else ("takes a list of predictions", "the loss it wraps"))
            return CompositionProblem(
                index,
                f"{what} {does} and must be the entire loss: it cannot be added to other "
                "terms, scaled or given a reduction",
                f"put weights and reductions inside {where}",
            )
    unreduced = [term.reduction == "none" for term in terms]
    if any(unreduced) and not all(unreduced):
        return CompositionProblem(
            unreduced.index(False) if unreduced[0] else unreduced.index(True),
            "reduction=none cannot be added to reduced terms: every term of the sum must keep its "
            "per-element values, or none",
            "give reduction=none to every term, or to none of them",
        )
    seen: set[str] = set()
    for index, term in enumerate(terms):
        if term.name is not None and term.name in seen:
            return CompositionProblem(
                index, f"two terms are named '{term.name}'; term names must be unique",
                "give each term its own name", about_name=True,
            )
        if term.name is not None:
            seen.add(term.name)
    for index, term in enumerate(terms):
        reason = term.loss.without_positives() if term.reduction == "pos_mean" else None
        if reason:
            return CompositionProblem(
                index, f"reduction=pos_mean counts positive targets; {reason}",
                "use mean, sum, batchmean or none", about_reduction=True,
            )
    return None


class LossSpec(_RaisesOwnErrors):
    """A validated loss expression: ``sum_i weight_i * reduce_i(loss_i)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    terms: tuple[Term, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _composable(self) -> LossSpec:
        problem = composition_problem(self.terms)
        if problem is not None:
            raise LossSpecError(problem.reason, hint=problem.hint, path=f"terms[{problem.term}]")
        return self

    def to_expr(self) -> str:
        """Canonical text: stable parameter order, defaults left out; parses back to an equal spec
        (term names, which the syntax has no place for, are left out: see ``Term.name``)."""
        return spec_to_expr(self)

    def to_dict(self) -> dict[str, Any]:
        """The structured node form (plain dicts and lists), as accepted by ``lossdsl.load``."""
        return spec_to_dict(self)

    def to_yaml(self) -> str:
        """The structured node form as YAML text."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def expand(self) -> LossSpec:
        """Every named loss rewritten into its primitive blocks (a pure rewrite; same numbers)."""
        return LossSpec(terms=tuple(t.model_copy(update={"loss": t.loss.expand()}) for t in self.terms))

    def without_names(self) -> LossSpec:
        """The same loss with every term name removed (names only label logged values)."""
        if all(term.name is None for term in self.terms):
            return self
        return LossSpec(terms=tuple(t.model_copy(update={"name": None}) for t in self.terms))

    def __str__(self) -> str:
        return self.to_expr()

    def _repr_html_(self) -> str:
        """The term tree, for notebooks (Jupyter shows this instead of the repr)."""
        from ..describe import spec_html

        return spec_html(self)


def per_class_lengths(spec: LossSpec) -> set[int]:
    """Lengths of the per-class lists (class weights, alpha, pos_weight) anywhere in a loss: the
    class count its inputs must have, when it has any."""
    lengths: set[int] = set()
    stack = [term.loss for term in spec.terms]
    while stack:
        node = stack.pop()
        for name in type(node).model_fields:
            value = getattr(node, name)
            if isinstance(value, tuple) and value and all(isinstance(v, (int, float)) for v in value):
                lengths.add(len(value))
        stack += list(node.children())
    return lengths


def _lossdsl_error(exc: ValidationError) -> LossDSLError | None:
    """The LossDSLError a model validator raised, if that is what a ValidationError holds."""
    for error in exc.errors(include_url=False):
        original = error.get("ctx", {}).get("error")
        if isinstance(original, LossDSLError):
            return original
    return None
