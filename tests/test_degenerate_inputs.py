"""Degenerate but legal inputs compute (issue 15 items 2 and 4; SPEC section 6 and "Region losses").

- An empty batch ``[0, C, d1, ...]`` gives 0 with a zero gradient for every region loss, in a sum
  with an element loss and inside a task; ``reduction=none`` gives the empty per-class tensor. So
  does an empty spatial extent (``[N, C, 0, W]``), Lovász included.
- A single box ``[4]`` and a ``dfl`` target without batch dimension compute as a batch of one; the
  other box and distribution layouts (``[N, 4]``, ``[N, k, 4]``, ``[0, 4]``) as well. torchvision's
  own box-loss tests (test/test_ops.py, ``get_boxes``, ``assert_empty_loss``) pass single boxes and
  empty batches: their cases are ported here.
- ``lovasz(head=sigmoid)`` defaults to ``classes=all``: Berman's binary hinge and smp's binary mode
  penalise foreground predicted on an empty mask.
"""

from __future__ import annotations

import pytest
import torch
from test_region_functional import load_smp_loss

import lossdsl

REGION = ["dice()", "tversky(alpha=0.3, beta=0.7)", "jaccard()", "gdice()", "dice(squared=true)",
          "dice(log=true)", "tversky(gamma=0.75)", "lovasz()", "lovasz(per_image=true)", "dice(batch=true)",
          "gdice(batch=true)", "dice(include_background=false)", "ce() + dice()", "dice() + lovasz()"]
SIGMOID_REGION = ["dice(head=sigmoid)", "lovasz(head=sigmoid)", "jaccard(head=sigmoid)",
                  "lovasz(head=sigmoid, per_image=true)"]


def assert_zero_with_zero_gradient(loss, x, t):
    value = loss(x, t)
    assert value.shape == () and value.item() == 0
    (grad,) = torch.autograd.grad(value, x)
    assert grad.shape == x.shape and not grad.any()


# -- empty batches and extents --------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
@pytest.mark.parametrize("expr", REGION)
def test_an_empty_batch_gives_zero_with_zero_gradient(expr, reduction):
    expr = expr if reduction == "mean" else " + ".join(
        f"{term[:-1]}{', ' if term[-2] != '(' else ''}reduction={reduction})" for term in expr.split(" + ")
    )
    x = torch.randn(0, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert_zero_with_zero_gradient(lossdsl.compile(expr), x, torch.zeros(0, 4, 5, dtype=torch.long))


@pytest.mark.parametrize("expr", REGION[:8])
def test_an_empty_batch_with_probability_targets(expr):
    x = torch.randn(0, 3, 4, 5, requires_grad=True)
    assert_zero_with_zero_gradient(lossdsl.compile(expr), x, torch.zeros(0, 3, 4, 5))


@pytest.mark.parametrize("expr", SIGMOID_REGION)
def test_an_empty_batch_on_the_sigmoid_head(expr):
    x = torch.randn(0, 2, 6, requires_grad=True)
    assert_zero_with_zero_gradient(lossdsl.compile(expr), x, torch.zeros(0, 2, 6))


@pytest.mark.parametrize("expr, shape", [
    ("dice(reduction=none)", (0, 3)), ("dice(batch=true, reduction=none)", (3,)),
    ("gdice(reduction=none)", (0,)), ("lovasz(reduction=none)", (3,)), ("lovasz(per_image=true, reduction=none)", (0, 3)),
])
def test_an_empty_batch_without_reduction_keeps_the_class_dimension(expr, shape):
    x = torch.randn(0, 3, 4, requires_grad=True)
    value = lossdsl.compile(expr)(x, torch.zeros(0, 4, dtype=torch.long))
    assert value.shape == shape and not value.any()


@pytest.mark.parametrize("expr", ["{seg: ce() + dice()}", "uncertainty({seg: dice(), cls: ce()})",
                                  "dtp({seg: dice() + ce()})"])
def test_an_empty_batch_inside_a_task(expr):
    loss = lossdsl.compile(expr)
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    preds, targets = {"seg": x}, {"seg": torch.zeros(0, 4, 4, dtype=torch.long)}
    if "cls" in expr:
        preds["cls"], targets["cls"] = x.detach().clone(), targets["seg"]
    value = loss(preds, targets)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(value) and grad.shape == x.shape and not grad.any()
    assert loss.last_terms["seg"].item() == 0


@pytest.mark.parametrize("expr", REGION + SIGMOID_REGION)
@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (2, 3, 0)])
def test_an_empty_spatial_extent_gives_zero_with_zero_gradient(expr, shape):
    x = torch.randn(shape, requires_grad=True)
    t = torch.zeros(shape) if "sigmoid" in expr else torch.zeros((shape[0], *shape[2:]), dtype=torch.long)
    assert_zero_with_zero_gradient(lossdsl.compile(expr), x, t)


# -- single boxes and distributions ---------------------------------------------------------------


def torchvision_boxes():
    """torchvision's test/test_ops.py ``get_boxes``."""
    box1 = torch.tensor([-1.0, -1, 1, 1])
    box2 = torch.tensor([0.0, 0, 1, 1])
    box3 = torch.tensor([0.0, 1, 1, 2])
    box4 = torch.tensor([1.0, 1, 2, 2])
    return box1, box2, box3, box4, torch.stack([box2, box2]), torch.stack([box3, box4])


@pytest.mark.parametrize("kind, pairs, batched", [
    # torchvision TestGeneralizedBoxIouLoss.test_giou_loss
    ("giou", [((0, 0), 0.0), ((0, 1), 0.75), ((1, 2), 1.0), ((1, 3), 1.5)], (2.5, 1.25)),
    # TestCompleteBoxIouLoss.test_ciou_loss and TestDistanceBoxIouLoss.test_distance_iou_loss
    ("ciou", [((0, 0), 0.0), ((0, 1), 0.8125), ((0, 2), 1.1923), ((0, 3), 1.25)], (2.45, 1.225)),
    ("diou", [((0, 0), 0.0), ((0, 1), 0.8125), ((0, 2), 1.1923), ((0, 3), 1.25)], (2.45, 1.225)),
])
def test_single_boxes_give_torchvisions_values(kind, pairs, batched):
    boxes = torchvision_boxes()
    for (i, j), expected in pairs:
        for reduction in ("none", "mean", "sum", "batchmean"):
            value = lossdsl.compile(f"{kind}(reduction={reduction})")(boxes[i], boxes[j])
            assert value.shape == ()
            torch.testing.assert_close(value, torch.tensor(expected), rtol=0, atol=1e-4)
    total, mean = batched
    torch.testing.assert_close(lossdsl.compile(f"{kind}(reduction=sum)")(boxes[4], boxes[5]),
                               torch.tensor(total), rtol=0, atol=1e-4)
    torch.testing.assert_close(lossdsl.compile(f"{kind}()")(boxes[4], boxes[5]), torch.tensor(mean),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean", "none"])
def test_a_single_box_is_a_batch_of_one(kind, reduction):
    generator = torch.Generator().manual_seed(1)
    corner = torch.rand(2, 2, dtype=torch.float64, generator=generator)
    pred = torch.cat([corner[0], corner[0] + 1]).requires_grad_()
    target = torch.cat([corner[1], corner[1] + 0.5])
    weight = torch.tensor(0.7, dtype=torch.float64)
    loss = lossdsl.compile(f"{kind}(reduction={reduction})")
    single = loss(pred, target, weight=weight)
    one = loss(pred.unsqueeze(0), target.unsqueeze(0), weight=weight.unsqueeze(0))
    torch.testing.assert_close(single, one.reshape(()), rtol=0, atol=0)
    grads = [torch.autograd.grad(v.sum(), pred)[0] for v in (single, one)]
    torch.testing.assert_close(*grads, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_empty_boxes_give_zero(kind):
    """torchvision's ``assert_empty_loss``: mean 0 with gradients, none empty."""
    pred = torch.randn(0, 4, requires_grad=True)
    target = torch.randn(0, 4, requires_grad=True)
    value = lossdsl.compile(f"{kind}()")(pred, target)
    value.backward()
    assert value.item() == 0 and pred.grad is not None and target.grad is not None
    assert lossdsl.compile(f"{kind}(reduction=none)")(pred, target).numel() == 0


@pytest.mark.parametrize("kind", ["iou", "giou"])
def test_boxes_in_more_dimensions(kind):
    pred = torch.rand(3, 5, 2).repeat(1, 1, 2) + torch.tensor([0, 0, 1, 1])
    target = torch.rand(3, 5, 2).repeat(1, 1, 2) + torch.tensor([0, 0, 2, 1])
    loss = lossdsl.compile(f"{kind}(reduction=none)")
    assert loss(pred, target).shape == (3, 5)
    flat = loss(pred.reshape(-1, 4), target.reshape(-1, 4))
    torch.testing.assert_close(loss(pred, target).reshape(-1), flat)


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean", "none"])
def test_a_dfl_target_without_batch_dimension_is_a_batch_of_one(reduction):
    logits = torch.randn(8, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(2.4, dtype=torch.float64)
    loss = lossdsl.compile(f"dfl(reduction={reduction})")
    single, one = loss(logits, target), loss(logits.unsqueeze(0), target.unsqueeze(0))
    torch.testing.assert_close(single, one.reshape(()), rtol=0, atol=0)
    # the formula, written out: (y_r - y) ce(x, y_l) + (y - y_l) ce(x, y_r)
    log_p = torch.log_softmax(logits, 0)
    torch.testing.assert_close(single, -(0.6 * log_p[2] + 0.4 * log_p[3]))


@pytest.mark.parametrize("shape", [(5, 8), (5, 4, 8), (0, 8), (0, 4, 8)])
def test_dfl_layouts(shape):
    logits = torch.randn(shape, requires_grad=True)
    target = torch.rand(shape[:-1]) * 7
    value = lossdsl.compile("dfl()")(logits, target)
    value.backward()
    expected = torch.tensor(0.0) if logits.numel() == 0 else lossdsl.compile("dfl()")(
        logits.reshape(-1, 8), target.reshape(-1))
    torch.testing.assert_close(value, expected)
    assert logits.grad.shape == logits.shape


# -- 4. the Lovász hinge on empty masks -----------------------------------------------------------


def test_lovasz_hinge_defaults_to_every_class():
    assert lossdsl.parse("lovasz(head=sigmoid)").terms[0].loss.classes == "all"
    assert lossdsl.parse("lovasz()").terms[0].loss.classes == "present"
    present = "lovasz(head=sigmoid, classes=present)"
    assert lossdsl.parse(present).to_expr() == present
    assert lossdsl.parse("lovasz(head=sigmoid, classes=all)").to_expr() == "lovasz(head=sigmoid)"
    assert lossdsl.parse("lovasz(classes=all)").to_expr() == "lovasz(classes=all)"


def test_foreground_on_an_empty_mask_costs_bermans_hinge():
    # logits 5 everywhere on an empty mask: every hinge error is 1 + 5, and with no foreground the
    # Jaccard increments are 1, 0, 0, ...: the loss is the largest error, 6.
    x = torch.full((1, 1, 4, 4), 5.0)
    assert lossdsl.compile("lovasz(head=sigmoid)")(x, torch.zeros(1, 1, 4, 4)).item() == 6.0
    assert lossdsl.compile("lovasz(head=sigmoid, classes=present)")(x, torch.zeros(1, 1, 4, 4)).item() == 0.0


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_hinge_equals_smp_binary_with_an_empty_mask(per_image):
    smp = load_smp_loss("lovasz")
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 1, 6, 5, generator=generator) * 3).requires_grad_()
    y = (torch.rand(3, 1, 6, 5, generator=generator) < 0.4).float()
    y[1] = 0  # an empty mask
    ours = lossdsl.compile(f"lovasz(head=sigmoid, per_image={str(per_image).lower()})")(x, y)
    reference = smp.LovaszLoss("binary", per_image=per_image)(x, y)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(*(torch.autograd.grad(v, x)[0] for v in (ours, reference)))


def test_explain_and_the_catalogue_state_the_head_dependent_default():
    from lossdsl.catalogue_text import README_END, README_START, catalogue_markdown, explain

    assert "default all (sigmoid), present (softmax)" in explain("lovasz")
    row = next(line for line in catalogue_markdown().splitlines() if line.startswith("| `lovasz`"))
    assert "`classes=all (sigmoid), present (softmax)`" in row
    readme = open("README.md", encoding="utf-8").read()
    assert row in readme[readme.index(README_START):readme.index(README_END)]
