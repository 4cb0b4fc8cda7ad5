"""Region losses for segmentation (SPEC "Region losses"): Tversky and its special cases, generalized
dice, Lovász-Softmax and the Lovász hinge.

A region loss compares a whole mask per sample and class, so it is computed from sums over the
positions of each ``(sample, class)`` (of each class over the whole batch with ``batch=True``):

- :func:`region_stats` turns probabilities ``p`` and targets ``y`` ``[N, C, d1, ...]`` into the sums
  ``sum p y``, ``sum p^k`` and ``sum y^k``, over the positions that are not ignored;
- :func:`tversky`, :func:`dice`, :func:`jaccard` and :func:`generalized_dice` map those sums to a loss
  per sample and class (per sample for generalized dice), with no further pass over the mask;
- :func:`lovasz_softmax` and :func:`lovasz_hinge` sort the errors of each ``(sample, class)`` row, all
  rows in one batched sort, and return a loss per row with a mask of the rows that count;
  :func:`mean_over_counted` is their mean.

Conventions, shared by every function here:

- the class dimension is last in the results: ``[N, C]`` per sample and class, ``[C]`` with
  ``batch=True`` (the sums run over the batch too, so there is no sample dimension left);
- ``TP = sum p y``, ``FP = sum p (1-y) = sum p - TP``, ``FN = sum (1-p) y = sum y - TP``. The three
  come from one product and three sums, and the backward pass is one fused pass per input. Taking
  ``FP`` as a difference costs nothing in accuracy that the probabilities had not already lost:
  ``1 - p`` rounds to 0 for every ``p`` within an ulp of 1, so ``FN`` computed directly has the same
  absolute error, about ``eps * sum p``; differences are clamped at 0 so rounding never makes them
  negative;
- every loss is written ``miss / (hit + miss)`` (``1 - ratio`` with ``ratio = hit / (hit + miss)``):
  ``hit = TP + smooth`` and ``miss = alpha FP + beta FN`` for Tversky. Computed this way, ``1 - ratio``
  suffers no cancellation, a zero denominator (``smooth = 0`` and an empty prediction of an empty
  class) gives 0, not NaN, and ``-log(ratio) = log1p(miss / hit)`` is accurate near a perfect ratio;
- ignored positions are selected away with ``torch.where`` before anything is summed, so they
  contribute exactly 0 to the value and the gradient (a product with a float mask would send
  ``0 * inf = NaN`` through the backward pass wherever the caller's probabilities are not finite);
- half precision is computed in float32, float32 and float64 in their own dtype;
- nothing synchronises with the host or branches on tensor values, so every function traces under
  ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .plan import compute_dtype, tiny
from .targets import zero_ignored

WEIGHTINGS = ("square", "simple", "uniform")
LOVASZ_CLASSES = ("present", "all")


# -- sums over the mask ---------------------------------------------------------------------------


class RegionStats(NamedTuple):
    """Sums over the positions of each ``(sample, class)``, shaped ``[N, C]`` (``[C]`` with ``batch``).

    ``tp`` is always there; ``p_sum``/``y_sum`` (``sum p``, ``sum y``) and ``p_sq``/``y_sq``
    (``sum p^2``, ``sum y^2``) are None unless asked for (``powers`` of :func:`region_stats`).
    """

    tp: Tensor
    p_sum: Tensor | None = None
    y_sum: Tensor | None = None
    p_sq: Tensor | None = None
    y_sq: Tensor | None = None

    @property
    def fp(self) -> Tensor:
        """``FP = sum p (1-y) = sum p - TP`` (clamped at 0 against rounding)."""
        return (_need(self.p_sum, "p_sum") - self.tp).clamp(min=0)

    @property
    def fn(self) -> Tensor:
        """``FN = sum (1-p) y = sum y - TP`` (clamped at 0 against rounding)."""
        return (_need(self.y_sum, "y_sum") - self.tp).clamp(min=0)

    def select(self, classes: slice | Tensor) -> RegionStats:
        """The statistics of some classes only (last dimension), e.g. ``slice(1, None)`` to leave the
        background out (``include_background=false``): each class's sums are independent."""
        return RegionStats(*(None if s is None else s[..., classes] for s in self))


def _need(value: Tensor | None, name: str) -> Tensor:
    if value is None:
        raise ValueError(f"these statistics were computed without {name}: ask region_stats for it")
    return value


def region_stats(
    p: Tensor,
    y: Tensor,
    valid: Tensor | None = None,
    *,
    batch: bool = False,
    powers: tuple[int, ...] = (1,),
) -> RegionStats:
    """The sums region losses are made of: ``TP = sum p y`` and ``sum p^k``, ``sum y^k`` per power.

    Every region loss needs ``TP`` and the sums of one power: ``k = 1`` for Tversky, Jaccard, dice
    and generalized dice (``FP = sum p - TP``, ``FN = sum y - TP``), ``k = 2`` for squared (V-Net)
    dice. Ask for both powers when one sum of terms holds both kinds, so that ``TP`` is computed
    once; a term that is not a region loss (``ce``) costs nothing here.

    Class-index targets need no one-hot: ``TP`` and ``sum y`` are scattered into their class from
    the target class's probability, and the backward pass writes the gradient of ``sum p`` and adds
    that of ``TP`` at the target class, one pass over ``p`` each way. Dense targets take one product
    per element (a batched dot product, nothing the size of ``p`` is allocated for it); their backward
    pass is one fused multiply-add per input.

    To leave classes out (``include_background=false``), select them afterwards
    (``stats.select(slice(1, None))``): every class's sums are independent of the others.

    Args:
        p: probabilities ``[N, C, d1, ...]`` (softmax or sigmoid of the logits), finite at every
            position that counts (sanitise ignored positions' logits before the softmax, see
            ``zero_ignored``: ignored positions are selected away here, but a NaN there would still
            reach the logits through the softmax's own backward pass).
        y: targets: one-hot, multi-hot or soft (probabilities) of the shape of ``p``, or class
            indices ``[N, d1, ...]`` (an integer dtype) in ``[0, C)`` wherever ``valid`` is True.
        valid: bool mask of the positions (``[N, 1, d1, ...]``) or, with dense targets, elements
            (``[N, C, d1, ...]``) that count, or None when all do. Ignored ones contribute exactly 0
            to the value and the gradient, whatever ``p`` and ``y`` hold there.
        batch: sum over the batch too (MONAI's ``batch=True``; smp always does).
        powers: which of ``k = 1`` (``p_sum``, ``y_sum``) and ``k = 2`` (``p_sq``, ``y_sq``) to
            compute.

    Shape:
        every returned sum is ``[N, C]``, or ``[C]`` with ``batch=True``; float32 for half-precision
        inputs, else the dtype of ``p``.
    """
    if not set(powers) <= {1, 2}:
        raise ValueError(f"powers must be 1 and/or 2, got {powers}")
    dtype = compute_dtype(p)
    n, c = p.shape[:2]
    p = p.to(dtype).reshape(n, c, -1)
    first, second = 1 in powers, 2 in powers
    if not y.is_floating_point():
        positions = None if valid is None else valid.reshape(n, -1)
        index = y.reshape(n, -1).long()
        if positions is not None:  # ignored positions may hold any index (ignore_index=255)
            index = torch.where(positions, index, torch.zeros((), dtype=index.dtype, device=index.device))
        tp, *p_sums = _IndexStats.apply(p, index, positions, first, second)
        # sum y counts the valid positions of each class (and sum y^2 = sum y): no gradient.
        count = torch.ones_like(index, dtype=dtype) if positions is None else positions.to(dtype)
        y_sum = torch.zeros((n, c), dtype=dtype, device=p.device).scatter_add_(1, index, count)
        p_sum = p_sums.pop(0) if first else None
        p_sq = p_sums.pop(0) if second else None
        sums = _requested(tp, p_sum, y_sum, p_sq, y_sum, first, second)
    else:
        y = y.to(dtype).reshape(n, c, -1)
        mask = None if valid is None else valid.reshape(n, valid.shape[1], -1)
        sums = _DenseStats.apply(p, y, mask, first, second)
    if batch:
        sums = tuple(s.sum(0) for s in sums)
    return RegionStats(*_spread(sums, first, second))


def _spread(sums: tuple[Tensor, ...], first: bool, second: bool) -> tuple[Tensor | None, ...]:
    """The Functions return only the sums asked for (autograd outputs are tensors): put them back in
    their fields, None elsewhere."""
    values = iter(sums)
    tp = next(values)
    p_sum, y_sum = (next(values), next(values)) if first else (None, None)
    p_sq, y_sq = (next(values), next(values)) if second else (None, None)
    return tp, p_sum, y_sum, p_sq, y_sq


def _requested(tp, p_sum, y_sum, p_sq, y_sq, first: bool, second: bool) -> tuple[Tensor, ...]:
    return (tp,) + ((p_sum, y_sum) if first else ()) + ((p_sq, y_sq) if second else ())


def _gradients(grads: tuple[Tensor, ...], first: bool, second: bool) -> tuple[Tensor | None, ...]:
    """Incoming gradients of the sums, each ``[N, C, 1]`` to broadcast over positions."""
    return _spread(tuple(g.unsqueeze(-1) for g in grads), first, second)


def _select(grad: Tensor, mask: Tensor | None) -> Tensor:
    """0 where the mask is False."""
    if mask is None:
        return grad
    return torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


class _DenseStats(torch.autograd.Function):
    """Sums over the last dimension of ``p`` and ``y`` ``[N, C, P]``, positions selected by a bool mask
    ``[N, 1 or C, P]``: ``sum p y``, then ``sum p``, ``sum y`` and/or ``sum p^2``, ``sum y^2``.

    The backward pass is, per input, one fused multiply-add and an in-place selection:
    ``dL/dp = mask (g_tp y + g_p + 2 g_p2 p)`` and the same for ``y``.
    """

    @staticmethod
    def forward(ctx, p, y, mask, first, second):  # type: ignore[override]
        if mask is not None:
            zero = torch.zeros((), dtype=p.dtype, device=p.device)
            p, y = torch.where(mask, p, zero), torch.where(mask, y, zero)
        tp = torch.linalg.vecdot(p, y)
        p_sum = y_sum = p_sq = y_sq = None
        if first:
            p_sum, y_sum = p.sum(-1), y.sum(-1)
        if second:
            p_sq, y_sq = torch.linalg.vecdot(p, p), torch.linalg.vecdot(y, y)
        ctx.save_for_backward(p, y, mask)
        ctx.powers = (first, second)
        return _requested(tp, p_sum, y_sum, p_sq, y_sq, first, second)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        p, y, mask = ctx.saved_tensors
        g_tp, g_p, g_y, g_p2, g_y2 = _gradients(grads, *ctx.powers)
        grad_p = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_p = _select(_linear_gradient(g_tp, y, g_p, g_p2, p), mask)
        if ctx.needs_input_grad[1]:
            grad_y = _select(_linear_gradient(g_tp, p, g_y, g_y2, y), mask)
        return grad_p, grad_y, None, None, None


def _linear_gradient(g_tp: Tensor, other: Tensor, g_sum, g_sq, own: Tensor) -> Tensor:
    """``g_tp other + g_sum + 2 g_sq own``, one fresh tensor the shape of ``own``."""
    base = g_sum if g_sum is not None else torch.zeros_like(g_tp)
    grad = torch.addcmul(base, g_tp, other)
    if g_sq is not None:
        grad.addcmul_(2 * g_sq, own)
    return grad


class _IndexStats(torch.autograd.Function):
    """The sums of ``p`` for class-index targets ``[N, P]`` (ignored positions already set to class 0
    and marked False in ``positions`` ``[N, P]``), without a one-hot: ``TP`` scatters the target
    class's probability into its class; then ``sum p`` and/or ``sum p^2`` as asked."""

    @staticmethod
    def forward(ctx, p, index, positions, first, second):  # type: ignore[override]
        n, c, _ = p.shape
        if positions is not None:
            p = torch.where(positions.unsqueeze(1), p, torch.zeros((), dtype=p.dtype, device=p.device))
        on_target = p.gather(1, index.unsqueeze(1)).squeeze(1)
        sums = [torch.zeros((n, c), dtype=p.dtype, device=p.device).scatter_add_(1, index, on_target)]
        if first:
            sums.append(p.sum(-1))
        if second:
            sums.append(torch.linalg.vecdot(p, p))
        if positions is None:
            positions = torch.ones_like(index, dtype=torch.bool)
        ctx.save_for_backward(index, positions, p)
        ctx.powers = (first, second)
        return tuple(sums)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        index, positions, p = ctx.saved_tensors
        first, second = ctx.powers
        g_tp, *rest = (g.unsqueeze(-1) for g in grads)
        g_p = rest.pop(0) if first else None
        g_p2 = rest.pop(0) if second else None
        # d sum p / dp and d sum p^2 / dp everywhere, then dTP/dp = 1 at the target class.
        if g_p2 is None:
            grad = g_p if g_p is not None else torch.zeros_like(g_tp)
        else:
            grad = torch.mul(p, 2 * g_p2) if g_p is None else torch.addcmul(g_p, p, 2 * g_p2)
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        grad = torch.where(positions.unsqueeze(1), grad, zero)  # also expands [N, C, 1] to p's shape
        on_target = torch.where(positions, g_tp.squeeze(-1).gather(1, index), zero)
        return grad.scatter_add_(1, index.unsqueeze(1), on_target.unsqueeze(1)), None, None, None, None


# -- losses from the sums -------------------------------------------------------------------------


def _ratio_loss(hit: Tensor, miss: Tensor, gamma: float = 1.0, log: bool = False) -> Tensor:
    """``(1 - ratio)^gamma`` (or ``(-log ratio)^gamma``) with ``ratio = hit / (hit + miss)``.

    ``hit`` and ``miss`` are >= 0. ``1 - ratio`` is ``miss / (hit + miss)``, 0 where both are 0;
    ``-log ratio`` is ``log1p(miss / hit)``, with ``hit`` clamped to the smallest normal number so
    that ``smooth = 0`` and ``TP = 0`` give a large finite loss rather than inf. A fractional
    ``gamma`` is taken of ``u`` where ``u > 0`` and is 0 elsewhere, both selected with ``where``:
    at ``u = 0`` (a perfect ratio, every position ignored) the value is exactly 0 and the gradient 0,
    where ``d u^gamma / du`` is infinite for ``gamma < 1``.
    """
    if log:
        loss = torch.log1p(miss / hit.clamp(min=tiny(hit.dtype)))
    else:
        total = hit + miss
        loss = miss / torch.where(total > 0, total, torch.ones_like(total))
    if gamma == 1:
        return loss
    if gamma > 1:
        return loss.pow(gamma)  # derivative gamma u^(gamma-1) is finite at u = 0
    positive = loss > 0
    safe = torch.where(positive, loss, torch.ones_like(loss))
    return torch.where(positive, safe.pow(gamma), torch.zeros_like(loss))


def tversky(
    stats: RegionStats,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
    smooth: float = 1e-5,
    log: bool = False,
) -> Tensor:
    """Tversky loss per sample and class (Salehi et al. 2017); focal Tversky with ``gamma``
    (Abraham and Khan 2019).

    ``(1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth))^gamma``; with ``log=True``,
    ``(-log((TP + smooth) / (TP + alpha FP + beta FN + smooth)))^gamma``. ``gamma`` applies per class,
    before any mean over classes (smp applies it to the class mean; the two agree for one class).

    Args:
        stats: :func:`region_stats` with ``powers`` holding 1.
        alpha: weight of the false positives.
        beta: weight of the false negatives.
        gamma: focusing exponent (> 0); finite gradient at a perfect ratio for ``0 < gamma < 1``.
        smooth: added to the numerator and the denominator (MONAI's ``smooth_nr = smooth_dr``).
        log: ``-log`` of the ratio instead of ``1 -`` it (smp's ``log_loss``).

    Shape:
        the shape of ``stats.tp``: ``[N, C]``, or ``[C]`` with ``batch=True``.
    """
    hit = stats.tp + smooth
    miss = alpha * stats.fp + beta * stats.fn
    return _ratio_loss(hit, miss, gamma, log)


def jaccard(stats: RegionStats, *, smooth: float = 1e-5, log: bool = False) -> Tensor:
    """Jaccard (soft IoU) loss per sample and class: ``1 - (TP + smooth) / (TP + FP + FN + smooth)``.

    Tversky with ``alpha = beta = 1``. MONAI's ``DiceLoss(jaccard=True)`` with ``smooth_nr = smooth_dr
    = 2 smooth`` is the same loss (it writes ``(2 TP + s) / (2 (TP + FP + FN) + s)``).

    Shape:
        the shape of ``stats.tp``: ``[N, C]``, or ``[C]`` with ``batch=True``.
    """
    return tversky(stats, alpha=1.0, beta=1.0, smooth=smooth, log=log)


def dice(
    stats: RegionStats, *, smooth: float = 1e-5, squared: bool = False, log: bool = False
) -> Tensor:
    """Soft dice loss per sample and class (Milletari et al. 2016, V-Net).

    ``1 - (2 TP + smooth) / (sum p^k + sum y^k + smooth)``, ``k = 2`` if ``squared`` else 1; with
    ``log=True``, ``-log`` of the ratio. For ``k = 1``, ``sum p + sum y = 2 TP + FP + FN`` and the
    loss is Tversky with ``alpha = beta = 0.5`` and ``smooth / 2`` (numerator and denominator halved).
    The squared form is not a Tversky loss: ``sum p^2 + sum y^2 - 2 TP = sum (p - y)^2`` replaces
    ``FP + FN``.

    Args:
        stats: :func:`region_stats` with ``powers`` holding 2 if ``squared``, else 1.
        smooth: added to the numerator and the denominator (MONAI's ``smooth_nr = smooth_dr``).
        squared: squares in the denominator (MONAI's ``squared_pred``).
        log: ``-log`` of the ratio (smp's ``log_loss``).

    Shape:
        the shape of ``stats.tp``: ``[N, C]``, or ``[C]`` with ``batch=True``.
    """
    if not squared:
        return tversky(stats, alpha=0.5, beta=0.5, smooth=smooth / 2, log=log)
    p_sq, y_sq = _need(stats.p_sq, "p_sq"), _need(stats.y_sq, "y_sq")
    hit = 2 * stats.tp + smooth
    miss = (p_sq + y_sq - 2 * stats.tp).clamp(min=0)
    return _ratio_loss(hit, miss, log=log)


def generalized_dice(stats: RegionStats, *, weighting: str = "square", smooth: float = 1e-5) -> Tensor:
    """Generalized dice loss per sample (Sudre et al. 2017), as MONAI's ``GeneralizedDiceLoss``.

    ``1 - (2 sum_c w_c TP_c + smooth) / (sum_c w_c (sum p_c + sum y_c) + smooth)`` with
    ``w_c = 1 / (sum y_c)^2`` (``square``), ``1 / sum y_c`` (``simple``) or 1 (``uniform``). A weight
    that is infinite (a class absent from the sample's target, or a sum so small that its reciprocal
    overflows) becomes the largest finite weight of the sample (of the batch with ``batch=True``), 0
    if there is none (the loss is then 0). The weights depend on ``y`` only, and soft targets that
    require grad receive the gradient through them too, as in MONAI.

    Args:
        stats: :func:`region_stats` with ``powers`` holding 1.
        weighting: ``square``, ``simple`` or ``uniform`` (MONAI's ``w_type``).
        smooth: added to the numerator and the denominator (MONAI's ``smooth_nr = smooth_dr``).

    Shape:
        ``[N]``, or a scalar with ``batch=True`` (the class dimension of the statistics is summed).
    """
    weights = _class_weights(_need(stats.y_sum, "y_sum"), weighting)
    hit = 2 * (weights * stats.tp).sum(-1) + smooth
    miss = (weights * (stats.fp + stats.fn)).sum(-1)
    return _ratio_loss(hit, miss)


def _class_weights(y_sum: Tensor, weighting: str) -> Tensor:
    """Generalized dice's ``w_c`` over the last dimension, infinite weights replaced by the largest
    finite one. The infinite entries are found first and their reciprocal is taken of 1 instead, so
    the backward pass never sees ``1 / 0``."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "uniform":
        return torch.ones_like(y_sum)
    volume = y_sum if weighting == "simple" else y_sum * y_sum
    with torch.no_grad():
        infinite = torch.isinf(torch.reciprocal(volume))
    weights = torch.reciprocal(torch.where(infinite, torch.ones_like(volume), volume))
    finite = torch.where(infinite, torch.zeros_like(weights), weights)
    largest = finite.amax(dim=-1, keepdim=True)
    return torch.where(infinite, largest, weights)


# -- Lovász ----------------------------------------------------------------------------------------


def lovasz_softmax(
    p: Tensor,
    y: Tensor,
    valid: Tensor | None = None,
    *,
    per_image: bool = False,
    classes: str = "present",
) -> tuple[Tensor, Tensor]:
    """Lovász-Softmax loss per class (Berman et al. 2018), per image or over the whole batch.

    For each class ``c`` the errors ``e = abs(y_c - p_c)`` of the row's positions are sorted in
    decreasing order and the loss is ``sum_i e_(i) g_i``, ``g`` the increments of the Jaccard loss
    ``1 - (G - F_i) / (G + B_i)`` along the sorted order (``G = sum y_c``, ``F_i`` and ``B_i`` the
    foreground and background mass among the first ``i``): the Lovász extension of the Jaccard loss,
    a convex surrogate of ``1 - IoU``. Every row is sorted in one batched sort.

    Args:
        p: probabilities ``[N, C, d1, ...]`` (softmax of the logits, finite everywhere).
        y: targets of the same shape: one-hot, or probabilities (the formula with soft foreground).
        valid: bool mask of the positions (``[N, 1, d1, ...]``) or elements that count, or None.
            Ignored positions are left out of the rows, as if removed.
        per_image: one row per image and class, else one per class over the whole batch.
        classes: ``present`` counts only the rows whose class has target mass; ``all`` counts every
            row that has a valid position.

    Returns:
        ``(loss, counted)``: the loss per row, ``[N, C]`` with ``per_image`` else ``[C]``, 0 where the
        row does not count, and the bool mask ``counted`` of the rows that do. Berman's (and smp's)
        loss is :func:`mean_over_counted`; ``loss.sum()`` is its sum.
    """
    dtype = compute_dtype(p)
    p, y = p.to(dtype), y.to(dtype)
    if valid is not None:
        p, y = zero_ignored(p, valid), zero_ignored(y, valid)
    errors = (y - p).abs()  # 0 at ignored positions: they sort after every error that counts
    fg = _rows(y, per_image)
    loss = _lovasz_rows(_rows(errors, per_image), fg)
    return _counted(loss, fg, valid, p, per_image, classes)


def lovasz_hinge(
    x: Tensor,
    y: Tensor,
    valid: Tensor | None = None,
    *,
    per_image: bool = False,
    classes: str = "all",
) -> tuple[Tensor, Tensor]:
    """Lovász hinge loss per class (Berman et al. 2018), the sigmoid head's Lovász loss.

    Each class is its own binary problem: the hinge errors ``max(1 - x s, 0)``, ``s = 2 y - 1``, are
    sorted in decreasing order and weighted by the increments of the Jaccard loss of the class, as in
    :func:`lovasz_softmax`. smp's ``binary`` mode is one class of this; its ``multilabel`` mode
    flattens all classes into a single problem instead.

    Args:
        x: logits ``[N, C, d1, ...]`` (finite; sanitise ignored positions).
        y: binary masks of the same shape (values in [0, 1]; soft values enter the formula as such).
        valid: bool mask of the positions or elements that count, or None.
        per_image: one row per image and class, else one per class over the whole batch.
        classes: ``all`` (default here: an empty mask is still penalised for its false positives, as
            in smp's binary mode) or ``present``.

    Returns:
        ``(loss, counted)`` as :func:`lovasz_softmax`.
    """
    dtype = compute_dtype(x)
    x, y = x.to(dtype), y.to(dtype)
    if valid is not None:
        x, y = zero_ignored(x, valid), zero_ignored(y, valid)
    errors = torch.relu(1 - x * (2 * y - 1))
    if valid is not None:  # a sanitised logit of 0 still has a hinge error of 1
        errors = zero_ignored(errors, valid)
    fg = _rows(y, per_image)
    loss = _lovasz_rows(_rows(errors, per_image), fg)
    return _counted(loss, fg, valid, x, per_image, classes)


def mean_over_counted(loss: Tensor, counted: Tensor) -> Tensor:
    """Berman's mean of a Lovász loss: over the counted classes of each row, then over the rows
    (images) that count any; 0 (with zero gradient) when nothing counts.

    Args:
        loss: ``[N, C]`` or ``[C]``, 0 where not counted.
        counted: bool, same shape.
    """
    per_row = _safe_mean(loss.sum(-1), counted.sum(-1))
    if loss.dim() == 1:
        return per_row
    return _safe_mean(per_row.sum(), counted.any(-1).sum())


def _safe_mean(total: Tensor, count: Tensor) -> Tensor:
    count = count.to(total.dtype)
    return total / torch.where(count > 0, count, torch.ones_like(count))


def _rows(t: Tensor, per_image: bool) -> Tensor:
    """``[N, C, d1, ...]`` -> rows ``[N, C, P]`` (per image) or ``[C, N P]`` (over the batch)."""
    n, c = t.shape[:2]
    t = t.reshape(n, c, -1)
    return t if per_image else t.transpose(0, 1).reshape(c, -1)


def _lovasz_rows(errors: Tensor, fg: Tensor) -> Tensor:
    """The Lovász extension of the Jaccard loss of each row (last dimension), errors >= 0.

    The loss is linear in the errors once they are sorted, ``sum_j e_j w_j`` with ``w_j`` the Jaccard
    increment at ``e_j``'s rank, so its gradient w.r.t. the errors is ``w`` itself: without soft
    targets that require grad, an autograd Function keeps only ``w`` for the backward pass (no
    gather, no scatter of gradients).
    """
    if fg.requires_grad and torch.is_grad_enabled():  # the weights depend on y: autograd through them
        return torch.linalg.vecdot(errors, _lovasz_weights(errors, fg))
    return _LovaszRows.apply(errors, fg)


class _LovaszRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, errors, fg):  # type: ignore[override]
        weights = _lovasz_weights(errors, fg)
        ctx.save_for_backward(weights)
        return torch.linalg.vecdot(errors, weights)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (weights,) = ctx.saved_tensors
        return weights * grad.unsqueeze(-1), None


def _lovasz_weights(errors: Tensor, fg: Tensor) -> Tensor:
    """Each element's Jaccard increment ``J_i - J_(i-1)``, ``i`` its rank by decreasing error.

    With ``F_i`` the foreground mass among the first ``i`` sorted elements and ``G`` the row's total,
    ``J_i = 1 - (G - F_i) / (G + i - F_i) = i / (G + i - F_i)`` (Berman's intersection over union
    with ``union = G + sum (1 - fg) = G + i - F_i``): one running sum. The denominator is at least
    ``max(G, i) >= 1`` for foreground in [0, 1]. Running sums are float64 once a row is too long
    for float32 to count its positions exactly (``2^24``).
    """
    order = _descending_order(errors.detach())  # flat indices, row by row
    shape = fg.shape
    fg_sorted = fg.reshape(-1).gather(0, order).view(shape)
    length = shape[-1]
    acc = torch.float64 if length >= 2**24 else fg.dtype
    seen = fg_sorted.cumsum(-1, dtype=acc)
    rank = torch.arange(1, length + 1, dtype=acc, device=fg.device)
    jaccard = (rank / (rank - (seen - seen[..., -1:]))).to(fg.dtype)
    increments = jaccard.clone()
    increments[..., 1:] -= jaccard[..., :-1]
    return torch.empty_like(increments).view(-1).scatter_(0, order, increments.view(-1)).view(shape)


def _descending_order(errors: Tensor) -> Tensor:
    """The positions of ``errors.reshape(-1)`` ordered row by row (the last dimension is a row), each
    row by decreasing error; errors >= 0 and finite.

    On the CPU, float32 errors are sorted as integers in one flat sort: the bit pattern of a float
    >= 0 orders like the float, so the key ``row 2^31 + (2^31 - 1 - bits)`` puts the rows one after
    the other, each in decreasing error, and torch sorts a flat int64 tensor with a radix sort
    (about 2.5x faster than a comparison sort of the rows on one thread). A -0.0 (from relu) counts
    as 0. Elsewhere (float64, GPUs) the rows are sorted as they are.
    """
    length = errors.shape[-1]
    rows = errors.reshape(-1, length)
    if errors.device.type == "cpu" and errors.dtype == torch.float32:
        bits = rows.view(torch.int32).to(torch.int64).clamp_(min=0)
        offsets = torch.arange(rows.shape[0], dtype=torch.int64, device=rows.device) * 2**31 + (2**31 - 1)
        return torch.sort((offsets.unsqueeze(1) - bits).view(-1)).indices
    order = torch.sort(rows, dim=-1, descending=True).indices
    starts = torch.arange(0, rows.numel(), length, dtype=order.dtype, device=order.device)
    return (order + starts.unsqueeze(1)).view(-1)


def _counted(
    loss: Tensor, fg: Tensor, valid: Tensor | None, reference: Tensor, per_image: bool, classes: str
) -> tuple[Tensor, Tensor]:
    """Which rows count (``present``: target mass; ``all``: any valid position), and the loss with 0
    elsewhere."""
    if classes not in LOVASZ_CLASSES:
        raise ValueError(f"classes must be one of {LOVASZ_CLASSES}, got {classes!r}")
    if classes == "present":
        counted = fg.sum(-1) > 0
    elif valid is None:
        counted = torch.ones(loss.shape, dtype=torch.bool, device=loss.device)
    else:
        counted = _rows(valid.expand(reference.shape), per_image).any(-1)
    return zero_ignored(loss, counted), counted
