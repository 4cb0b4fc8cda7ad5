"""A softmax-head term with blocks: per-position loss through autograd.

Classes compete along dimension 1, so the derivative is not element-wise; plain tensor operations
and autograd are used, written so that every intermediate stays finite:
- ``log p`` from ``log_softmax``; ``p_c^g = exp(g log p_c)``;
- ``1 - p_t`` for class-index targets is the sum of the *other* classes' probabilities, accurate
  where ``p_t`` rounds to 1 (``1 - p_t`` in float32 would be 0 there);
- fractional powers of ``1 - p_t`` go through ``exp(g log(max(q, tiny)))``, whose gradient stays
  finite at ``q = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from .plan import BalanceStep, ModulateStep, PolyStep, SampleWeightStep, resolve, tiny
from .targets import zero_ignored

SoftmaxStep = Union[ModulateStep, PolyStep, BalanceStep, SampleWeightStep]


@dataclass(frozen=True)
class SoftmaxPlan:
    steps: tuple[SoftmaxStep, ...] = ()


def _power(q: Tensor, exponent: float | Tensor) -> Tensor | float:
    """``q^exponent`` with a finite gradient at q = 0 for any exponent >= 0 (a scheduled exponent, a
    0-d tensor, always through ``exp(g log q)``: its value is not looked at on the host)."""
    if isinstance(exponent, Tensor):
        return torch.exp(exponent * torch.log(q.clamp(min=tiny(q.dtype))))
    if exponent == 0:
        return 1.0
    if exponent >= 1:
        return q.pow(exponent)  # derivative exponent * q^(exponent-1) is finite at 0
    return torch.exp(exponent * torch.log(q.clamp(min=tiny(q.dtype))))


def softmax_term_elementwise(
    x: Tensor,
    target: Tensor,
    valid: Tensor | None,
    is_index: bool,
    plan: SoftmaxPlan,
    class_weight: Tensor | None,
    smoothing: float,
    constants: tuple[Tensor, ...],
    log_p: Tensor | None = None,
) -> Tensor:
    """Per-position loss ``[N, d1, ...]`` of ``ce`` wrapped in blocks; ignored positions are 0.

    Args:
        x: logits ``[N, C, d1, ...]`` (float32 or float64).
        target: class indices ``[N, d1, ...]`` (long) or probabilities shaped like ``x``.
        valid: bool mask of the positions that count (index targets), or None when all do.
        plan: blocks, innermost first.
        class_weight: ``ce``'s ``weight`` ``[C]`` or None.
        constants: per-block tensors addressed by the plan's slots (alpha, ``[C]`` or scalar, and the
            current values of scheduled parameters), and last the weight of each position
            ``[N, d1, ...]`` when the plan has a SampleWeightStep.
        log_p: ``log_softmax(x, 1)`` when another term of the call computed it already.
    """
    if log_p is None:
        if valid is not None:  # an ignored position's logits may be inf or NaN (see zero_ignored)
            x = zero_ignored(x, valid.unsqueeze(1))
        log_p = torch.log_softmax(x, dim=1)
    # Other classes' weights p_c^gamma_neg only matter where they have target mass: with smoothing.
    others_weighted = smoothing > 0 and any(
        isinstance(step, ModulateStep) and step.gamma_neg != 0 for step in plan.steps
    )
    if is_index and not others_weighted:
        return _target_column(log_p, target, valid, plan, class_weight, smoothing, constants)
    return _all_classes(log_p, target, valid, is_index, plan, class_weight, smoothing, constants)


def _target_column(
    log_p: Tensor,
    target: Tensor,
    valid: Tensor | None,
    plan: SoftmaxPlan,
    class_weight: Tensor | None,
    smoothing: float,
    constants: tuple[Tensor, ...],
) -> Tensor:
    """Class-index targets where only the target's column is modulated (no smoothing mass on other
    classes, or no focusing exponent for them).

    With ``q_t = 1 - s + s/C`` and ``q_c = s/C`` elsewhere the loss splits into a part on the target
    class, which the focusing factor multiplies, and the smoothing mass on every class:
    ``l = -q_t w_t m log p_t - (s/C) (sum_c w_c log p_c - w_t log p_t)``. Everything but
    ``log_softmax`` (and, with smoothing, one sum over classes) is per position, as in a
    hand-written focal loss.
    """
    num_classes = log_p.shape[1]
    # Any class will do for ignored positions: they are masked at the end.
    safe = target if valid is None else target.clamp(0, num_classes - 1)
    log_pt = log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    weight_t = None if class_weight is None else class_weight[safe]
    miss = -torch.expm1(log_pt)  # 1 - p of the target class
    on_target = -log_pt if weight_t is None else -log_pt * weight_t
    spread = None
    if smoothing:
        per_class = log_p if class_weight is None else log_p * class_weight.reshape(
            (1, num_classes) + (1,) * (log_p.dim() - 2)
        )
        spread = (smoothing / num_classes) * (-per_class.sum(dim=1) - on_target)
        on_target = on_target * (1 - smoothing + smoothing / num_classes)
    exponent = 0.0
    loss = None  # set once a block other than modulate has combined the two parts
    for step in plan.steps:
        if isinstance(step, ModulateStep):
            gamma_pos = resolve(step.gamma_pos, constants)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not step.detach):
                focus = _power(miss, gamma_pos)
                if loss is not None and smoothing:  # sum_c q_c m_c: the others keep weight p_c^0 = 1
                    focus = focus * (1 - smoothing + smoothing / num_classes) + smoothing * (
                        num_classes - 1
                    ) / num_classes
            if loss is None:
                on_target = on_target * focus
            else:
                loss = loss * focus
            exponent = exponent + gamma_pos
            continue
        if loss is None:
            loss = on_target if spread is None else on_target + spread
        if isinstance(step, PolyStep):
            # 1 - p_t with p_t = sum_c q_c p_c = (1-s) p_target + s/C
            one_minus_pt = miss if not smoothing else miss * (1 - smoothing) + smoothing * (
                num_classes - 1
            ) / num_classes
            for j, eps in enumerate(step.eps, start=1):
                if eps:  # a Slot (a scheduled coefficient) is always computed
                    loss = loss + resolve(eps, constants) * _power(one_minus_pt, exponent + j)
        elif isinstance(step, BalanceStep):
            alpha = constants[step.slot]
            loss = loss * (alpha if alpha.dim() == 0 else alpha[safe])
        elif isinstance(step, SampleWeightStep):
            loss = loss * constants[-1]
    if loss is None:
        loss = on_target if spread is None else on_target + spread
    return _select_valid(loss, valid)


def _all_classes(
    log_p: Tensor,
    target: Tensor,
    valid: Tensor | None,
    is_index: bool,
    plan: SoftmaxPlan,
    class_weight: Tensor | None,
    smoothing: float,
    constants: tuple[Tensor, ...],
) -> Tensor:
    """Every class weighted on its own: probability targets, or asymmetric focusing (gamma_neg)."""
    num_classes = log_p.shape[1]
    view = (1, num_classes) + (1,) * (log_p.dim() - 2)
    p = torch.exp(log_p)
    if is_index:
        safe = target if valid is None else target.clamp(0, num_classes - 1)
        one_hot = torch.zeros_like(log_p).scatter_(1, safe.unsqueeze(1), 1.0)
        q = one_hot * (1 - smoothing) + smoothing / num_classes if smoothing else one_hot
        # 1 - p_target, summed from the other classes so that it stays accurate near p_target = 1.
        miss = (p * (1 - one_hot)).sum(dim=1)
    else:
        # Label smoothing rewrites probability targets as F.cross_entropy does: (1-s) y + s/C.
        q = target * (1 - smoothing) + smoothing / num_classes if smoothing else target
        one_hot = None
        # 1 - p_t = 1 - sum_c q_c p_c, written as sum_c q_c (1 - p_c) + (1 - sum_c q_c): the same
        # value and gradient (also w.r.t. q, off the simplex), accurate where p_t rounds to 1.
        miss = (q * -torch.expm1(log_p)).sum(dim=1) + (1 - q.sum(dim=1))

    per_class = q if class_weight is None else q * class_weight.reshape(view)
    exponent = 0.0
    loss = None
    for step in plan.steps:
        if isinstance(step, ModulateStep):
            gamma_pos = resolve(step.gamma_pos, constants)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not step.detach):
                focus = _power(miss, gamma_pos)
                if one_hot is not None:
                    others = _power_of_probabilities(log_p, resolve(step.gamma_neg, constants))
                    focus = one_hot * _unsqueeze(focus) + (1 - one_hot) * others
                else:  # probability targets: one factor per position (prepare refuses gamma_neg != 0)
                    focus = _unsqueeze(focus)
            if loss is None:
                per_class = per_class * focus
            else:  # a block below already reduced over classes: scale the position's loss
                loss = loss * (focus * q).sum(dim=1) if one_hot is not None else loss * focus.squeeze(1)
            exponent = exponent + gamma_pos
        else:
            if loss is None:
                loss = -(per_class * log_p).sum(dim=1)
            if isinstance(step, PolyStep):
                one_minus_pt = _one_minus_pt(miss, p, q, one_hot)
                for j, eps in enumerate(step.eps, start=1):
                    if eps:  # a Slot (a scheduled coefficient) is always computed
                        loss = loss + resolve(eps, constants) * _power(one_minus_pt, exponent + j)
            elif isinstance(step, BalanceStep):
                loss = loss * _alpha_per_position(constants[step.slot], q, one_hot, target, is_index, view)
            elif isinstance(step, SampleWeightStep):
                loss = loss * constants[-1]
    if loss is None:
        loss = -(per_class * log_p).sum(dim=1)
    return _select_valid(loss, valid)


def _select_valid(loss: Tensor, valid: Tensor | None) -> Tensor:
    return loss if valid is None else zero_ignored(loss, valid)


def _unsqueeze(tensor: Tensor | float) -> Tensor | float:
    return tensor.unsqueeze(1) if isinstance(tensor, Tensor) else tensor


def _power_of_probabilities(log_p: Tensor, exponent: float | Tensor) -> Tensor | float:
    """``p_c^exponent`` from log-probabilities (finite value and gradient everywhere)."""
    if not isinstance(exponent, Tensor) and exponent == 0:
        return 1.0
    return torch.exp(exponent * log_p)


def _one_minus_pt(miss: Tensor, p: Tensor, q: Tensor, one_hot: Tensor | None) -> Tensor:
    """``1 - p_t`` with ``p_t = sum_c q_c p_c`` (smoothed targets included)."""
    if one_hot is None:
        return miss
    # 1 - p_c for every class, with the target's entry taken from the accurate sum of the others.
    complement = (1 - p) * (1 - one_hot) + one_hot * miss.unsqueeze(1)
    return (q * complement).sum(dim=1).clamp(min=0)


def _alpha_per_position(
    alpha: Tensor, q: Tensor, one_hot: Tensor | None, target: Tensor, is_index: bool, view: tuple
) -> Tensor:
    if alpha.dim() == 0:
        return alpha
    if is_index:
        return (one_hot * alpha.reshape(view)).sum(dim=1)
    return (q * alpha.reshape(view)).sum(dim=1)
