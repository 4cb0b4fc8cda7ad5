"""Deep supervision (issue 17 item 5; SPEC section 5b): one loss at every decoder scale.

The reference is MONAI 1.6's ``DeepSupervisionLoss`` (its weight modes, its ``nearest-exact``
resizing of the target, which it takes as ``[N, 1, H, W]`` floats) around ``DiceCELoss`` /
``DiceLoss``, and, for float64 and gradcheck, the definition written out:
``sum_l w_l L(p_l, interpolate(target, p_l.shape[2:]))``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss

import lossdsl
from lossdsl import LossInputError, LossSpecError


def predictions(sizes, classes=3, batch=2, dtype=torch.float32):
    return [torch.randn(batch, classes, *size, dtype=dtype, requires_grad=True) for size in sizes]


def grads(value, inputs):
    return torch.autograd.grad(value, inputs)


@pytest.mark.parametrize("weights, monai_options", [
    ("exp", {"weight_mode": "exp"}),
    ("two", {"weight_mode": "two"}),
    ("same", {"weight_mode": "same"}),
    ("[1, 0.3, 0.1, 0.05, 0.01]", {"weights": [1, 0.3, 0.1, 0.05, 0.01]}),
])
def test_equals_monai_deep_supervision_of_dice_ce(weights, monai_options):
    # Five scales, so that exp reaches MONAI's floor of 0.0625 at the last one.
    preds = predictions([(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)])
    y = torch.randint(0, 3, (2, 32, 32))
    ours = lossdsl.compile(f"deep(ce() + dice(), weights={weights})")(preds, y)
    monai = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), **monai_options)
    expected = monai(preds, y[:, None].float())
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    for g_ours, g_ref in zip(grads(ours, preds), grads(expected, preds)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)


def test_equals_monai_on_volumes_with_odd_sizes():
    preds = predictions([(9, 7, 5), (5, 4, 3), (3, 2, 2)], classes=2)
    y = torch.randint(0, 2, (2, 9, 7, 5))
    ours = lossdsl.compile("deep(ce() + dice(include_background=false))")(preds, y)
    monai = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True, include_background=False))
    torch.testing.assert_close(ours, monai(preds, y[:, None].float()), rtol=1e-5, atol=1e-6)


def test_probability_targets_are_resized_by_area():
    preds = predictions([(8, 8), (4, 4), (2, 2)])
    y = torch.softmax(torch.randn(2, 3, 8, 8), dim=1)
    ours = lossdsl.compile("deep(dice(), weights=same)")(preds, y)
    monai = DeepSupervisionLoss(DiceLoss(softmax=True), weight_mode="same")
    monai.interp_mode = "area"
    torch.testing.assert_close(ours, monai(preds, y), rtol=1e-5, atol=1e-6)


def test_float64_value_gradient_and_gradcheck_against_the_definition():
    preds = predictions([(6, 6), (3, 3)], batch=1, dtype=torch.float64)
    y = torch.randint(0, 3, (1, 6, 6))
    loss = lossdsl.compile("deep(ce() + 0.5 * dice(), weights=[1, 0.25])")
    inner = lossdsl.compile("ce() + 0.5 * dice()")
    small = F.interpolate(y[:, None].double(), size=(3, 3), mode="nearest-exact")[:, 0].long()
    expected = inner(preds[0], y) + 0.25 * inner(preds[1], small)
    ours = loss(preds, y)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-13)
    assert torch.autograd.gradcheck(lambda a, b: loss([a, b], y), tuple(preds))


def test_a_single_tensor_is_the_inner_loss():
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    loss = lossdsl.compile("deep(ce() + dice())")
    torch.testing.assert_close(loss(x, y), lossdsl.compile("ce() + dice()")(x, y))
    assert set(loss.last_terms) == {"ce()", "dice()", "total"}


def test_last_terms_report_each_scale_before_its_weight():
    preds = predictions([(8, 8), (4, 4)])
    y = torch.randint(0, 3, (2, 8, 8))
    loss = lossdsl.compile("deep(ce() + dice(), weights=two)")
    total = loss(preds, y)
    logged = loss.last_terms
    assert list(logged) == ["scale0", "scale0/ce()", "scale0/dice()", "scale1", "scale1/ce()",
                            "scale1/dice()", "total"]
    torch.testing.assert_close(logged["scale1"], logged["scale1/ce()"] + logged["scale1/dice()"])
    torch.testing.assert_close(total.detach(), logged["scale0"] + 0.5 * logged["scale1"])
    assert list(loss.logged_terms()) == ["scale0", "scale0/ce", "scale0/dice", "scale1", "scale1/ce",
                                         "scale1/dice", "total"]
    one = lossdsl.compile("deep(ce())")
    one(preds, y)
    assert list(one.last_terms) == ["scale0", "scale1", "total"]


def test_class_indices_keep_their_dtype_and_ignored_label():
    y = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    y[:, :4] = 1
    preds = predictions([(8, 8), (4, 4)], batch=1)
    value = lossdsl.compile("deep(ce(ignore_index=255), weights=same)")(preds, y)
    small = y[:, 1::2, 1::2].long()  # nearest-exact at half size picks the odd rows and columns
    expected = (F.cross_entropy(preds[0], y.long(), ignore_index=255)
                + F.cross_entropy(preds[1], small, ignore_index=255))
    torch.testing.assert_close(value, expected)


def test_running_statistics_follow_the_full_resolution_scale():
    preds = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    y = (torch.rand(2, 3, 8, 8) > 0.5).float()
    deep = lossdsl.compile("deep(ghm(bins=5, momentum=0.5))")
    alone = lossdsl.compile("ghm(bins=5, momentum=0.5)")
    for _ in range(2):
        deep(preds, y)
        alone(preds[0], y)
    torch.testing.assert_close(deep.state_dict()["inner.terms.0.ghm_accumulator"],
                               alone.state_dict()["terms.0.ghm_accumulator"])


def test_a_deep_task_in_a_multi_task_loss():
    loss = lossdsl.compile("{seg: deep(ce(), weights=two), cls: ce()}")
    seg = predictions([(8, 8), (4, 4)])
    cls = torch.randn(2, 5)
    y_seg, y_cls = torch.randint(0, 3, (2, 8, 8)), torch.randint(0, 5, (2,))
    value = loss({"seg": seg, "cls": cls}, {"seg": y_seg, "cls": y_cls})
    expected = (lossdsl.compile("deep(ce(), weights=two)")(seg, y_seg) + F.cross_entropy(cls, y_cls))
    torch.testing.assert_close(value, expected)


def test_named_inputs_go_to_every_scale_or_one_per_scale():
    preds = predictions([(4, 4), (2, 2)])
    teachers = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    value = lossdsl.compile("deep(kd(T=2), weights=same)")(preds, teacher=teachers)
    kd = lossdsl.compile("kd(T=2)")
    torch.testing.assert_close(value, kd(preds[0], teacher=teachers[0]) + kd(preds[1], teacher=teachers[1]))


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, preds, expected", [
    ("deep(ce(), weights=[1, 0.5])", [(8, 8), (4, 4), (2, 2)],
     r"deep\(\) has 2 weights but was given 3 predictions"),
    ("deep(ce())", [(8, 8), (16, 16)],
     r"scale 1: the prediction of shape \[2, 3, 16, 16\] is larger than the target \(\[8, 8\] spatially\)"),
    ("deep(ce())", [], "takes a list of predictions \\(or one tensor\\), got an empty list"),
    ("deep(ce())", [(8, 8), (4,)], r"scale 1: ce\(\): target shape \[2, 8, 8\] does not fit input shape"),
])
def test_bad_predictions_are_refused(expr, preds, expected):
    y = torch.randint(0, 3, (2, 8, 8))
    with pytest.raises(LossInputError, match=expected):
        lossdsl.compile(expr)(predictions(preds), y)


def test_a_wrong_length_of_per_scale_inputs_is_refused():
    with pytest.raises(LossInputError, match="teacher= has 1 entries but there are 2 predictions"):
        lossdsl.compile("deep(kd())")(predictions([(4, 4), (2, 2)]), teacher=[torch.randn(2, 3, 4, 4)])


@pytest.mark.parametrize("expr, expected", [
    ("deep(ce()) + dice()", r"deep\(\) takes a list of predictions and must be the entire loss"),
    ("0.5 * deep(ce())", r"deep\(\) takes a list of predictions and must be the entire loss"),
    ("deep({a: ce()})", r"a task dictionary inside deep\(\) is not supported"),
    ("deep(deep(ce()))", r"deep\(\) inside deep\(\) is not supported"),
    ("deep(ce(), weights=[])", "weights needs one number per prediction, or exp, two or same"),
    ("deep(ce(), weights=[1, -1])", r"deep\(\): weights=-1 is out of range; weights must be >= 0"),
    ("deep(ce(), weights=halving)", "weights=halving is not one of exp, two, same"),
])
def test_bad_deep_expressions(expr, expected):
    with pytest.raises(LossSpecError, match=expected):
        lossdsl.parse(expr)


def test_deep_round_trips_through_expression_and_yaml():
    spec = lossdsl.parse("deep(ce(ignore_index=255) + 0.5 * dice(include_background=false), "
                         "weights=[1, 0.5])")
    assert lossdsl.parse(spec.to_expr()) == spec == lossdsl.load(spec.to_yaml())
    assert spec.to_dict()["loss"]["terms"][1] == {"loss": {"kind": "dice", "include_background": False},
                                                  "weight": 0.5}
    loss = lossdsl.compile(spec)
    assert repr(loss) == f"lossdsl.compile({spec.to_expr()!r})"
    loss.load_state_dict(lossdsl.compile(spec.to_expr()).state_dict())


def test_the_tree_shows_the_loss_at_every_scale():
    from lossdsl.describe import spec_document, spec_tree

    spec = lossdsl.parse("deep(ce() + dice(), weights=two)")
    lines = spec_tree(spec).splitlines()
    assert lines[1:4] == ["  deep: weights=two", "  at every scale:", "    term 1: weight 1, reduction mean, "
                                                                          "head softmax"]
    document = spec_document(spec)
    assert document["tree"][0]["node"]["loss"]["expression"] == "ce() + dice()"


def test_plot_points_at_the_inner_loss():
    pytest.importorskip("matplotlib")
    with pytest.raises(LossSpecError, match=r"applies ce\(\) \+ dice\(\) at every scale .*; plot ce\(\) "
                                            r"\+ dice\(\)"):
        lossdsl.plot("deep(ce() + dice())")


def test_dtp_measures_a_deep_task_at_full_resolution():
    loss = lossdsl.compile("dtp({seg: deep(ce(), weights=two), cls: ce()})")
    seg = predictions([(8, 8), (4, 4)])
    cls = torch.randn(2, 5)
    y_seg, y_cls = torch.randint(0, 3, (2, 8, 8)), torch.randint(0, 5, (2,))
    loss({"seg": seg, "cls": cls}, {"seg": y_seg, "cls": y_cls})
    accuracy = (seg[0].argmax(1) == y_seg).float().mean()
    torch.testing.assert_close(loss.kpi_average["seg"], accuracy)
