"""Exactness (issue 8, SPEC sections 1, 2, 4 and 6), for every name of the catalogue:

- float32 and float64 are computed in their own dtype; ``gradcheck`` passes for every name in float64;
- soft (float) targets that require grad receive their exact gradient (knowledge distillation);
- every sigmoid likelihood is exact to rounding at confident logits (no ``softplus(x) - y x``);
- label smoothing rewrites probability targets the same way whatever block wraps the likelihood;
- ignored positions contribute exactly 0 to value and gradient whatever their logits (inf, NaN).

References are SPEC's formulas coded plainly (tests/reference.py), differentiated by autograd, and
torch.nn.functional where it is the definition.
"""

from __future__ import annotations

import math

import pytest
import reference as ref
import reference_longtail as lt
import test_box_functional as boxes_ref
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.catalogue import CATALOGUE

torch_gradcheck = torch.autograd.gradcheck


def _q(x, y, margin=0.0):
    return ref.one_minus_pt(x, y, margin)


# expression with reduction=none -> per-element reference(x, y) (sigmoid head: y same shape as x)
SIGMOID = {
    "bce()": lambda x, y: ref.bce(x, y),
    "bce(pos_weight=2, smoothing=0.1)": lambda x, y: ref.bce(x, ref.smooth_binary(y, 0.1), pos_weight=2),
    "focal()": lambda x, y: ref.focal(x, y),
    "focal(gamma=0.5, alpha=none)": lambda x, y: ref.focal(x, y, 0.5, None),
    "modulate(bce(), gamma_pos=0.5, gamma_neg=3)": lambda x, y: ref.bce(x, y) * ref.focusing(x, y, 0.5, 3),
    "modulate(bce(), gamma=1, detach=true)": lambda x, y: ref.bce(x, y) * _q(x, y).detach(),
    "clip(bce(), margin=0.1)": lambda x, y: ref.bce(x, y, margin=0.1),
    "poly(bce(), eps=[1, -0.5])": lambda x, y: ref.poly(ref.bce(x, y), _q(x, y), [1, -0.5]),
    "balance(bce(), alpha=0.3)": lambda x, y: ref.bce(x, y) * ref.alpha_t(y, 0.3),
    "asl()": lambda x, y: ref.asl(x, y),
    "asl(gamma_pos=0.5, gamma_neg=2.5, clip=0.1, smoothing=0.1)":
        lambda x, y: ref.asl(x, y, 0.5, 2.5, 0.1, 0.1),
    "poly(focal(gamma=1.5), eps=2)":
        lambda x, y: ref.focal(x, y, 1.5) + 2 * _q(x, y) ** 2.5,
    "poly(modulate(clip(bce(), margin=0.05), gamma_pos=1, gamma_neg=2), eps=1)":
        lambda x, y: ref.poly(ref.bce(x, y, margin=0.05) * ref.focusing(x, y, 1, 2, 0.05),
                              _q(x, y, 0.05), [1], 1 * y + 2 * (1 - y)),
    "qfocal(beta=1.5)": lambda x, y: ref.qfocal(x, y, 1.5),
    "poly(modulate(bce(), gamma=1, focus=quality), eps=0.5)":
        lambda x, y: ref.qfocal(x, y, 1) + 0.5 * ref.distance(x, y) ** 2,
    "varifocal()": lambda x, y: ref.varifocal(x, y),
    "varifocal(alpha=0.5, gamma=1.5, iou_weighted=false)": lambda x, y: ref.varifocal(x, y, 0.5, 1.5, False),
    "ghm(bins=7)": lambda x, y: ref.bce(x, y) * ref.ghm_weights(x, y, 7),
    "density(focal(), bins=5)": lambda x, y: ref.focal(x, y) * ref.ghm_weights(x, y, 5),
    # the class weight of a soft row is the target-weighted mean of its classes', without gradient
    "class_balanced(focal(), beta=0.9, counts=[3, 1, 2, 5, 4])":
        lambda x, y: ref.focal(x, y) * _class_balanced_row(y.detach(), 0.9),
}

# softmax head with probability targets (y shaped like x): per-position reference
SOFTMAX = {
    "ce()": lambda x, y: ref.ce(x, y),
    "ce(smoothing=0.2)": lambda x, y: ref.ce(x, y, 0.2),
    "focal(head=softmax, gamma=1.5)": lambda x, y: ref.softmax_focal(x, y, 1.5),
    "modulate(ce(smoothing=0.1), gamma=2)": lambda x, y: ref.softmax_focal(x, y, 2, 0.1),
    "asl(head=softmax, gamma_pos=2, gamma_neg=2, smoothing=0.1)": lambda x, y: ref.softmax_focal(x, y, 2, 0.1),
    "poly(ce(smoothing=0.1), eps=1)":
        lambda x, y: ref.ce(x, y, 0.1) + (1 - (ref.softmax_target(x, y, 0.1) * x.softmax(1)).sum(1)),
    "balance(ce(), alpha=0.5)": lambda x, y: 0.5 * ref.ce(x, y),
    "logit_adjust(ce(), tau=0.5, counts=[3, 1, 2, 5, 4])":
        lambda x, y: ref.ce(x + torch.log(lt.prior(LONG_TAIL) ** 0.5 + 1e-12), y),
    "balanced_softmax(counts=[3, 1, 2, 5, 4])": lambda x, y: ref.ce(x + torch.log(lt.prior(LONG_TAIL) + 1e-12), y),
    "class_balanced(ce(), beta=0.9, counts=[3, 1, 2, 5, 4])":
        lambda x, y: ref.ce(x, y) * _class_balanced_row(y.detach(), 0.9).squeeze(1),
}

# class-index targets only (t [N] for logits [N, C]): per-position reference(x, t)
INDEX = {
    "ldam(counts=[3, 1, 2, 5, 4], max_m=0.4, s=5)": lambda x, t: lt.ldam_loss(x, t, LONG_TAIL, 0.4, 5.0),
    # (q = 0: the compensation reads the scores without gradient, which gradcheck cannot follow)
    "seesaw(p=0.8, q=0)": lambda x, t: lt.seesaw_ce_loss(
        x, t, torch.bincount(t, minlength=x.shape[1]).double(), 0.8, 0.0, 0.01),
    "eqlv2()": lambda x, t: F.binary_cross_entropy_with_logits(
        x, F.one_hot(t, x.shape[1]).to(x.dtype), reduction="none").sum(1),
}

OTHER = {  # expr -> reference
    "mse()": lambda x, y: (x - y) ** 2,
    "l1()": lambda x, y: (x - y).abs(),
    "smooth_l1(beta=0.5)": lambda x, y: F.smooth_l1_loss(x, y, beta=0.5, reduction="none"),
    "zlpr()": ref.zlpr,
    # torchvision's box losses written out (tests/test_box_functional.py)
    "iou()": boxes_ref.tv_iou_loss,
    "giou()": boxes_ref.tv_giou_loss,
    "diou()": boxes_ref.tv_diou_loss,
    "ciou()": boxes_ref.tv_ciou_loss,
    "dfl()": boxes_ref.mm_distribution_focal_loss,
}
BOXES = ("iou()", "giou()", "diou()", "ciou()")
REGION = {  # softmax head, soft targets [N, C, H, W]; reduction=none gives [N, C] ([N] for gdice)
    "tversky(alpha=0.3, beta=0.7, gamma=1.5)": lambda x, y: ref.tversky(x, y, 0.3, 0.7, 1.5),
    "dice(smooth=0.01)": lambda x, y: ref.dice(x, y, 0.01),
    "dice(squared=true)": lambda x, y: ref.dice(x, y, squared=True),
    "jaccard(smooth=0.1)": lambda x, y: ref.tversky(x, y, 1, 1, 1, 0.1),
    "gdice()": ref.gdice,
    "lovasz()": ref.lovasz_softmax,
}
OTHER.update(REGION)
OTHER.update(INDEX)

MULTITASK = [
    "{a: focal(), b: 0.5 * mse()}",
    "uncertainty({a: asl(), b: smooth_l1()})",
    "dtp({a: poly(bce()), b: ce()})",
]

# Losses called with inputs of their own: kd reads the teacher's logits (teacher=), deep a list of
# predictions (soft targets [N, C, 4, 4], resized by area to the second scale).
OWN_INPUTS = ["kd(T=2)", "deep(ce() + 0.5 * dice(), weights=[1, 0.5])"]


def _own_call(expr: str):
    """``(inputs, call(loss, *inputs), reference(*inputs))`` for an ``OWN_INPUTS`` expression."""
    if expr.startswith("kd"):
        teacher = torch.randn(4, 5, dtype=torch.float64)
        return ((_logits((4, 5)),), lambda loss, z: loss(z, teacher=teacher),
                lambda z: ref.kd(z, teacher, 2.0).sum() / 4)
    y = torch.softmax(torch.randn(2, 3, 4, 4, dtype=torch.float64), 1)
    small = F.interpolate(y, size=(2, 2), mode="area")

    def inner(x, target):
        return ref.ce(x, target).mean() + 0.5 * ref.dice(x, target).mean()

    return ((_logits((2, 3, 4, 4)), _logits((2, 3, 2, 2))), lambda loss, a, b: loss([a, b], y),
            lambda a, b: inner(a, y) + 0.5 * inner(b, small))


LONG_TAIL = [3, 1, 2, 5, 4]


def _class_balanced_row(y, beta):
    """Cui et al.'s weights (tests/reference_longtail.py), a row's the target-weighted mean: [N, 1]."""
    weights = lt.class_balanced_weights(LONG_TAIL, beta).to(y.dtype)
    return ((y * weights).sum(1) / y.sum(1)).unsqueeze(1)


def _none(expr: str) -> str:
    """The expression with reduction=none on its outermost call."""
    return expr[:-1] + (", " if not expr.endswith("()") else "") + "reduction=none)"


def _logits(shape=(6, 5), scale=3.0, dtype=torch.float64):
    return (torch.randn(shape, dtype=dtype) * scale).requires_grad_(True)


def _soft(shape=(6, 5), dtype=torch.float64):
    return (torch.rand(shape, dtype=dtype) * 0.9 + 0.05).requires_grad_(True)


def _probabilities(shape=(6, 5), dtype=torch.float64):
    return torch.softmax(torch.randn(shape, dtype=dtype), 1).requires_grad_(True)


def _inputs(expr: str, shape=(6, 5), scale=3.0, dtype=torch.float64):
    """Logits (or predictions) and a target that fit ``expr``; both require grad where they can."""
    generator = torch.Generator().manual_seed(5)
    if expr in BOXES:  # well-formed boxes and targets near them
        pred = boxes_ref.random_boxes(shape[0], generator, dtype)
        target = boxes_ref.near(pred, 0.6, generator)
        return pred.requires_grad_(True), target.requires_grad_(True)
    if expr in REGION:  # masks [N, C, 3, 4] with soft targets (every class present)
        x = _logits((shape[0], shape[1], 3, 4), scale, dtype)
        return x, torch.softmax(torch.randn(x.shape, dtype=dtype), 1).requires_grad_(True)
    if expr in INDEX:  # class indices of every class
        target = torch.randint(0, shape[1], (shape[0],), generator=generator)
        return _logits(shape, scale, dtype), target
    if expr == "dfl()":  # n = 7 distances; mmdetection's reference fails at y = n itself
        target = torch.rand(shape[0], generator=generator, dtype=dtype) * 7
        target[0], target[-1] = 0.01, 6.99  # DFL has a kink at integers: probe beside them
        return _logits((shape[0], 8), scale, dtype), target.requires_grad_(True)
    x = _logits(shape, scale, dtype)
    return x, _target_for(expr, x)


def _target_for(expr: str, x):
    if expr.startswith("varifocal"):  # IoU targets: mostly background (0), some positives
        soft = torch.rand(x.shape, dtype=x.dtype) * 0.9 + 0.05
        return torch.where(torch.rand(x.shape) < 0.6, 0.0, soft).requires_grad_(True)
    if expr in SOFTMAX:
        return _probabilities(tuple(x.shape), x.dtype)
    if expr == "zlpr()":
        return (torch.rand(x.shape, dtype=x.dtype) > 0.5).to(x.dtype)
    if expr in OTHER:
        return torch.randn(x.shape, dtype=x.dtype).requires_grad_(True)
    return _soft(tuple(x.shape), x.dtype)


def _covered_names(expressions) -> set[str]:
    names = set()
    for expr in expressions:
        stack = [term.loss for term in lossdsl.parse(expr).terms]
        while stack:
            node = stack.pop()
            names.add(node.kind_name())
            stack.extend(node.children())
            for task in getattr(node, "tasks", {}).values():
                stack.extend(term.loss for term in task.terms)
    return names


ALL_SINGLE = [*SIGMOID, *SOFTMAX, *OTHER]


def test_every_catalogue_name_has_an_exactness_case():
    """A new name without a float64/gradcheck case here fails this test."""
    builtin = {name for name, cls in CATALOGUE.items() if cls.__module__.startswith("lossdsl.")}
    missing = builtin - _covered_names([*ALL_SINGLE, *MULTITASK, *OWN_INPUTS])
    assert not missing, f"add exactness cases for {sorted(missing)}"


# -- 1. float64 in float64, gradcheck for every name ------------------------------------------------


@pytest.mark.parametrize("expr", ALL_SINGLE)
def test_float64_is_computed_in_float64_and_matches_the_formula(expr):
    reference = {**SIGMOID, **SOFTMAX, **OTHER}[expr]
    x, y = _inputs(expr)
    value = lossdsl.compile(_none(expr))(x, y)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, reference(x, y), rtol=1e-12, atol=1e-14)


# detach=true deliberately drops the focusing weight's derivative, and ciou's alpha carries none by
# definition, so finite differences disagree with them by design; their gradients are checked against
# the formula (test_soft_targets_... below, tests/test_box_functional.py).
@pytest.mark.parametrize("expr", [e for e in ALL_SINGLE if "detach=true" not in e and e != "ciou()"])
def test_gradcheck_in_float64_for_logits_and_soft_targets(expr):
    loss = lossdsl.compile(expr).eval()  # eval: GHM-C's running counts stay put between the probes
    x, y = _inputs(expr, (4, 5), scale=2.0)
    if expr.startswith("varifocal"):  # its weight jumps at y = 0: finite differences in y cross it
        y = y.detach()
    if expr.startswith("class_balanced"):  # its class weight gives a soft target no gradient, by
        y = y.detach()                     # definition (tests/test_longtail.py checks that gradient)
    inputs = (x, y) if y.requires_grad else (x,)
    function = (lambda a, b: loss(a, b)) if y.requires_grad else (lambda a: loss(a, y))
    assert torch_gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("expr", MULTITASK)
def test_gradcheck_of_multi_task_losses_in_float64(expr):
    loss = lossdsl.compile(expr).eval()
    loss.double()
    a = _logits((4, 3))
    b = _logits((4, 3)) if "ce()" not in expr else _logits((4, 3))
    targets = {"a": _soft((4, 3)).detach(),
               "b": torch.tensor([0, 2, 1, 1]) if "ce()" in expr else torch.randn(4, 3, dtype=torch.float64)}
    if "dtp" in expr:
        loss.train()
        loss({"a": a.detach(), "b": b.detach()}, targets)  # starts the running indicators
        loss.eval()
    value = loss({"a": a, "b": b}, targets)
    assert value.dtype == torch.float64
    assert torch_gradcheck(lambda p, q: loss({"a": p, "b": q}, targets), (a, b), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("expr", OWN_INPUTS)
def test_losses_with_inputs_of_their_own_in_float64_and_gradcheck(expr):
    inputs, call, reference = _own_call(expr)
    loss = lossdsl.compile(expr)
    value = call(loss, *inputs)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, reference(*inputs), rtol=1e-12, atol=1e-14)
    assert torch_gradcheck(lambda *xs: call(loss, *xs), inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("expr", ["bce()", "focal()", "ce()", "zlpr()", "mse()"])
def test_float32_stays_float32_and_half_precision_is_computed_in_float32(expr):
    for dtype, expected in ((torch.float32, torch.float32), (torch.float16, torch.float32),
                            (torch.bfloat16, torch.float32), (torch.float64, torch.float64)):
        x = torch.randn(4, 3).to(dtype)
        y = (torch.softmax(torch.randn(4, 3), 1) if expr == "ce()" else torch.rand(4, 3)).to(dtype)
        assert lossdsl.compile(expr)(x, y).dtype == expected


# -- 2. soft targets receive their gradient --------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("expr", [*SIGMOID, *SOFTMAX])
def test_soft_targets_receive_the_gradient_of_the_formula(expr, dtype):
    reference = {**SIGMOID, **SOFTMAX}[expr]
    x = _logits(dtype=dtype)
    y = _target_for(expr, x)
    weights = torch.rand(x.shape[0], dtype=dtype)  # an upstream gradient that is not all ones
    out = lossdsl.compile(_none(expr))(x, y)
    ((out if out.dim() == 1 else out.sum(1)) * weights).sum().backward()
    got_x, got_y = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None
    expected = reference(x, y)
    ((expected if expected.dim() == 1 else expected.sum(1)) * weights).sum().backward()
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(got_x, x.grad, **tolerance)
    torch.testing.assert_close(got_y, y.grad, **tolerance)


def test_focal_soft_target_gradient_equals_torchvision_formula():
    """torchvision.ops.sigmoid_focal_loss (torchvision/ops/focal_loss.py) written out: its target
    receives a gradient; knowledge distillation with a focal loss relies on it."""
    x = torch.randn(16, 4, requires_grad=True)
    t = torch.rand(16, 4, requires_grad=True)
    lossdsl.compile("focal(reduction=sum)")(x, t).backward()
    ours = t.grad.clone()
    t.grad = None
    p = torch.sigmoid(x)
    ce_loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce_loss * ((1 - p_t) ** 2)
    (loss * (0.25 * t + 0.75 * (1 - t))).sum().backward()
    torch.testing.assert_close(ours, t.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("expr, target", [
    ("focal(head=softmax)", torch.tensor([0, 2, 1])),
    ("focal()", torch.tensor([0, 2, 1])),  # class indices on the sigmoid head
])
def test_class_index_targets_have_no_gradient(expr, target):
    x = torch.randn(3, 3, requires_grad=True)
    lossdsl.compile(expr)(x, target).backward()
    assert x.grad is not None and not target.is_floating_point()


def test_zlpr_targets_only_select_and_get_no_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.rand(3, 4, requires_grad=True)
    lossdsl.compile("zlpr()")(x, y).backward()
    assert x.grad is not None and y.grad is None


# -- 3. confident predictions keep their precision ---------------------------------------------------


CONFIDENT = [9.0, 12.0, 15.0, 20.0, 30.0, 60.0, 88.0]


def test_a_confident_positive_at_15_costs_3e_7_not_0():
    value = lossdsl.compile("focal(gamma=0, alpha=none)")(torch.tensor([15.0]), torch.tensor([1.0]))
    assert math.isclose(value.item(), math.log1p(math.exp(-15.0)), rel_tol=1e-6)


LIKELIHOODS = {"bce()", "bce(pos_weight=2, smoothing=0.1)", "clip(bce(), margin=0.1)", "balance(bce(), alpha=0.3)"}


@pytest.mark.parametrize("expr", [e for e in SIGMOID if not e.startswith(("ghm", "density", "class_balanced"))])
def test_sigmoid_losses_are_exact_to_rounding_at_confident_logits(expr):
    """float32 against the float64 formula at |x| up to 88, for confident right and wrong answers.
    A likelihood is exact to rounding (a few ulps); a focusing power q^g = exp(g log q) adds the
    condition number of exp(g log q), about g |log q| ulps (values below float32's normal range
    compare absolutely)."""
    magnitudes = torch.tensor(CONFIDENT)
    x64 = torch.cat([magnitudes, -magnitudes]).double().repeat(2)
    y64 = torch.cat([torch.ones(2 * len(CONFIDENT)), torch.zeros(2 * len(CONFIDENT))]).double()
    x64, y64 = x64.reshape(-1, 1), y64.reshape(-1, 1)
    expected = SIGMOID[expr](x64, y64)
    got = lossdsl.compile(_none(expr))(x64.float(), y64.float()).double()
    torch.testing.assert_close(got, expected, rtol=4e-7 if expr in LIKELIHOODS else 4e-6, atol=1e-37)


@pytest.mark.parametrize("expr", ["focal()", "asl()", "poly(bce(), eps=[1, -0.5])"])
def test_sigmoid_gradients_are_exact_at_confident_logits(expr):
    """Where a block needs 1 - p anyway, the base derivative is (1-y) p - y (1-p), exact at any
    logit; a plain bce() keeps torch's p - y (next test), which needs one pass less."""
    x64 = torch.tensor([12.0, 15.0, -12.0, -15.0, 20.0, -20.0], dtype=torch.float64).reshape(-1, 1)
    y64 = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64).reshape(-1, 1)
    x64.requires_grad_(True)
    SIGMOID[expr](x64, y64).sum().backward()
    x32 = x64.detach().float().requires_grad_(True)
    lossdsl.compile(_none(expr))(x32, y64.float()).sum().backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=4e-6, atol=1e-37)


def test_plain_bce_gradient_is_torchs_to_float32_rounding():
    x = torch.tensor([[12.0], [15.0], [-12.0], [-15.0], [20.0], [-20.0], [0.3]], requires_grad=True)
    y = torch.tensor([[1.0], [1.0], [0.0], [0.0], [1.0], [0.0], [0.6]])
    lossdsl.compile("bce(reduction=sum)")(x, y).backward()
    torch.testing.assert_close(x.grad, torch.sigmoid(x.detach()) - y, rtol=0, atol=6e-8)


# -- 4. label smoothing: one rule whatever wraps the likelihood ------------------------------------


@pytest.mark.parametrize("wrapper", ["{}", "poly({}, eps=0)", "modulate({}, gamma=0)", "balance({}, alpha=1)"])
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
def test_softmax_smoothing_is_the_same_inside_any_block(wrapper, targets):
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (8,)) if targets == "indices" else torch.softmax(torch.randn(8, 5, dtype=torch.float64), 1)
    value = lossdsl.compile(wrapper.format("ce(smoothing=0.1)"))(x, t)
    torch.testing.assert_close(value, F.cross_entropy(x, t, label_smoothing=0.1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("wrapper", ["{}", "poly({}, eps=0)", "modulate({}, gamma=0)", "clip({}, margin=0)"])
def test_sigmoid_smoothing_is_the_same_inside_any_block(wrapper):
    x = torch.randn(8, 5, dtype=torch.float64)
    y = (torch.rand(8, 5) > 0.5).double()
    value = lossdsl.compile(wrapper.format("bce(smoothing=0.1)"))(x, y)
    expected = F.binary_cross_entropy_with_logits(x, y * 0.9 + 0.05)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


# -- 5. ignored positions: exactly 0, whatever their logits ------------------------------------------

IGNORING = [
    "ce(ignore_index=255)",
    "ce(ignore_index=255, smoothing=0.1, weight=[1, 2, 3, 0.5])",
    "bce(ignore_index=255)",
    "focal(ignore_index=255)",
    "focal(head=softmax, ignore_index=255)",
    "asl(ignore_index=255)",
    "asl(head=softmax, ignore_index=255, smoothing=0.1)",
    "ghm(ignore_index=255)",
    "poly(ce(ignore_index=255), eps=1)",
    "modulate(ce(ignore_index=255, smoothing=0.1), gamma_pos=2, gamma_neg=1)",
    "balance(poly(focal(head=softmax, ignore_index=255, alpha=[0.1, 0.2, 0.3, 0.4])), alpha=[0.5, 1, 0.25, 0.75])",
    "logit_adjust(ce(ignore_index=255), counts=[1, 2, 3, 4])",
    "ldam(counts=[1, 2, 3, 4], ignore_index=255, s=5)",
    "class_balanced(focal(head=softmax, ignore_index=255), counts=[4, 3, 2, 1])",
    "class_balanced(focal(ignore_index=255), beta=0.9, counts=[4, 3, 2, 1])",
]


def _with_reduction(expr: str, reduction: str) -> str:
    return expr[:-1] + f", reduction={reduction})"


@pytest.mark.parametrize("poison", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "pos_mean", "none"])
@pytest.mark.parametrize("expr", IGNORING)
def test_ignored_positions_contribute_nothing_whatever_their_logits(expr, reduction, poison):
    torch.manual_seed(1)
    x = torch.randn(6, 4, 3)
    target = torch.randint(0, 4, (6, 3))
    target[1, 0] = target[4, 2] = target[5, 1] = 255
    ignored = target == 255
    poisoned = x.clone()
    poisoned[:, 0][ignored] = poison
    poisoned[:, 3][ignored] = poison  # the column an ignored label is clamped to
    poisoned.requires_grad_(True)
    clean = x.clone().requires_grad_(True)
    loss = lossdsl.compile(_with_reduction(expr, reduction))
    value, expected = loss(poisoned, target), loss(clean, target)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    value.sum().backward()
    expected.sum().backward()
    assert torch.isfinite(poisoned.grad).all()
    assert (poisoned.grad.movedim(1, -1)[ignored] == 0).all()
    torch.testing.assert_close(poisoned.grad, clean.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("expr", IGNORING)
def test_an_all_ignored_batch_with_extreme_logits_is_zero_with_zero_gradient(expr):
    x = torch.tensor([[1e4, -1e4, float("inf"), float("-inf")], [float("nan"), 0.0, 1.0, -1.0]])
    x = x.reshape(2, 4, 1).requires_grad_(True)
    target = torch.full((2, 1), 255)
    value = lossdsl.compile(expr)(x, target)
    value.backward()
    assert value.item() == 0
    assert (x.grad == 0).all()


@pytest.mark.parametrize("expr", ALL_SINGLE)
def test_autocast_does_not_reach_the_arithmetic(expr):
    """Under autocast every name computes in float32 and returns float32, the very numbers it gives
    without autocast (an autocast-listed op such as a dot product must not drop to bfloat16)."""
    x, y = _inputs(expr, dtype=torch.float32)
    x, y = x.detach(), y.detach()
    plain = lossdsl.compile(expr)(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = lossdsl.compile(expr)(x, y)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=1e-6, atol=1e-7)
