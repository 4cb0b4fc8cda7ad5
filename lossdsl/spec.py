"""The validated loss: a weighted sum of terms, each a tree of catalogue nodes.

``LossSpec`` is what ``lossdsl.parse`` and ``lossdsl.load`` return and what ``lossdsl.compile`` takes.
It is frozen and compared structurally, so ``parse(spec.to_expr()) == spec`` is a meaningful check;
sums are always flat (``2 * (a + b)`` is the two terms ``2*a`` and ``2*b``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

from .catalogue.base import Child, Reduction


class Term(BaseModel):
    """One addend of a loss: ``weight * reduce(loss)``, reduced on its own before the sum."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    loss: Child
    weight: Annotated[float, Strict()] = 1.0
    reduction: Reduction = "mean"


class LossSpec(BaseModel):
    """A validated loss expression: ``sum_i weight_i * reduce_i(loss_i)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    terms: tuple[Term, ...] = Field(min_length=1)

    def to_expr(self) -> str:
        """Canonical text: stable parameter order, defaults left out; parses back to an equal spec."""
        from .printer import spec_to_expr

        return spec_to_expr(self)

    def to_dict(self) -> dict[str, Any]:
        """The structured node form (plain dicts and lists), as accepted by ``lossdsl.load``."""
        from .printer import spec_to_dict

        return spec_to_dict(self)

    def to_yaml(self) -> str:
        """The structured node form as YAML text."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def expand(self) -> LossSpec:
        """Every named loss rewritten into its primitive blocks (a pure rewrite; same numbers)."""
        return LossSpec(terms=tuple(t.model_copy(update={"loss": t.loss.expand()}) for t in self.terms))

    def __str__(self) -> str:
        return self.to_expr()
