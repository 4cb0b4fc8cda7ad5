"""Named losses: each is exactly its expansion into primitive blocks (``expand()`` is a pure rewrite).

``zlpr`` is the exception: it couples all classes of a sample, so it is its own leaf.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict, model_validator

from .base import (
    Background,
    Flag,
    HeadChoice,
    IgnoreIndex,
    LossNode,
    NonNegative,
    Probability,
    Smoothing,
    described,
    register,
)
from .likelihoods import BCE, CE
from .modifiers import Balance, Clip, Density, Modulate
from .schedules import highest, scheduled

Alpha = scheduled(Probability) | tuple[Probability, ...] | None


class Named(LossNode):
    category = "named"

    @model_validator(mode="after")
    def _background_on_the_sigmoid_head(self):
        if getattr(self, "background", False) and getattr(self, "head", "sigmoid") == "softmax":
            raise ValueError(
                "background=true reads class index C as an all-negative row of a sigmoid head; "
                "a softmax head has a class of its own for background"
            )
        return self

    def expand(self) -> LossNode:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def base(self, smoothing: float = 0.0) -> LossNode:
        """The likelihood at the bottom of the expansion, with the parameters passed down to it."""
        ignore_index = getattr(self, "ignore_index", -100)
        if getattr(self, "head", "sigmoid") == "softmax":
            return CE(ignore_index=ignore_index, smoothing=smoothing)
        background = getattr(self, "background", False)
        return BCE(ignore_index=ignore_index, smoothing=smoothing, background=background)


@register
class Focal(Named):
    """Focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t``.

    Expansion: ``balance(modulate(bce(), gamma=gamma), alpha=alpha)``; with ``head=softmax``, ``ce()``
    inside and ``alpha`` a per-class list (or a number scaling every class). ``alpha`` defaults to 0.25
    on the sigmoid head (torchvision's ``sigmoid_focal_loss``) and to none on the softmax head;
    ``alpha=none`` leaves the balance out. ``ignore_index`` is passed to the base likelihood.
    """

    kind: Literal["focal"] = "focal"
    gamma: described(scheduled(NonNegative), "focusing exponent: the loss is multiplied by (1 - p_t)^gamma "
                                  "(0: plain cross-entropy)") = 2.0
    alpha: described(Alpha, "weight of positives (1 - alpha for negatives) on the sigmoid head, one "
                            "weight per class on the softmax head; none disables it") = None
    head: HeadChoice = "sigmoid"
    ignore_index: IgnoreIndex = -100
    background: Background = False

    equivalents = (
        "torchvision.ops.sigmoid_focal_loss(x, y, alpha=0.25, gamma=2, reduction='mean')",
        'kornia.losses.binary_focal_loss_with_logits(x, y, alpha=0.25, gamma=2) (sigmoid head)',
        'mmdet FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25): focal(background=true) for its labels',
        'kornia.losses.focal_loss(x, t, alpha=None, gamma=2) times C (kornia averages over classes): '
        'focal(head=softmax)',
    )
    summary = "focal loss -alpha_t (1-p_t)^gamma log p_t, sigmoid or softmax"
    paper = "Lin et al. 2017, Focal Loss for Dense Object Detection"
    head_defaults = {"alpha": (0.25, None)}  # torchvision's default on the sigmoid head

    def expand(self) -> LossNode:
        node: LossNode = Modulate(loss=self.base(), gamma=self.gamma)
        if self.alpha is not None:
            node = Balance(loss=node, alpha=self.alpha)
        return node


@register
class ASL(Named):
    """Asymmetric loss (Ridnik et al. 2021), multi-label or (``head=softmax``) single-label.

    Expansion: ``modulate(clip(bce(smoothing=s), margin=clip), gamma_pos=.., gamma_neg=.., detach=..)``;
    ``head=softmax`` has no ``clip``: ``modulate(ce(smoothing=s), ...)``. The log terms are exact
    log-sigmoids; timm clamps ``p`` at ``eps=1e-8`` instead, so the two agree wherever
    ``abs(x) < 18`` and this one keeps a gradient beyond. timm's single-label ``eps`` is ``smoothing``.
    """

    kind: Literal["asl"] = "asl"
    gamma_pos: described(scheduled(NonNegative), "focusing exponent of positives") = 1.0
    gamma_neg: described(scheduled(NonNegative), "focusing exponent of negatives (larger: easy negatives "
                                                 "fade faster)") = 4.0
    clip: described(scheduled(Annotated[float, Strict(), Field(ge=0, lt=1)]),
                    "probability margin of negatives: they see max(p - clip, 0) (sigmoid head "
                    "only)") = 0.05
    detach: described(Flag, "compute the focusing weight without gradient (timm's "
                            "disable_torch_grad_focal_loss)") = False
    head: HeadChoice = "sigmoid"
    smoothing: described(Smoothing, "label smoothing (timm's single-label eps)") = 0.0
    ignore_index: IgnoreIndex = -100
    background: Background = False

    equivalents = (
        'timm AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=1, clip=0.05): asl(reduction=batchmean) '
        "(timm's default reduction is batchmean, lossdsl's mean)",
        'timm AsymmetricLossSingleLabel(gamma_pos=1, gamma_neg=4, eps=s): asl(head=softmax, clip=0, '
        'smoothing=s)',
    )
    summary = "asymmetric loss: asymmetric focusing plus probability clipping of negatives"
    paper = "Ridnik et al. 2021, Asymmetric Loss For Multi-Label Classification"
    head_defaults = {"clip": (0.05, 0.0)}  # a softmax head has no clip

    @model_validator(mode="after")
    def _no_clip_on_softmax(self):
        if self.head == "softmax" and highest(self.clip) > 0:
            raise ValueError("clip shifts sigmoid probabilities; asl(head=softmax) takes no clip")
        return self

    def expand(self) -> LossNode:
        node = self.base(self.smoothing)
        if highest(self.clip) > 0:  # a schedule that is ever above 0 keeps the block
            node = Clip(loss=node, margin=self.clip)
        return Modulate(loss=node, gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, detach=self.detach)


@register
class GHM(Named):
    """GHM-C (Li et al. 2019): ``density(bce(), bins=.., momentum=..)``; see ``density``.

    Same as mmdetection's ``GHMC(use_sigmoid=True, loss_weight=1)``.
    """

    kind: Literal["ghm"] = "ghm"
    bins: Annotated[int, Strict(), Field(ge=1, le=10_000, description="number of bins of the gradient "
                                         "norm |p - y| over [0, 1]")] = 10
    momentum: Annotated[float, Strict(), Field(ge=0, lt=1, description="running average of the bin "
                                               "counts across batches (0: this batch's counts only)")] = 0.0
    ignore_index: IgnoreIndex = -100
    background: Background = False

    equivalents = (
        'mmdet GHMC(bins=10, momentum=0, use_sigmoid=True, loss_weight=1.0)',
    )
    summary = "GHM-C: bce weighted by the inverse gradient density"
    paper = "Li et al. 2019, Gradient Harmonized Single-stage Detector"

    @property
    def head(self) -> str:
        return "sigmoid"

    def expand(self) -> LossNode:
        return Density(loss=self.base(), bins=self.bins, momentum=self.momentum)


@register
class ZLPR(LossNode):
    """ZLPR, the multi-label softmax cross-entropy (Su et al. 2022), per sample (or position):

    ``log(1 + sum_neg exp(x)) + log(1 + sum_pos exp(-x))``, classes along dimension 1, targets > 0.5
    are positives. Logit 0 is the decision threshold. No probability ``p_t``, so no modifier wraps it.
    Same as timm's ``ZlprLoss``.
    """

    kind: Literal["zlpr"] = "zlpr"

    category = "named"

    @property
    def head(self) -> None:  # no p_t: the classes of a sample are coupled
        return None
    equivalents = (
        'timm ZlprLoss() (mean over samples)',
    )
    summary = "ZLPR multi-label loss: log(1+sum_neg e^x) + log(1+sum_pos e^-x) per sample"
    paper = "Su et al. 2022, ZLPR: A Novel Loss for Multi-label Classification"

    def expand(self) -> LossNode:
        return self
