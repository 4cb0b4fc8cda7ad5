"""Algebraic identities between expressions (SPEC section 2), checked on values and gradients.

Two compiled expressions are compared with each other, so these tests pin down the language's
meaning without any outside reference: neutral parameters do nothing, named losses are exactly
their expansions, and special cases coincide.
"""

from __future__ import annotations

import pytest
import torch

import lossdsl
from lossdsl.catalogue.likelihoods import BCE, CE
from lossdsl.catalogue.modifiers import Balance, Clip, Density, Modulate

RTOL, ATOL = 1e-5, 1e-6


# --------------------------------------------------------------------------------------------------
# helpers


def multi_hot(shape, rate=0.3):
    return (torch.rand(shape) < rate).float()


def index_targets(shape, num_classes, ignore=None, every=3):
    target = torch.randint(0, num_classes, shape)
    if ignore is not None:
        target.view(-1)[::every] = ignore
    return target


# Inputs by kind: (logits, target). Logits are moderate (randn * 3).
def inputs(kind):
    if kind == "dense":  # sigmoid, multi-hot
        return torch.randn(64, 10) * 3, multi_hot((64, 10))
    if kind == "soft":  # sigmoid, soft targets, K-dim
        return torch.randn(2, 5, 4, 4) * 3, torch.rand(2, 5, 4, 4)
    if kind == "sigmoid-index":  # sigmoid, class indices with ignored positions
        return torch.randn(2, 5, 4, 4) * 3, index_targets((2, 4, 4), 5, ignore=255)
    if kind == "index":  # softmax, class indices
        return torch.randn(64, 10) * 3, index_targets((64,), 10)
    if kind == "index-4d":  # softmax, K-dim class indices with ignored positions
        return torch.randn(2, 5, 4, 4) * 3, index_targets((2, 4, 4), 5, ignore=255)
    if kind == "probabilities":  # softmax, dense distributions
        return torch.randn(64, 10) * 3, torch.softmax(torch.randn(64, 10) * 2, dim=1)
    raise AssertionError(kind)


def evaluate(loss, x, target, cotangent=None):
    leaf = x.detach().clone().requires_grad_(True)
    value = loss(leaf, target)
    if cotangent is None:
        cotangent = torch.randn(value.shape)
    (grad,) = torch.autograd.grad(value, leaf, cotangent)
    return value, grad, cotangent


def assert_same_loss(left, right, kind, *, rtol=RTOL, atol=ATOL, steps=1):
    """Two expressions (or specs, or modules) give the same values and gradients on the same inputs."""
    left_loss = left if isinstance(left, torch.nn.Module) else lossdsl.compile(left)
    right_loss = right if isinstance(right, torch.nn.Module) else lossdsl.compile(right)
    for step in range(steps):
        x, target = inputs(kind)
        left_value, left_grad, cotangent = evaluate(left_loss, x, target)
        right_value, right_grad, _ = evaluate(right_loss, x, target, cotangent)
        label = f"{left} vs {right} (step {step})"
        assert left_value.shape == right_value.shape, label
        torch.testing.assert_close(
            left_value, right_value, rtol=rtol, atol=atol, msg=lambda m: f"{label}: {m}"
        )
        torch.testing.assert_close(
            left_grad, right_grad, rtol=rtol, atol=atol, msg=lambda m: f"{label} grad: {m}"
        )


# Losses with a p_t, and the inputs they take.
WRAPPABLE = [
    ("bce()", "dense"),
    ("bce(pos_weight=2, smoothing=0.1)", "soft"),
    ("bce(ignore_index=255)", "sigmoid-index"),
    ("ce()", "index"),
    ("ce(smoothing=0.1, ignore_index=255)", "index-4d"),
    ("ce()", "probabilities"),
    ("focal()", "dense"),
    ("focal(gamma=0.5, alpha=[0.1, 0.2, 0.3, 0.4, 0.5])", "soft"),
    ("focal(head=softmax, alpha=[0.1, 0.2, 0.3, 0.4, 0.5], ignore_index=255)", "index-4d"),
    ("asl()", "dense"),
    ("asl(head=softmax, smoothing=0.1)", "index"),
    ("clip(bce(), margin=0.1)", "dense"),
    ("balance(bce(), alpha=0.3)", "soft"),
    ("modulate(ce(), gamma_pos=1, gamma_neg=2)", "index"),
    ("ghm(bins=10)", "dense"),
]
WRAPPABLE_IDS = [f"{expr}-{kind}" for expr, kind in WRAPPABLE]


def with_reduction(expr, reduction):
    """``name(args)`` -> ``name(args, reduction=r)``."""
    inner = expr[:-1]
    separator = "" if inner.endswith("(") else ", "
    return f"{inner}{separator}reduction={reduction})"


# --------------------------------------------------------------------------------------------------
# neutral parameters


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("expr, kind", WRAPPABLE, ids=WRAPPABLE_IDS)
def test_poly_with_eps_zero_is_the_wrapped_loss(expr, kind, reduction):
    assert_same_loss(
        f"poly({expr}, eps=0, reduction={reduction})", with_reduction(expr, reduction), kind
    )


@pytest.mark.parametrize("expr, kind", WRAPPABLE, ids=WRAPPABLE_IDS)
def test_poly_n_with_all_eps_zero_is_the_wrapped_loss(expr, kind):
    assert_same_loss(f"poly({expr}, eps=[0, 0, 0])", expr, kind)


MODULATE_FREE = [  # wrappable losses with no modulate inside (a term holds one modulate block)
    ("bce()", "dense"),
    ("bce(pos_weight=2, smoothing=0.1)", "soft"),
    ("bce(ignore_index=255)", "sigmoid-index"),
    ("ce()", "index"),
    ("ce(smoothing=0.1, ignore_index=255)", "index-4d"),
    ("ce()", "probabilities"),
    ("clip(bce(), margin=0.1)", "dense"),
    ("balance(bce(), alpha=0.3)", "soft"),
    ("poly(bce(), eps=2)", "dense"),
    ("poly(ce(), eps=[1, 0.5])", "index"),
    ("ghm(bins=10)", "dense"),
]


@pytest.mark.parametrize(
    "gamma_options", ["gamma=0", "gamma_pos=0, gamma_neg=0", "gamma=0, detach=true"]
)
@pytest.mark.parametrize("expr, kind", MODULATE_FREE, ids=[f"{e}-{k}" for e, k in MODULATE_FREE])
def test_modulate_with_gamma_zero_is_the_wrapped_loss(expr, kind, gamma_options):
    assert_same_loss(f"modulate({expr}, {gamma_options})", expr, kind)


@pytest.mark.parametrize("kind", ["dense", "soft", "sigmoid-index"])
def test_ghm_with_one_bin_is_bce(kind):
    """One bin holds every valid element: weight ``tot / n = 1``, divided by one non-empty bin."""
    ignore = ", ignore_index=255" if kind == "sigmoid-index" else ""
    assert_same_loss(f"ghm(bins=1{ignore})", f"bce({ignore[2:]})", kind)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_density_with_one_bin_is_the_wrapped_loss_for_every_reduction(reduction):
    assert_same_loss(
        f"density(clip(bce()), bins=1, reduction={reduction})", f"clip(bce(), reduction={reduction})",
        "dense",
    )


@pytest.mark.parametrize("gamma", [0, 0.5, 2, 3])
@pytest.mark.parametrize("kind", ["dense", "soft", "sigmoid-index"])
def test_symmetric_asl_without_clip_is_focal_without_alpha(gamma, kind):
    ignore = ", ignore_index=255" if kind == "sigmoid-index" else ""
    assert_same_loss(
        f"asl(gamma_pos={gamma}, gamma_neg={gamma}, clip=0{ignore})",
        f"focal(gamma={gamma}, alpha=none{ignore})",
        kind,
    )


@pytest.mark.parametrize("gamma", [0, 0.5, 2])
def test_softmax_asl_without_negative_focusing_is_softmax_focal(gamma):
    """With ``gamma_neg=0`` only the target class is weighted: ``(1 - p_t)^gamma_pos``."""
    assert_same_loss(
        f"asl(head=softmax, gamma_pos={gamma}, gamma_neg=0)", f"focal(head=softmax, gamma={gamma})",
        "index",
    )


def test_focal_with_gamma_zero_and_no_alpha_is_bce():
    assert_same_loss("focal(gamma=0, alpha=none)", "bce()", "dense")


def test_softmax_focal_with_gamma_zero_is_ce():
    assert_same_loss("focal(head=softmax, gamma=0, ignore_index=255)", "ce(ignore_index=255)", "index-4d")


@pytest.mark.parametrize(
    "expr, kind",
    [("bce()", "dense"), ("bce()", "soft"), ("focal(alpha=none)", "dense"), ("clip(bce())", "soft"),
     ("ce()", "index"), ("ce(ignore_index=255)", "index-4d"), ("focal(head=softmax)", "index")],
)
def test_balance_with_alpha_one_half_halves_the_loss(expr, kind):
    """Sigmoid: ``alpha y + (1 - alpha)(1 - y) = 0.5``; softmax: a number scales every class alike."""
    assert_same_loss(f"balance({expr}, alpha=0.5)", f"0.5 * {expr}", kind)


def test_balance_with_alpha_one_keeps_only_positive_terms_of_binary_targets():
    assert_same_loss("balance(bce(), alpha=1)", "bce(pos_weight=1) - bce(pos_weight=0)", "dense")


def test_poly_eps_list_of_one_is_poly_1():
    assert_same_loss("poly(focal(), eps=[2])", "poly(focal(), eps=2)", "dense")


def test_poly_1_over_bce_is_bce_plus_eps_times_one_minus_p_t():
    """The added term is linear in eps: ``bce + 2 q = 2 (bce + q) - bce``."""
    assert_same_loss("poly(bce(), eps=2)", "2 * poly(bce(), eps=1) - bce()", "soft")


# --------------------------------------------------------------------------------------------------
# every named loss is exactly its expansion

NAMED = [
    ("focal()", "dense"),
    ("focal(gamma=0.5, alpha=0.75)", "soft"),
    ("focal(gamma=3, alpha=none, ignore_index=255)", "sigmoid-index"),
    ("focal(alpha=[0.1, 0.2, 0.3, 0.4, 0.5])", "soft"),
    ("focal(head=softmax)", "index"),
    ("focal(head=softmax, gamma=1.5, alpha=[0.1, 0.2, 0.3, 0.4, 0.5], ignore_index=255)", "index-4d"),
    ("focal(head=softmax, alpha=0.25, reduction=sum)", "index"),
    ("asl()", "dense"),
    ("asl(gamma_pos=0, gamma_neg=2, clip=0, detach=true, smoothing=0.1)", "soft"),
    ("asl(ignore_index=255, reduction=none)", "sigmoid-index"),
    ("asl(head=softmax)", "index"),
    ("asl(head=softmax, gamma_pos=0.5, gamma_neg=1, smoothing=0.1, ignore_index=255)", "index-4d"),
    ("ghm()", "dense"),
    ("ghm(bins=30, momentum=0.75)", "dense"),
    ("ghm(bins=5, momentum=0.5, ignore_index=255)", "sigmoid-index"),
    ("zlpr()", "dense"),
    ("zlpr(reduction=none)", "soft"),
    ("poly(focal(gamma=2), eps=1) + 0.5 * ghm(bins=30, momentum=0.75)", "dense"),
    ("0.7 * asl(head=softmax) + 0.3 * poly(focal(head=softmax), eps=[1, 0.5])", "index"),
]
NAMED_IDS = [f"{expr}-{kind}" for expr, kind in NAMED]


@pytest.mark.parametrize("expr, kind", NAMED, ids=NAMED_IDS)
def test_named_loss_equals_its_expansion(expr, kind):
    spec = lossdsl.parse(expr)
    # Three steps: a momentum buffer must evolve identically too.
    assert_same_loss(lossdsl.compile(spec), lossdsl.compile(spec.expand()), kind, steps=3)


@pytest.mark.parametrize("expr, kind", NAMED, ids=NAMED_IDS)
def test_printed_expansion_parses_and_compiles_to_the_same_loss(expr, kind):
    spec = lossdsl.parse(expr)
    printed = str(spec.expand())
    assert lossdsl.parse(printed) == spec.expand(), printed
    assert_same_loss(lossdsl.compile(spec), lossdsl.compile(printed), kind, steps=3)


@pytest.mark.parametrize("expr, kind", NAMED, ids=NAMED_IDS)
def test_expansion_is_idempotent_and_names_no_named_loss(expr, kind):
    expanded = lossdsl.parse(expr).expand()
    assert expanded.expand() == expanded
    printed = str(expanded)
    for name in ("focal(", "asl(", "ghm("):
        assert name not in printed, printed


# --------------------------------------------------------------------------------------------------
# spec-level expansions (SPEC section 2, the "expansion" column)


def test_focal_expands_to_balance_of_modulate_of_bce():
    loss = lossdsl.parse("focal()").expand().terms[0].loss
    assert isinstance(loss, Balance) and loss.alpha == 0.25
    assert isinstance(loss.loss, Modulate)
    assert loss.loss.gamma == 2 and loss.loss.gamma_pos is None and loss.loss.gamma_neg is None
    assert loss.loss.detach is False
    assert isinstance(loss.loss.loss, BCE)
    assert loss.loss.loss == BCE()


EXPANSIONS = [
    ("focal()", "balance(modulate(bce(), gamma=2), alpha=0.25)"),
    ("focal(gamma=1, alpha=0.5)", "balance(modulate(bce(), gamma=1), alpha=0.5)"),
    ("focal(alpha=none)", "modulate(bce(), gamma=2)"),
    ("focal(ignore_index=255)", "balance(modulate(bce(ignore_index=255), gamma=2), alpha=0.25)"),
    ("focal(head=softmax)", "modulate(ce(), gamma=2)"),
    ("focal(head=softmax, alpha=[0.2, 0.8])", "balance(modulate(ce(), gamma=2), alpha=[0.2, 0.8])"),
    ("asl()", "modulate(clip(bce(), margin=0.05), gamma_pos=1, gamma_neg=4)"),
    ("asl(clip=0)", "modulate(bce(), gamma_pos=1, gamma_neg=4)"),
    (
        "asl(gamma_pos=0, gamma_neg=2, clip=0.1, detach=true, smoothing=0.1)",
        "modulate(clip(bce(smoothing=0.1), margin=0.1), gamma_pos=0, gamma_neg=2, detach=true)",
    ),
    ("asl(head=softmax)", "modulate(ce(), gamma_pos=1, gamma_neg=4)"),
    ("asl(head=softmax, smoothing=0.1)", "modulate(ce(smoothing=0.1), gamma_pos=1, gamma_neg=4)"),
    ("ghm()", "density(bce(), bins=10, momentum=0)"),
    ("ghm(bins=30, momentum=0.75)", "density(bce(), bins=30, momentum=0.75)"),
    ("zlpr()", "zlpr()"),
    ("poly(focal(gamma=2), eps=1)", "poly(balance(modulate(bce(), gamma=2), alpha=0.25), eps=1)"),
    ("focal(reduction=sum)", "balance(modulate(bce(), gamma=2), alpha=0.25, reduction=sum)"),
    ("0.5 * focal() + ghm()", "0.5 * balance(modulate(bce())) + density(bce())"),
]


@pytest.mark.parametrize("named, expansion", EXPANSIONS, ids=[e for e, _ in EXPANSIONS])
def test_named_loss_expands_to_the_spec_expansion(named, expansion):
    assert lossdsl.parse(named).expand() == lossdsl.parse(expansion)


def test_expansion_keeps_weights_and_reductions_of_every_term():
    spec = lossdsl.parse("0.7 * focal(reduction=sum) + 0.3 * asl(head=softmax, reduction=batchmean)")
    expanded = spec.expand()
    assert [t.weight for t in expanded.terms] == [0.7, 0.3]
    assert [t.reduction for t in expanded.terms] == ["sum", "batchmean"]
    assert isinstance(expanded.terms[1].loss, Modulate) and isinstance(expanded.terms[1].loss.loss, CE)


def test_asl_expansion_has_clip_inside_modulate():
    loss = lossdsl.parse("asl()").expand().terms[0].loss
    assert isinstance(loss, Modulate) and isinstance(loss.loss, Clip) and isinstance(loss.loss.loss, BCE)
    assert loss.loss.margin == 0.05


def test_ghm_expansion_is_density_over_bce():
    loss = lossdsl.parse("ghm(bins=30, momentum=0.75)").expand().terms[0].loss
    assert isinstance(loss, Density) and loss.bins == 30 and loss.momentum == 0.75
    assert loss.loss == BCE()
