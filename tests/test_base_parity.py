"""Base likelihoods (SPEC section 2) give the values and gradients of torch.nn.functional.

Every reference below calls ``torch.nn.functional`` directly (or writes the SPEC formula out), so a
mistake in lossdsl's own plumbing (target conversion, masking, broadcasting of per-class constants,
denominators of the reductions) shows up as a difference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lossdsl

RTOL, ATOL = 1e-5, 1e-6
REDUCTIONS = ["mean", "sum", "batchmean", "pos_mean", "none"]
REGRESSION_REDUCTIONS = ["mean", "sum", "batchmean", "none"]


# --------------------------------------------------------------------------------------------------
# helpers


def assert_parity(expr, logits, target, reference, **compile_kwargs):
    """The compiled ``expr`` and ``reference(logits, target)`` agree in value, shape and gradient."""
    ours_x = logits.detach().clone().requires_grad_(True)
    ref_x = logits.detach().clone().requires_grad_(True)
    got = lossdsl.compile(expr, **compile_kwargs)(ours_x, target)
    want = reference(ref_x, target)
    assert got.shape == want.shape, f"{expr}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    # A random cotangent checks every element of an unreduced loss, not only their sum.
    cotangent = torch.randn(want.shape, dtype=want.dtype)
    (got_grad,) = torch.autograd.grad(got, ours_x, cotangent)
    (want_grad,) = torch.autograd.grad(want, ref_x, cotangent)
    torch.testing.assert_close(got_grad, want_grad, rtol=RTOL, atol=ATOL)


def index_targets(shape, num_classes, ignore=None, every=3):
    """Random class indices; every ``every``-th position (flattened) set to ``ignore``."""
    target = torch.randint(0, num_classes, shape)
    if ignore is not None:
        target.view(-1)[::every] = ignore
    return target


def probability_targets(shape):
    return torch.softmax(torch.randn(shape) * 2, dim=1)


def reduce_like_spec(per_element, reduction, *, batch_size, positives):
    """SPEC section 4 on a per-element loss whose ignored positions are already 0."""
    if reduction == "none":
        return per_element
    total = per_element.sum()
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / batch_size
    if reduction == "pos_mean":
        return total / max(1, int(positives))
    raise AssertionError(reduction)


def per_class_view(values, ndim):
    """A per-class list as a tensor broadcasting on dim 1 (``view(1, C, 1, 1)`` for 4-D input)."""
    tensor = torch.tensor(values, dtype=torch.float32)
    if tensor.dim() == 0 or ndim < 2:
        return tensor
    return tensor.view(1, -1, *([1] * (ndim - 2)))


# --------------------------------------------------------------------------------------------------
# ce: integer class-index targets

CE_W = [0.5, 1.0, 2.0, 4.0]
CE_LOGIT_SHAPES = {"2d": (8, 4), "4d": (2, 4, 3, 5)}


def ce_index_shape(shape):
    return (shape[0], *shape[2:])


@pytest.mark.parametrize("layout", CE_LOGIT_SHAPES)
def test_ce_without_options_matches_cross_entropy(layout):
    shape = CE_LOGIT_SHAPES[layout]
    target = index_targets(ce_index_shape(shape), 4)
    assert_parity("ce()", torch.randn(shape), target, lambda x, y: F.cross_entropy(x, y))


@pytest.mark.parametrize("layout", CE_LOGIT_SHAPES)
def test_ce_class_weight_gives_weighted_mean_of_cross_entropy(layout):
    shape = CE_LOGIT_SHAPES[layout]
    target = index_targets(ce_index_shape(shape), 4)
    weight = torch.tensor(CE_W)
    assert_parity(
        "ce(weight=[0.5, 1, 2, 4])", torch.randn(shape), target,
        lambda x, y: F.cross_entropy(x, y, weight=weight),
    )


@pytest.mark.parametrize("layout", CE_LOGIT_SHAPES)
@pytest.mark.parametrize("ignore", [255, 0, 3])
def test_ce_ignore_index_positions_count_for_nothing(layout, ignore):
    shape = CE_LOGIT_SHAPES[layout]
    target = index_targets(ce_index_shape(shape), 4, ignore=ignore)
    assert_parity(
        f"ce(ignore_index={ignore})", torch.randn(shape), target,
        lambda x, y: F.cross_entropy(x, y, ignore_index=ignore),
    )


@pytest.mark.parametrize("layout", CE_LOGIT_SHAPES)
def test_ce_default_ignore_index_is_minus_100(layout):
    shape = CE_LOGIT_SHAPES[layout]
    target = index_targets(ce_index_shape(shape), 4, ignore=-100)
    assert_parity("ce()", torch.randn(shape), target, lambda x, y: F.cross_entropy(x, y))


@pytest.mark.parametrize("layout", CE_LOGIT_SHAPES)
@pytest.mark.parametrize("smoothing", [0.1, 0.5, 0.95])
def test_ce_smoothing_matches_cross_entropy_label_smoothing(layout, smoothing):
    shape = CE_LOGIT_SHAPES[layout]
    target = index_targets(ce_index_shape(shape), 4)
    assert_parity(
        f"ce(smoothing={smoothing})", torch.randn(shape), target,
        lambda x, y: F.cross_entropy(x, y, label_smoothing=smoothing),
    )


@pytest.mark.parametrize("layout", CE_LOGIT_SHAPES)
def test_ce_weight_smoothing_and_ignore_index_together(layout):
    shape = CE_LOGIT_SHAPES[layout]
    target = index_targets(ce_index_shape(shape), 4, ignore=255)
    weight = torch.tensor(CE_W)
    assert_parity(
        "ce(weight=[0.5, 1, 2, 4], ignore_index=255, smoothing=0.2)", torch.randn(shape), target,
        lambda x, y: F.cross_entropy(x, y, weight=weight, ignore_index=255, label_smoothing=0.2),
    )


def test_ce_smoothing_equals_the_spec_formula_on_the_smoothed_distribution():
    """SPEC: ``q = (1-s)*onehot + s/C`` and the loss is ``-sum_c q_c log p_c`` (written out)."""
    x, target, s = torch.randn(8, 5), torch.randint(0, 5, (8,)), 0.3
    q = (1 - s) * F.one_hot(target, 5).float() + s / 5
    assert_parity(
        "ce(smoothing=0.3)", x, target,
        lambda x, y: -(q * torch.log_softmax(x, dim=1)).sum(dim=1).mean(),
    )


def test_ce_accepts_uint8_segmentation_masks_like_int64():
    x = torch.randn(2, 4, 3, 5)
    target = index_targets((2, 3, 5), 4, ignore=255).to(torch.uint8)
    assert_parity(
        "ce(ignore_index=255)", x, target,
        lambda x, y: F.cross_entropy(x, y.long(), ignore_index=255),
    )


@pytest.mark.parametrize("layout", CE_LOGIT_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_reduction_with_weight_smoothing_and_ignore(layout, reduction):
    shape = CE_LOGIT_SHAPES[layout]
    target = index_targets(ce_index_shape(shape), 4, ignore=255)
    weight = torch.tensor(CE_W)
    valid = int((target != 255).sum())

    def reference(x, y):
        options = dict(weight=weight, ignore_index=255, label_smoothing=0.1)
        if reduction == "mean":
            return F.cross_entropy(x, y, **options)
        per_position = F.cross_entropy(x, y, reduction="none", **options)
        return reduce_like_spec(per_position, reduction, batch_size=shape[0], positives=valid)

    assert_parity(
        f"ce(weight=[0.5, 1, 2, 4], ignore_index=255, smoothing=0.1, reduction={reduction})",
        torch.randn(shape), target, reference,
    )


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_ce_sum_and_none_equal_cross_entropy_sum_and_none(reduction):
    x, target = torch.randn(8, 4), index_targets((8,), 4, ignore=255)
    weight = torch.tensor(CE_W)
    assert_parity(
        f"ce(weight=[0.5, 1, 2, 4], ignore_index=255, reduction={reduction})", x, target,
        lambda x, y: F.cross_entropy(x, y, weight=weight, ignore_index=255, reduction=reduction),
    )


def test_ce_none_reduction_puts_zero_at_ignored_positions():
    x, target = torch.randn(2, 4, 3, 5), index_targets((2, 3, 5), 4, ignore=255)
    value = lossdsl.compile("ce(ignore_index=255, smoothing=0.1, reduction=none)")(x, target)
    assert value.shape == target.shape
    assert torch.all(value[target == 255] == 0)
    assert torch.all(value[target != 255] > 0)


def test_ce_pos_mean_divides_by_the_number_of_valid_positions():
    x, target = torch.randn(2, 4, 3, 5), index_targets((2, 3, 5), 4, ignore=255)
    valid = int((target != 255).sum())
    assert_parity(
        "ce(ignore_index=255, reduction=pos_mean)", x, target,
        lambda x, y: F.cross_entropy(x, y, ignore_index=255, reduction="sum") / valid,
    )


# --------------------------------------------------------------------------------------------------
# ce: probability targets


@pytest.mark.parametrize("layout", CE_LOGIT_SHAPES)
@pytest.mark.parametrize(
    "expr, options",
    [
        ("ce()", {}),
        ("ce(smoothing=0.2)", {"label_smoothing": 0.2}),
        ("ce(weight=[0.5, 1, 2, 4])", {"weight": CE_W}),
        ("ce(weight=[0.5, 1, 2, 4], smoothing=0.2)", {"weight": CE_W, "label_smoothing": 0.2}),
    ],
)
def test_ce_probability_targets_match_cross_entropy(layout, expr, options):
    shape = CE_LOGIT_SHAPES[layout]
    options = {k: torch.tensor(v) if k == "weight" else v for k, v in options.items()}
    assert_parity(
        expr, torch.randn(shape), probability_targets(shape),
        lambda x, y: F.cross_entropy(x, y, **options),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_probability_targets_every_reduction(reduction):
    shape = (2, 4, 3, 5)
    positions = 2 * 3 * 5

    def reference(x, y):
        if reduction == "mean":
            return F.cross_entropy(x, y, label_smoothing=0.1)
        per_position = F.cross_entropy(x, y, label_smoothing=0.1, reduction="none")
        return reduce_like_spec(per_position, reduction, batch_size=2, positives=positions)

    assert_parity(
        f"ce(smoothing=0.1, reduction={reduction})", torch.randn(shape), probability_targets(shape),
        reference,
    )


# --------------------------------------------------------------------------------------------------
# bce: targets shaped like the logits

BCE_LOGIT_SHAPES = {"2d": (8, 3), "4d": (2, 3, 4, 5)}


def multi_hot(shape):
    return (torch.rand(shape) < 0.4).float()


def bce_reference(weight=None, pos_weight=None, smoothing=0.0):
    def reference(x, y):
        y = y.float() * (1 - smoothing) + smoothing / 2
        w = None if weight is None else per_class_view(weight, x.dim())
        pw = None if pos_weight is None else per_class_view(pos_weight, x.dim())
        return F.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw)

    return reference


@pytest.mark.parametrize("layout", BCE_LOGIT_SHAPES)
@pytest.mark.parametrize("kind", ["multi_hot", "soft"])
def test_bce_without_options_matches_bce_with_logits(layout, kind):
    shape = BCE_LOGIT_SHAPES[layout]
    target = multi_hot(shape) if kind == "multi_hot" else torch.rand(shape)
    assert_parity("bce()", torch.randn(shape) * 3, target, bce_reference())


@pytest.mark.parametrize("layout", BCE_LOGIT_SHAPES)
@pytest.mark.parametrize(
    "expr, options",
    [
        ("bce(weight=0.5)", {"weight": 0.5}),
        ("bce(weight=[0.5, 1, 3])", {"weight": [0.5, 1.0, 3.0]}),
        ("bce(pos_weight=3)", {"pos_weight": 3.0}),
        ("bce(pos_weight=[1, 2, 4])", {"pos_weight": [1.0, 2.0, 4.0]}),
        ("bce(weight=[2, 1, 0.5], pos_weight=[1, 2, 4])", {"weight": [2.0, 1.0, 0.5], "pos_weight": [1.0, 2.0, 4.0]}),
        ("bce(weight=0.25, pos_weight=[3, 1, 2])", {"weight": 0.25, "pos_weight": [3.0, 1.0, 2.0]}),
    ],
)
def test_bce_weight_and_pos_weight_broadcast_on_the_class_dim(layout, expr, options):
    shape = BCE_LOGIT_SHAPES[layout]
    assert_parity(expr, torch.randn(shape) * 3, torch.rand(shape), bce_reference(**options))


@pytest.mark.parametrize("layout", BCE_LOGIT_SHAPES)
@pytest.mark.parametrize("smoothing", [0.1, 0.5])
def test_bce_smoothing_moves_targets_towards_one_half(layout, smoothing):
    shape = BCE_LOGIT_SHAPES[layout]
    assert_parity(
        f"bce(smoothing={smoothing})", torch.randn(shape) * 3, multi_hot(shape),
        bce_reference(smoothing=smoothing),
    )


def test_bce_smoothing_weight_and_pos_weight_together():
    shape = (2, 3, 4, 5)
    assert_parity(
        "bce(weight=[2, 1, 0.5], pos_weight=[1, 2, 4], smoothing=0.2)",
        torch.randn(shape) * 3, multi_hot(shape),
        bce_reference(weight=[2.0, 1.0, 0.5], pos_weight=[1.0, 2.0, 4.0], smoothing=0.2),
    )


def test_bce_equals_the_spec_formula_written_with_log_sigmoid():
    """SPEC: ``-[pw*y log p + (1-y) log(1-p)] * weight`` with per-class weights on dim 1."""
    x, y = torch.randn(6, 3) * 3, torch.rand(6, 3)
    w, pw = torch.tensor([[2.0, 1.0, 0.5]]), torch.tensor([[1.0, 2.0, 4.0]])
    assert_parity(
        "bce(weight=[2, 1, 0.5], pos_weight=[1, 2, 4])", x, y,
        lambda x, y: (-(pw * y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)) * w).mean(),
    )


@pytest.mark.parametrize("expr, options", [("bce()", {}), ("bce(weight=2, pos_weight=3)", {"weight": 2.0, "pos_weight": 3.0})])
def test_bce_one_dimensional_logits(expr, options):
    """Logits ``[N]`` (one binary problem per sample) with float targets ``[N]``."""
    assert_parity(expr, torch.randn(10) * 3, multi_hot((10,)), bce_reference(**options))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", BCE_LOGIT_SHAPES)
def test_bce_every_reduction_on_multi_hot_targets(layout, reduction):
    shape = BCE_LOGIT_SHAPES[layout]
    target = multi_hot(shape)
    positives = int(target.sum())
    pw = per_class_view([1.0, 2.0, 4.0], len(shape))

    def reference(x, y):
        if reduction == "mean":
            return F.binary_cross_entropy_with_logits(x, y, pos_weight=pw)
        per_element = F.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none")
        return reduce_like_spec(per_element, reduction, batch_size=shape[0], positives=positives)

    assert_parity(f"bce(pos_weight=[1, 2, 4], reduction={reduction})", torch.randn(shape) * 3, target, reference)


def test_bce_pos_mean_divides_by_the_number_of_positive_targets():
    x, target = torch.randn(8, 3), multi_hot((8, 3))
    positives = int(target.sum())
    assert positives > 1
    assert_parity(
        "bce(reduction=pos_mean)", x, target,
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="sum") / positives,
    )


# --------------------------------------------------------------------------------------------------
# bce: integer class-index targets (one-hot, ignore_index masked)


def bce_index_reference(num_classes, ignore_index, reduction="mean", weight=None, pos_weight=None, smoothing=0.0):
    """One-hot of the indices; ignored positions masked; mean over non-ignored ELEMENTS."""

    def reference(x, index):
        valid = index != ignore_index
        one_hot = F.one_hot(torch.where(valid, index, 0).long(), num_classes).float()
        one_hot = one_hot.movedim(-1, 1)  # [N, d1, ..., C] -> [N, C, d1, ...]
        mask = valid.unsqueeze(1).float()
        y = one_hot * (1 - smoothing) + smoothing / 2
        w = None if weight is None else per_class_view(weight, x.dim())
        pw = None if pos_weight is None else per_class_view(pos_weight, x.dim())
        per_element = F.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction="none") * mask
        if reduction == "mean":
            return per_element.sum() / max(1, int(valid.sum()) * num_classes)
        return reduce_like_spec(per_element, reduction, batch_size=x.shape[0], positives=int(valid.sum()))

    return reference


@pytest.mark.parametrize("layout", BCE_LOGIT_SHAPES)
def test_bce_index_targets_are_one_hot(layout):
    shape = BCE_LOGIT_SHAPES[layout]
    index = torch.randint(0, 3, (shape[0], *shape[2:]))
    one_hot = F.one_hot(index, 3).movedim(-1, 1).float()
    assert_parity(
        "bce()", torch.randn(shape) * 3, index,
        lambda x, y: F.binary_cross_entropy_with_logits(x, one_hot),
    )


@pytest.mark.parametrize("layout", BCE_LOGIT_SHAPES)
def test_bce_index_targets_mask_ignore_index_and_average_over_valid_elements(layout):
    shape = BCE_LOGIT_SHAPES[layout]
    index = index_targets((shape[0], *shape[2:]), 3, ignore=255)
    assert_parity("bce(ignore_index=255)", torch.randn(shape) * 3, index, bce_index_reference(3, 255))


def test_bce_index_targets_default_ignore_index_is_minus_100():
    index = index_targets((8,), 3, ignore=-100)
    assert_parity("bce()", torch.randn(8, 3) * 3, index, bce_index_reference(3, -100))


def test_bce_index_targets_with_weight_pos_weight_and_smoothing():
    index = index_targets((2, 4, 5), 3, ignore=255)
    assert_parity(
        "bce(weight=[2, 1, 0.5], pos_weight=[1, 2, 4], smoothing=0.1, ignore_index=255)",
        torch.randn(2, 3, 4, 5) * 3, index,
        bce_index_reference(3, 255, weight=[2.0, 1.0, 0.5], pos_weight=[1.0, 2.0, 4.0], smoothing=0.1),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", BCE_LOGIT_SHAPES)
def test_bce_index_targets_every_reduction(layout, reduction):
    shape = BCE_LOGIT_SHAPES[layout]
    index = index_targets((shape[0], *shape[2:]), 3, ignore=255)
    assert_parity(
        f"bce(pos_weight=[1, 2, 4], ignore_index=255, reduction={reduction})",
        torch.randn(shape) * 3, index,
        bce_index_reference(3, 255, reduction=reduction, pos_weight=[1.0, 2.0, 4.0]),
    )


# --------------------------------------------------------------------------------------------------
# regression

REGRESSION = {
    "mse": lambda x, y, reduction: F.mse_loss(x, y, reduction=reduction),
    "l1": lambda x, y, reduction: F.l1_loss(x, y, reduction=reduction),
    "smooth_l1": lambda x, y, reduction: F.smooth_l1_loss(x, y, reduction=reduction),
    "smooth_l1(beta=0.25)": lambda x, y, reduction: F.smooth_l1_loss(x, y, reduction=reduction, beta=0.25),
    "smooth_l1(beta=3)": lambda x, y, reduction: F.smooth_l1_loss(x, y, reduction=reduction, beta=3.0),
}


def regression_expr(name, reduction):
    call = name if "(" in name else f"{name}()"
    if reduction == "mean":
        return call
    inner = call[:-1]
    return f"{inner}{', ' if not inner.endswith('(') else ''}reduction={reduction})"


@pytest.mark.parametrize("reduction", REGRESSION_REDUCTIONS)
@pytest.mark.parametrize("name", REGRESSION)
@pytest.mark.parametrize("shape", [(10,), (6, 3), (2, 3, 4)])
def test_regression_matches_functional(name, reduction, shape):
    functional = REGRESSION[name]

    def reference(x, y):
        if reduction == "batchmean":
            return functional(x, y, "sum") / shape[0]
        return functional(x, y, reduction)

    assert_parity(regression_expr(name, reduction), torch.randn(shape) * 2, torch.randn(shape) * 2, reference)


# --------------------------------------------------------------------------------------------------
# SPEC 6: finite for logits anywhere in [-1e4, 1e4]


@pytest.mark.parametrize(
    "expr, target",
    [
        ("ce(weight=[0.5, 1, 2, 4], smoothing=0.1, ignore_index=255)", torch.tensor([0, 1, 2, 3, 255, 0])),
        ("ce(smoothing=0.1)", torch.softmax(torch.randn(6, 4), dim=1)),
        ("bce(pos_weight=[1, 2, 3, 4], smoothing=0.1)", (torch.rand(6, 4) < 0.5).float()),
        ("bce(ignore_index=255)", torch.tensor([0, 1, 2, 3, 255, 0])),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_extreme_logits_give_finite_loss_and_gradient(expr, target, reduction):
    x = torch.tensor([1e4, -1e4, 0.0, 30.0]).repeat(6, 1)
    x[1::2] = -x[1::2]
    x.requires_grad_(True)
    expr = expr[:-1] + f", reduction={reduction})"
    value = lossdsl.compile(expr)(x, target)
    value.sum().backward()
    assert torch.isfinite(value).all()
    assert torch.isfinite(x.grad).all()
