"""Knowledge distillation: the student's logits against a teacher's, read at call time (``teacher=``).

``kd`` adds to any loss on the same logits: ``0.5 * ce() + 0.5 * kd(T=4)`` is Hinton's recipe, the
labels for ``ce`` and the teacher's logits for ``kd`` given in one call,
``loss(student, labels, teacher=teacher_logits)``. The formula is in ``lossdsl.functional.distillation``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, Strict

from .base import LossNode, described, register

Temperature = Annotated[float, Strict(), Field(gt=0, le=1e4)]


@register
class KD(LossNode):
    """Knowledge distillation (Hinton, Vinyals and Dean 2015, Distilling the Knowledge in a Neural
    Network): per sample (or position), ``T^2 KL(softmax(t / T) || softmax(z / T))`` over the
    classes (dimension 1), ``z`` the student's logits, ``t`` the teacher's, read from the call's
    ``teacher=`` without gradient. ``T^2`` keeps the gradients' scale as ``T`` grows. The default
    reduction is ``batchmean`` (the sum over positions divided by N):
    ``F.kl_div(log_softmax(z/T, 1), softmax(t/T, 1), reduction="batchmean") * T*T`` exactly.
    """

    kind: Literal["kd"] = "kd"
    T: described(Temperature, "temperature: both distributions are softened as softmax(logits / T) "
                              "(1: the plain KL divergence)") = 4.0

    category = "distillation"
    default_reduction = "batchmean"
    positives_reason: ClassVar[str] = "kd compares two distributions and has no positive targets"
    unwrappable = "kd compares the student's distribution with the teacher's and has no p_t"
    targets = ("the teacher's logits, shaped like the input, given as teacher=; the target argument "
               "is not read (it may be the labels of other terms, or left out)")
    summary = "knowledge distillation T^2 KL(softmax(t/T) || softmax(z/T)) from teacher= logits"
    paper = "Hinton, Vinyals and Dean 2015, Distilling the Knowledge in a Neural Network"
    equivalents = (
        'torch.nn.functional.kl_div(log_softmax(z/T, 1), softmax(t/T, 1), reduction="batchmean") * T*T',
        "RepDistiller DistillKL(T) (its size_average division is batchmean)",
    )

    @property
    def head(self) -> None:  # no p_t for a block to modify
        return None
