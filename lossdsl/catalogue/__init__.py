"""The catalogue: every name the language knows, one pydantic model each (see base.register)."""

from . import (  # noqa: F401  (importing registers the names)
    boxes,
    deep,
    detection,
    distillation,
    likelihoods,
    longtail,
    modifiers,
    multitask,
    named,
    plugins,
    region,
    regression,
)
from .base import CATALOGUE, REDUCTIONS, LossNode, Reduction, head_of, lookup, register

__all__ = ["CATALOGUE", "REDUCTIONS", "LossNode", "Reduction", "head_of", "lookup", "register"]
