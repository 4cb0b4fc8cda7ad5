"""Validated spec -> nn.Module. Named losses are expanded first, so a name and its expansion compile
to the same module and give the same numbers."""

from __future__ import annotations

from .catalogue.base import LossNode
from .catalogue.boxes import DFL, BoxLoss
from .catalogue.deep import Deep
from .catalogue.detection import Varifocal
from .catalogue.distillation import KD
from .catalogue.likelihoods import BCE, CE
from .catalogue.longtail import LDAM, ClassBalanced, EQLv2, Seesaw
from .catalogue.modifiers import Modifier
from .catalogue.multitask import MultiTask
from .catalogue.named import ZLPR
from .catalogue.plugins import ElementLoss
from .catalogue.region import RegionLoss
from .catalogue.schedules import spec_schedules
from .deep import DeepSupervisionLoss
from .errors import LossSpecError
from .module import CompiledLoss
from .multitask import MultiTaskLoss
from .printer import term_to_expr
from .spec import LossSpec, Term
from .terms.base import TermModule
from .terms.boxes import BoxTerm, DFLTerm
from .terms.distillation import KDTerm
from .terms.element import ElementTerm
from .terms.longtail import ClassBalancedSigmoidTerm, EQLv2Term
from .terms.region import RegionTerm
from .terms.regression import RegressionTerm
from .terms.sigmoid import SigmoidTerm
from .terms.softmax import SoftmaxTerm
from .terms.zlpr import ZLPRTerm
from .value_checks import DEFAULT_MODE, CheckMode, check_mode


def compile_spec(
    spec: LossSpec, *, check_values: CheckMode = DEFAULT_MODE, distributed: bool = True
) -> CompiledLoss | MultiTaskLoss | DeepSupervisionLoss:
    """The module for a spec. ``check_values``: when target values are checked (True, False or
    "deferred", see lossdsl.value_checks). ``distributed``: sum GHM-C's bin counts and dtp's
    indicators over the process group when torch.distributed is initialised. A loss with schedules
    gets the clock they follow (its tasks and inner loss read it at call time)."""
    module = _compile(spec, check_mode(check_values), distributed)
    if spec_schedules(spec):
        module.attach_clock()
    return module


def _compile(
    spec: LossSpec, check_values: CheckMode, distributed: bool
) -> CompiledLoss | MultiTaskLoss | DeepSupervisionLoss:
    first = spec.terms[0].loss
    if isinstance(first, MultiTask):
        tasks = {name: _compile(task, check_values, distributed) for name, task in first.tasks.items()}
        loss = MultiTaskLoss(spec, first, tasks, distributed=distributed)
        loss.check_values = check_values
        return loss
    if isinstance(first, Deep):
        loss = DeepSupervisionLoss(spec, first, _compile(first.loss, check_values, distributed))
        loss.check_values = check_values
        return loss
    labels = _labels(spec)
    terms = [
        compile_term(term.model_copy(update={"loss": term.loss.expand()}), label, check_values, distributed)
        for term, label in zip(spec.terms, labels)
    ]
    for module, term in zip(terms, spec.terms):
        module.written = term.loss  # its hints name the options of the loss as written
    loss = CompiledLoss(spec, terms)
    loss.check_values = check_values
    return loss


def compile_term(term: Term, label: str, check_values: CheckMode, distributed: bool = True) -> TermModule:
    """One term's module; ``term.loss`` is already expanded into primitive blocks."""
    base, blocks = _unwrap(term.loss)
    if isinstance(base, Varifocal):  # bce with VarifocalNet's weight: the sigmoid kernel computes it
        return SigmoidTerm(term, label, check_values, BCE(), (base,), synchronise=distributed)
    if isinstance(base, BCE) and any(isinstance(block, ClassBalanced) for block in blocks):
        return ClassBalancedSigmoidTerm(term, label, check_values, base, blocks, synchronise=distributed)
    if isinstance(base, BCE):
        return SigmoidTerm(term, label, check_values, base, blocks, synchronise=distributed)
    if isinstance(base, (CE, LDAM, Seesaw)):  # ldam and seesaw: ce on logits they shift
        return SoftmaxTerm(term, label, check_values, base, blocks, distributed)
    if isinstance(base, EQLv2):
        return EQLv2Term(term, label, check_values, distributed)
    if blocks:  # the validator already refuses this; kept as a guard for plug-ins
        raise LossSpecError(f"{blocks[-1].kind_name()}() needs a loss with a probability")
    if isinstance(base, RegionLoss):
        return RegionTerm(term, label, check_values, distributed)
    if isinstance(base, ElementLoss):
        return ElementTerm(term, label, check_values, distributed)
    if isinstance(base, BoxLoss):
        return BoxTerm(term, label, check_values, distributed)
    if isinstance(base, DFL):
        return DFLTerm(term, label, check_values, distributed)
    if isinstance(base, ZLPR):
        return ZLPRTerm(term, label, check_values, distributed)
    if isinstance(base, KD):
        return KDTerm(term, label, check_values, distributed)
    if base.is_regression:
        return RegressionTerm(term, label, check_values, distributed)
    raise LossSpecError(f"{base.kind_name()}() has no compiled form")


def _unwrap(node: LossNode) -> tuple[LossNode, tuple[LossNode, ...]]:
    """The base at the bottom of a chain of blocks, and the blocks from the innermost outwards."""
    blocks = []
    while isinstance(node, Modifier):
        blocks.append(node)
        node = node.loss
    return node, tuple(reversed(blocks))


def _labels(spec: LossSpec) -> list[str]:
    """Readable, unique names for the terms: their expressions without weights."""
    labels: list[str] = []
    for term in spec.terms:
        label = term_to_expr(term, with_weight=False)
        if label in labels:
            label = f"{label}#{sum(1 for other in labels if other.split('#')[0] == label) + 1}"
        labels.append(label)
    return labels
