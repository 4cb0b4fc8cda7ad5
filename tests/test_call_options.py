"""Call-time ``weight`` and ``avg_factor`` (SPEC section 4; issue 10), mmdetection's convention.

The reference is mmdetection 3.3.0's ``py_sigmoid_focal_loss`` and ``weight_reduce_loss``
(mmdet/models/losses/focal_loss.py and utils.py), written out from their source: the loss times the
weight (``[N]`` viewed as ``[N, 1]``, or a flattened ``[N*C]`` viewed as ``[N, C]``), then ``mean`` as
``loss.mean()`` or, with ``avg_factor``, ``loss.sum() / (avg_factor + finfo(float32).eps)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import mmdet_weight_reduce_loss

import lossdsl
from lossdsl import LossInputError

EPS = torch.finfo(torch.float32).eps


def mmdet_py_sigmoid_focal_loss(pred, target, weight=None, gamma=2.0, alpha=0.25, reduction="mean",
                                avg_factor=None):
    pred_sigmoid = pred.sigmoid()
    target = target.type_as(pred)
    pt = (1 - pred_sigmoid) * target + pred_sigmoid * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    if weight is not None and weight.shape != loss.shape:
        weight = weight.view(-1, 1) if weight.size(0) == loss.size(0) else weight.view(loss.size(0), -1)
    return mmdet_weight_reduce_loss(loss, weight, reduction, avg_factor)


@pytest.mark.parametrize("weight_shape", [None, "N", "NC", "flat"])
@pytest.mark.parametrize("avg_factor", [None, 7.0, 0.0])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_focal_weight_and_avg_factor_match_mmdetection(weight_shape, avg_factor, reduction):
    x = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(12, 5) > 0.8).double()
    weight = {None: None, "N": torch.rand(12, dtype=torch.float64), "NC": torch.rand(12, 5, dtype=torch.float64),
              "flat": torch.rand(60, dtype=torch.float64)}[weight_shape]
    expr = "focal()" if reduction == "mean" else "focal(reduction=none)"
    ours = lossdsl.compile(expr)(x, y, weight=weight, avg_factor=avg_factor)
    expected = mmdet_py_sigmoid_focal_loss(x, y, weight, reduction=reduction, avg_factor=avg_factor)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_ref,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_avg_factor_replaces_the_denominator_of_pos_mean():
    x = torch.randn(10, 4)
    y = (torch.rand(10, 4) > 0.7).float()
    total = lossdsl.compile("focal(reduction=sum)")(x, y)
    value = lossdsl.compile("focal(reduction=pos_mean)")(x, y, avg_factor=torch.tensor(3.0))
    torch.testing.assert_close(value, total / (3.0 + EPS))


@pytest.mark.parametrize("expr, target, weight", [
    ("ce()", torch.tensor([0, 2, 1, 1]), torch.tensor([1.0, 0.0, 2.0, 0.5])),
    ("poly(focal(head=softmax), eps=1)", torch.tensor([0, 2, 1, 1]), torch.tensor([1.0, 0.0, 2.0, 0.5])),
    ("zlpr()", (torch.rand(4, 3) > 0.5).float(), torch.tensor([1.0, 0.0, 2.0, 0.5])),
    ("smooth_l1()", torch.randn(4, 3), torch.rand(4, 3)),
    ("bce(pos_weight=[1, 2, 3])", (torch.rand(4, 3) > 0.5).float(), torch.rand(4, 3)),
])
def test_weight_multiplies_the_per_element_loss_of_every_element_term(expr, target, weight):
    x = torch.randn(4, 3)
    unreduced = lossdsl.compile(expr[:-1] + (", " if not expr.endswith("()") else "") + "reduction=none)")
    per_element = unreduced(x, target)
    view = weight.reshape(weight.shape + (1,) * (per_element.dim() - weight.dim()))
    expected_sum = (per_element * view).sum()
    summed = lossdsl.compile(expr[:-1] + (", " if not expr.endswith("()") else "") + "reduction=sum)")
    torch.testing.assert_close(summed(x, target, weight=weight), expected_sum)
    torch.testing.assert_close(unreduced(x, target, weight=weight), per_element * view)
    torch.testing.assert_close(lossdsl.compile(expr)(x, target, weight=weight, avg_factor=2.5),
                               expected_sum / (2.5 + EPS))


def test_ce_mean_with_a_call_weight_keeps_its_class_weighted_denominator():
    x = torch.randn(6, 3)
    t = torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.rand(6)
    class_weight = torch.tensor([1.0, 2.0, 0.5])
    value = lossdsl.compile("ce(weight=[1, 2, 0.5])")(x, t, weight=w)
    per = F.cross_entropy(x, t, weight=class_weight, reduction="none")
    torch.testing.assert_close(value, (per * w).sum() / class_weight[t].sum())


def test_a_weight_that_does_not_broadcast_names_both_shapes():
    with pytest.raises(LossInputError) as error:
        lossdsl.compile("focal()")(torch.randn(4, 3), torch.rand(4, 3), weight=torch.rand(3))
    message = str(error.value)
    assert "weight of shape [3] does not fit the per-element loss of shape [4, 3]" in message
    assert "give the full shape [4, 3] or a leading part of it, such as [4]" in message


@pytest.mark.parametrize("bad, expected", [
    (torch.tensor([1, 2, 3, 4]), "weight must be a floating-point tensor, got torch.int64"),
    ([1.0, 2.0, 3.0, 4.0], "weight must be a floating-point tensor, got list"),
])
def test_a_weight_must_be_a_float_tensor(bad, expected):
    with pytest.raises(LossInputError, match=expected):
        lossdsl.compile("focal()")(torch.randn(4, 3), torch.rand(4, 3), weight=bad)


@pytest.mark.parametrize("reduction", ["sum", "batchmean"])
def test_avg_factor_with_sum_is_an_error(reduction):
    with pytest.raises(LossInputError, match=f"avg_factor replaces the denominator of mean and pos_mean; "
                                             f"this term's reduction is {reduction}"):
        lossdsl.compile(f"focal(reduction={reduction})")(torch.randn(4, 3), torch.rand(4, 3), avg_factor=2)


@pytest.mark.parametrize("bad, expected", [
    ("3", "avg_factor must be a number or a 0-d tensor, got str"),
    (-1.0, "avg_factor must be a finite number >= 0, got -1.0"),
    (float("nan"), "avg_factor must be a finite number >= 0, got nan"),
    (torch.ones(2), r"avg_factor must be one number, got shape \[2\]"),
])
def test_avg_factor_must_be_one_non_negative_number(bad, expected):
    with pytest.raises(LossInputError, match=expected):
        lossdsl.compile("focal()")(torch.randn(4, 3), torch.rand(4, 3), avg_factor=bad)


def test_a_rejected_weight_updates_no_buffer():
    loss = lossdsl.compile("ghm(momentum=0.5) + focal()")
    before = loss.state_dict()["terms.0.ghm_accumulator"].clone()
    with pytest.raises(LossInputError):
        loss(torch.randn(4, 3), torch.rand(4, 3), weight=torch.rand(5))
    assert torch.equal(loss.state_dict()["terms.0.ghm_accumulator"], before)


# -- background label on the sigmoid head (mmdetection's num_classes), an explicit opt-in ------------


def mmdet_focal_with_labels(pred, labels, weight=None, avg_factor=None):
    """mmdetection FocalLoss.forward with use_sigmoid=True and the py_ path: one-hot with
    num_classes + 1 columns, the background column dropped."""
    num_classes = pred.size(1)
    target = F.one_hot(labels, num_classes=num_classes + 1)[:, :num_classes]
    return mmdet_py_sigmoid_focal_loss(pred, target, weight, avg_factor=avg_factor)


@pytest.mark.parametrize("expr", ["focal(background=true)", "balance(modulate(bce(background=true)))"])
def test_background_label_is_an_all_negative_row_with_the_opt_in(expr):
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 4, 1, 4, 3, 2, 4, 0, 1])
    weight = torch.rand(9, dtype=torch.float64)
    ours = lossdsl.compile(expr)(x, labels, weight=weight, avg_factor=5)
    expected = mmdet_focal_with_labels(x, labels, weight, avg_factor=5)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(*(torch.autograd.grad(v, x)[0] for v in (ours, expected)))


def test_the_background_label_without_the_opt_in_is_an_error_that_names_it():
    with pytest.raises(LossInputError) as error:
        lossdsl.compile("focal()")(torch.randn(3, 4), torch.tensor([0, 4, 1]))
    message = str(error.value)
    assert "class index 4 is out of range for 4 classes (valid: 0..3, or ignore_index=-100)" in message
    assert "index 4 is mmdetection's background label (num_classes)" in message
    assert "give background=true to focal()" in message


def test_background_beyond_c_is_still_an_error():
    with pytest.raises(LossInputError, match=r"class index 5 is out of range for 4 classes \(valid: 0\.\.4 \(4 is "
                                             r"the background\), or ignore_index=-100\)"):
        lossdsl.compile("focal(background=true)")(torch.randn(3, 4), torch.tensor([0, 5, 1]))


def test_background_is_a_sigmoid_option():
    with pytest.raises(lossdsl.LossSpecError, match="a softmax head has a class of its own for background"):
        lossdsl.parse("focal(head=softmax, background=true)")


# -- per task in a multi-task loss -----------------------------------------------------------------


def test_multi_task_losses_take_weight_and_avg_factor_per_task():
    loss = lossdsl.compile("{cls: focal(), box: l1()}")
    preds = {"cls": torch.randn(6, 3), "box": torch.randn(6, 4)}
    targets = {"cls": (torch.rand(6, 3) > 0.7).float(), "box": torch.randn(6, 4)}
    w = torch.rand(6)
    value = loss(preds, targets, weight={"cls": w}, avg_factor={"cls": 4.0, "box": 2.0})
    cls = lossdsl.compile("focal()")(preds["cls"], targets["cls"], weight=w, avg_factor=4.0)
    box = lossdsl.compile("l1()")(preds["box"], targets["box"], avg_factor=2.0)
    torch.testing.assert_close(value, cls + box)


@pytest.mark.parametrize("options, expected", [
    ({"weight": torch.rand(6)}, "a multi-task loss takes weight as a mapping by task name"),
    ({"avg_factor": {"boxes": 2.0}}, "avg_factor has an entry 'boxes' that is not a task of this loss"),
    ({"weight": {"box": torch.rand(5)}}, r"task 'box': l1\(\): weight of shape \[5\] does not fit"),
])
def test_per_task_options_are_checked(options, expected):
    loss = lossdsl.compile("{cls: focal(), box: l1()}")
    preds = {"cls": torch.randn(6, 3), "box": torch.randn(6, 4)}
    targets = {"cls": (torch.rand(6, 3) > 0.7).float(), "box": torch.randn(6, 4)}
    with pytest.raises(LossInputError, match=expected):
        loss(preds, targets, **options)


# --------------------------------------------------------------------------------------------------
# avg_factor as a tensor (mmdetection passes reduce_mean(num_pos)): checked like a number, and in
# the loss's computation dtype (issue 15 item 8)


BAD_TENSOR_FACTORS = [
    (torch.tensor(-2.0), "-2"), (torch.tensor(-2.5, dtype=torch.float64), "-2.5"),
    (torch.tensor(-3), "-3"), (torch.tensor(float("nan")), "nan"),
    (torch.tensor(float("inf"), dtype=torch.float64), "inf"), (torch.tensor([-1.0]), "-1"),
]


@pytest.mark.parametrize("bad, shown", BAD_TENSOR_FACTORS, ids=[shown for _, shown in BAD_TENSOR_FACTORS])
def test_a_tensor_avg_factor_must_be_finite_and_non_negative(bad, shown):
    with pytest.raises(LossInputError) as caught:
        lossdsl.compile("focal()")(torch.randn(4, 3), torch.rand(4, 3), avg_factor=bad)
    assert caught.value.reason == f"focal(): avg_factor must be a finite number >= 0, got {shown} (a tensor)"


def test_a_float64_avg_factor_too_large_for_a_float32_loss_is_refused():
    expected = r"avg_factor must be a finite number >= 0, got inf \(a tensor\)"
    with pytest.raises(LossInputError, match=expected):
        lossdsl.compile("focal()")(torch.randn(4, 3), torch.rand(4, 3),
                                   avg_factor=torch.tensor(1e39, dtype=torch.float64))


@pytest.mark.parametrize("bad", [torch.tensor(True), torch.tensor(2 + 1j)], ids=["bool", "complex"])
def test_a_bool_or_complex_avg_factor_is_refused(bad):
    with pytest.raises(LossInputError, match=f"avg_factor must be a real number, got a {bad.dtype} tensor"):
        lossdsl.compile("focal()")(torch.randn(4, 3), torch.rand(4, 3), avg_factor=bad)


def test_a_tensor_avg_factor_is_not_read_when_value_checks_are_off():
    """The check is a host read: switched off, the value is used as given (as mmdetection does)."""
    x, y = torch.randn(4, 3), torch.rand(4, 3)
    loss = lossdsl.compile("focal()", check_values=False)
    total = lossdsl.compile("focal(reduction=sum)")(x, y)
    torch.testing.assert_close(loss(x, y, avg_factor=torch.tensor(-2.0)), total / (-2.0 + EPS))


@pytest.mark.parametrize("expr, summed", [
    ("focal()", "focal(reduction=sum)"), ("focal(reduction=pos_mean)", "focal(reduction=sum)"),
    ("ce()", "ce(reduction=sum)"), ("dice()", "dice(reduction=sum)"), ("giou()", "giou(reduction=sum)"),
])
@pytest.mark.parametrize("factor_dtype",
                         [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32])
def test_a_tensor_avg_factor_of_any_real_dtype_keeps_the_losss_dtype(expr, summed, factor_dtype):
    generator = torch.Generator().manual_seed(3)
    if expr == "ce()":
        x, y = torch.randn(6, 3, generator=generator), torch.randint(0, 3, (6,), generator=generator)
    elif expr == "dice()":
        x = torch.randn(2, 3, 4, 4, generator=generator)
        y = torch.randint(0, 3, (2, 4, 4), generator=generator)
    elif expr == "giou()":
        corner = torch.rand(5, 2, generator=generator)
        x = torch.cat([corner, corner + 1], dim=1)
        y = x + 0.1 * torch.rand(5, 4, generator=generator)
    else:
        x, y = torch.randn(6, 3, generator=generator), (torch.rand(6, 3, generator=generator) > 0.5).float()
    total = lossdsl.compile(summed)(x.double(), y.double() if y.is_floating_point() else y)
    for input_dtype in (torch.float32, torch.float64):
        value = lossdsl.compile(expr)(x.to(input_dtype), y.to(input_dtype) if y.is_floating_point() else y,
                                      avg_factor=torch.tensor(6, dtype=factor_dtype))
        assert value.dtype == input_dtype
        torch.testing.assert_close(value, (total / (6 + EPS)).to(input_dtype), rtol=1e-5, atol=1e-7)


def test_a_tensor_avg_factor_traces_without_a_graph_break():
    """Under torch.compile the value check steps aside: fullgraph=True fails on any host read."""
    x, y = torch.randn(6, 3), (torch.rand(6, 3) > 0.5).float()
    loss = lossdsl.compile("focal()")
    torch._dynamo.reset()
    try:
        compiled = torch.compile(loss, fullgraph=True, backend="eager")
        value = compiled(x, y, avg_factor=torch.tensor(4.0, dtype=torch.float64))
    finally:
        torch._dynamo.reset()
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(x, y, avg_factor=4.0))
