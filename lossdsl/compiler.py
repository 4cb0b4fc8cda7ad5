"""Validated spec -> nn.Module. Named losses are expanded first, so a name and its expansion compile
to the same module and give the same numbers."""

from __future__ import annotations

from .catalogue.likelihoods import BCE, CE
from .errors import LossSpecError
from .module import CompiledLoss
from .printer import term_to_expr
from .spec import LossSpec, Term
from .terms.base import TermModule
from .terms.regression import RegressionTerm
from .terms.sigmoid import SigmoidTerm
from .terms.softmax import SoftmaxTerm


def compile_spec(spec: LossSpec, *, check_values: bool = True) -> CompiledLoss:
    labels = _labels(spec)
    terms = [
        compile_term(term.model_copy(update={"loss": term.loss.expand()}), label, check_values)
        for term, label in zip(spec.terms, labels)
    ]
    return CompiledLoss(spec, terms)


def compile_term(term: Term, label: str, check_values: bool) -> TermModule:
    node = term.loss
    if isinstance(node, BCE):
        return SigmoidTerm(term, label, check_values, node)
    if isinstance(node, CE):
        return SoftmaxTerm(term, label, check_values, node)
    if node.is_regression:
        return RegressionTerm(term, label, check_values)
    raise LossSpecError(f"{node.kind_name()}() has no compiled form")


def _labels(spec: LossSpec) -> list[str]:
    """Readable, unique names for the terms: their expressions without weights."""
    labels: list[str] = []
    for term in spec.terms:
        label = term_to_expr(term, with_weight=False)
        if label in labels:
            label = f"{label}#{sum(1 for other in labels if other.split('#')[0] == label) + 1}"
        labels.append(label)
    return labels
