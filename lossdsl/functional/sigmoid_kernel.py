"""One pass over a sigmoid-head term: the per-element loss and its exact derivatives, for any block chain.

A term such as ``poly(balance(modulate(clip(bce()))))`` is evaluated from the logits in one sweep that
shares every intermediate (``softplus(x)``, ``softplus(-x)``, ``p``, ``1 - p``, ``q = 1 - p_t``,
``log q``) between the blocks, and carries the exact derivatives ``dl/dx`` and, when the target requires
grad (soft targets in distillation), ``dl/dy`` along with the value (forward mode by hand: each block
maps ``(l, dl/dx, dl/dy)`` to its new triple). The autograd Function saves only those derivatives, so
the backward pass is a multiplication and the memory held between the passes is one tensor per input.

Speed in eager mode (issue 18): the two softplus share one ``L = log1p(exp(-|x|))`` (``softplus(x) =
relu(x) + L``), ``p`` and ``1 - p`` come from torch's sigmoid, and the blocks update the loss and its
derivatives in place, their temporaries drawn from a pool of spare tensors (``_Pool``); a large CPU
input is computed in parts of ``CHUNK_ELEMENTS`` (the temporaries stay in the caches and are never
mapped afresh), with the loss summed part by part when the term reduces it. Integer focusing powers
are products, and an asymmetric one (``asl``) on targets that are all 0 or 1 (looked at on the CPU
only) is ``lerp(q^k_neg, q^k_pos, y)``; other powers are ``exp(g log q)``.

Numerics (SPEC sections 2 and 6):
- the likelihood is ``(1-y) softplus(x) + y softplus(-x)`` (``pw y`` with ``pos_weight``), mixed with
  ``torch.lerp``, whose two-sided formula (``end - (end - start)(1 - w)`` for ``w >= 0.5``) keeps it
  exact to rounding at every logit: a confident positive at ``x = 15`` costs ``3.06e-7``, not the 0
  that ``softplus(x) - y x`` (and torch's own kernel, for confident negatives) gives;
- ``1 - p`` is ``sigmoid(-x)``, never ``1 - sigmoid(x)``, so it stays accurate where ``p`` rounds to 1,
  and the derivative ``(1-y) p - y (1-p)`` is mixed the same way (``p - y`` would round to 0);
- powers ``q^g`` are ``exp(g log q)`` with ``q`` clamped to the smallest normal number of the dtype, so
  ``0 < g < 1`` has a finite derivative at ``p_t = 1``: ``d(q^g)/dx = g q^g (dq/dx) / q`` and
  ``(dq/dx) / q`` is bounded (``-p`` for a positive); integer exponents use ``pow`` directly;
- where ``q`` is clamped, the loss and ``dq`` are 0 there too, so the clamp changes nothing that counts;
  ``exp(g log q)`` takes its argument clamped at ``log(tiny) + 1`` (a subnormal result costs a slow
  path of the vector exp), a change below what the dtype holds in the loss and its derivatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import sum_over_processes
from .ghm import bin_index, density_table, density_weights
from .plan import (
    BalanceStep,
    DensityStep,
    ModulateStep,
    PolyStep,
    SampleWeightStep,
    Step,
    VarifocalStep,
    resolve,
    tiny,
)
from .targets import zero_ignored
from .tracing import is_compiling


@dataclass(frozen=True)
class SigmoidPlan:
    """What a sigmoid term computes: the clip margin and the blocks from the innermost outwards."""

    margin: float = 0.0
    steps: tuple[Step, ...] = ()
    # q is |y - p| (focus=quality, GFL) instead of 1 - p_t; the two agree for hard targets.
    quality: bool = False

    @property
    def needs_q(self) -> bool:
        return any(isinstance(step, (ModulateStep, PolyStep)) for step in self.steps)


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))``. torch returns ``x`` itself above ``threshold``; 20 is exact in float32
    (``log1p(exp(-20))`` is below half an ulp of 20) but not in float64, which needs 40."""
    return F.softplus(x, threshold=20.0 if x.dtype != torch.float64 else 40.0)


class _Pool:
    """Spare tensors of the logits' shape and dtype, owned by one eager call: a block's temporaries
    reuse the memory of those no longer needed. On a CPU each fresh large allocation is mapped anew
    and costs a page fault per page, often more than the arithmetic written into it."""

    def __init__(self, like: Tensor) -> None:
        self.like = like
        self.spare: list[Tensor] = []
        self.ids: set[int] = set()

    def take(self) -> Tensor:
        if self.spare:
            tensor = self.spare.pop()
            self.ids.discard(id(tensor))
            return tensor
        return torch.empty_like(self.like, memory_format=torch.contiguous_format)

    def give(self, tensor: Tensor) -> None:
        """Only whole tensors of the logits' shape come back, each once."""
        if tensor.shape == self.like.shape and tensor.dtype == self.like.dtype and tensor._base is None \
                and tensor.is_contiguous() and id(tensor) not in self.ids:
            self.ids.add(id(tensor))
            self.spare.append(tensor)


class _Shared:
    """Quantities the blocks share, each computed at most once per call, and only when some block
    needs it: ``p``; ``-log p = softplus(-x)``; ``1 - p = sigmoid(-x)`` (for ``q``, the clip margin,
    ``pos_weight`` or varifocal; otherwise the base derivative is ``p - y``, as torch's own).

    Everything here is a fresh tensor owned by this call (the autograd Function runs without grad),
    so the blocks update the loss and its derivatives in place instead of allocating new tensors:
    on a CPU each large allocation costs page faults, often more than the arithmetic itself.
    """

    def __init__(
        self, x: Tensor, y: Tensor, margin: float, need_dy: bool, quality: bool, need_one_minus_p: bool,
        pool: _Pool | None = None,
    ) -> None:
        self.x = x
        self.y = y
        self.margin = margin
        self.quality = quality
        self.need_dy = need_dy  # derivatives w.r.t. y are built only when the target requires grad
        self.clips = clips(margin)
        self.need_one_minus_p = need_one_minus_p or self.clips
        self.one_minus_p: Tensor | None = None
        self._minus_log_p: Tensor | None = None
        self._minus_log_one_minus_p: Tensor | None = None
        self.pool: _Pool | None = None
        self.extra: list[Tensor] = []  # temporaries the blocks read to the end (an asymmetric exponent)
        self._hard: bool | None = None
        # Where the loss and dl/dx may be written (parts of the whole call's results), or None.
        self.out: tuple[Tensor | None, Tensor | None] = (None, None)
        self.log_term: Tensor | None = None  # log1p(exp(-|x|)), eager mode
        if is_compiling():
            # One exponential for everything (a fused kernel pays per transcendental, not per op):
            # with e = exp(-|x|), p and 1 - p are 1/(1+e) and e/(1+e), and the two softplus share
            # log1p(e).
            e = torch.exp(-x.abs())
            big, small = 1 / (1 + e), e / (1 + e)
            positive = x >= 0
            self.p = torch.where(positive, big, small)
            self.one_minus_p = torch.where(positive, small, big)
            self.need_one_minus_p = True
            log_term = torch.log1p(e)
            self._minus_log_one_minus_p = x.clamp(min=0) + log_term  # softplus(x)
            self._minus_log_p = (-x).clamp(min=0) + log_term  # softplus(-x)
        else:
            # Eager: torch's sigmoid costs half an exp, so p and 1 - p = sigmoid(-x) come from it, and
            # the two softplus share log1p(exp(-|x|)) = -log1p(-min(p, 1 - p)) (exact to rounding:
            # min(p, 1 - p) = sigmoid(-|x|) keeps its relative precision; one log1p for both).
            self.pool = _Pool(x) if pool is None else pool
            self.p = torch.sigmoid(x, out=self.pool.take())
            if self.need_one_minus_p:
                self.one_minus_p = torch.neg(x, out=self.pool.take()).sigmoid_()
                small = torch.minimum(self.p, self.one_minus_p, out=self.pool.take())
            else:
                small = torch.abs(x, out=self.pool.take()).neg_().sigmoid_()
            self.log_term = small.neg_().log1p_().neg_()
        self._p_dp: Tensor | None = None
        self._negative: tuple[Tensor, Tensor] | None = None
        self._q: tuple[Tensor, Tensor, Tensor | None] | None = None
        self._log_q: tuple[Tensor, Tensor, Tensor | None] | None = None

    def minus_log_p(self) -> Tensor:
        """``-log p = softplus(-x)``; ``1 - p = sigmoid(-x)`` is built beside it, in the memory of
        ``-x``, when something needs it."""
        if self._minus_log_p is None:
            if self.log_term is not None:  # relu(-x) + log1p(exp(-|x|)) = log1p(e) - min(x, 0)
                kept = torch.clamp(self.x, max=0, out=self.pool.take())
                self._minus_log_p = torch.sub(self.log_term, kept, out=kept)
                return self._minus_log_p
            negated = torch.neg(self.x)
            self._minus_log_p = _softplus(negated)
            if self.need_one_minus_p:
                self.one_minus_p = negated.sigmoid_()
        return self._minus_log_p

    def minus_log_one_minus_p(self) -> Tensor:
        """``-log(1 - p) = softplus(x)``, handed over (the base loss is built in its memory)."""
        value = self._minus_log_one_minus_p
        self._minus_log_one_minus_p = None
        if value is None and self.log_term is not None:  # relu(x) + log1p(exp(-|x|))
            return torch.clamp(self.x, min=0, out=self.pool.take()).add_(self.log_term)
        return _softplus(self.x) if value is None else value

    def release(self) -> None:
        """Drop what only the base loss and ``q`` needed, so the peak memory stays low; ``q``, its
        derivatives and ``log q`` stay."""
        if self.pool is not None:  # their memory serves the blocks' temporaries
            kept = {id(t) for t in (self._q or ()) + (self._log_q or ()) if t is not None}
            for tensor in (self.p, self.one_minus_p, self._minus_log_p, self._minus_log_one_minus_p,
                           self._p_dp, self.log_term, *(self._negative or ())):
                if tensor is not None and id(tensor) not in kept:
                    self.pool.give(tensor)
        self.p = self.one_minus_p = self._minus_log_p = self.log_term = None  # type: ignore[assignment]
        self._minus_log_one_minus_p = self._p_dp = self._negative = None

    def hard_targets(self) -> bool:
        """Whether every target is 0 or 1, looked at only where looking costs nothing but the look:
        a CPU tensor in eager mode (no stream to stall, no graph to break); False elsewhere."""
        if self.pool is None or self.y.device.type != "cpu":
            return False
        if self._hard is None:
            # |y - 1/2| is 1/2 everywhere exactly when every y is 0 or 1 (a NaN makes both ends NaN);
            # aminmax takes half the time of any() over a float tensor
            distance = torch.sub(self.y, 0.5, out=self.pool.take()).abs_()
            low, high = torch.aminmax(distance)
            self._hard = bool(low == 0.5) and bool(high == 0.5)
            self.pool.give(distance)
        return self._hard

    def asymmetric_power(self, k_neg: int, k_pos: int, need_dx: bool) -> tuple[Tensor, Tensor | None]:
        """``q^g`` with ``g = k_pos`` on positives and ``k_neg`` on negatives, for hard targets only:
        ``lerp(q^k_neg, q^k_pos, y)`` is then exact (lerp at a weight of 0 or 1 is its end), and so is
        its x-derivative ``lerp(k_neg q^(k_neg-1), k_pos q^(k_pos-1), y) dq/dx``, without the
        ``exp(g log q)`` a soft target needs."""
        q, dq, _ = self.q()
        pool, y = self.pool, self.y

        def power(k: int, own: bool) -> tuple[Tensor, Tensor | None]:
            """q^k and k q^(k-1); ``own``: in buffers of their own (written in place after)."""
            if k <= 1 and not own:  # read only: q itself, constants broadcast without a pass
                slope = q.new_full((), float(k)).expand_as(q) if need_dx else None
                return (q if k == 1 else q.new_ones(()).expand_as(q)), slope
            if k <= 1:
                value = pool.take().copy_(q) if k == 1 else pool.take().fill_(1)
                return value, (pool.take().fill_(k) if need_dx else None)
            below = q if k == 2 else torch.pow(q, k - 1, out=pool.take())
            value = torch.mul(below, q, out=pool.take())
            if not need_dx:
                self.recycle(below)
                return value, None
            return value, torch.mul(below, k, out=pool.take()) if k == 2 else below.mul_(k)

        value, slope = power(k_neg, own=True)
        value_pos, slope_pos = power(k_pos, own=False)
        value.lerp_(value_pos, y)
        self.recycle(value_pos)
        if slope is not None:
            slope.lerp_(slope_pos, y).mul_(dq)
            self.recycle(slope_pos)
        return value, slope

    def new(self) -> Tensor | None:
        """A spare tensor of the logits' shape to write a temporary into (``out=``), or None (a new
        one; under torch.compile, which plans its own memory)."""
        return None if self.pool is None else self.pool.take()

    def finish(self) -> None:
        """Give back what the blocks kept (``q`` and its kin) once the call's results are built."""
        if self.pool is not None:
            for tensor in (self._q or ()) + (self._log_q or ()) + tuple(self.extra):
                if isinstance(tensor, Tensor):
                    self.pool.give(tensor)
        self._q = self._log_q = None
        self.extra = []

    def recycle(self, *tensors: Tensor | float | None) -> None:
        """Give back a block's temporaries (never ``q`` and its kin, which later blocks read)."""
        if self.pool is None:
            return
        kept = {id(t) for t in (self._q or ()) + (self._log_q or ()) if t is not None}
        for tensor in tensors:
            if isinstance(tensor, Tensor) and id(tensor) not in kept:
                self.pool.give(tensor)

    @property
    def p_dp(self) -> Tensor:
        """``dp/dx = p (1 - p)``."""
        if self._p_dp is None:
            out = None if self.pool is None else self.pool.take()
            self._p_dp = torch.mul(self.p, self.one_minus_p, out=out)
        return self._p_dp

    def negative(self) -> tuple[Tensor, Tensor]:
        """What negatives see: ``p_m = max(p - margin, 0)`` and ``dp_m/dx``."""
        if self._negative is None:
            if self.clips:
                p_m = torch.sub(self.p, self.margin, out=self.new()).clamp_(min=0)
                # sign(p_m) is the step function 1[p > margin], without a bool-to-float conversion.
                self._negative = (p_m, torch.sign(p_m, out=self.new()).mul_(self.p_dp))
            else:
                self._negative = (self.p, self.p_dp)
        return self._negative

    def q(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``q = 1 - p_t = y (1-p) + (1-y) p_m``, ``dq/dx`` and ``dq/dy = (1-p) - p_m`` (None unless
        the target requires grad); with ``quality``, ``q = |y - p_m|`` and its derivatives."""
        if self._q is None and self.quality:
            self._q = self._quality()
        if self._q is None:
            y = self.y
            pool = self.pool
            # (without a clip, eager: p_m = p, and p(1-p) is built below in the memory of p)
            p_m, dp_m = self.negative() if self.clips or pool is None else (self.p, None)
            if pool is None:
                q = torch.lerp(p_m, self.one_minus_p, y)
            else:
                q = torch.lerp(p_m, self.one_minus_p, y, out=pool.take())
            if self.clips:
                against = torch.neg(self.p_dp, out=self.new())
                dq = torch.lerp(dp_m, against, y, out=against)
            elif pool is not None:
                # dq/dx = p(1-p)(1-2y) in the memory of p: nothing reads p after q (the base loss,
                # GHM-C's weights and varifocal's come first)
                dq_dy = torch.sub(self.one_minus_p, p_m) if self.need_dy else None
                dq = self.p.mul_(self.one_minus_p)
                self._q = (q, dq.addcmul_(y, dq, value=-2), dq_dy)
                self.p = self._p_dp = self._negative = None  # type: ignore[assignment]
                return self._q
            else:  # dq/dx = p(1-p)(1-2y)
                dq = torch.addcmul(self.p_dp, y, self.p_dp, value=-2)
            self._q = (q, dq, torch.sub(self.one_minus_p, p_m, out=self.new()) if self.need_dy else None)
        return self._q

    def _quality(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``q = |d|`` with ``d = y - p_m = y (1-p) - (1-y) p_m`` (mixed with lerp, so that ``d`` is
        ``1 - p`` exactly, not ``1 - p`` rounded, for a positive), ``dq = sign(d) dd``."""
        y = self.y
        p_m, dp_m = self.negative()
        d = torch.lerp(torch.neg(p_m), self.one_minus_p, y)
        sign = torch.sign(d)
        dq = torch.lerp(dp_m, self.p_dp, y).mul_(sign).neg_()  # dd/dx = -(y p(1-p) + (1-y) dp_m/dx)
        dq_dy = torch.add(self.one_minus_p, p_m).mul_(sign) if self.need_dy else None
        return d.abs_(), dq, dq_dy

    def log_q(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``log q`` (q clamped to the smallest normal number), ``(dq/dx) / q`` and ``(dq/dy) / q``."""
        if self._log_q is None:
            q, dq, dq_dy = self.q()
            safe = torch.clamp(q, min=tiny(q.dtype), out=self.new())
            ratio_y = None if dq_dy is None else dq_dy / safe
            self._log_q = (torch.log(safe, out=self.new()), torch.div(dq, safe, out=safe), ratio_y)
        return self._log_q

    def power(
        self, exponent: float | Tensor, need_dx: bool, need_dy: bool, exponent_dy: float = 0.0
    ) -> tuple[Tensor | float, Tensor | None, Tensor | None]:
        """``q^exponent`` and its derivatives w.r.t. ``x`` and ``y`` (None when not needed).
        ``exponent_dy`` is ``d(exponent)/dy`` (asymmetric focusing makes the exponent depend on the
        target). Callers must not modify the returned tensors in place: ``q`` itself may be returned."""
        if isinstance(exponent, float) and exponent == 0:
            return 1.0, None, None
        q, dq, dq_dy = self.q()
        if isinstance(exponent, float) and exponent.is_integer() and exponent <= 8 and not exponent_dy:
            k = int(exponent)
            take = self.new
            value = q if k == 1 else (torch.mul(q, q, out=take()) if k == 2 else torch.pow(q, k, out=take()))
            if not (need_dx or need_dy):
                return value, None, None
            # d(q^k) = k q^(k-1) dq
            slope = None if k == 1 else (torch.mul(q, k, out=take()) if k == 2 else
                                         torch.pow(q, k - 1, out=take()).mul_(k))
            dy = (dq_dy if slope is None else slope * dq_dy) if need_dy else None
            dx = (dq if slope is None else slope.mul_(dq)) if need_dx else None
            if slope is not None and not need_dx:
                self.recycle(slope)
            return value, dx, dy
        log_q, ratio, ratio_y = self.log_q()
        take = self.new
        # An argument of exp near or below log(tiny) gives a subnormal or 0 through a path of the vector
        # exp some thirty times slower: q^g below e tiny (3.2e-38 in float32) is taken as e tiny,
        # which changes the loss by at most that times the likelihood (itself about q there) and the
        # derivatives by as little: nothing that float32 holds.
        floor = math.log(tiny(log_q.dtype)) + 1
        value = torch.mul(log_q, exponent, out=take()).clamp_(min=floor).exp_()
        dx = torch.mul(value, ratio, out=take()).mul_(exponent) if need_dx else None
        dy = None
        if need_dy:  # q^g (g dq/dy / q + dg/dy log q)
            slope = torch.mul(ratio_y, exponent)
            if isinstance(exponent_dy, Tensor):  # a scheduled asymmetric focusing
                slope.addcmul_(log_q, exponent_dy)
            elif exponent_dy:
                slope.add_(log_q, alpha=exponent_dy)
            dy = slope.mul_(value)
        return value, dx, dy


class _InPlace:
    """Updates of the running loss and derivatives that reuse their memory (eager mode)."""

    @staticmethod
    def scale(tensor: Tensor, factor: Tensor) -> Tensor:
        return tensor.mul_(factor)

    @staticmethod
    def add(tensor: Tensor, other: Tensor, alpha: float | Tensor) -> Tensor:
        return tensor.addcmul_(other, alpha) if isinstance(alpha, Tensor) else tensor.add_(other, alpha=alpha)

    @staticmethod
    def add_product(tensor: Tensor, a: Tensor, b: Tensor | float) -> Tensor:
        return tensor.addcmul_(a, b) if isinstance(b, Tensor) else tensor.add_(a, alpha=b)


class _Functional:
    """The same updates as new tensors (under torch.compile, which fuses them)."""

    @staticmethod
    def scale(tensor: Tensor, factor: Tensor) -> Tensor:
        return tensor * factor

    @staticmethod
    def add(tensor: Tensor, other: Tensor, alpha: float) -> Tensor:
        return tensor + alpha * other

    @staticmethod
    def add_product(tensor: Tensor, a: Tensor, b: Tensor | float) -> Tensor:
        return tensor + a * b


class _Running:
    """The loss and its derivatives so far, updated block by block: ``(l, dl/dx, dl/dy)``."""

    def __init__(self, loss: Tensor, dx: Tensor | None, dy: Tensor | None, in_place: bool) -> None:
        self.loss, self.dx, self.dy = loss, dx, dy
        self.update = _InPlace() if in_place else _Functional()

    def scale(self, factor: Tensor, d_factor_dy: Tensor | float | None = None) -> None:
        """``l <- l f`` for a factor without an x-derivative (``d_factor_dy``: its y-derivative)."""
        u = self.update
        if self.dx is not None:
            self.dx = u.scale(self.dx, factor)
        if self.dy is not None:
            self.dy = u.scale(self.dy, factor)
            if d_factor_dy is not None:
                self.dy = u.add_product(self.dy, self.loss, d_factor_dy)
        self.loss = u.scale(self.loss, factor)

    def multiply(self, factor: Tensor, dx: Tensor | None, dy: Tensor | None) -> None:
        """``l <- l f`` with the product rule for the derivatives of ``f`` that are given."""
        self.spent = (factor, dx, dy)  # the caller may give them back
        u = self.update
        if self.dx is not None:
            self.dx = u.scale(self.dx, factor)
            if dx is not None:
                self.dx = u.add_product(self.dx, self.loss, dx)
        if self.dy is not None:
            self.dy = u.scale(self.dy, factor)
            if dy is not None:
                self.dy = u.add_product(self.dy, self.loss, dy)
        self.loss = u.scale(self.loss, factor)

    def multiply_power(self, q: Tensor, dq: Tensor | None, k: int, pool: _Pool) -> None:
        """``l <- l q^k`` for an integer ``k >= 1`` in place (eager, no y-derivative):
        ``dl/dx <- q^(k-1) (q dl/dx + k l dq/dx)``, with ``q^(k-1)`` the only temporary (none for
        ``k <= 2``); ``dq`` None: the factor carries no gradient (a detached focusing weight)."""
        power = torch.pow(q, k - 1, out=pool.take()) if k > 2 else q if k == 2 else None
        if self.dx is not None:
            self.dx.mul_(q)
            if dq is not None:
                self.dx.addcmul_(self.loss, dq, value=k)
            if power is not None:
                self.dx.mul_(power)
        self.loss.mul_(q)
        if power is not None:
            self.loss.mul_(power)
        if k > 2:
            pool.give(power)

    def add_power(self, q: Tensor, dq: Tensor, n: int, coefficient: float, pool: _Pool) -> None:
        """``l <- l + c q^n`` for an integer ``n >= 1`` in place (eager, no y-derivative):
        ``dl/dx <- dl/dx + c n q^(n-1) dq/dx``."""
        power = torch.pow(q, n - 1, out=pool.take()) if n > 2 else q if n == 2 else None
        if power is None:
            self.loss.add_(q, alpha=coefficient)
        else:
            self.loss.addcmul_(power, q, value=coefficient)
        if self.dx is not None:
            if power is None:
                self.dx.add_(dq, alpha=coefficient)
            else:
                self.dx.addcmul_(power, dq, value=coefficient * n)
        if n > 2:
            pool.give(power)

    def selected(self, valid: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The loss and its derivatives, 0 where ``valid`` is False (or all of them without a mask)."""
        values = (self.loss, self.dx, self.dy)
        if valid is None:
            return values
        return tuple(None if value is None else zero_ignored(value, valid) for value in values)

    def add(self, term: Tensor, dx: Tensor | None, dy: Tensor | None, coefficient: float) -> None:
        u = self.update
        self.loss = u.add(self.loss, term, coefficient)
        if self.dx is not None and dx is not None:
            self.dx = u.add(self.dx, dx, coefficient)
        if self.dy is not None and dy is not None:
            self.dy = u.add(self.dy, dy, coefficient)


def _base_loss(
    s: _Shared, pos_weight: Tensor | None, need_dx: bool, need_dy: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """bce per element, ``(1-y) (-log(1 - p_m)) + y (-pw log p)``, and its derivatives."""
    y = s.y
    if s.log_term is not None and pos_weight is None and not s.clips:
        return _base_loss_eager(s, need_dx, need_dy)
    positive = s.minus_log_p()
    if pos_weight is not None:
        positive = positive * pos_weight
    negative_x = None  # d/dx of -log(1 - p_m)
    if not s.clips:
        negative = s.minus_log_one_minus_p()
        if need_dx:
            negative_x = s.p
    elif isinstance(s.margin, Tensor):
        # A scheduled margin may be 0, where 1 - p underflows for confident negatives: the log of
        # 1 - p + m = exp(log(1 - p)) + m from logaddexp is exact for every margin (0 included), and
        # dp_m/dx / (1 - p_m) = sign(p_m) p (1 - p) / (1 - p + m) takes the ratio from the logs.
        p_m, _ = s.negative()
        log_one_minus_p = torch.neg(s.minus_log_one_minus_p())
        log_kept = torch.logaddexp(log_one_minus_p, torch.log(s.margin))
        negative = log_kept.clamp(max=0).neg_()
        if need_dx:
            negative_x = torch.sign(p_m).mul_(s.p).mul_(torch.exp(log_one_minus_p - log_kept))
    else:
        # Clipped negatives: -log(1 - p_m) = -log(min(1 - p + margin, 1)); 1 - p_m >= margin > 0, so
        # the log is finite and 1 - p (accurate) plus the margin loses nothing that matters.
        p_m, dp_m = s.negative()
        kept = torch.add(s.one_minus_p, s.margin, out=s.new()).clamp_(max=1.0)
        negative = torch.log(kept, out=s.new() if s.out[0] is None else s.out[0]).neg_()
        if need_dx:
            negative_x = torch.div(dp_m, kept, out=kept)
    dy = torch.sub(positive, negative) if need_dy else None
    # In place in eager mode (negative is this call's own full-shape tensor); a traced graph stays
    # functional (in-place updates inside a traced autograd Function once gave wrong CUDA gradients).
    loss = torch.lerp(negative, positive, y) if is_compiling() else negative.lerp_(positive, y)
    dx = None
    if need_dx and s.one_minus_p is not None:  # (1-y) d(-log(1-p_m)) - y pw (1 - p), exact where p ~ 1
        positive_x = torch.neg(s.one_minus_p, out=s.new()) if pos_weight is None else \
            s.one_minus_p * -pos_weight
        dx = torch.lerp(negative_x, positive_x, y, out=s.new() if s.out[1] is None else s.out[1])
        s.recycle(positive_x, negative_x if negative_x is not s.p else None)
    elif need_dx:  # p - y, as torch's kernel (only p is at hand; no block needs 1 - p)
        dx = torch.sub(s.p, y)
    return loss, dx, dy


def _base_loss_eager(s: _Shared, need_dx: bool, need_dy: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """bce without clip or ``pos_weight`` in eager mode, in two fresh tensors: with
    ``L = log1p(exp(-|x|))``, ``-log(1-p) = relu(x) + L`` and ``-log p = relu(-x) + L``, so the loss is
    ``L + lerp(relu(x), relu(-x), y)``: lerp's two-sided formula sees ``relu(-x) - relu(x) = -x``
    exactly, and the result is exact to rounding for any target (hard or soft); ``dl/dy = -x``."""
    x, y, pool = s.x, s.y, s.pool
    loss_out, dx_out = s.out
    loss = torch.clamp(x, min=0, out=pool.take() if loss_out is None else loss_out)
    other = torch.sub(loss, x, out=pool.take() if dx_out is None or not need_dx else dx_out)  # relu(-x)
    loss.lerp_(other, y).add_(s.log_term)
    dx = None
    if need_dx and s.one_minus_p is not None:  # (1-y) p - y (1 - p), exact where p ~ 1
        dx = torch.lerp(s.p, torch.neg(s.one_minus_p, out=other), y, out=other)
    elif need_dx:  # p - y, as torch's kernel (only p is at hand; no block needs 1 - p)
        dx = torch.sub(s.p, y, out=other)
    else:
        pool.give(other)
    pool.give(s.log_term)  # its memory serves q
    s.log_term = None
    return loss, dx, torch.neg(x) if need_dy else None


def _varifocal_weight(
    s: _Shared, step: VarifocalStep, need_dx: bool, need_dy: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``w = y`` (or 1) where ``y > 0``, ``alpha p^gamma`` where ``y = 0``, and its derivatives.

    ``p^gamma = exp(-gamma softplus(-x))`` stays accurate for tiny ``p``; its x-derivative is
    ``gamma p^gamma (1 - p)``. W.r.t. ``y``: 1 on positives with ``iou_weighted`` (w = y); on
    negatives mmdetection's weight is ``alpha |p - y|^gamma``, whose y-derivative at ``y = 0`` is
    ``-alpha gamma p^(gamma - 1)``, kept for parity.
    """
    positive = s.y > 0
    zero = torch.zeros((), dtype=s.y.dtype, device=s.y.device)
    negative_weight = torch.mul(s.minus_log_p(), -step.gamma).exp_().mul_(step.alpha)
    on_positives = s.y if step.iou_weighted else torch.ones_like(s.y)
    weight = torch.where(positive, on_positives, negative_weight)
    dy = None
    if need_dy:
        slope = torch.div(negative_weight, s.p.clamp(min=tiny(s.p.dtype))).mul_(-step.gamma)
        dy = torch.where(positive, positive.to(weight.dtype) if step.iou_weighted else zero, slope)
    dx = None
    if need_dx:
        dx = torch.where(positive, zero, negative_weight.mul_(s.one_minus_p).mul_(step.gamma))
    return weight, dx, dy


def _whole(exponent: float | Tensor, lowest: int = 1) -> bool:
    """An exponent taken by repeated products (``lowest`` to 8) rather than ``exp(g log q)``."""
    return isinstance(exponent, float) and exponent.is_integer() and lowest <= exponent <= 8


def clips(margin: float | Tensor) -> bool:
    """Whether a clip margin shifts the negatives' probabilities: a scheduled margin (a 0-d tensor)
    is taken to, whatever its value (it is not looked at on the host)."""
    return isinstance(margin, Tensor) or margin > 0


# Elements per part of a large eager computation on the CPU: a part's temporaries (a dozen at most,
# 512 KiB each in float32) stay in the caches, and none of them is large enough for the C allocator
# to map fresh pages from the system (a page fault each) on every call. (The fastest of 2**15 to
# 2**18 on a 2-core EPYC, for focal and asl.)
CHUNK_ELEMENTS = 1 << 17


def sigmoid_loss_and_grad(
    x: Tensor,
    y: Tensor,
    plan: SigmoidPlan,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    valid: Tensor | None,
    accumulator: Tensor | None,
    constants: tuple[Tensor, ...],
    need_dx: bool,
    need_dy: bool = False,
    summed: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Per-element loss of a sigmoid term (its sum with ``summed``), its derivatives w.r.t. ``x`` and
    ``y`` (when asked for), and the updated GHM momentum accumulator (if the term has ``density`` with
    momentum).

    Args:
        x: logits (float32 or float64); y: targets (already smoothed), same shape and dtype.
        plan: clip margin and blocks, innermost first.
        weight, pos_weight: bce's weights, broadcastable to x, or None.
        valid: bool mask of the elements that count (broadcastable to x), or None; the result and its
            derivatives are 0 elsewhere (selected with ``where``, so whatever an ignored element's
            logit, even inf or NaN, nothing of it reaches the sum) and GHM-C counts only these.
        accumulator: GHM-C's running bin counts, or None.
        constants: per-block tensors addressed by the plan's slots (alpha).
    """
    rows = x.shape[0] if x.dim() else 0
    if x.device.type == "cpu" and not is_compiling() and rows > 1 and x.numel() >= 4 * CHUNK_ELEMENTS:
        step = max(1, CHUNK_ELEMENTS * rows // x.numel())
        if step < rows:
            return _in_parts(x, y, plan, weight, pos_weight, valid, accumulator, constants, need_dx, need_dy,
                             step, summed)
    loss, dx, dy, new_accumulator = _loss_and_grad(
        x, y, plan, weight, pos_weight, valid, accumulator, constants, need_dx, need_dy
    )
    return (loss.sum() if summed else loss), dx, dy, new_accumulator


def _in_parts(
    x: Tensor, y: Tensor, plan: SigmoidPlan, weight: Tensor | None, pos_weight: Tensor | None,
    valid: Tensor | None, accumulator: Tensor | None, constants: tuple[Tensor, ...], need_dx: bool,
    need_dy: bool, step: int, summed: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """:func:`sigmoid_loss_and_grad` over ``step`` rows (dimension 0) at a time, every element computed
    exactly as in one piece: tensors that broadcast along the rows are cut alike, the others are
    shared. GHM-C's counts need every element first: a pass over the parts bins them (int32 indices,
    one full-size tensor), and each part then reads its weights from the table. ``summed``: the
    parts' losses are summed as they come, and no full-size loss is ever built."""
    rows = x.shape[0]

    def part(tensor, start: int, stop: int):
        if isinstance(tensor, Tensor) and tensor.dim() == x.dim() and tensor.shape[0] == rows:
            return tensor[start:stop]
        return tensor

    bounds = [(start, min(start + step, rows)) for start in range(0, rows, step)]
    density_step = next((s for s in plan.steps if isinstance(s, DensityStep)), None)
    table, index, new_accumulator = None, None, None
    if density_step is not None:
        margin = resolve(plan.margin, constants)
        index = torch.empty(x.shape, dtype=torch.int32, device=x.device)
        spare: dict[int, tuple[Tensor, Tensor]] = {}  # g and g in float64, per size of part
        for start, stop in bounds:
            x_part, y_part, valid_part = part(x, start, stop), part(y, start, stop), part(valid, start, stop)
            if valid_part is not None:
                x_part = zero_ignored(x_part, valid_part)
            if stop - start not in spare:
                wide = torch.empty_like(x_part, dtype=torch.float64)
                spare[stop - start] = (torch.empty_like(x_part), wide)
            g, wide = spare[stop - start]
            bin_index(_gap(x_part, y_part, margin, g), density_step.bins, out=index[start:stop], wide=wide)
        reducer = sum_over_processes if density_step.synchronise else None
        table, new_accumulator, index = density_table(
            index, valid, density_step.bins, density_step.momentum, accumulator, reducer, x.dtype
        )
    loss = None if summed else torch.empty_like(x)
    dx = torch.empty_like(x) if need_dx else None
    dy = torch.empty_like(x) if need_dy else None
    pools: dict[int, _Pool] = {}  # one per size of part: every part reuses the memory of the first
    partial_sums: list[Tensor] = []
    for start, stop in bounds:
        x_part = x[start:stop]
        pool = pools.setdefault(stop - start, _Pool(x_part))
        density = None
        if table is not None:
            index_part = index[start:stop]
            density = table.index_select(0, index_part.reshape(-1)).view(index_part.shape)
        out = (None if loss is None else loss[start:stop], None if dx is None else dx[start:stop])
        values = _loss_and_grad(
            part(x, start, stop), part(y, start, stop), plan, part(weight, start, stop),
            part(pos_weight, start, stop), part(valid, start, stop), None,
            tuple(part(c, start, stop) for c in constants), need_dx, need_dy, density, out, pool,
        )
        if summed:
            partial_sums.append(values[0].sum())
            pool.give(values[0])
        for whole, value in zip((loss, dx, dy), values):
            if whole is not None and value.data_ptr() != whole[start:stop].data_ptr():
                whole[start:stop].copy_(value)
    return (torch.stack(partial_sums).sum() if summed else loss), dx, dy, new_accumulator


def _gap(x: Tensor, y: Tensor, margin: float | Tensor, out: Tensor) -> Tensor:
    """GHM-C's ``g = |p - y|`` as the term sees it (negatives see ``p_m`` inside a clip), in ``out``."""
    return _gap_of(torch.sigmoid(x, out=out), y, margin, out=out)


def _gap_of(p: Tensor, y: Tensor, margin: float | Tensor, out: Tensor | None = None) -> Tensor:
    """``g = |p_seen - y|`` from ``p`` (negatives see ``p_m = max(p - margin, 0)`` inside a clip)."""
    seen = p if not clips(margin) else torch.lerp((p - margin).clamp_(min=0), p, y)
    return torch.sub(seen, y, out=out).abs_()


def _loss_and_grad(
    x: Tensor, y: Tensor, plan: SigmoidPlan, weight: Tensor | None, pos_weight: Tensor | None,
    valid: Tensor | None, accumulator: Tensor | None, constants: tuple[Tensor, ...], need_dx: bool,
    need_dy: bool, density: Tensor | None = None, out: tuple[Tensor | None, Tensor | None] = (None, None),
    pool: _Pool | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """:func:`sigmoid_loss_and_grad` in one piece; ``density``: GHM-C's weights when already known;
    ``out``: where the loss and dl/dx may be built (eager mode; the caller copies them otherwise)."""
    if valid is not None:  # an ignored logit may be inf or NaN: compute on 0 there, select it away below
        x = zero_ignored(x, valid)
    varifocal = next((step for step in plan.steps if isinstance(step, VarifocalStep)), None)
    margin = resolve(plan.margin, constants)
    s = _Shared(x, y, margin, need_dy, plan.quality,
                need_one_minus_p=plan.needs_q or varifocal is not None or pos_weight is not None, pool=pool)
    s.out = out
    # GHM-C's weights need only p: build them first, before the loss and its derivatives exist,
    # so that the binning's temporaries never coexist with them (a lower peak of memory).
    new_accumulator = None
    density_step = next((step for step in plan.steps if isinstance(step, DensityStep)), None)
    if density_step is not None and density is None:
        # g = |p - y| as the term sees it (negatives see p_m inside a clip); no gradient.
        reducer = sum_over_processes if density_step.synchronise else None
        density, new_accumulator = density_weights(
            _gap_of(s.p, y, margin), valid, density_step.bins, density_step.momentum, accumulator, reducer
        )
    if varifocal is not None:  # built while p and softplus(-x) are alive
        varifocal_weight = _varifocal_weight(s, varifocal, need_dx, need_dy)
    running = _Running(*_base_loss(s, pos_weight, need_dx, need_dy), in_place=not is_compiling())
    if plan.needs_q:
        s.q()  # built now, while its ingredients are alive
    s.release()
    if weight is not None:
        running.scale(weight)

    exponent: float | Tensor = 0.0  # focusing exponent of the loss so far (poly's g)
    exponent_dy = 0.0  # and its derivative w.r.t. y (asymmetric focusing)
    for index, step in enumerate(plan.steps):
        if isinstance(step, ModulateStep):
            gamma_pos, gamma_neg = resolve(step.gamma_pos, constants), resolve(step.gamma_neg, constants)
            slope = 0.0 if step.gamma_pos == step.gamma_neg else gamma_pos - gamma_neg
            # detach: the focusing weight carries no gradient at all (timm's disable_torch_grad).
            wanted = not step.detach
            whole_pair = _whole(gamma_pos, lowest=0) and _whole(gamma_neg, lowest=0)
            if whole_pair and slope and not need_dy and s.hard_targets():
                factor, d_factor = s.asymmetric_power(int(gamma_neg), int(gamma_pos), need_dx and wanted)
                running.multiply(factor, d_factor, None)
                s.recycle(*running.spent)
                if any(isinstance(later, PolyStep) for later in plan.steps[index + 1:]):  # reads g
                    gamma = torch.mul(y, slope, out=s.new()).add_(gamma_neg)
                    s.extra.append(gamma)
                    exponent = exponent + gamma
                exponent_dy += slope
                continue
            gamma: float | Tensor = gamma_pos if isinstance(gamma_pos, Tensor) else float(gamma_pos)
            if isinstance(slope, Tensor) or slope:
                gamma = torch.mul(y, slope, out=s.new()).add_(gamma_neg)
                s.extra.append(gamma)
            if _whole(gamma) and s.pool is not None and not need_dy and not slope:
                q, dq, _ = s.q()
                running.multiply_power(q, dq if need_dx and wanted else None, int(gamma), s.pool)
                exponent = exponent + gamma
                continue
            factor, d_factor, d_factor_dy = s.power(
                gamma, need_dx and wanted, need_dy and wanted, slope
            )
            if isinstance(factor, Tensor):
                running.multiply(factor, d_factor, d_factor_dy)
            s.recycle(factor, d_factor, d_factor_dy)
            factor = d_factor = d_factor_dy = None  # free them before the next block allocates
            exponent = exponent + gamma
            exponent_dy += slope
        elif isinstance(step, PolyStep):
            for j, eps in enumerate(step.eps, start=1):
                if eps and _whole(exponent + j) and isinstance(eps, float) and s.pool is not None \
                        and not need_dy and not exponent_dy:
                    q, dq, _ = s.q()
                    running.add_power(q, dq, int(exponent + j), eps, s.pool)
                elif eps:  # a Slot (a scheduled coefficient) is always computed
                    term = s.power(exponent + j, need_dx, need_dy, exponent_dy)
                    running.add(*term, resolve(eps, constants))
                    s.recycle(*term)
        elif isinstance(step, BalanceStep):
            alpha = constants[step.slot]
            slope = 2 * alpha - 1
            out = None if s.pool is None else s.pool.take()
            factor = torch.addcmul(1 - alpha, y, slope, out=out)  # alpha y + (1-alpha)(1-y)
            running.scale(factor, slope)
            s.recycle(factor)
        elif isinstance(step, DensityStep):
            running.scale(density)
        elif isinstance(step, VarifocalStep):
            running.multiply(*varifocal_weight)
            varifocal_weight = None
        elif isinstance(step, SampleWeightStep):  # [N, 1, d1, ...]: every class of a sample alike
            running.scale(constants[-1])
    results = running.selected(valid)
    s.finish()
    return (*results, new_accumulator)


class SigmoidTermFunction(torch.autograd.Function):
    """Autograd wrapper: forward keeps only dl/dx (and dl/dy for targets that require grad);
    backward multiplies them by the incoming gradient.

    Returns the loss and the new GHM accumulator (an empty tensor when there is none), the latter
    without gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x, y, plan, weight, pos_weight, valid, accumulator, summed, *constants
    ):
        need_dx, need_dy = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, dx, dy, new_accumulator = sigmoid_loss_and_grad(
            x, y, plan, weight, pos_weight, valid, accumulator, constants, need_dx, need_dy, summed
        )
        if new_accumulator is None:
            new_accumulator = x.new_zeros(0)
        ctx.mark_non_differentiable(new_accumulator)
        ctx.save_for_backward(*(d for d in (dx, dy) if d is not None))
        ctx.num_constants = len(constants)
        return loss, new_accumulator

    @staticmethod
    def backward(ctx, grad, _grad_accumulator):  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        grad_x = grad * saved.pop(0) if ctx.needs_input_grad[0] else None
        grad_y = grad * saved.pop(0) if ctx.needs_input_grad[1] else None
        return (grad_x, grad_y) + (None,) * (6 + ctx.num_constants)


def sigmoid_term_elementwise(
    x: Tensor,
    y: Tensor,
    plan: SigmoidPlan,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    valid: Tensor | None = None,
    accumulator: Tensor | None = None,
    constants: tuple[Tensor, ...] = (),
    summed: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The per-element loss (0 where not valid), or with ``summed`` its sum (a large CPU input then
    never holds the per-element loss whole), differentiable w.r.t. ``x`` and ``y`` through the
    closed-form derivatives, and the updated GHM accumulator (None when the term keeps none)."""
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        loss, new_accumulator = SigmoidTermFunction.apply(
            x, y, plan, weight, pos_weight, valid, accumulator, summed, *constants
        )
        return loss, (new_accumulator if new_accumulator.numel() else None)
    loss, _, _, new_accumulator = sigmoid_loss_and_grad(
        x, y, plan, weight, pos_weight, valid, accumulator, constants, need_dx=False, summed=summed
    )
    return loss, new_accumulator
