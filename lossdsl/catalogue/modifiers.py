"""The primitive blocks: modifiers that act on a wrapped loss element by element, before reduction.

Each wraps one loss that has a probability ``p_t`` (a base likelihood or another modifier). The
formulas, with ``q = 1 - p_t``:

- ``modulate``: ``l * q^g`` (focusing, Lin et al. 2017); asymmetric ``g`` per target (Ridnik et al. 2021)
- ``clip``: negatives see ``p_m = max(p - margin, 0)`` throughout the term (ASL's probability shift)
- ``poly``: ``l + sum_j e_j q^(j+g)`` (PolyLoss, Leng et al. 2022)
- ``balance``: ``l * (alpha y + (1-alpha)(1-y))``, or ``l * alpha[target]`` on a softmax head
- ``density``: ``l * w`` with GHM-C's gradient-density weights (Li et al. 2019)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, ClassVar, Literal

from pydantic import Field, Strict, model_validator

from .base import Child, Flag, LossNode, NonNegative, Probability, described, head_of, register
from .schedules import ScheduleBase, is_schedule, scheduled


def _number(value: float | ScheduleBase) -> float | ScheduleBase:
    """A parameter as a float, or the schedule it follows."""
    return value if is_schedule(value) else float(value)


def walk(node: LossNode) -> Iterator[LossNode]:
    """The node and everything below it."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(current.children())


class Modifier(LossNode):
    """A block that wraps one loss with a probability and keeps its head."""

    category = "modifier"
    positional = "loss"
    loss_fields = ("loss",)
    # A term holds at most one of these kinds (the compiler's plan has one slot for each).
    unique_in_term: ClassVar[bool] = False
    # Why the block needs a sigmoid head, for blocks that do (None: either head).
    sigmoid_only: ClassVar[str | None] = None

    @property
    def head(self) -> str | None:
        return head_of(self.loss)

    @model_validator(mode="after")
    def _wraps_a_probability(self):
        if head_of(self.loss) is None:
            raise ValueError(
                f"needs a loss with a probability p_t (ce, bce, or a block around them); "
                f"{self.loss.kind_name()}() has none"
            )
        if getattr(self.loss.expand(), "unwrappable", None):
            raise ValueError(f"{self.loss.expand().unwrappable}; no block can wrap it")
        # Named losses count as their expansion: clip(asl()) holds two clips.
        if type(self).unique_in_term and any(
            isinstance(inner, type(self)) for inner in walk(self.loss.expand())
        ):
            raise ValueError(f"a term can hold one {self.kind_name()}() block; merge the nested ones")
        if self.sigmoid_only and head_of(self.loss) != "sigmoid":
            raise ValueError(self.sigmoid_only)
        return self


@register
class Modulate(Modifier):
    """Focusing: ``l * (1 - p_t)^g`` (Lin et al. 2017, Focal Loss for Dense Object Detection).

    ``g = gamma``, or asymmetric (Ridnik et al. 2021, ASL): sigmoid ``g = gamma_pos*y + gamma_neg*(1-y)``;
    softmax with class-index targets weights every class: ``l = -sum_c q_c w_c log p_c`` with
    ``w_c = (1-p_c)^gamma_pos`` for the target class and ``p_c^gamma_neg`` for the others.
    ``detach=true`` computes the weight without gradient (ASL's ``disable_torch_grad_focal_loss``).

    ``focus=quality`` (sigmoid head) focuses on the distance to a soft quality target instead:
    ``q = |y - p|`` (Li et al. 2020, GFL's Quality Focal Loss, whose targets are the IoU of the box at
    the label class and 0 elsewhere); for hard targets it equals ``1 - p_t``. ``poly`` in the same term
    uses the same ``q``.
    """

    kind: Literal["modulate"] = "modulate"
    loss: Child
    gamma: described(scheduled(NonNegative), "focusing exponent: the loss is multiplied by q^gamma, "
                                             "q = 1 - p_t, down-weighing easy examples (0: no "
                                             "focusing)") = 2.0
    gamma_pos: described(scheduled(NonNegative) | None, "exponent for positive targets instead of gamma "
                                             "(with gamma_neg)") = None
    gamma_neg: described(scheduled(NonNegative) | None, "exponent for negative targets (sigmoid), or "
                                                        "the weight p_c^gamma_neg of the other classes "
                                                        "(softmax)") = None
    detach: described(Flag, "compute the focusing weight without gradient (ASL's "
                            "disable_torch_grad_focal_loss)") = False
    focus: described(Literal["pt", "quality"], "what q is: pt is 1 - p_t (focal loss); quality is "
                                               "|y - p| for soft IoU targets (GFL, sigmoid head)") = "pt"

    summary = "focusing factor (1-p_t)^gamma, optionally asymmetric (gamma_pos / gamma_neg)"
    paper = "Lin et al. 2017 (focal loss); Ridnik et al. 2021 (asymmetric focusing)"
    unique_in_term = True

    @model_validator(mode="after")
    def _one_way_of_giving_gamma(self):
        if "gamma" in self.model_fields_set and (self.gamma_pos is not None or self.gamma_neg is not None):
            raise ValueError("give either gamma, or gamma_pos and gamma_neg, not both")
        if (self.gamma_pos is None) != (self.gamma_neg is None):
            missing = "gamma_neg" if self.gamma_neg is None else "gamma_pos"
            raise ValueError(f"gamma_pos and gamma_neg go together; {missing} is missing")
        if self.focus == "quality" and head_of(self.loss) == "softmax":
            raise ValueError(
                "focus=quality weighs each element by |y - p|, so it needs a sigmoid head (bce)"
            )
        return self

    @property
    def exponents(self) -> tuple[float | ScheduleBase, float | ScheduleBase]:
        """(gamma_pos, gamma_neg): the exponent for positive and for negative targets (numbers, or
        schedules)."""
        if self.gamma_pos is not None:
            return _number(self.gamma_pos), _number(self.gamma_neg)
        return _number(self.gamma), _number(self.gamma)


@register
class Clip(Modifier):
    """Asymmetric probability shifting (Ridnik et al. 2021): negatives see ``p_m = max(p - margin, 0)``.

    The whole term sees it, inside and around the block: the negative log term becomes
    ``log(min(1 - p + margin, 1))`` and focusing uses ``p_m``. Easy negatives (``p <= margin``) are
    discarded entirely. Sigmoid head only.
    """

    kind: Literal["clip"] = "clip"
    loss: Child
    margin: described(scheduled(Annotated[float, Strict(), Field(ge=0, lt=1)]),
                      "probability shift of negatives: they see max(p - margin, 0); easy ones "
                      "(p <= margin) count for nothing") = 0.05

    summary = "asymmetric probability shifting p_m = max(p - margin, 0) for negatives (sigmoid)"
    paper = "Ridnik et al. 2021, Asymmetric Loss For Multi-Label Classification"
    unique_in_term = True
    sigmoid_only = (
        "shifts sigmoid probabilities of negatives; a softmax head has no independent negatives to shift"
    )


PolyCoefficient = Annotated[float, Strict(), Field(ge=-1)]


@register
class Poly(Modifier):
    """Polynomial terms (Leng et al. 2022, PolyLoss): ``l + sum_j e_j (1 - p_t)^(j + g)``.

    ``g`` is the focusing exponent of the wrapped loss (0 without ``modulate``), so
    ``poly(focal(gamma=2), eps=1)`` adds ``(1-p_t)^3``. ``eps`` is a number (Poly-1) or a list
    ``[e1, ..., eN]`` (Poly-N). ``e1 >= -1``: below it the leading coefficient ``1 + e1`` turns
    negative and the loss rewards wrong predictions.
    """

    kind: Literal["poly"] = "poly"
    loss: Child
    eps: described(scheduled(PolyCoefficient) | tuple[Annotated[float, Strict()], ...],
                   "coefficient of (1-p_t)^(1+g) (Poly-1), or a list [e1, ..., eN] of the first N "
                   "polynomial terms; e1 >= -1") = 1.0

    summary = "polynomial terms e_j (1-p_t)^(j+gamma) added to the loss (Poly-1, Poly-N)"
    paper = "Leng et al. 2022, PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions"

    @model_validator(mode="after")
    def _leading_coefficient(self):
        if isinstance(self.eps, tuple):
            if not self.eps:
                raise ValueError("eps needs at least one coefficient")
            if self.eps[0] < -1:
                raise ValueError(
                    f"eps[0]={self.eps[0]:g} is out of range; the first coefficient must be >= -1 "
                    "(below it the leading coefficient 1 + e1 turns negative)"
                )
        return self

    @property
    def coefficients(self) -> tuple[float | ScheduleBase, ...]:
        return self.eps if isinstance(self.eps, tuple) else (_number(self.eps),)


@register
class Balance(Modifier):
    """Class balancing: sigmoid ``l * (alpha*y + (1-alpha)*(1-y))``; softmax ``l * alpha[target]``.

    ``alpha`` is a number in [0, 1] or one value per class (on the sigmoid head a list is per class
    along dimension 1; on the softmax head a number scales every class alike).
    """

    kind: Literal["balance"] = "balance"
    loss: Child
    alpha: described(scheduled(Probability) | tuple[Probability, ...],
                     "weight of positives (1 - alpha for negatives) on the sigmoid head, or one weight "
                     "per class") = 0.25

    summary = "class balancing weight alpha (positives vs negatives, or per class)"
    paper = "Lin et al. 2017, Focal Loss for Dense Object Detection (alpha-balanced form)"


@register
class Density(Modifier):
    """Gradient-density weights (Li et al. 2019, GHM-C): ``l * w`` per element, ``w`` without gradient.

    ``g = |p - y|`` binned with edges ``i/bins`` (last edge + 1e-6); ``tot = max(#valid, 1)``; a
    non-empty bin with ``n_i`` members weighs ``tot / n_i``, or with momentum ``tot / acc_i`` where
    ``acc_i <- momentum*acc_i + (1-momentum)*n_i`` (a buffer starting at 0, updated for non-empty
    bins in training mode only); all weights are divided by the number of non-empty bins. With the
    default mean this is ``sum(w*l) / tot``. Sigmoid head only.
    """

    kind: Literal["density"] = "density"
    loss: Child
    bins: Annotated[int, Strict(), Field(ge=1, le=10_000, description="number of bins of the gradient "
                                         "norm |p - y| over [0, 1]")] = 10
    momentum: Annotated[float, Strict(), Field(ge=0, lt=1, description="running average of the bin "
                                               "counts across batches (0: this batch's counts only)")] = 0.0

    summary = "GHM-C gradient-density weights over `bins` bins of |p - y|, with optional momentum"
    paper = "Li et al. 2019, Gradient Harmonized Single-stage Detector"
    unique_in_term = True
    sigmoid_only = "bins each element's |p - y|, so it needs a sigmoid head (bce)"
