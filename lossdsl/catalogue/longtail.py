"""Long-tail losses (SPEC "Long-tail losses (class frequency)"): reweighting or re-margining by how
often each class occurs in the training set, where focal, ASL and GHM-C reweight by difficulty.

Every name reads per-class counts ``n_j`` (prior ``pi_j = n_j / sum n``) in one of the forms of
``catalogue.counts``, or (``seesaw``, ``eqlv2``) running statistics of its own:

- ``logit_adjust(L, tau, counts)``: ``L`` on the logits ``z_j + log(pi_j^tau + 1e-12)`` (a block);
- ``balanced_softmax(counts)``: ``logit_adjust(ce(), tau=1, counts=...)``;
- ``ldam(counts, max_m, s)``: ``ce(s (z - Delta_y onehot_y))``, ``Delta_j`` proportional to ``n_j^(-1/4)``;
- ``class_balanced(L, beta, counts)``: each sample's ``L`` times its class's effective-number weight;
- ``seesaw(p, q, eps)``: ``ce`` on ``z_j + log(M_ij C_ij)`` from running counts and the scores;
- ``eqlv2(gamma, mu, alpha)``: bce over C+1 channels weighted from running gradient statistics.

``logit_adjust``, ``ldam`` and ``seesaw`` change the softmax's logits; a term holds at most one of
them (the order of two shifts would be a choice the expression does not show).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, Strict, model_validator

from .base import Child, Flag, IgnoreIndex, LossNode, NonNegative, Number, described, register
from .counts import COUNTS_DESCRIPTION, ONLINE, Counts
from .likelihoods import CE
from .modifiers import Modifier, walk
from .schedules import scheduled

PositiveNumber = Annotated[float, Strict(), Field(gt=0)]
CountsParameter = described(Counts, COUNTS_DESCRIPTION)

_INDEX_TARGETS = "integer class indices [N, d1, ...] (ignore_index masked)"


# Their group in `lossdsl list` and the README's table.
CATEGORY = "longtail"


def _logit_shifts(node: LossNode) -> list[str]:
    """The names in ``node`` (expanded) that change the softmax's logits."""
    return [inner.kind_name() for inner in walk(node.expand()) if getattr(inner, "shifts_logits", False)]


@register
class LogitAdjust(Modifier):
    """Logit adjustment (Menon et al. 2021, Long-tail learning via logit adjustment): the wrapped
    softmax-head loss ``L`` is computed on ``z_j + log(pi_j^tau + 1e-12)``, ``pi_j = n_j / sum n``,
    the whole term seeing the adjusted logits (``logit_adjust(focal(head=softmax))`` focuses on the
    adjusted probabilities; ``poly`` inside or around it uses them too). Prediction is untouched:
    ``argmax z`` estimates the balanced-error optimum.

    ``posthoc=true`` is the paper's post-hoc correction instead: ``L`` trains on the raw logits and
    ``loss.predict(z)`` gives ``softmax(z_j - log(pi_j^tau + 1e-12))``. Either way one config serves
    training and evaluation. With ``counts=online`` the prior is read as ``max(n_j, 1)`` after this
    batch's targets are counted (probability targets add their probabilities).
    """

    kind: Literal["logit_adjust"] = "logit_adjust"
    loss: Child
    tau: described(scheduled(NonNegative), "temperature of the prior: the logits are shifted by "
                                "log(pi^tau + 1e-12); 1 is the paper's choice, 0 no shift") = 1.0
    counts: CountsParameter = ONLINE
    posthoc: described(Flag, "train L on the raw logits and adjust only the prediction "
                             "(loss.predict gives softmax(z - log(pi^tau + 1e-12)))") = False

    summary = "logit adjustment: L on logits z + log(prior^tau) (or the same shift at prediction)"
    paper = "Menon et al. 2021, Long-tail learning via logit adjustment"
    category = CATEGORY
    equivalents = (
        'google-research logit_adjustment build_loss_fn(use_la_loss=True, base_probs=pi, tau=t): '
        'logit_adjust(ce(), tau=t, counts="base_probs.txt")',
        "google-research logit_adjustment --mode=posthoc: logit_adjust(ce(), posthoc=true) and "
        "loss.predict(logits)",
    )
    targets = "those of the loss it wraps (class indices, or probabilities that counts=online adds up)"
    shifts_logits: ClassVar[bool] = True

    @model_validator(mode="after")
    def _softmax_and_one_shift(self):
        if self.head == "sigmoid":
            raise ValueError(
                "logit adjustment shifts each class's logit by its log prior so that the classes "
                "compete in the softmax on balanced terms; on a sigmoid head no class competes with "
                "another (for a sigmoid loss use class_balanced, or the softmax head)"
            )
        inner = _logit_shifts(self.loss)
        if inner:
            raise ValueError(
                f"a term holds one logit shift, and {inner[0]}() inside already shifts the logits; "
                "use one of them"
            )
        return self




@register
class BalancedSoftmax(LossNode):
    """Balanced softmax (Ren et al. 2020, Balanced Meta-Softmax for Long-Tailed Visual Recognition):
    ``ce`` on ``z_j + log n_j``, which is ``logit_adjust(ce(), tau=1, counts=...)`` (the softmax does
    not see the constant ``log sum n``; the adjustment's ``1e-12`` changes ``log pi_j`` by
    ``1e-12 / pi_j``).
    """

    kind: Literal["balanced_softmax"] = "balanced_softmax"
    counts: CountsParameter = ONLINE
    ignore_index: IgnoreIndex = -100

    summary = "balanced softmax: ce on z + log n (logit adjustment at tau 1)"
    paper = "Ren et al. 2020, Balanced Meta-Softmax for Long-Tailed Visual Recognition"
    category = CATEGORY
    equivalents = (
        "BalancedMetaSoftmax balanced_softmax_loss(labels, logits, sample_per_class, 'mean'): "
        "balanced_softmax(counts=sample_per_class)",
    )

    @property
    def head(self) -> str:
        return "softmax"

    def expand(self) -> LossNode:
        return LogitAdjust(loss=CE(ignore_index=self.ignore_index), tau=1.0, counts=self.counts)


class LogitShiftingLoss(LossNode):
    """A named softmax-head loss on class indices that shifts the logits by class (ldam, seesaw):
    a logit-shifting block may not wrap it again (``shifts_logits``)."""

    targets = _INDEX_TARGETS
    shifts_logits: ClassVar[bool] = True

    @property
    def head(self) -> str:
        return "softmax"


@register
class LDAM(LogitShiftingLoss):
    """Label-distribution-aware margin loss (Cao et al. 2019): ``ce(s (z - Delta_y onehot_y))`` with
    ``Delta_j = max_m n_j^(-1/4) / max_k n_k^(-1/4)``: the rarest class gets the margin ``max_m``,
    every other one less, in proportion to ``n_j^(-1/4)``; ``s`` scales the logits (the paper's
    normalised-feature classifier). ``max_m=0, s=1`` is ``ce``. Class-index targets.

    Deferred re-weighting (LDAM-DRW) is ``class_balanced(ldam(...), beta=0.9999)`` from the epoch
    the re-weighting starts (its mean is the plain mean over samples; LDAM-DRW's ``F.cross_entropy``
    with ``weight=`` divides by the sum of the samples' weights).
    """

    kind: Literal["ldam"] = "ldam"
    counts: CountsParameter = ONLINE
    max_m: described(NonNegative, "the largest margin, given to the rarest class (the others get "
                                  "max_m (n_j / n_min)^(-1/4))") = 0.5
    s: described(PositiveNumber, "scale of the logits before the softmax (the paper's "
                                 "normalised-feature classifier uses 30)") = 30.0
    ignore_index: IgnoreIndex = -100

    summary = "LDAM: ce(s (z - Delta_y)) with class margins Delta_j proportional to n_j^(-1/4)"
    paper = "Cao et al. 2019, Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss"
    category = CATEGORY
    equivalents = (
        "LDAM-DRW LDAMLoss(cls_num_list=n, max_m=0.5, s=30): ldam(counts=n); with weight=w (DRW), "
        "class_balanced(ldam(counts=n), beta=0.9999, reduction=sum) / sum of w over the batch",
    )


@register
class ClassBalanced(Modifier):
    """Class-balanced loss (Cui et al. 2019, Class-Balanced Loss Based on Effective Number of
    Samples): each sample's loss ``L`` is multiplied by its class's weight
    ``w_j = (1 - beta) / (1 - beta^n_j)``, normalised to ``sum_j w_j = C``; the weight carries no
    gradient. ``mean`` stays the plain mean over samples (not divided by the sum of the weights), as
    Cui et al.'s softmax loss; ``beta=0`` weighs every class 1 and is ``L`` itself.

    A sample's weight is ``sum_j y_j w_j / sum_j y_j`` of its target ``y`` before smoothing: ``w`` of
    its class for class indices (and one-hot rows), the mean weight of its classes for a multi-hot
    row (Wu et al. 2020's "average_w" for multi-label data), the target-weighted mean for
    probabilities; a row with no positive class (mmdetection's background label with
    ``background=true``) weighs 1, the mean weight. On the sigmoid head every element of a sample
    gets the sample's weight, as in Cui et al.'s sigmoid and focal losses.
    """

    kind: Literal["class_balanced"] = "class_balanced"
    loss: Child
    beta: described(scheduled(Annotated[float, Strict(), Field(ge=0, lt=1)]),
                    "beta of the effective number (1 - beta^n) / (1 - beta): 0 weighs every class "
                    "alike, towards 1 the weights approach 1/n; DRW switches it on with a schedule, "
                    "beta=steps([0, 0.9999], at=[160])") = 0.9999
    counts: CountsParameter = ONLINE

    summary = "class-balanced weights (1 - beta) / (1 - beta^n_y) per sample (effective number)"
    paper = "Cui et al. 2019, Class-Balanced Loss Based on Effective Number of Samples"
    category = CATEGORY
    unique_in_term = True
    equivalents = (
        "class-balanced-loss (Cui et al.) loss_type=softmax: class_balanced(ce(), beta=b, counts=n)",
        "class-balanced-loss loss_type=sigmoid: class_balanced(bce(), beta=b, counts=n, "
        "reduction=pos_mean); loss_type=focal: class_balanced(focal(gamma=g, alpha=none), beta=b, "
        "counts=n, reduction=pos_mean)",
    )
    targets = "those of the loss it wraps (class indices, multi-hot or soft targets, probabilities)"


@register
class Seesaw(LogitShiftingLoss):
    """Seesaw loss (Wang et al. 2021, Seesaw Loss for Long-Tailed Instance Segmentation): ``ce`` on
    ``z_ij + log(M_ij C_ij)`` for the classes ``j`` other than the target ``i``:

    - mitigation ``M_ij = (N_j / N_i)^p`` where ``N_j < N_i`` (else 1), from running counts ``N``
      (read as ``max(N, 1)``), updated from the batch's targets first (training mode only);
    - compensation ``C_ij = (s_j / s_i)^q`` where ``s_j > s_i`` (else 1), ``s = softmax(z)`` without
      gradient and ``s_i`` clamped to ``eps``.

    ``p = q = 0`` is ``ce``. The classification form (mmpretrain's ``SeesawLoss``); mmdetection's
    two objectness channels are the adapter's (``lossdsl.integrations.mmdet``). Class-index targets.
    """

    kind: Literal["seesaw"] = "seesaw"
    p: described(NonNegative, "exponent of the mitigation factor (N_j / N_i)^p, which lowers the "
                              "penalty a rare class j gets from a frequent class i's samples") = 0.8
    q: described(NonNegative, "exponent of the compensation factor (s_j / s_i)^q, which raises the "
                              "penalty of a class scored above the target") = 2.0
    eps: described(PositiveNumber, "floor of the target's score s_i in the compensation "
                                   "factor") = 0.01
    ignore_index: IgnoreIndex = -100

    summary = "seesaw loss: ce with mitigation (N_j/N_i)^p and compensation (s_j/s_i)^q factors"
    paper = "Wang et al. 2021, Seesaw Loss for Long-Tailed Instance Segmentation"
    category = CATEGORY
    equivalents = (
        "mmpretrain SeesawLoss(p=0.8, q=2.0, eps=0.01, num_classes=C): seesaw() (its counts also "
        "move in eval mode; here in training mode only)",
        "mmdet SeesawLoss(p=0.8, q=2.0, num_classes=C) (C + 2 outputs): "
        "dict(type='LossDSL', expr='seesaw()') (lossdsl.integrations.mmdet)",
    )


@register
class EQLv2(LossNode):
    """Equalization loss v2 (Tan et al. 2021, Equalization Loss v2: A New Gradient Balance Approach
    for Long-tailed Object Detection): sigmoid over ``C + 1`` channels, the last one background,
    class-index targets in ``0..C`` (``C``: background), per sample ``sum_j w_ij bce_ij`` (so the
    mean is ``sum_ij w_ij bce_ij / N``) with ``w_ij = pos_w_j`` for the target channel and
    ``neg_w_j`` for the others:

    ``q_j = sigmoid(gamma (g_j - mu))``, ``neg_w = q``, ``pos_w = 1 + alpha (1 - q)`` (background
    channel: 1 and 1), ``g_j = G+_j / (G-_j + 1e-10)`` from gradient statistics accumulated after each
    training-mode call, ``G+_j += sum_i |p_ij - 1| y_ij w_ij``, ``G-_j += sum_i p_ij (1 - y_ij) w_ij``
    (every weight is 1 until the first statistics exist, as the references' initial ratio 100).
    ``loss.predict`` gives the references' test-time scores ``sigmoid(z)`` with the classes scaled
    by ``1 - sigmoid(z_bg)``. No block wraps it.
    """

    kind: Literal["eqlv2"] = "eqlv2"
    gamma: described(NonNegative, "steepness of the mapping q = sigmoid(gamma (g - mu)) from a "
                                  "class's gradient ratio g to its negative weight") = 12.0
    mu: described(Number, "the gradient ratio at which a class's negative weight is 1/2") = 0.8
    alpha: described(NonNegative, "how much a class with a low gradient ratio raises its positive "
                                  "weight: 1 + alpha (1 - q)") = 4.0
    ignore_index: IgnoreIndex = -100

    summary = "EQLv2: bce over C+1 channels, weights from running positive/negative gradient ratios"
    paper = ("Tan et al. 2021, Equalization Loss v2: A New Gradient Balance Approach for Long-tailed "
             "Object Detection")
    category = CATEGORY
    equivalents = (
        "mmdet EQLV2Loss(gamma=12, mu=0.8, alpha=4.0, num_classes=C): eqlv2() (statistics summed "
        "over the process group whenever torch.distributed runs)",
        "tztztztztz/eqlv2 EQLv2(gamma=12, mu=0.8, alpha=4.0): eqlv2()",
    )
    targets = ("integer class indices [N] in 0..C for logits [N, C + 1]: label C (the last channel) "
               "is the background; ignore_index masked")
    unwrappable = "eqlv2() weighs every channel itself, from its running gradient statistics"

    @property
    def head(self) -> str:
        return "sigmoid"

