"""Box regression losses: IoU, GIoU, DIoU and CIoU, per box, with closed-form gradients.

Boxes are ``(x1, y1, x2, y2)`` in the last dimension. With ``w = max(x2 - x1, 0)``,
``h = max(y2 - y1, 0)`` for each box, the intersection ``I = iw * ih``,
``iw = max(min(x2, x2g) - max(x1, x1g), 0)`` (``ih`` alike), the union ``U = w h + wg hg - I``, the
enclosing box ``cw = max(max(x2, x2g) - min(x1, x1g), 0)`` (``ch`` alike) and ``IoU = I / (U + eps)``:

- ``iou``:  ``1 - IoU`` (mmdetection ``IoULoss(mode='linear')``);
- ``giou``: ``1 - IoU + (C - U) / (C + eps)``, ``C = cw ch`` (Rezatofighi et al. 2019);
- ``diou``: ``1 - IoU + rho^2 / (cw^2 + ch^2 + eps)``, ``rho`` the distance between the box centres
  (Zheng et al. 2020);
- ``ciou``: ``diou + alpha v``, ``v = 4/pi^2 (atan2(wg, hg) - atan2(w, h))^2`` and
  ``alpha = v / (1 - IoU + v + eps)`` held constant (no gradient), at every IoU (Zheng et al. 2020).

These are torchvision's ``generalized_box_iou_loss``, ``distance_box_iou_loss`` and
``complete_box_iou_loss`` (and ``1 - inter / (union + eps)`` of its ``_loss_inter_union``) to
rounding, ``eps`` in the same places, wherever torchvision is finite. mmdetection 3.x differs:
its ``ciou`` adds ``alpha v`` only where ``IoU > 0.5`` and clamps the CIoU to [-1, 1]; its ``iou``
and ``giou`` floor ``U`` and ``C`` at ``eps`` instead of adding it (and ``iou_loss`` floors the IoU
at ``eps``); its CIoU aspect ratio is ``w / (h + eps)``. For boxes much larger than ``eps`` only the
first difference shows.

Degenerate boxes stay finite in value and gradient:
- zero width, height or area: ``atan2`` replaces ``atan(w / h)`` (equal wherever ``h > 0``), so the
  aspect angle is ``pi/2`` for ``h = 0 < w`` and 0 for a point box, with derivatives
  ``(h, -w) / (w^2 + h^2)`` (0 for a point box); torchvision's ``atan(w / h)`` has a NaN derivative
  at ``h = 0`` and a NaN value for a point box;
- inverted boxes (``x2 < x1`` or ``y2 < y1``) are empty: their width or height counts as 0 (area 0,
  no intersection, no gradient through that side), while their corners still place the enclosing
  box and the centre. (torchvision requires ``x1 < x2``, older releases assert it, and a negative
  side gives it a negative area; mmdetection clamps only the intersection and the enclosing box, so
  two negative sides make a positive area.);
- every denominator holds ``+ eps`` (``eps > 0``, the caller's check): union, enclosing area,
  enclosing diagonal and alpha's ``1 - IoU + v``.

At the kinks of ``max``, ``min`` and the clamps the gradient is the one autograd gives for the plain
formula: ties between a predicted and a target coordinate split the derivative in halves (so
identical boxes have zero gradient), an intersection of zero width passes none (torchvision's
``mask = (iw > 0) & (ih > 0)``), a box side of exactly zero width passes it.

The forward pass computes the loss and its derivatives together, on ``[2, ...]`` planes of (x, y)
pairs, without host synchronisation (torchvision's masked intersection waits for the device); the
autograd Function keeps only the ``[..., 4]`` derivatives for the backward pass, which is one
multiplication. On a CPU this is 3-4x faster than autograd through torchvision's formula, with about
the same peak memory (benchmarks/bench_boxes.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .plan import compute_dtype, tiny
from .tracing import is_compiling

BOX_KINDS = ("iou", "giou", "diou", "ciou")
_ASPECT = 4.0 / math.pi**2


def _half_step(difference: Tensor) -> Tensor:
    """``1`` where ``difference > 0``, ``0.5`` where it is 0, ``0`` below: the share of a ``max``'s
    derivative that goes to its first argument (autograd splits ties in halves)."""
    return torch.sign(difference).mul_(0.5).add_(0.5)


def _aspect(wh: Tensor) -> tuple[Tensor, Tensor]:
    """The aspect angle ``atan2(w, h)`` of ``wh = [w, h, ...]`` (``w, h >= 0``) and
    ``1 / (w^2 + h^2)``, so that its derivatives are ``[h, -w] / (w^2 + h^2)``.

    The denominator is kept at least the smallest normal number: for a point box (``w = h = 0``)
    the derivatives are then 0, not NaN.
    """
    w, h = wh[0], wh[1]
    return torch.atan2(w, h), (w * w).addcmul_(h, h).clamp_(min=tiny(wh.dtype)).reciprocal_()


def _planar(boxes: Tensor, dtype: torch.dtype) -> Tensor:
    """``[..., 4]`` -> contiguous ``[4, ...]`` (``x1, y1, x2, y2`` planes) in ``dtype``.

    Stacking the four columns is several times faster on a CPU than ``movedim(-1, 0).contiguous()``
    (a transposing copy)."""
    return torch.stack(boxes.to(dtype).unbind(-1))


def _interleaved(planes: tuple[Tensor, Tensor], like: Tensor) -> Tensor:
    """The inverse of ``_planar``: the ``[x1, y1]`` and ``[x2, y2]`` planes (``[2, ...]`` each) ->
    ``[..., 4]`` shaped as ``like``."""
    columns = (*planes[0], *planes[1])
    if is_compiling():  # one fused kernel
        return torch.stack(columns, dim=-1)
    boxes = columns[0].new_empty(like.shape)
    for i, column in enumerate(columns):  # column writes: several times faster on a CPU than stack
        boxes[..., i] = column
    return boxes


def box_loss_and_grads(
    pred: Tensor, target: Tensor, kind: str, eps: float, need_dpred: bool, need_dtarget: bool
) -> tuple[Tensor, tuple[Tensor, Tensor] | None, tuple[Tensor, Tensor] | None]:
    """Per-box loss ``[...]`` and its derivatives w.r.t. ``pred`` and ``target``.

    ``pred`` and ``target`` are ``[..., 4]`` boxes; the computation runs on planar copies in
    ``compute_dtype(pred)``. Each derivative is a pair of ``[2, ...]`` planes, w.r.t. ``[x1, y1]``
    and ``[x2, y2]`` (None when not asked for). Intermediates are overwritten or dropped as soon as
    they have served, to keep the peak memory low.
    """
    need_grad = need_dpred or need_dtarget
    dtype = compute_dtype(pred)
    lo_p, hi_p = _planar(pred, dtype).chunk(2)
    lo_g, hi_g = _planar(target, dtype).chunk(2)
    overlap = torch.minimum(hi_p, hi_g).sub_(torch.maximum(lo_p, lo_g)).clamp_(min=0)  # [iw, ih]
    enclosure = None
    if kind != "iou":
        enclosure = torch.maximum(hi_p, hi_g).sub_(torch.minimum(lo_p, lo_g))  # [cw, ch]
    if kind in ("diou", "ciou"):
        centres = (lo_p + hi_p).sub_(lo_g).sub_(hi_g)  # twice the offsets between the centres
    if need_grad:
        # The prediction's share of each max/min derivative (the target has the rest).
        share_lo = _half_step(lo_p - lo_g)  # max(lo_p, lo_g) picks lo_p, min(lo_p, lo_g) picks lo_g
        share_hi = _half_step(hi_g - hi_p)  # min(hi_p, hi_g) picks hi_p, max(hi_p, hi_g) picks hi_g
    wh_p, wh_g = hi_p.sub_(lo_p), hi_g.sub_(lo_g)  # [w, h], negative for an inverted box
    del lo_p, hi_p, lo_g, hi_g
    if need_grad:
        inverted_p, inverted_g = wh_p < 0, wh_g < 0
    wh_p.clamp_(min=0)
    wh_g.clamp_(min=0)

    inter = overlap[0] * overlap[1]
    union = (wh_p[0] * wh_p[1]).addcmul_(wh_g[0], wh_g[1]).sub_(inter)
    union_eps = union + eps
    iou = inter / union_eps
    loss = 1 - iou
    if kind != "iou":
        unenclosed = enclosure < 0  # only where both boxes are inverted
        enclosure.clamp_(min=0)
    if kind == "giou":
        area_c = enclosure[0] * enclosure[1]
        area_c_eps = area_c + eps
        loss += (area_c - union) / area_c_eps
    elif kind in ("diou", "ciou"):
        diagonal = enclosure.square().sum(0).add_(eps)
        distance = centres.square().sum(0).mul_(0.25).div_(diagonal)
        loss += distance
    if kind == "ciou":
        angle_p, inv_radius2_p = _aspect(wh_p)
        angle_g, inv_radius2_g = _aspect(wh_g)
        delta = angle_g - angle_p
        v = delta.square().mul_(_ASPECT)
        alpha = v / (1 - iou + v + eps)
        loss += alpha * v
    if not need_grad:
        return loss, None, None

    # dL/dU, and dL/dI with U held fixed (U = area_p + area_g - I adds -dL/dU to it below).
    d_union = iou / union_eps
    d_inter = -1 / union_eps
    d_enclosure = None  # dL/d[cw, ch]
    d_centres = None  # dL/d[x1 + x2 - x1g - x2g, y1 + y2 - y1g - y2g]
    if kind == "giou":
        d_union -= 1 / area_c_eps
        d_area_c = union_eps / area_c_eps.square()
        d_enclosure = enclosure.flip(0).mul_(d_area_c).masked_fill_(unenclosed, 0)
    elif kind in ("diou", "ciou"):
        d_enclosure = enclosure.mul_(distance * (-2) / diagonal)
        d_centres = centres.mul_(0.5 / diagonal)
    del enclosure
    if kind == "ciou":
        d_angle = alpha.mul_(delta).mul_(-2 * _ASPECT)  # dL/d angle_p (alpha is a constant)
    d_inter -= d_union
    # dI/d[iw, ih] = [ih, iw] where both are positive (sign(iw) sign(ih) is that indicator).
    d_overlap = overlap.flip(0).mul_(overlap.sign_()).mul_(d_inter)
    del overlap
    # With D = dL/d overlap - dL/d enclosure: d lo_p = -(dL/d enclosure + D share_lo) and
    # d lo_g = -(dL/d overlap - D share_lo), the same for hi with a plus sign (and the terms
    # through each box's own sides and centre).
    spread = d_overlap if d_enclosure is None else d_overlap - d_enclosure

    grads: list[tuple[Tensor, Tensor] | None] = []
    for wanted, wh, inverted, sign in (
        (need_dpred, wh_p, inverted_p, 1.0), (need_dtarget, wh_g, inverted_g, -1.0)
    ):
        if not wanted:
            grads.append(None)
            continue
        # dL/d[w, h]: through the box's area in the union, and through its aspect angle.
        d_wh = wh.flip(0).mul_(d_union)
        if kind == "ciou":
            d_side = d_angle * (inv_radius2_p if sign > 0 else inv_radius2_g)
            d_side = d_side if sign > 0 else d_side.neg_()
            d_wh[0].addcmul_(wh[1], d_side)
            d_wh[1].addcmul_(wh[0], d_side, value=-1)
        d_wh.masked_fill_(inverted, 0)  # an inverted side passes no gradient
        if sign < 0:
            d_lo = torch.addcmul(d_overlap, spread, share_lo, value=-1)
            d_hi = torch.addcmul(d_overlap, spread, share_hi, value=-1)
        elif d_enclosure is None:
            d_lo, d_hi = spread * share_lo, spread * share_hi
        else:
            d_lo = torch.addcmul(d_enclosure, spread, share_lo)
            d_hi = torch.addcmul(d_enclosure, spread, share_hi)
        d_lo.add_(d_wh).neg_()
        d_hi.add_(d_wh)
        del d_wh
        if d_centres is not None:
            d_lo.add_(d_centres, alpha=sign)
            d_hi.add_(d_centres, alpha=sign)
        grads.append((d_lo, d_hi))
    return loss, grads[0], grads[1]


class BoxLossFunction(torch.autograd.Function):
    """Autograd wrapper on ``[..., 4]`` boxes: the forward pass keeps the derivatives
    (``[..., 4]``, in the computation dtype), the backward pass scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, pred, target, kind, eps):  # type: ignore[override]
        loss, d_pred, d_target = box_loss_and_grads(pred, target, kind, eps, *ctx.needs_input_grad[:2])
        ctx.save_for_backward(*(
            _interleaved(d, box) for d, box in ((d_pred, pred), (d_target, target)) if d is not None
        ))
        ctx.dtypes = pred.dtype, target.dtype
        return loss

    @staticmethod
    @once_differentiable  # the saved derivatives are constants: a second derivative is an error
    def backward(ctx, grad):  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        grad = grad.unsqueeze(-1)
        grads = [
            (grad * saved.pop(0)).to(dtype) if wanted else None
            for wanted, dtype in zip(ctx.needs_input_grad[:2], ctx.dtypes)
        ]
        return grads[0], grads[1], None, None


def box_loss(pred: Tensor, target: Tensor, kind: str, eps: float = 1e-7) -> Tensor:
    """Per-box IoU-family loss (see the module docstring for the formulas and conventions).

    Args:
        pred: predicted boxes ``[..., 4]`` as ``(x1, y1, x2, y2)``.
        target: target boxes, same shape (any dtype: they are cast to the computation dtype).
        kind: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        eps: added to every denominator (> 0), as torchvision's ``eps``.

    Returns:
        The loss ``[...]`` in the computation dtype of ``pred`` (float32 for half precision, float64
        kept), differentiable w.r.t. ``pred`` and, if it requires grad, ``target``.

    Shape checks are the caller's: ``pred.shape == target.shape`` with a last dimension of 4 is
    assumed (no broadcasting).
    """
    if kind not in BOX_KINDS:
        raise ValueError(f"not a box loss: {kind}")
    if torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad):
        return BoxLossFunction.apply(pred, target, kind, float(eps))
    return box_loss_and_grads(pred, target, kind, eps, False, False)[0]
