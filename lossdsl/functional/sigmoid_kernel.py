"""One pass over a sigmoid-head term: the per-element loss and its derivative, for any block chain.

A term such as ``poly(balance(modulate(clip(bce()))))`` is evaluated from the logits in one sweep that
shares every intermediate (``softplus(x)``, ``p``, ``1 - p``, ``q = 1 - p_t``, ``log q``) between the
blocks, and carries the exact derivative ``dl/dx`` along with the value (forward-mode by hand: each
block maps ``(l, dl)`` to its new ``(l, dl)``). The autograd Function saves only that derivative, so
the backward pass is one multiplication and the memory held between the passes is one tensor.

Numerics (SPEC section 6):
- log-probabilities come from ``softplus`` (``log p = x - softplus(x)``, ``log(1-p) = -softplus(x)``),
  never ``log(p)``, and ``1 - p = exp(-softplus(x))`` stays accurate where ``p`` rounds to 1;
- powers ``q^g`` are ``exp(g log q)`` with ``q`` clamped to the smallest normal float, so
  ``0 < g < 1`` has a finite derivative at ``p_t = 1``: ``d(q^g)/dx = g q^g (dq/dx) / q`` and
  ``(dq/dx) / q`` is bounded (``-p`` for a positive); integer exponents use ``pow`` directly;
- where ``q`` is clamped, the loss and ``dq`` are 0 there too, so the clamp changes nothing that counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import sum_over_processes
from .ghm import density_weights
from .tracing import is_compiling

# Smallest normal float32: q below it is 0 for every purpose, and its log stays finite.
_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class ModulateStep:
    gamma_pos: float
    gamma_neg: float
    detach: bool


@dataclass(frozen=True)
class PolyStep:
    eps: tuple[float, ...]


@dataclass(frozen=True)
class BalanceStep:
    slot: int  # index of the alpha tensor among the constants


@dataclass(frozen=True)
class DensityStep:
    bins: int
    momentum: float
    # Sum the bin counts over the process group (when torch.distributed is initialised).
    synchronise: bool = True


Step = Union[ModulateStep, PolyStep, BalanceStep, DensityStep]


@dataclass(frozen=True)
class SigmoidPlan:
    """What a sigmoid term computes: the clip margin and the blocks from the innermost outwards."""

    margin: float = 0.0
    steps: tuple[Step, ...] = ()

    @property
    def needs_q(self) -> bool:
        return any(isinstance(step, (ModulateStep, PolyStep)) for step in self.steps)


class _Shared:
    """Quantities the blocks share, each computed at most once per call.

    Everything here is a fresh tensor owned by this call (the autograd Function runs without grad),
    so the blocks update the loss and its derivative in place instead of allocating new tensors:
    on a CPU each large allocation costs page faults, often more than the arithmetic itself.
    """

    def __init__(self, x: Tensor, y: Tensor, margin: float) -> None:
        self.x = x
        self.y = y
        self.margin = margin
        self._one_minus_p: Tensor | None = None
        if is_compiling():
            # One exponential for all three (a fused kernel pays per transcendental, not per op):
            # with e = exp(-|x|), p and 1 - p are 1/(1+e) and e/(1+e), softplus is max(x,0) + log1p(e).
            e = torch.exp(-x.abs())
            big, small = 1 / (1 + e), e / (1 + e)
            positive = x >= 0
            self.p = torch.where(positive, big, small)
            self._one_minus_p = torch.where(positive, small, big)
            self.softplus = x.clamp(min=0) + torch.log1p(e)
        else:
            self.p = torch.sigmoid(x)
            self.softplus = F.softplus(x)  # -log(1 - p)
        self._p_dp: Tensor | None = None
        self._negative: tuple[Tensor, Tensor] | None = None
        self._q: tuple[Tensor, Tensor] | None = None
        self._log_q: tuple[Tensor, Tensor] | None = None

    def release(self) -> None:
        """Drop what only the base loss and ``q`` needed, so the peak memory stays low; ``q``,
        ``dq/dx`` and ``log q`` stay."""
        self.p = self.softplus = None  # type: ignore[assignment]
        self._one_minus_p = self._p_dp = self._negative = None

    @property
    def one_minus_p(self) -> Tensor:
        """``1 - p = exp(-softplus(x))``: accurate where ``p`` rounds to 1."""
        if self._one_minus_p is None:
            self._one_minus_p = torch.neg(self.softplus).exp_()
        return self._one_minus_p

    @property
    def p_dp(self) -> Tensor:
        """``dp/dx = p (1 - p)``."""
        if self._p_dp is None:
            self._p_dp = self.p * self.one_minus_p
        return self._p_dp

    def negative(self) -> tuple[Tensor, Tensor]:
        """What negatives see: ``p_m = max(p - margin, 0)`` and ``dp_m/dx``."""
        if self._negative is None:
            if self.margin > 0:
                p_m = (self.p - self.margin).clamp_(min=0)
                # sign(p_m) is the step function 1[p > margin], without a bool-to-float conversion.
                self._negative = (p_m, torch.sign(p_m).mul_(self.p_dp))
            else:
                self._negative = (self.p, self.p_dp)
        return self._negative

    def q(self) -> tuple[Tensor, Tensor]:
        """``q = 1 - p_t = y (1-p) + (1-y) p_m`` and ``dq/dx``."""
        if self._q is None:
            y = self.y
            p_m, dp_m = self.negative()
            q = torch.sub(self.one_minus_p, p_m).mul_(y).add_(p_m)
            if self.margin > 0:
                dq = torch.addcmul(dp_m, y, self.p_dp + dp_m, value=-1)
            else:  # dq/dx = p(1-p)(1-2y)
                dq = torch.addcmul(self.p_dp, y, self.p_dp, value=-2)
            self._q = (q, dq)
        return self._q

    def log_q(self) -> tuple[Tensor, Tensor]:
        """``log q`` (q clamped to the smallest normal float) and ``(dq/dx) / q``."""
        if self._log_q is None:
            q, dq = self.q()
            safe = q.clamp(min=_TINY)
            self._log_q = (torch.log(safe), dq / safe)
        return self._log_q

    def power(self, exponent: float | Tensor, need_grad: bool) -> tuple[Tensor | float, Tensor | None]:
        """``q^exponent`` and its derivative (None when not needed). Callers must not modify the
        returned tensors in place: ``q`` itself may be returned."""
        if isinstance(exponent, float) and exponent == 0:
            return 1.0, None
        if isinstance(exponent, float) and exponent.is_integer() and exponent <= 8:
            q, dq = self.q()
            k = int(exponent)
            value = q if k == 1 else (q * q if k == 2 else q.pow(k))
            if not need_grad:
                return value, None
            if k == 1:
                return value, dq
            lower = q if k == 2 else q.pow(k - 1)
            return value, torch.mul(lower, dq).mul_(k)
        log_q, ratio = self.log_q()
        value = torch.mul(log_q, exponent).exp_()
        if not need_grad:
            return value, None
        return value, torch.mul(value, ratio).mul_(exponent)


class _InPlace:
    """Updates of the running loss and derivative that reuse their memory (eager mode)."""

    @staticmethod
    def scale(tensor: Tensor, factor: Tensor) -> Tensor:
        return tensor.mul_(factor)

    @staticmethod
    def add(tensor: Tensor, other: Tensor, alpha: float) -> Tensor:
        return tensor.add_(other, alpha=alpha)

    @staticmethod
    def add_product(tensor: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return tensor.addcmul_(a, b)


class _Functional:
    """The same updates as new tensors (under torch.compile, which fuses them)."""

    @staticmethod
    def scale(tensor: Tensor, factor: Tensor) -> Tensor:
        return tensor * factor

    @staticmethod
    def add(tensor: Tensor, other: Tensor, alpha: float) -> Tensor:
        return tensor + alpha * other

    @staticmethod
    def add_product(tensor: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.addcmul(tensor, a, b)


def _base_loss(
    s: _Shared, pos_weight: Tensor | None, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """bce per element, ``-(pw y log p + (1-y) log(1 - p_m))``, and its derivative."""
    x, y = s.x, s.y
    if s.margin == 0:
        if pos_weight is None:
            loss = torch.addcmul(s.softplus, y, x, value=-1)  # softplus(x) - y x
            dloss = torch.sub(s.p, y) if need_grad else None
        else:
            # (1-y) softplus + pw y (softplus - x)
            loss = torch.addcmul(s.softplus, y, (s.softplus - x).mul_(pos_weight).sub_(s.softplus))
            dloss = (
                torch.addcmul(s.p, y, torch.mul(s.one_minus_p, pos_weight).add_(s.p), value=-1)
                if need_grad else None
            )
        return loss, dloss
    # Clipped negatives: log(1 - p_m) = log(min(1 - p + margin, 1)); 1 - p_m >= margin > 0, so the
    # subtraction loses nothing that matters and the log is finite.
    p_m, dp_m = s.negative()
    kept = torch.rsub(p_m, 1.0)  # 1 - p_m
    minus_log_negative = torch.log(kept).neg_()
    log_p = torch.sub(x, s.softplus)
    if pos_weight is not None:
        log_p.mul_(pos_weight)
    # -(pw y log p + (1-y) log(1-p_m)) = -log(1-p_m) - y (pw log p - log(1-p_m))
    loss = torch.addcmul(minus_log_negative, y, log_p.add_(minus_log_negative), value=-1)
    dloss = None
    if need_grad:
        d_minus_log_negative = torch.div(dp_m, kept)  # d/dx of -log(1 - p_m)
        d_positive = s.one_minus_p if pos_weight is None else s.one_minus_p * pos_weight
        dloss = torch.addcmul(d_minus_log_negative, y, d_positive + d_minus_log_negative, value=-1)
    return loss, dloss


def sigmoid_loss_and_grad(
    x: Tensor,
    y: Tensor,
    plan: SigmoidPlan,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    valid: Tensor | None,
    accumulator: Tensor | None,
    constants: tuple[Tensor, ...],
    need_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-element loss of a sigmoid term, its derivative w.r.t. ``x`` (if ``need_grad``), and the
    updated GHM momentum accumulator (if the term has ``density`` with momentum).

    Args:
        x: float32 logits; y: float32 targets (already smoothed), same shape.
        plan: clip margin and blocks, innermost first.
        weight, pos_weight: bce's weights, broadcastable to x, or None.
        valid: bool mask of the elements that count (broadcastable to x), or None; the result is 0
            elsewhere and GHM-C counts only these.
        accumulator: GHM-C's running bin counts, or None.
        constants: per-block tensors addressed by the plan's slots (alpha).
    """
    s = _Shared(x, y, plan.margin)
    # GHM-C's weights need only p: build them first, before the loss and its derivative exist,
    # so that the binning's temporaries never coexist with them (a lower peak of memory).
    density, new_accumulator = None, None
    density_step = next((step for step in plan.steps if isinstance(step, DensityStep)), None)
    if density_step is not None:
        # g = |p - y| as the term sees it (negatives see p_m inside a clip); no gradient.
        seen = s.p if plan.margin == 0 else torch.lerp((s.p - plan.margin).clamp_(min=0), s.p, y)
        reducer = sum_over_processes if density_step.synchronise else None
        density, new_accumulator = density_weights(
            (seen - y).abs_(), valid, density_step.bins, density_step.momentum, accumulator, reducer
        )
        del seen
    loss, dloss = _base_loss(s, pos_weight, need_grad)
    if plan.needs_q:
        s.q()  # built now, while its ingredients are alive
    s.release()
    # Eager mode updates the two running tensors in place (no allocation per block); a traced graph
    # is fused by the compiler anyway and stays purely functional.
    update = _InPlace() if not is_compiling() else _Functional()
    if weight is not None:
        loss = update.scale(loss, weight)
        if need_grad:
            dloss = update.scale(dloss, weight)

    exponent: float | Tensor = 0.0  # focusing exponent of the loss so far (poly's g)
    for step in plan.steps:
        if isinstance(step, ModulateStep):
            if step.gamma_pos == step.gamma_neg:
                gamma: float | Tensor = float(step.gamma_pos)
            else:
                gamma = torch.mul(y, step.gamma_pos - step.gamma_neg).add_(step.gamma_neg)
            factor, d_factor = s.power(gamma, need_grad and not step.detach)
            if isinstance(factor, Tensor):
                if need_grad:
                    dloss = update.scale(dloss, factor)
                    if d_factor is not None:
                        dloss = update.add_product(dloss, loss, d_factor)
                loss = update.scale(loss, factor)
            factor = d_factor = None  # free them before the next block allocates
            exponent = exponent + gamma
        elif isinstance(step, PolyStep):
            for j, eps in enumerate(step.eps, start=1):
                if eps == 0:
                    continue
                term, d_term = s.power(exponent + j, need_grad)
                loss = update.add(loss, term, eps)
                if need_grad:
                    dloss = update.add(dloss, d_term, eps)
        elif isinstance(step, BalanceStep):
            alpha = constants[step.slot]
            balance = torch.addcmul(1 - alpha, y, 2 * alpha - 1)  # alpha y + (1-alpha)(1-y)
            loss = update.scale(loss, balance)
            if need_grad:
                dloss = update.scale(dloss, balance)
        elif isinstance(step, DensityStep):
            loss = update.scale(loss, density)
            if need_grad:
                dloss = update.scale(dloss, density)
    if valid is not None:
        loss = update.scale(loss, valid)
        if need_grad:
            dloss = update.scale(dloss, valid)
    return loss, dloss, new_accumulator


class SigmoidTermFunction(torch.autograd.Function):
    """Autograd wrapper: forward keeps only dl/dx; backward multiplies it by the incoming gradient.

    Returns the loss and the new GHM accumulator (an empty tensor when there is none), the latter
    without gradient.
    """

    @staticmethod
    def forward(ctx, x, y, plan, weight, pos_weight, valid, accumulator, *constants):  # type: ignore[override]
        loss, dloss, new_accumulator = sigmoid_loss_and_grad(
            x, y, plan, weight, pos_weight, valid, accumulator, constants, need_grad=True
        )
        if new_accumulator is None:
            new_accumulator = x.new_zeros(0)
        ctx.mark_non_differentiable(new_accumulator)
        ctx.save_for_backward(dloss)
        ctx.num_constants = len(constants)
        return loss, new_accumulator

    @staticmethod
    def backward(ctx, grad, _grad_accumulator):  # type: ignore[override]
        (dloss,) = ctx.saved_tensors
        return (grad * dloss,) + (None,) * (6 + ctx.num_constants)


def sigmoid_term_elementwise(
    x: Tensor,
    y: Tensor,
    plan: SigmoidPlan,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    valid: Tensor | None = None,
    accumulator: Tensor | None = None,
    constants: tuple[Tensor, ...] = (),
) -> tuple[Tensor, Tensor | None]:
    """The per-element loss (0 where not valid), differentiable w.r.t. ``x`` through the closed-form
    derivative, and the updated GHM accumulator (None when the term keeps none)."""
    if torch.is_grad_enabled() and x.requires_grad:
        loss, new_accumulator = SigmoidTermFunction.apply(
            x, y, plan, weight, pos_weight, valid, accumulator, *constants
        )
        return loss, (new_accumulator if new_accumulator.numel() else None)
    loss, _, new_accumulator = sigmoid_loss_and_grad(
        x, y, plan, weight, pos_weight, valid, accumulator, constants, need_grad=False
    )
    return loss, new_accumulator
