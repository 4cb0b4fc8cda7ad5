"""Sums of terms and reductions (SPEC section 4).

Each term of a sum is reduced on its own, then the weighted scalars are added; ``reduction=none``
terms add element by element; an all-ignored batch gives 0 with a zero gradient, never NaN.
References are computed with torch.nn.functional, term by term.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lossdsl

RTOL, ATOL = 1e-5, 1e-6
REDUCTIONS = ["mean", "sum", "batchmean", "pos_mean", "none"]

N, C = 8, 4


def assert_parity(expr, logits, target, reference):
    ours_x = logits.detach().clone().requires_grad_(True)
    ref_x = logits.detach().clone().requires_grad_(True)
    got = lossdsl.compile(expr)(ours_x, target)
    want = reference(ref_x, target)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    cotangent = torch.randn(want.shape)
    (got_grad,) = torch.autograd.grad(got, ours_x, cotangent)
    (want_grad,) = torch.autograd.grad(want, ref_x, cotangent)
    torch.testing.assert_close(got_grad, want_grad, rtol=RTOL, atol=ATOL)


def one_hot(index):
    return F.one_hot(index, C).float()


# Index targets feed both heads: ce reads them directly, bce turns them into one-hot.
def ce_ref(x, y):
    return F.cross_entropy(x, y)


def bce_ref(x, y):
    return F.binary_cross_entropy_with_logits(x, one_hot(y))


def ce_smooth_sum_ref(x, y):
    return F.cross_entropy(x, y, label_smoothing=0.1, reduction="sum")


def bce_batchmean_ref(x, y):
    return F.binary_cross_entropy_with_logits(x, one_hot(y), reduction="sum") / x.shape[0]


def ce_weighted_ref(x, y):
    return F.cross_entropy(x, y, weight=torch.tensor([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize(
    "expr, reference",
    [
        ("ce() + bce()", lambda x, y: ce_ref(x, y) + bce_ref(x, y)),
        ("ce() - bce()", lambda x, y: ce_ref(x, y) - bce_ref(x, y)),
        ("3 * ce()", lambda x, y: 3 * ce_ref(x, y)),
        ("ce() * 3", lambda x, y: 3 * ce_ref(x, y)),
        ("ce() / 4", lambda x, y: ce_ref(x, y) / 4),
        ("2 * (ce() + bce())", lambda x, y: 2 * ce_ref(x, y) + 2 * bce_ref(x, y)),
        ("2 * (ce() - 0.5 * bce()) / 4", lambda x, y: 0.5 * ce_ref(x, y) - 0.25 * bce_ref(x, y)),
        ("-ce() + 2 * bce()", lambda x, y: -ce_ref(x, y) + 2 * bce_ref(x, y)),
    ],
)
def test_arithmetic_equals_the_same_combination_of_references(expr, reference):
    assert_parity(expr, torch.randn(N, C), torch.randint(0, C, (N,)), reference)


def test_each_term_is_reduced_on_its_own_then_weighted():
    """Different reductions in one sum: each term keeps its own denominator."""
    assert_parity(
        "0.7 * ce(smoothing=0.1, reduction=sum) + 0.3 * bce(reduction=batchmean)",
        torch.randn(N, C), torch.randint(0, C, (N,)),
        lambda x, y: 0.7 * ce_smooth_sum_ref(x, y) + 0.3 * bce_batchmean_ref(x, y),
    )


def test_class_weighted_mean_and_plain_mean_keep_separate_denominators():
    assert_parity(
        "ce(weight=[1, 2, 3, 4]) + 0.5 * ce()",
        torch.randn(N, C), torch.randint(0, C, (N,)),
        lambda x, y: ce_weighted_ref(x, y) + 0.5 * ce_ref(x, y),
    )


def test_terms_with_different_ignore_index_mask_their_own_positions():
    target = torch.randint(0, C, (N,))
    target[::3] = 255
    # ce ignores 255; ce(smoothing) with the default ignore_index would reject 255, so use ignore 255
    # on both, and a weight on one to make the denominators differ.
    assert_parity(
        "ce(ignore_index=255) + ce(weight=[1, 2, 3, 4], ignore_index=255, smoothing=0.2)",
        torch.randn(N, C), target,
        lambda x, y: F.cross_entropy(x, y, ignore_index=255)
        + F.cross_entropy(x, y, weight=torch.tensor([1.0, 2.0, 3.0, 4.0]), ignore_index=255, label_smoothing=0.2),
    )


def test_regression_terms_combine():
    assert_parity(
        "mse() - 0.5 * l1(reduction=sum) + smooth_l1(beta=0.5, reduction=batchmean) / 2",
        torch.randn(N, 3), torch.randn(N, 3),
        lambda x, y: F.mse_loss(x, y)
        - 0.5 * F.l1_loss(x, y, reduction="sum")
        + F.smooth_l1_loss(x, y, beta=0.5, reduction="sum") / N / 2,
    )


def test_none_reduction_terms_of_equal_shape_add_element_by_element():
    target = torch.randint(0, C, (2, 3, 5))
    target[0, 0] = 255
    assert_parity(
        "ce(ignore_index=255, reduction=none) + 2 * ce(smoothing=0.1, ignore_index=255, reduction=none)",
        torch.randn(2, C, 3, 5), target,
        lambda x, y: F.cross_entropy(x, y, ignore_index=255, reduction="none")
        + 2 * F.cross_entropy(x, y, ignore_index=255, label_smoothing=0.1, reduction="none"),
    )


def test_none_reduction_sigmoid_and_regression_terms_add_element_by_element():
    target = torch.rand(N, C)
    assert_parity(
        "bce(reduction=none) - 0.5 * mse(reduction=none)",
        torch.randn(N, C), target,
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none")
        - 0.5 * F.mse_loss(x, y, reduction="none"),
    )


def test_none_reduction_terms_of_different_shapes_raise():
    loss = lossdsl.compile("ce(reduction=none) + bce(reduction=none)")
    with pytest.raises(lossdsl.LossDSLError):
        loss(torch.randn(N, C), torch.randint(0, C, (N,)))


def test_none_reduction_cannot_be_added_to_reduced_terms():
    with pytest.raises(lossdsl.LossDSLError):
        lossdsl.compile("ce(reduction=none) + bce()")


# --------------------------------------------------------------------------------------------------
# all-ignored batches

ALL_IGNORED = [
    "ce(ignore_index=255)",
    "ce(weight=[1, 2, 3, 4], ignore_index=255)",
    "ce(smoothing=0.1, ignore_index=255)",
    "ce(weight=[1, 2, 3, 4], smoothing=0.1, ignore_index=255)",
    "bce(ignore_index=255)",
    "bce(weight=[1, 2, 3, 4], pos_weight=[2, 2, 1, 1], smoothing=0.1, ignore_index=255)",
]


def with_reduction(expr, reduction):
    return expr[:-1] + f", reduction={reduction})"


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("expr", ALL_IGNORED)
@pytest.mark.parametrize("shape", [(N, C), (2, C, 3, 5)], ids=["2d", "4d"])
def test_all_ignored_batch_gives_zero_and_zero_gradient(expr, reduction, shape):
    x = torch.randn(shape, requires_grad=True)
    target = torch.full((shape[0], *shape[2:]), 255)
    value = lossdsl.compile(with_reduction(expr, reduction))(x, target)
    assert torch.all(value == 0), value
    value.sum().backward()
    assert not torch.isnan(x.grad).any()
    assert torch.all(x.grad == 0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_batch_with_default_ignore_index(reduction):
    x = torch.randn(N, C, requires_grad=True)
    value = lossdsl.compile(f"ce(smoothing=0.1, reduction={reduction})")(x, torch.full((N,), -100))
    value.sum().backward()
    assert torch.all(value == 0)
    assert torch.all(x.grad == 0)


# --------------------------------------------------------------------------------------------------
# pos_mean


def test_pos_mean_with_zero_positives_divides_by_one():
    x, target = torch.randn(N, C), torch.zeros(N, C)
    assert_parity(
        "bce(reduction=pos_mean)", x, target,
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="sum"),
    )


def test_pos_mean_with_one_positive_equals_sum():
    x, target = torch.randn(N, C), torch.zeros(N, C)
    target[2, 1] = 1
    assert_parity(
        "bce(pos_weight=3, reduction=pos_mean)", x, target,
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, pos_weight=torch.tensor(3.0), reduction="sum"),
    )


def test_pos_mean_with_smoothing_counts_the_positive_targets_not_the_smoothed_mass():
    x, target = torch.randn(N, C), torch.zeros(N, C)
    target[:3, 0] = 1

    def reference(x, y):
        smoothed = y * 0.8 + 0.1
        return F.binary_cross_entropy_with_logits(x, smoothed, reduction="sum") / 3

    assert_parity("bce(smoothing=0.2, reduction=pos_mean)", x, target, reference)


def test_pos_mean_in_a_sum_uses_each_terms_own_count():
    x = torch.randn(N, C)
    target = torch.randint(0, C, (N,))
    target[:3] = 255
    valid = N - 3
    assert_parity(
        "ce(ignore_index=255, reduction=pos_mean) + bce(ignore_index=255, reduction=pos_mean)",
        x, target,
        lambda x, y: F.cross_entropy(x, y, ignore_index=255, reduction="sum") / valid
        + (F.binary_cross_entropy_with_logits(x, one_hot(y.clamp(max=C - 1)), reduction="none")
           * (y != 255).unsqueeze(1)).sum() / valid,
    )
