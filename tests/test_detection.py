"""Detection losses (SPEC "Detection losses"; issue 10): parity with mmdetection 3.3.0's formulas.

mmdetection does not import here (compiled mmcv), so its functions are written out from its source:
mmdet/models/losses/gfocal_loss.py (quality_focal_loss, distribution_focal_loss),
mmdet/models/losses/varifocal_loss.py (varifocal_loss) and utils.py (weight_reduce_loss).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import mmdet_weight_reduce_loss as weight_reduce_loss

import lossdsl

EPS = torch.finfo(torch.float32).eps


def mmdet_quality_focal_loss(pred, label, score, beta=2.0):
    """gfocal_loss.py quality_focal_loss: the (label, score) target, background = num_classes;
    returns the per-anchor loss [N] (summed over classes)."""
    pred_sigmoid = pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none") * scale_factor.abs().pow(beta)
    return loss.sum(dim=1, keepdim=False)


def mmdet_varifocal_loss(pred, target, weight=None, alpha=0.75, gamma=2.0, iou_weighted=True,
                         reduction="mean", avg_factor=None):
    pred_sigmoid = pred.sigmoid()
    target = target.type_as(pred)
    positive = (target > 0.0).to(pred.dtype)
    negative = (target <= 0.0).to(pred.dtype)
    on_positive = target * positive if iou_weighted else positive
    focal_weight = on_positive + alpha * (pred_sigmoid - target).abs().pow(gamma) * negative
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def dense_quality_targets(label, score, num_classes):
    """The (label, score) pair as the dense soft-target matrix lossdsl takes: the IoU at the label
    class, 0 elsewhere; a background anchor (label = num_classes) is an all-zero row."""
    target = torch.zeros(label.shape[0], num_classes + 1, dtype=score.dtype)
    target[torch.arange(label.shape[0]), label] = score
    return target[:, :num_classes]


def detection_batch(n=40, c=6, dtype=torch.float64):
    generator = torch.Generator().manual_seed(3)
    pred = torch.randn(n, c, generator=generator, dtype=dtype) * 2
    label = torch.randint(0, c + 1, (n,), generator=generator)  # c is the background
    score = torch.rand(n, generator=generator, dtype=dtype)
    return pred.requires_grad_(True), label, score


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5])
@pytest.mark.parametrize("avg_factor", [None, 13.0])
def test_qfocal_matches_mmdetection_quality_focal_loss(beta, avg_factor):
    pred, label, score = detection_batch()
    weight = torch.rand(pred.shape[0], dtype=pred.dtype)
    expected = weight_reduce_loss(mmdet_quality_focal_loss(pred, label, score, beta), weight,
                                  avg_factor=avg_factor)
    target = dense_quality_targets(label, score, pred.shape[1])
    # mmdetection's mean averages per-anchor sums over anchors: batchmean here
    expr = f"qfocal(beta={beta}, reduction={'batchmean' if avg_factor is None else 'mean'})"
    ours = lossdsl.compile(expr)(pred, target, weight=weight, avg_factor=avg_factor)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(*(torch.autograd.grad(v, pred)[0] for v in (ours, expected)), rtol=1e-9, atol=1e-12)


def test_qfocal_on_hard_targets_is_focal_without_alpha():
    x = torch.randn(8, 3, dtype=torch.float64)
    y = (torch.rand(8, 3) > 0.5).double()
    torch.testing.assert_close(lossdsl.compile("qfocal(beta=2)")(x, y),
                               lossdsl.compile("focal(gamma=2, alpha=none)")(x, y), rtol=1e-12, atol=1e-14)


def test_qfocal_is_an_expansion_that_blocks_compose_with():
    assert lossdsl.parse("qfocal(beta=1.5)").expand().to_expr() == "modulate(bce(), gamma=1.5, focus=quality)"
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.rand(8, 3, dtype=torch.float64)
    a = lossdsl.compile("balance(poly(qfocal(), eps=1), alpha=0.3)")(x, y)
    b = lossdsl.compile("balance(poly(modulate(bce(), gamma=2, focus=quality), eps=1), alpha=0.3)")(x, y)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("iou_weighted", [True, False])
@pytest.mark.parametrize("alpha, gamma", [(0.75, 2.0), (0.5, 1.5)])
@pytest.mark.parametrize("weight_shape", [None, "N", "NC"])
def test_varifocal_matches_mmdetection(iou_weighted, alpha, gamma, weight_shape):
    pred, label, score = detection_batch()
    target = dense_quality_targets(label, score, pred.shape[1]).requires_grad_(True)
    weight = {None: None, "N": torch.rand(pred.shape[0], dtype=pred.dtype),
              "NC": torch.rand(pred.shape, dtype=pred.dtype)}[weight_shape]
    expected = mmdet_varifocal_loss(pred, target, None if weight is None else weight.reshape(
        weight.shape[0], -1), alpha, gamma, iou_weighted, avg_factor=9.0)
    expr = f"varifocal(alpha={alpha}, gamma={gamma}, iou_weighted={str(iou_weighted).lower()})"
    ours = lossdsl.compile(expr)(pred, target, weight=weight, avg_factor=9.0)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (pred, target)), torch.autograd.grad(expected, (pred, target))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_no_block_wraps_varifocal():
    with pytest.raises(lossdsl.LossSpecError, match="varifocal\\(\\) weighs its elements itself"):
        lossdsl.parse("poly(varifocal())")


def test_quality_focus_needs_a_sigmoid_head():
    with pytest.raises(lossdsl.LossSpecError, match="focus=quality weighs each element by \\|y - p\\|, so it "
                                                    "needs a sigmoid head"):
        lossdsl.parse("modulate(ce(), focus=quality)")


# -- box and distribution losses through compiled terms ------------------------------------------

from test_box_functional import (  # noqa: E402
    mm_distribution_focal_loss,
    mm_giou_loss,
    near,
    random_boxes,
    tv_ciou_loss,
    tv_diou_loss,
    tv_giou_loss,
    tv_iou_loss,
)

TORCHVISION = {"iou": tv_iou_loss, "giou": tv_giou_loss, "diou": tv_diou_loss, "ciou": tv_ciou_loss}


def boxes(n=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pred = random_boxes(n, generator)
    return pred.requires_grad_(True), near(pred.detach(), 0.8, generator)


@pytest.mark.parametrize("kind", sorted(TORCHVISION))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
def test_box_terms_match_torchvision_with_each_reduction(kind, reduction):
    pred, target = boxes()
    ours = lossdsl.compile(f"{kind}(reduction={reduction})")(pred, target)
    per_box = TORCHVISION[kind](pred, target)
    expected = {"mean": per_box.mean(), "sum": per_box.sum(), "none": per_box,
                "batchmean": per_box.sum() / pred.shape[0]}[reduction]
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(*(torch.autograd.grad(v.sum(), pred)[0] for v in (ours, expected)),
                               rtol=1e-9, atol=1e-12)


def test_box_weight_per_coordinate_is_averaged_per_box_as_mmdetection_does():
    """mmdet/models/losses/iou_loss.py GIoULoss.forward: a weight of the boxes' shape is averaged
    over the last dimension, then weight_reduce_loss with avg_factor."""
    pred, target = boxes()
    weight = torch.rand(pred.shape, dtype=pred.dtype)
    ours = lossdsl.compile("giou(eps=1e-6)")(pred, target, weight=weight, avg_factor=10.0)
    expected = weight_reduce_loss(mm_giou_loss(pred, target, 1e-6), weight.mean(-1), avg_factor=10.0)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("avg_factor", [None, 6.0])
def test_dfl_matches_mmdetection_distribution_focal_loss(avg_factor):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 4, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.rand(10, 4, generator=generator, dtype=torch.float64) * 7.99
    weight = torch.rand(10, dtype=torch.float64)
    expected = weight_reduce_loss(mm_distribution_focal_loss(logits.reshape(-1, 9), target.reshape(-1))
                                  .reshape(10, 4), weight[:, None], avg_factor=avg_factor)
    ours = lossdsl.compile("dfl()")(logits, target, weight=weight, avg_factor=avg_factor)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_a_gfl_head_is_one_multi_task_expression():
    loss = lossdsl.compile("{cls: qfocal(beta=2), box: 2 * giou(), dist: 0.25 * dfl()}")
    pred, target = boxes(8)
    preds = {"cls": torch.randn(8, 3), "box": pred, "dist": torch.randn(8, 4, 8)}
    targets = {"cls": torch.rand(8, 3), "box": target, "dist": torch.rand(8, 4) * 7}
    value = loss(preds, targets, avg_factor={"box": 3.0})
    expected = (lossdsl.compile("qfocal(beta=2)")(preds["cls"], targets["cls"])
                + 2 * lossdsl.compile("giou()")(pred, target, avg_factor=3.0)
                + 0.25 * lossdsl.compile("dfl()")(preds["dist"], targets["dist"]))
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("expr, pred, target, message", [
    ("giou()", torch.rand(4, 5), torch.rand(4, 5), r"boxes are \(x1, y1, x2, y2\) in the last dimension; got "
                                                    r"predictions of shape \[4, 5\]"),
    ("giou()", torch.rand(4, 4), torch.rand(3, 4), r"target boxes of shape \[3, 4\] do not match"),
    ("dfl()", torch.rand(4, 8), torch.tensor([0.0, 1.0, 7.5, 8.0]),
     r"dfl targets must lie in \[0, 7\] \(the distances the 8 logits cover\); found values from 0 to 8"),
    ("dfl()", torch.rand(4, 8), torch.rand(4, 8), r"target shape \[4, 8\] does not fit logits of shape \[4, 8\]; "
                                                   r"expected \[4\]"),
    ("qfocal()", torch.rand(4, 3), torch.rand(4, 3) + 0.5, r"targets must lie in \[0, 1\]"),
    ("varifocal()", torch.rand(4, 3), -torch.rand(4, 3), r"targets must lie in \[0, 1\]"),
    ("giou()", torch.rand(4, 4), torch.rand(4, 4), None),  # fine; the weight below is not
])
def test_bad_detection_inputs_are_lossdsl_errors(expr, pred, target, message):
    loss = lossdsl.compile(expr)
    if message is None:
        with pytest.raises(lossdsl.LossInputError, match=r"weight of shape \[3\] does not fit the per-element "
                                                         r"loss of shape \[4\]"):
            loss(pred, target, weight=torch.rand(3))
        return
    with pytest.raises(lossdsl.LossInputError, match=message):
        loss(pred, target)


@pytest.mark.parametrize("expr", ["giou(reduction=pos_mean)", "dfl(reduction=pos_mean)"])
def test_pos_mean_on_a_regression_term_is_an_error(expr):
    with pytest.raises(lossdsl.LossSpecError, match="pos_mean counts positive targets"):
        lossdsl.parse(expr)
