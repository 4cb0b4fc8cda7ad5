"""Numerics (SPEC section 6) of every catalogue name, and the compile-time errors of the blocks.

- finite loss and gradients for logits anywhere in [-1e4, 1e4], p_t == 1 exactly included, for every
  focusing exponent (0 < gamma < 1 too);
- half-precision inputs (float16, bfloat16, autocast) give the float32 result and a float32 output;
- ignored positions count for nothing, and an all-ignored batch gives 0 with a zero gradient;
- misuse of the blocks is refused when the expression is compiled, with a message that says why.
"""

from __future__ import annotations

import pytest
import torch

import lossdsl

RTOL, ATOL = 1e-5, 1e-6
GAMMAS = [0, 0.3, 1, 2.5]  # 0 < gamma < 1 has an infinite derivative of q^gamma at q = 0
C = 5  # classes in every test here

# --------------------------------------------------------------------------------------------------
# the catalogue, by the targets each expression takes; {g} is a focusing exponent

SIGMOID_TEMPLATES = [
    "bce()",
    "focal(gamma={g})",
    "focal(gamma={g}, alpha=none)",
    "focal(gamma={g}, alpha=[0.1, 0.2, 0.3, 0.4, 0.5])",
    "asl(gamma_pos={g}, gamma_neg=4)",
    "asl(gamma_pos=1, gamma_neg={g}, clip=0)",
    "asl(gamma_pos={g}, gamma_neg={g}, clip=0.2, detach=true, smoothing=0.1)",
    "ghm()",
    "ghm(bins=30, momentum=0.75)",
    "modulate(bce(), gamma={g})",
    "modulate(bce(pos_weight=2), gamma_pos={g}, gamma_neg=1, detach=true)",
    "clip(bce(), margin=0.05)",
    "clip(bce(smoothing=0.1), margin=0.5)",
    "poly(bce(), eps=-1)",
    "poly(modulate(bce(), gamma={g}), eps=[1, -0.5, 0.25])",
    "poly(focal(gamma={g}), eps=1)",
    "balance(bce(), alpha=0.25)",
    "balance(poly(modulate(clip(bce(smoothing=0.1)), gamma_pos={g}, gamma_neg=2), eps=2), alpha=0.4)",
    "density(bce(), bins=10)",
    "density(modulate(clip(bce(), margin=0.1), gamma={g}), bins=30, momentum=0.5)",
]
SOFTMAX_TEMPLATES = [
    "ce()",
    "ce(smoothing=0.1)",
    "focal(head=softmax, gamma={g})",
    "focal(head=softmax, gamma={g}, alpha=[0.1, 0.2, 0.3, 0.4, 0.5])",
    "asl(head=softmax, gamma_pos={g}, gamma_neg=4)",
    "asl(head=softmax, gamma_pos=1, gamma_neg={g}, smoothing=0.1)",
    "modulate(ce(), gamma={g})",
    "modulate(ce(smoothing=0.1), gamma_pos={g}, gamma_neg={g}, detach=true)",
    "poly(ce(), eps=[1, 0.5])",
    "poly(ce(smoothing=0.1), eps=-1)",
    "poly(modulate(ce(), gamma_pos={g}, gamma_neg=0), eps=[-1, 1, 0.5])",
    "poly(focal(head=softmax, gamma={g}), eps=1)",
    "balance(ce(), alpha=[0.1, 0.2, 0.3, 0.4, 0.5])",
    "balance(poly(focal(head=softmax, gamma={g}), eps=1), alpha=0.5)",
]
# Softmax expressions that take probability targets (no asymmetric focusing of the other classes).
SOFTMAX_PROBABILITY_TEMPLATES = [
    "ce()",
    "poly(ce(), eps=[1, 0.5])",
    "modulate(ce(), gamma_pos={g}, gamma_neg=0)",
    "asl(head=softmax, gamma_pos={g}, gamma_neg=0, smoothing=0.1)",
    "poly(modulate(ce(smoothing=0.1), gamma_pos={g}, gamma_neg=0, detach=true), eps=2)",
]


def expand_templates(templates, gammas=GAMMAS):
    """Every template with every gamma, without duplicates for templates that take none."""
    cases = []
    for template in templates:
        for gamma in gammas if "{g}" in template else [None]:
            expr = template.format(g=gamma)
            if expr not in cases:
                cases.append(expr)
    return cases


SIGMOID_CASES = expand_templates(SIGMOID_TEMPLATES)
SOFTMAX_CASES = expand_templates(SOFTMAX_TEMPLATES)
PROBABILITY_CASES = expand_templates(SOFTMAX_PROBABILITY_TEMPLATES)
ZLPR = "zlpr()"

# --------------------------------------------------------------------------------------------------
# extreme inputs

EXTREMES = [-1e4, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e4]


def extreme_sigmoid_inputs():
    """Logits ``[N, 5]`` holding every extreme value with targets 1, 0 and soft (agreeing and
    disagreeing), plus uniform draws from [-1e4, 1e4] with random multi-hot targets."""
    values = torch.tensor(EXTREMES)
    columns = []
    for shift in range(C):
        columns.append(values.roll(shift))
    grid = torch.stack(columns, dim=1)  # [9, 5]: every value in every column
    x = torch.cat([grid, grid, grid, torch.empty(16, C).uniform_(-1e4, 1e4)])
    y = torch.cat([
        torch.ones(9, C), torch.zeros(9, C), torch.full((9, C), 0.3), (torch.rand(16, C) < 0.5).float()
    ])
    return x, y


def extreme_softmax_inputs():
    """Logits ``[N, 5]`` with rows of extremes, each paired with every class as target: the target
    holds the maximum (``p_t == 1`` exactly), the minimum, or something in between."""
    rows = torch.tensor([
        [1e4, -1e4, 0.0, 30.0, -30.0],
        [100.0, 100.0, -100.0, 0.0, 1e4],
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [1e4, 1e4, 1e4, 1e4, 1e4],
        [-1e4, -1e4, -1e4, -1e4, -1e4],
        [30.0, -1.0, 1.0, -100.0, 1e4],
    ])
    x = rows.repeat_interleave(C, dim=0)
    target = torch.arange(C).repeat(rows.shape[0])
    x = torch.cat([x, torch.empty(16, C).uniform_(-1e4, 1e4)])
    target = torch.cat([target, torch.randint(0, C, (16,))])
    return x, target


def assert_finite_loss_and_gradient(expr, x, target):
    loss = lossdsl.compile(expr)
    leaf = x.clone().requires_grad_(True)
    value = loss(leaf, target)
    cotangent = torch.ones_like(value)
    (grad,) = torch.autograd.grad(value, leaf, cotangent)
    assert torch.isfinite(value).all(), f"{expr}: loss {value}"
    bad = ~torch.isfinite(grad)
    assert not bad.any(), f"{expr}: non-finite gradient at logits {x[bad].tolist()}"
    return value, grad


# --------------------------------------------------------------------------------------------------
# finite everywhere


def test_extreme_inputs_reach_p_t_equal_to_one_exactly():
    """The extreme cases below really exercise ``p_t == 1`` in float32."""
    assert torch.sigmoid(torch.tensor(1e4)) == 1 and torch.sigmoid(torch.tensor(-1e4)) == 0
    assert torch.softmax(torch.tensor([1e4, -1e4, 0.0, 30.0, -30.0]), dim=0)[0] == 1


@pytest.mark.parametrize("expr", SIGMOID_CASES)
def test_sigmoid_losses_are_finite_for_extreme_logits(expr):
    x, y = extreme_sigmoid_inputs()
    assert_finite_loss_and_gradient(expr, x, y)


@pytest.mark.parametrize("expr", SIGMOID_CASES)
def test_sigmoid_losses_are_finite_for_extreme_logits_with_index_targets(expr):
    x, _ = extreme_sigmoid_inputs()
    target = torch.randint(0, C, (x.shape[0],))
    assert_finite_loss_and_gradient(expr, x, target)


@pytest.mark.parametrize("expr", SOFTMAX_CASES)
def test_softmax_losses_are_finite_for_extreme_logits(expr):
    x, target = extreme_softmax_inputs()
    assert_finite_loss_and_gradient(expr, x, target)


@pytest.mark.parametrize("expr", PROBABILITY_CASES)
def test_softmax_losses_are_finite_for_extreme_logits_with_probability_targets(expr):
    x, target = extreme_softmax_inputs()
    one_hot = torch.nn.functional.one_hot(target, C).float()
    soft = torch.softmax(torch.randn(x.shape[0], C), dim=1)
    assert_finite_loss_and_gradient(expr, torch.cat([x, x]), torch.cat([one_hot, soft]))


def test_zlpr_is_finite_for_extreme_logits():
    x, y = extreme_sigmoid_inputs()
    y = torch.cat([y[:9], y[9:18], (torch.rand(25, C) < 0.5).float()])
    assert_finite_loss_and_gradient(ZLPR, x, y)


REGRESSION = ["mse()", "l1()", "smooth_l1()", "smooth_l1(beta=0.5)"]


@pytest.mark.parametrize("expr", REGRESSION)
def test_regression_losses_are_finite_for_extreme_predictions(expr):
    x, _ = extreme_sigmoid_inputs()
    assert_finite_loss_and_gradient(expr, x, x.flip(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("expr", REGRESSION)
def test_regression_half_precision_predictions_give_the_float32_result(expr, dtype):
    x, y = torch.randn(64, C) * 3, torch.randn(64, C) * 3
    half = x.to(dtype).requires_grad_(True)
    reference_x = half.detach().float().requires_grad_(True)
    got, want = lossdsl.compile(expr)(half, y), lossdsl.compile(expr)(reference_x, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    (got_grad,) = torch.autograd.grad(got, half)
    (want_grad,) = torch.autograd.grad(want, reference_x)
    torch.testing.assert_close(got_grad, want_grad.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["sum", "none", "pos_mean"])
@pytest.mark.parametrize(
    "expr",
    ["focal(gamma=0.3, {r})", "asl(gamma_pos=0.3, gamma_neg=0.3, {r})", "ghm(momentum=0.75, {r})",
     "poly(focal(gamma=0.3), eps=[1, 2], {r})", "focal(head=softmax, gamma=0.3, {r})", "zlpr({r})"],
)
def test_other_reductions_are_finite_for_extreme_logits(expr, reduction):
    expr = expr.format(r=f"reduction={reduction}")
    if "softmax" in expr:
        x, y = extreme_softmax_inputs()
    else:
        x, y = extreme_sigmoid_inputs()
        y = (y > 0.5).float()
    assert_finite_loss_and_gradient(expr, x, y)


@pytest.mark.parametrize("gamma", [0.1, 0.3, 0.5, 0.9, 1, 2])
@pytest.mark.parametrize(
    "template",
    ["focal(gamma={g}, alpha=none)", "modulate(bce(), gamma={g})", "poly(focal(gamma={g}), eps=[1, 1])"],
)
def test_sigmoid_focusing_at_p_t_one_gives_zero_loss_and_zero_gradient(template, gamma):
    """At ``p_t == 1`` the loss ``(1-p_t)^g * (-log p_t)`` and its derivative are 0 in the limit."""
    x = torch.tensor([[1e4, -1e4, 100.0, -100.0, 30.0]])
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    value, grad = assert_finite_loss_and_gradient(template.format(g=gamma), x, y)
    torch.testing.assert_close(value, torch.zeros(()), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.1, 0.3, 0.5, 0.9, 1, 2])
@pytest.mark.parametrize(
    "template", ["focal(head=softmax, gamma={g})", "asl(head=softmax, gamma_pos={g}, gamma_neg={g})",
                 "poly(focal(head=softmax, gamma={g}), eps=[1, 1])"]
)
def test_softmax_focusing_at_p_t_one_gives_zero_loss_and_zero_gradient(template, gamma):
    x = torch.tensor([[1e4, -1e4, 0.0, 30.0, -30.0], [-100.0, 100.0, -100.0, -100.0, -100.0]])
    value, grad = assert_finite_loss_and_gradient(template.format(g=gamma), x, torch.tensor([0, 1]))
    torch.testing.assert_close(value, torch.zeros(()), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)


def test_gradient_beyond_timm_clamp_is_kept_for_asl():
    """SPEC: ours keeps a gradient where timm's clamp at 1e-8 cuts it (|x| > 18)."""
    x = torch.tensor([[-25.0, 25.0]], requires_grad=True)
    value = lossdsl.compile("asl(gamma_pos=0, gamma_neg=0, clip=0)")(x, torch.tensor([[1.0, 0.0]]))
    value.backward()
    assert torch.all(x.grad.abs() > 0.4)  # d/dx of softplus(-x) at -25 is about -1, halved by the mean


# --------------------------------------------------------------------------------------------------
# half precision


HALF_SIGMOID = expand_templates(SIGMOID_TEMPLATES, [0.5, 2]) + [ZLPR]
HALF_SOFTMAX = expand_templates(SOFTMAX_TEMPLATES, [0.5, 2])
HALF_DTYPES = [torch.float16, torch.bfloat16]


def moderate_inputs(expr):
    if "softmax" in expr or "ce(" in expr:
        return torch.randn(2, C, 4, 4) * 3, torch.randint(0, C, (2, 4, 4))
    return torch.randn(2, C, 4, 4) * 3, (torch.rand(2, C, 4, 4) < 0.3).float()


def assert_half_matches_float32(expr, dtype, *, autocast=False, target_dtype=None):
    x, target = moderate_inputs(expr)
    if target_dtype is not None and target.is_floating_point():
        target = target.to(target_dtype)
    half = x.to(dtype).requires_grad_(True)
    reference_x = half.detach().float().requires_grad_(True)  # the same numbers, in float32
    if autocast:
        with torch.autocast("cpu", dtype=dtype):
            got = lossdsl.compile(expr)(half, target)
    else:
        got = lossdsl.compile(expr)(half, target)
    want = lossdsl.compile(expr)(reference_x, target.float() if target.is_floating_point() else target)
    assert got.dtype == torch.float32, f"{expr}: {dtype} input gave a {got.dtype} loss"
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    (got_grad,) = torch.autograd.grad(got, half)
    (want_grad,) = torch.autograd.grad(want, reference_x)
    assert got_grad.dtype == dtype
    # The gradient is the float32 one, rounded once to the input's dtype.
    torch.testing.assert_close(got_grad, want_grad.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("expr", HALF_SIGMOID + HALF_SOFTMAX)
def test_half_precision_logits_give_the_float32_result(expr, dtype):
    assert_half_matches_float32(expr, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("expr", ["focal()", "asl()", "ghm(momentum=0.75)", "poly(bce(), eps=2)", ZLPR])
def test_half_precision_targets_give_the_float32_result(expr, dtype):
    assert_half_matches_float32(expr, dtype, target_dtype=dtype)


@pytest.mark.parametrize(
    "expr",
    ["focal()", "asl()", "ghm(bins=30, momentum=0.75)", "poly(focal(gamma=0.5), eps=[1, 0.5])", ZLPR,
     "focal(head=softmax, gamma=0.5)", "asl(head=softmax, smoothing=0.1)", "poly(ce(smoothing=0.1), eps=2)",
     "balance(poly(focal(head=softmax), eps=1), alpha=[0.1, 0.2, 0.3, 0.4, 0.5])"],
)
def test_bfloat16_autocast_gives_the_float32_result(expr):
    assert_half_matches_float32(expr, torch.bfloat16, autocast=True)


def test_autocast_float32_logits_give_the_result_without_autocast():
    x, target = torch.randn(64, C) * 3, (torch.rand(64, C) < 0.3).float()
    expr = "poly(focal(gamma=0.5), eps=1) + 0.5 * ghm(bins=10) + zlpr()"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lossdsl.compile(expr)(x, target)
    want = lossdsl.compile(expr)(x, target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_logits_from_a_bfloat16_autocast_layer_give_the_float32_result():
    layer = torch.nn.Linear(8, C)
    features, target = torch.randn(64, 8), torch.randint(0, C, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(features)
        assert logits.dtype == torch.bfloat16
        got = lossdsl.compile("focal(head=softmax) + asl(head=softmax)")(logits, target)
    want = lossdsl.compile("focal(head=softmax) + asl(head=softmax)")(logits.detach().float(), target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    got.backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


# --------------------------------------------------------------------------------------------------
# ignore_index and all-ignored batches

IGNORING_SIGMOID = [
    "bce(ignore_index=255)",
    "focal(ignore_index=255)",
    "focal(gamma=0.3, alpha=[0.1, 0.2, 0.3, 0.4, 0.5], ignore_index=255)",
    "asl(ignore_index=255)",
    "asl(gamma_pos=0.5, gamma_neg=0.5, clip=0, smoothing=0.1, ignore_index=255)",
    "ghm(ignore_index=255)",
    "ghm(bins=30, momentum=0.75, ignore_index=255)",
    "modulate(bce(ignore_index=255), gamma=0.5)",
    "clip(bce(ignore_index=255), margin=0.1)",
    "poly(bce(ignore_index=255), eps=[1, 0.5])",
    "balance(bce(ignore_index=255), alpha=[0.1, 0.2, 0.3, 0.4, 0.5])",
    "density(bce(ignore_index=255), bins=30)",
    "poly(focal(gamma=0.5, ignore_index=255), eps=1)",
]
IGNORING_SOFTMAX = [
    "ce(ignore_index=255)",
    "focal(head=softmax, ignore_index=255)",
    "focal(head=softmax, gamma=0.3, alpha=[0.1, 0.2, 0.3, 0.4, 0.5], ignore_index=255)",
    "asl(head=softmax, ignore_index=255)",
    "asl(head=softmax, gamma_pos=0.5, gamma_neg=0.5, smoothing=0.1, ignore_index=255)",
    "modulate(ce(ignore_index=255), gamma_pos=0.5, gamma_neg=2)",
    "poly(ce(ignore_index=255, smoothing=0.1), eps=2)",
    "poly(focal(head=softmax, gamma=0.5, ignore_index=255), eps=[1, 0.5])",
    "balance(ce(ignore_index=255), alpha=[0.1, 0.2, 0.3, 0.4, 0.5])",
]
DEFAULT_IGNORE = ["focal()", "asl()", "ghm(momentum=0.75)", "focal(head=softmax)", "poly(ce(), eps=1)"]


def with_reduction(expr, reduction):
    """``name(args)`` -> ``name(args, reduction=r)`` (the outermost call of the term)."""
    inner = expr[:-1]
    return f"{inner}{'' if inner.endswith('(') else ', '}reduction={reduction})"


def ignore_value(expr):
    return 255 if "ignore_index=255" in expr else -100


def targets_with_ignored(expr, every=3):
    target = torch.randint(0, C, (2, 4, 4))
    target.view(-1)[::every] = ignore_value(expr)
    return target


@pytest.mark.parametrize("expr", IGNORING_SIGMOID + IGNORING_SOFTMAX + DEFAULT_IGNORE)
def test_logits_at_ignored_positions_do_not_change_the_loss(expr):
    target = targets_with_ignored(expr)
    ignored = (target == ignore_value(expr)).unsqueeze(1).expand(2, C, 4, 4)
    x = torch.randn(2, C, 4, 4) * 3
    other = torch.where(ignored, torch.randn(2, C, 4, 4) * 100, x)  # same logits where it counts
    first, second = lossdsl.compile(expr), lossdsl.compile(expr)
    value, grad = assert_finite_loss_and_gradient(expr, x, target)
    value_other, grad_other = assert_finite_loss_and_gradient(expr, other, target)
    torch.testing.assert_close(value, value_other, rtol=RTOL, atol=ATOL)
    assert torch.all(grad[ignored] == 0) and torch.all(grad_other[ignored] == 0)
    torch.testing.assert_close(grad, grad_other, rtol=RTOL, atol=ATOL)
    # A momentum buffer is fed only by the valid elements, too.
    first(x, target)
    second(other, target)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("expr", IGNORING_SIGMOID + IGNORING_SOFTMAX)
def test_unreduced_loss_is_zero_at_ignored_positions(expr):
    target = targets_with_ignored(expr)
    value = lossdsl.compile(with_reduction(expr, "none"))(torch.randn(2, C, 4, 4) * 3, target)
    ignored = target == 255
    if value.dim() == 4:  # sigmoid: one loss per element
        ignored = ignored.unsqueeze(1).expand_as(value)
    assert torch.all(value[ignored] == 0)
    assert torch.isfinite(value).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean", "pos_mean", "none"])
@pytest.mark.parametrize("expr", IGNORING_SIGMOID + IGNORING_SOFTMAX + DEFAULT_IGNORE)
def test_all_ignored_batch_gives_zero_loss_and_zero_gradient(expr, reduction):
    target = torch.full((2, 4, 4), ignore_value(expr))
    expr = with_reduction(expr, reduction)
    x = torch.randn(2, C, 4, 4) * 3
    value, grad = assert_finite_loss_and_gradient(expr, x, target)
    assert torch.all(value == 0), f"{expr}: {value}"
    assert torch.all(grad == 0)


@pytest.mark.parametrize("expr", ["ghm(bins=30, momentum=0.75, ignore_index=255)", "ghm(momentum=0.5)"])
def test_all_ignored_batch_leaves_the_ghm_accumulator_unchanged(expr):
    loss = lossdsl.compile(expr)
    loss(torch.randn(2, C, 4, 4) * 3, torch.randint(0, C, (2, 4, 4)))
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    loss(torch.randn(2, C, 4, 4) * 3, torch.full((2, 4, 4), ignore_value(expr)))
    for name, value in loss.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# compile-time errors: misuse of the blocks, refused with the reason

REFUSED = [
    ("modulate(zlpr())", ["modulate()", "p_t", "zlpr() has none"]),
    ("poly(mse())", ["poly()", "p_t", "mse() has none"]),
    ("balance(l1())", ["balance()", "p_t", "l1() has none"]),
    ("density(smooth_l1())", ["density()", "p_t", "smooth_l1() has none"]),
    ("clip(zlpr())", ["clip()", "p_t", "zlpr() has none"]),
    ("clip(ce())", ["clip()", "sigmoid", "softmax"]),
    ("clip(focal(head=softmax))", ["clip()", "sigmoid", "softmax"]),
    ("density(ce())", ["density()", "sigmoid"]),
    ("modulate(modulate(bce()))", ["modulate()", "one modulate() block"]),
    ("clip(clip(bce()))", ["clip()", "one clip() block"]),
    ("density(density(bce()))", ["density()", "one density() block"]),
    ("modulate(poly(modulate(bce(), gamma=1)), gamma=2)", ["modulate()", "one modulate() block"]),
    ("density(balance(density(bce())))", ["density()", "one density() block"]),
    ("asl(head=softmax, clip=0.1)", ["asl()", "clip", "softmax"]),
    ("poly(bce(), eps=[-1.5, 1])", ["poly()", "eps[0]=-1.5", ">= -1", "leading coefficient"]),
    ("poly(bce(), eps=-2)", ["poly()", "eps", ">= -1"]),
    ("poly(ce(), eps=[])", ["poly()", "eps", "at least one"]),
    ("modulate(bce(), gamma=2, gamma_pos=1, gamma_neg=3)", ["modulate()", "either gamma", "not both"]),
    ("modulate(bce(), gamma_pos=1)", ["modulate()", "gamma_neg is missing"]),
]


@pytest.mark.parametrize("expr, fragments", REFUSED, ids=[e for e, _ in REFUSED])
def test_misused_block_is_refused_with_the_reason(expr, fragments):
    with pytest.raises(lossdsl.LossDSLError) as info:
        lossdsl.compile(expr)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{expr}: {fragment!r} not in {message!r}"
    assert expr in message  # the source line is shown


# A named loss is exactly its expansion (SPEC section 2), so nesting through it is refused like the
# expansion is: modulate(focal()) is modulate(balance(modulate(bce()))), which holds two modulates.
NESTED_THROUGH_NAMED = [
    ("modulate(focal())", "modulate"),
    ("modulate(asl())", "modulate"),
    ("modulate(focal(head=softmax), gamma=1)", "modulate"),
    ("clip(asl())", "clip"),
    ("density(ghm())", "density"),
    ("poly(balance(density(ghm())))", "density"),
]


@pytest.mark.parametrize("expr, block", NESTED_THROUGH_NAMED, ids=[e for e, _ in NESTED_THROUGH_NAMED])
def test_nesting_a_block_through_a_named_loss_is_refused_like_its_expansion(expr, block):
    with pytest.raises(lossdsl.LossDSLError, match=rf"one {block}\(\) block"):
        lossdsl.compile(expr)
