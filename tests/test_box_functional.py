"""The functional layer of the box and distribution losses: ``box_loss`` (iou, giou, diou, ciou) and
``distribution_focal`` (DFL), against torchvision's and mmdetection's formulas.

The references below are written from the published source (neither library imports here), plainly,
in the tests' own words and differentiated by autograd:
- torchvision (github.com/pytorch/vision): ``torchvision/ops/_utils.py`` (``_loss_inter_union``,
  ``_upcast_non_float``), ``torchvision/ops/giou_loss.py``, ``torchvision/ops/diou_loss.py``
  (``_diou_iou_loss``), ``torchvision/ops/ciou_loss.py``;
- mmdetection 3.3.0 (github.com/open-mmlab/mmdetection): ``mmdet/structures/bbox/bbox_overlaps.py``,
  ``mmdet/models/losses/iou_loss.py`` (``iou_loss``, ``giou_loss``, ``diou_loss``, ``ciou_loss``) and
  ``mmdet/models/losses/gfocal_loss.py`` (``distribution_focal_loss``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lossdsl.functional.boxes import BOX_KINDS, box_loss
from lossdsl.functional.dfl import distribution_focal

EPS = 1e-7


# -- torchvision ------------------------------------------------------------------------------------


def tv_inter_union(b1: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """torchvision/ops/_utils.py ``_loss_inter_union``: the intersection counts only where both of
    its sides are positive (a boolean mask, so no gradient flows where it is empty)."""
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    ix1, iy1 = torch.max(x1, x1g), torch.max(y1, y1g)
    ix2, iy2 = torch.min(x2, x2g), torch.min(y2, y2g)
    inter = torch.zeros_like(x1)
    mask = (iy2 > iy1) & (ix2 > ix1)
    inter[mask] = (ix2[mask] - ix1[mask]) * (iy2[mask] - iy1[mask])
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter, union


def tv_enclosure(b1: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    return torch.max(x2, x2g) - torch.min(x1, x1g), torch.max(y2, y2g) - torch.min(y1, y1g)


def tv_iou_loss(b1: Tensor, b2: Tensor, eps: float = EPS) -> Tensor:
    """``1 - iou`` with torchvision's IoU (``inter / (union + eps)``); torchvision has no IoU loss."""
    inter, union = tv_inter_union(b1, b2)
    return 1 - inter / (union + eps)


def tv_giou_loss(b1: Tensor, b2: Tensor, eps: float = EPS) -> Tensor:
    """torchvision/ops/giou_loss.py ``generalized_box_iou_loss``."""
    inter, union = tv_inter_union(b1, b2)
    iou = inter / (union + eps)
    cw, ch = tv_enclosure(b1, b2)
    area_c = cw * ch
    return 1 - (iou - (area_c - union) / (area_c + eps))


def tv_diou_loss_and_iou(b1: Tensor, b2: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """torchvision/ops/diou_loss.py ``_diou_iou_loss``."""
    inter, union = tv_inter_union(b1, b2)
    iou = inter / (union + eps)
    cw, ch = tv_enclosure(b1, b2)
    diagonal = cw**2 + ch**2 + eps
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    centres = ((x2 + x1) / 2 - (x1g + x2g) / 2) ** 2 + ((y2 + y1) / 2 - (y1g + y2g) / 2) ** 2
    return 1 - iou + centres / diagonal, iou


def tv_diou_loss(b1: Tensor, b2: Tensor, eps: float = EPS) -> Tensor:
    return tv_diou_loss_and_iou(b1, b2, eps)[0]


def tv_ciou_loss(b1: Tensor, b2: Tensor, eps: float = EPS) -> Tensor:
    """torchvision/ops/ciou_loss.py ``complete_box_iou_loss``: the aspect term at every IoU, alpha
    without gradient."""
    diou, iou = tv_diou_loss_and_iou(b1, b2, eps)
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    v = (4 / math.pi**2) * (torch.atan((x2g - x1g) / (y2g - y1g)) - torch.atan((x2 - x1) / (y2 - y1))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou + alpha * v


TORCHVISION = {"iou": tv_iou_loss, "giou": tv_giou_loss, "diou": tv_diou_loss, "ciou": tv_ciou_loss}


# -- mmdetection ------------------------------------------------------------------------------------


def mm_overlaps(b1: Tensor, b2: Tensor, mode: str, eps: float) -> Tensor:
    """mmdet/structures/bbox/bbox_overlaps.py ``bbox_overlaps(is_aligned=True)``: the union and the
    enclosing area are clamped below at ``eps`` (not shifted by it)."""
    lt, rb = torch.max(b1[..., :2], b2[..., :2]), torch.min(b1[..., 2:], b2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    union = torch.max(area1 + area2 - overlap, union_floor := b1.new_tensor([eps]))
    ious = overlap / union
    if mode == "iou":
        return ious
    enclose = (torch.max(b1[..., 2:], b2[..., 2:]) - torch.min(b1[..., :2], b2[..., :2])).clamp(min=0)
    enclose_area = torch.max(enclose[..., 0] * enclose[..., 1], union_floor)
    return ious - (enclose_area - union) / enclose_area


def mm_iou_loss_linear(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """iou_loss.py ``iou_loss(mode='linear')``: ``1 - clamp(IoU, min=eps)``."""
    return 1 - mm_overlaps(pred, target, "iou", eps).clamp(min=eps)


def mm_giou_loss(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    return 1 - mm_overlaps(pred, target, "giou", eps)


def mm_diou_parts(pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The IoU (``overlap / (union + eps)``) and ``rho^2 / c^2`` of iou_loss.py ``diou_loss``."""
    wh = (torch.min(pred[:, 2:], target[:, 2:]) - torch.max(pred[:, :2], target[:, :2])).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    ap = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    ag = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    ious = overlap / (ap + ag - overlap + eps)
    enclose = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    c2 = enclose[:, 0] ** 2 + enclose[:, 1] ** 2 + eps
    left = ((target[:, 0] + target[:, 2]) - (pred[:, 0] + pred[:, 2])) ** 2 / 4
    right = ((target[:, 1] + target[:, 3]) - (pred[:, 1] + pred[:, 3])) ** 2 / 4
    return ious, (left + right) / c2, c2


def mm_diou_loss(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    ious, distance, _ = mm_diou_parts(pred, target, eps)
    return 1 - (ious - distance)


def mm_ciou_loss(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """iou_loss.py ``ciou_loss``: ``eps`` added to the heights, the aspect term only where
    ``IoU > 0.5``, the CIoU clamped to [-1, 1]."""
    ious, distance, _ = mm_diou_parts(pred, target, eps)
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + eps
    v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = (ious > 0.5).float() * v / (1 - ious + v)
    cious = ious - (distance + alpha * v)
    return 1 - cious.clamp(min=-1.0, max=1.0)


def mm_distribution_focal_loss(pred: Tensor, label: Tensor) -> Tensor:
    """gfocal_loss.py ``distribution_focal_loss`` (fails for a label equal to n: index n + 1)."""
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.to(label.dtype) - label
    weight_right = label - dis_left.to(label.dtype)
    return (F.cross_entropy(pred, dis_left, reduction="none") * weight_left
            + F.cross_entropy(pred, dis_right, reduction="none") * weight_right)


# -- the documented formula, for boxes torchvision does not define ----------------------------------


def documented_loss(pred: Tensor, target: Tensor, kind: str, eps: float = EPS) -> Tensor:
    """The formula of lossdsl's docstring, plainly: sides clamped at 0 (an inverted box is empty),
    torchvision's masked intersection, the enclosing box clamped at 0, atan2 for the aspect angle."""
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    w, h = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    wg, hg = (x2g - x1g).clamp(min=0), (y2g - y1g).clamp(min=0)
    iw = torch.min(x2, x2g) - torch.max(x1, x1g)
    ih = torch.min(y2, y2g) - torch.max(y1, y1g)
    overlapping = (iw > 0) & (ih > 0)
    inter = torch.where(overlapping, iw * ih, torch.zeros_like(iw))
    union = w * h + wg * hg - inter
    iou = inter / (union + eps)
    cw, ch = (t.clamp(min=0) for t in tv_enclosure(pred, target))
    if kind == "iou":
        return 1 - iou
    if kind == "giou":
        return 1 - iou + (cw * ch - union) / (cw * ch + eps)
    rho2 = ((x1 + x2 - x1g - x2g) ** 2 + (y1 + y2 - y1g - y2g) ** 2) / 4
    diou = 1 - iou + rho2 / (cw**2 + ch**2 + eps)
    if kind == "diou":
        return diou
    v = 4 / math.pi**2 * (torch.atan2(wg, hg) - torch.atan2(w, h)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou + alpha * v


# -- helpers ----------------------------------------------------------------------------------------


def random_boxes(n: int, generator: torch.Generator, dtype=torch.float64, min_size=0.05) -> Tensor:
    corner = torch.rand(n, 2, generator=generator, dtype=dtype) * 10
    size = torch.rand(n, 2, generator=generator, dtype=dtype) * 5 + min_size
    return torch.cat((corner, corner + size), dim=-1)


def near(boxes: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """Boxes moved by up to ``scale`` of their size in each coordinate (still well formed)."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    shift = (torch.rand(boxes.shape, generator=generator, dtype=boxes.dtype) - 0.5) * scale * size
    moved = boxes + shift
    return torch.cat((torch.min(moved[:, :2], moved[:, 2:]), torch.max(moved[:, :2], moved[:, 2:])), -1)


def value_and_grads(fn, pred: Tensor, target: Tensor, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """``fn(pred, target)`` and the gradients of a random weighting of it w.r.t. both boxes."""
    pred = pred.detach().clone().requires_grad_(True)
    target = target.detach().clone().requires_grad_(True)
    loss = fn(pred, target)
    weights = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=loss.dtype)
    d_pred, d_target = torch.autograd.grad((loss * weights).sum(), (pred, target), allow_unused=True)
    zeros = torch.zeros_like(pred)
    return loss.detach(), (zeros if d_pred is None else d_pred), (zeros if d_target is None else d_target)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# -- boxes: parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BOX_KINDS)
def test_box_loss_matches_torchvision_in_value_and_gradient(kind, generator):
    target = random_boxes(512, generator)
    pred = torch.cat((near(target[:256], 0.6, generator), random_boxes(256, generator)))  # overlapping or not
    ours = value_and_grads(lambda p, t: box_loss(p, t, kind), pred, target)
    reference = value_and_grads(TORCHVISION[kind], pred, target)
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kind, reference", [("iou", mm_iou_loss_linear), ("giou", mm_giou_loss), ("diou", mm_diou_loss)]
)
def test_box_loss_matches_mmdetection_where_boxes_are_much_larger_than_eps(kind, reference, generator):
    # mmdetection floors the union and the enclosing area at eps where lossdsl (as torchvision) adds
    # eps to them, and iou_loss floors the IoU at eps: differences of order eps / area.
    eps = 1e-6
    target = random_boxes(512, generator, min_size=0.5)
    pred = torch.cat((near(target[:384], 0.6, generator), random_boxes(128, generator, min_size=0.5)))
    overlapping = tv_inter_union(pred, target)[0] > 0
    ours = value_and_grads(lambda p, t: box_loss(p, t, kind, eps=eps), pred, target)
    theirs = value_and_grads(lambda p, t: reference(p, t, eps), pred, target)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-5)
    for got, want in zip(ours[1:], theirs[1:]):  # where the IoU is floored, mmdetection has no gradient
        torch.testing.assert_close(got[overlapping], want[overlapping], rtol=1e-4, atol=1e-7)


def test_ciou_differs_from_mmdetection_only_by_the_aspect_term_at_iou_up_to_one_half(generator):
    """lossdsl (torchvision) adds ``alpha v`` at every IoU; mmdetection only where IoU > 0.5."""
    eps = 1e-6
    target = random_boxes(512, generator, min_size=0.5)
    pred = torch.cat((near(target[:256], 0.3, generator), near(target[256:], 1.5, generator)))
    ours = value_and_grads(lambda p, t: box_loss(p, t, "ciou", eps=eps), pred, target)
    theirs = value_and_grads(lambda p, t: mm_ciou_loss(p, t, eps), pred, target)
    iou = 1 - tv_iou_loss(pred, target, eps)
    high = iou > 0.5
    assert 50 < int(high.sum()) < 462  # both regimes are present
    # Above one half: the same loss (mmdetection's eps in the heights moves it by ~eps / h).
    torch.testing.assert_close(ours[0][high], theirs[0][high], rtol=0, atol=1e-6)
    for got, want in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(got[high], want[high], rtol=1e-4, atol=1e-6)
    # At or below: mmdetection's is the DIoU loss, lossdsl's adds alpha v.
    aspect = tv_ciou_loss(pred, target, eps) - tv_diou_loss(pred, target, eps)
    assert bool((aspect[~high] > 0).any())
    torch.testing.assert_close(ours[0][~high], theirs[0][~high] + aspect[~high], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", BOX_KINDS)
def test_box_loss_gradient_equals_autograd_of_the_documented_formula(kind, generator):
    # Well-formed, inverted and degenerate boxes mixed: the closed-form derivatives are those of
    # autograd on the plain formula.
    target = random_boxes(300, generator)
    pred = near(target, 1.0, generator)
    pred[:50] = pred[:50, [2, 1, 0, 3]]  # x2 < x1
    pred[50:100] = pred[50:100, [2, 3, 0, 1]]  # both sides inverted
    target[100:150, 3] = target[100:150, 1]  # zero height targets
    pred[150:200, 2] = pred[150:200, 0]  # zero width predictions
    ours = value_and_grads(lambda p, t: box_loss(p, t, kind), pred, target)
    reference = value_and_grads(lambda p, t: documented_loss(p, t, kind), pred, target)
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# -- boxes: degenerate cases -------------------------------------------------------------------------

# (prediction, target): the cases where torchvision divides 0 by 0, has a kink, or is undefined.
DEGENERATE = {
    "zero width": ((1.0, 1.0, 1.0, 3.0), (0.0, 0.0, 2.0, 2.0)),
    "zero height": ((0.0, 1.0, 2.0, 1.0), (0.0, 0.0, 2.0, 2.0)),
    "zero-area target": ((0.0, 0.0, 2.0, 2.0), (1.0, 0.0, 1.0, 2.0)),
    "point": ((1.0, 1.0, 1.0, 1.0), (0.0, 0.0, 2.0, 2.0)),
    "two points at one place": ((1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)),
    "identical": ((0.0, 0.0, 2.0, 3.0), (0.0, 0.0, 2.0, 3.0)),
    "identical zero width": ((1.0, 0.0, 1.0, 3.0), (1.0, 0.0, 1.0, 3.0)),
    "disjoint": ((0.0, 0.0, 1.0, 1.0), (2.0, 2.0, 3.0, 3.0)),
    "containing": ((0.0, 0.0, 4.0, 4.0), (1.0, 1.0, 2.0, 3.0)),
    "contained": ((1.0, 1.0, 2.0, 3.0), (0.0, 0.0, 4.0, 4.0)),
    "touching along an edge": ((0.0, 0.0, 1.0, 1.0), (1.0, 0.0, 2.0, 1.0)),
    "touching at a corner": ((0.0, 0.0, 1.0, 1.0), (1.0, 1.0, 2.0, 2.0)),
    "one shared side": ((0.0, 0.0, 2.0, 2.0), (0.0, 1.0, 3.0, 3.0)),
    "inverted in x": ((2.0, 0.0, 1.0, 1.0), (0.0, 0.0, 2.0, 2.0)),
    "inverted in x and y": ((2.0, 2.0, 1.0, 1.0), (0.0, 0.0, 2.0, 2.0)),
    "both inverted": ((2.0, 0.0, 1.0, 1.0), (3.0, 0.0, 1.5, 1.0)),
}
WELL_FORMED = [name for name in DEGENERATE if "inverted" not in name]


def degenerate_pairs(names=tuple(DEGENERATE), dtype=torch.float64) -> tuple[Tensor, Tensor]:
    pred = torch.tensor([DEGENERATE[name][0] for name in names], dtype=dtype)
    target = torch.tensor([DEGENERATE[name][1] for name in names], dtype=dtype)
    return pred, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", BOX_KINDS)
def test_degenerate_boxes_give_finite_values_and_gradients(kind, dtype):
    pred, target = degenerate_pairs(dtype=dtype)
    for tensor in value_and_grads(lambda p, t: box_loss(p, t, kind), pred, target):
        assert torch.isfinite(tensor).all(), dict(zip(DEGENERATE, tensor.tolist()))


@pytest.mark.parametrize("kind", BOX_KINDS)
def test_degenerate_boxes_match_torchvision_wherever_torchvision_is_finite(kind):
    pred, target = degenerate_pairs(WELL_FORMED)
    ours = value_and_grads(lambda p, t: box_loss(p, t, kind), pred, target)
    reference = value_and_grads(TORCHVISION[kind], pred, target)
    for got, want in zip(ours, reference):
        finite = torch.isfinite(want)
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-12, atol=1e-12)
    if kind == "ciou":  # where torchvision's w / h divides by zero
        assert not torch.isfinite(reference[1]).all()


@pytest.mark.parametrize("kind", BOX_KINDS)
def test_degenerate_and_inverted_boxes_follow_the_documented_formula(kind):
    pred, target = degenerate_pairs()
    ours = value_and_grads(lambda p, t: box_loss(p, t, kind), pred, target)
    reference = value_and_grads(lambda p, t: documented_loss(p, t, kind), pred, target)
    for got, want in zip(ours, reference):  # autograd's atan2 gives NaN for a point box
        finite = torch.isfinite(want)
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", BOX_KINDS)
def test_identical_boxes_cost_nothing_and_pull_nowhere(kind):
    pred, target = degenerate_pairs(["identical"])
    loss, d_pred, d_target = value_and_grads(lambda p, t: box_loss(p, t, kind), pred, target)
    torch.testing.assert_close(loss, torch.zeros_like(loss), rtol=0, atol=1e-7)
    torch.testing.assert_close(d_pred, torch.zeros_like(d_pred), rtol=0, atol=1e-7)
    torch.testing.assert_close(d_target, torch.zeros_like(d_target), rtol=0, atol=1e-7)


def test_disjoint_unit_boxes_have_the_textbook_values():
    pred, target = degenerate_pairs(["disjoint"])  # (0,0,1,1) and (2,2,3,3)
    values = {kind: float(box_loss(pred, target, kind)) for kind in BOX_KINDS}
    assert values["iou"] == pytest.approx(1.0)
    assert values["giou"] == pytest.approx(1 + 7 / 9)  # enclosure 9, union 2
    assert values["diou"] == pytest.approx(1 + 8 / 18)  # centres 2 apart in x and y, diagonal^2 18
    assert values["ciou"] == pytest.approx(values["diou"])  # same aspect ratio: v = 0


def test_an_inverted_prediction_is_an_empty_box():
    pred, target = degenerate_pairs(["inverted in x", "inverted in x and y"])
    loss, d_pred, _ = value_and_grads(lambda p, t: box_loss(p, t, "iou"), pred, target)
    torch.testing.assert_close(loss, torch.ones_like(loss))  # no intersection, whatever the corners
    torch.testing.assert_close(d_pred, torch.zeros_like(d_pred))  # IoU itself cannot repair it
    # GIoU's enclosing box still pulls the corners.
    _, d_pred, _ = value_and_grads(lambda p, t: box_loss(p, t, "giou"), pred, target)
    assert bool((d_pred != 0).any())


def test_zero_height_aspect_angle_is_a_right_angle():
    """atan2(w, 0) = pi/2, as torchvision's atan(w / 0), with the gradient torchvision cannot give."""
    pred = torch.tensor([[0.0, 1.0, 2.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    assert float(box_loss(pred, target, "ciou")) == pytest.approx(float(tv_ciou_loss(pred, target)))
    loss, d_pred, _ = value_and_grads(lambda p, t: box_loss(p, t, "ciou"), pred, target)
    assert torch.isfinite(d_pred).all()


# -- boxes: dtypes, shapes, modes -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", BOX_KINDS)
def test_half_precision_boxes_are_computed_in_float32(kind, dtype, generator):
    target = random_boxes(256, generator, dtype=torch.float32).to(dtype)
    pred = near(target.float(), 0.8, generator).to(dtype)
    half = value_and_grads(lambda p, t: box_loss(p, t, kind), pred, target)
    single = value_and_grads(lambda p, t: box_loss(p, t, kind), pred.float(), target.float())
    assert half[0].dtype == torch.float32
    assert half[1].dtype == half[2].dtype == dtype
    torch.testing.assert_close(half[0], single[0], rtol=0, atol=0)
    for got, want in zip(half[1:], single[1:]):
        torch.testing.assert_close(got, want.to(dtype), rtol=0, atol=0)


def test_integer_target_boxes_are_cast_to_the_computation_dtype():
    pred = torch.tensor([[0.5, 0.5, 3.0, 2.5]], requires_grad=True)
    target = torch.tensor([[0, 0, 3, 3]])
    torch.testing.assert_close(box_loss(pred, target, "giou"), box_loss(pred, target.float(), "giou"))


# ciou is left out: its alpha is a constant by definition, which finite differences cannot know; its
# gradient is compared with autograd of torchvision's formula (alpha under no_grad) above.
@pytest.mark.parametrize("kind", ["iou", "giou", "diou"])
def test_float64_gradcheck(kind, generator):
    target = random_boxes(6, generator)
    pred = near(target, 1.0, generator)
    assert torch.autograd.gradcheck(
        lambda p, t: box_loss(p, t, kind), (pred.requires_grad_(), target.requires_grad_())
    )


def test_any_leading_shape_and_empty_batches(generator):
    target = random_boxes(24, generator)
    pred = near(target, 0.8, generator)
    flat = box_loss(pred, target, "ciou")
    boxes = box_loss(pred.view(2, 3, 4, 4), target.view(2, 3, 4, 4), "ciou")
    torch.testing.assert_close(boxes, flat.view(2, 3, 4))
    torch.testing.assert_close(box_loss(pred[0], target[0], "ciou"), flat[0])  # a single [4] box
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = box_loss(empty, torch.zeros(0, 4), "giou")
    assert loss.shape == (0,)
    loss.sum().backward()
    assert empty.grad.shape == (0, 4)


def test_boxes_may_be_strided_views(generator):
    """Boxes sliced out of a wider regression output, the gradient landing in the right columns."""
    target = random_boxes(32, generator)
    head = torch.cat((torch.randn(32, 2, dtype=torch.float64), near(target, 0.8, generator)), -1)
    head.requires_grad_()
    loss, d_pred, _ = value_and_grads(lambda p, t: box_loss(p, t, "diou"), head[:, 2:].detach(), target)
    torch.testing.assert_close(box_loss(head[:, 2:], target, "diou"), loss)
    weights = torch.rand(32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (box_loss(head[:, 2:], target, "diou") * weights).sum().backward()
    torch.testing.assert_close(head.grad[:, 2:], d_pred)
    assert (head.grad[:, :2] == 0).all()


def test_no_grad_path_gives_the_same_values(generator):
    target = random_boxes(64, generator)
    pred = near(target, 0.8, generator).requires_grad_()
    for kind in BOX_KINDS:
        with torch.no_grad():
            plain = box_loss(pred, target, kind)
        torch.testing.assert_close(plain, box_loss(pred, target, kind).detach(), rtol=0, atol=0)


def test_second_derivatives_are_refused_not_wrong(generator):
    pred = random_boxes(4, generator).requires_grad_()
    (grad,) = torch.autograd.grad(box_loss(pred, random_boxes(4, generator), "giou").sum(), pred,
                                  create_graph=True)
    assert not grad.requires_grad


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="not a box loss"):
        box_loss(torch.zeros(1, 4), torch.zeros(1, 4), "eiou")


# -- dfl ---------------------------------------------------------------------------------------------


def test_dfl_matches_mmdetection_in_value_and_gradient(generator):
    n = 16
    logits = torch.randn(300, n + 1, generator=generator, dtype=torch.float64) * 3
    target = torch.rand(300, generator=generator, dtype=torch.float64) * n * 0.999
    target[:17] = torch.arange(17, dtype=torch.float64).clamp(max=n - 0.01)  # integers, 0, n - 0.01
    ours = value_and_grads(distribution_focal, logits, target)
    theirs = value_and_grads(mm_distribution_focal_loss, logits, target)
    for got, want in zip(ours, theirs):  # the target gradient too: d/dy = x_l - x_r
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("y", [0, 1, 7, 15])
def test_dfl_at_an_integer_target_is_the_cross_entropy_there(y, generator):
    logits = torch.randn(8, 17, generator=generator, dtype=torch.float64)
    target = torch.full((8,), float(y), dtype=torch.float64)
    want = F.cross_entropy(logits, target.long(), reduction="none")
    torch.testing.assert_close(distribution_focal(logits, target), want)


def test_dfl_at_n_puts_all_the_weight_on_n(generator):
    """mmdetection indexes n + 1 there (an error); SPEC: all weight on n."""
    n = 16
    logits = torch.randn(8, n + 1, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.full((8,), float(n), dtype=torch.float64)
    with pytest.raises((IndexError, RuntimeError)):
        mm_distribution_focal_loss(logits, target)
    loss = distribution_focal(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target.long(), reduction="none"))
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    torch.testing.assert_close(grad, torch.softmax(logits, -1) - F.one_hot(target.long(), n + 1))


def test_dfl_fractional_target_mixes_the_two_neighbours(generator):
    logits = torch.randn(5, 9, generator=generator, dtype=torch.float64)
    target = torch.tensor([0.25, 2.5, 3.9, 7.01, 7.999], dtype=torch.float64)
    left, right = target.floor().long(), target.floor().long() + 1
    ce = lambda index: F.cross_entropy(logits, index, reduction="none")  # noqa: E731
    want = (right - target) * ce(left) + (target - left) * ce(right)
    torch.testing.assert_close(distribution_focal(logits, target), want)


def test_dfl_accepts_any_leading_shape_with_the_bins_last(generator):
    logits = torch.randn(10, 4, 17, generator=generator)  # N boxes, 4 edges, n + 1 bins
    target = torch.rand(10, 4, generator=generator) * 16
    loss = distribution_focal(logits, target)
    assert loss.shape == (10, 4)
    flat = distribution_focal(logits.reshape(-1, 17), target.reshape(-1))
    torch.testing.assert_close(loss, flat.view(10, 4))


def test_dfl_targets_outside_the_range_index_nothing_out_of_range(generator):
    logits = torch.randn(2, 5, generator=generator, requires_grad=True)
    loss = distribution_focal(logits, torch.tensor([-1.0, 4.5]))  # extrapolated weights
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    # Not even a NaN or a huge target reaches an index outside 0..n (their loss is not finite).
    distribution_focal(logits, torch.tensor([float("nan"), 1e30]))


def test_dfl_needs_two_bins():
    with pytest.raises(ValueError, match="at least 2"):
        distribution_focal(torch.zeros(3, 1), torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dfl_half_precision_is_computed_in_float32(dtype, generator):
    logits = (torch.randn(64, 17, generator=generator) * 4).to(dtype)
    target = (torch.rand(64, generator=generator) * 16).to(dtype)
    half = value_and_grads(distribution_focal, logits, target)
    single = value_and_grads(distribution_focal, logits.float(), target.float())
    assert half[0].dtype == torch.float32 and half[1].dtype == dtype
    torch.testing.assert_close(half[0], single[0], rtol=0, atol=0)
    torch.testing.assert_close(half[1], single[1].to(dtype), rtol=0, atol=0)


def test_dfl_float64_gradcheck(generator):
    logits = torch.randn(6, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(6, generator=generator, dtype=torch.float64) * 7.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(distribution_focal, (logits, target))


# -- torch.compile ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiler():
    if not hasattr(torch, "compile"):
        pytest.skip("this torch has no torch.compile")
    try:
        torch._dynamo.reset()
        compiled = torch.compile(lambda t: torch.sigmoid(t) * 2, fullgraph=True)
        compiled(torch.randn(4, requires_grad=True)).sum().backward()
    except Exception as exc:  # noqa: BLE001 - the environment's failure, not lossdsl's
        pytest.skip(f"torch.compile does not work here: {type(exc).__name__}: {exc}")
    yield
    torch._dynamo.reset()


def compile_inputs(generator: torch.Generator) -> list[Tensor]:
    """Boxes (some inverted, some of zero height), DFL logits ``[N, 4, n + 1]`` and distances (some n)."""
    target = random_boxes(64, generator, dtype=torch.float32)
    pred = near(target, 1.0, generator)
    pred[:4] = pred[:4, [2, 1, 0, 3]]
    target[4:8, 3] = target[4:8, 1]
    distances = torch.rand(64, 4, generator=generator) * 8
    distances[:4] = 8.0
    return [pred, target, torch.randn(64, 4, 9, generator=generator), distances]


def compiled_matches_eager(head, inputs: list[Tensor], backend: str) -> None:
    def run(fn):
        leaves = [tensor.clone().requires_grad_() for tensor in inputs]
        loss = fn(*leaves)
        grads = torch.autograd.grad((loss * torch.linspace(0.5, 1.5, loss.shape[-1])).sum(), leaves)
        return (loss, *grads)

    for got, want in zip(run(torch.compile(head, fullgraph=True, backend=backend)), run(head)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_every_box_kind_traces_into_one_graph(compiler, generator):
    """Dynamo and AOT autograd on every branch (no graph break under fullgraph); the code generator
    is left out to keep it quick: the next test runs it on the longest path."""
    def head(pred, target):
        return torch.stack([box_loss(pred, target, kind) for kind in BOX_KINDS])

    compiled_matches_eager(head, compile_inputs(generator)[:2], backend="aot_eager")


def test_compiled_ciou_and_dfl_match_eager(compiler, generator):
    def head(pred, target, logits, distances):
        return torch.stack((box_loss(pred, target, "ciou"), distribution_focal(logits, distances).sum(-1)))

    compiled_matches_eager(head, compile_inputs(generator), backend="inductor")
