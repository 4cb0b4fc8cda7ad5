"""The blocks and named losses (SPEC section 2) give the values and gradients of the papers' formulas
and of the libraries that implement them.

Every reference is written out in this file from the formula in SPEC (autograd on a plain expression,
in float64), or calls the library SPEC names for parity: torchvision's ``sigmoid_focal_loss`` formula,
kornia's focal losses, timm's ASL / PolyLoss / ZLPR modules and mmdetection's GHM-C loop. None of them
uses lossdsl's own kernels.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

import lossdsl

RTOL, ATOL = 1e-5, 1e-6
SHAPES = {"2d": (64, 10), "4d": (2, 5, 4, 4)}


# --------------------------------------------------------------------------------------------------
# helpers


def assert_parity(expr, logits, target, reference, *, double=True, rtol=RTOL, atol=ATOL, loss=None):
    """``expr`` compiled and ``reference(x, target)`` agree in value, shape, dtype and gradient.

    The reference runs in float64 (``double``) unless it is a library that works in float32 only.
    A random cotangent checks every element of an unreduced loss, not only their sum.
    """
    loss = lossdsl.compile(expr) if loss is None else loss
    ours_x = logits.detach().clone().requires_grad_(True)
    ref_x = logits.detach().clone().to(torch.float64 if double else torch.float32).requires_grad_(True)
    got = loss(ours_x, target)
    want = reference(ref_x, target)
    assert got.dtype == torch.float32, f"{expr}: output dtype {got.dtype}"
    assert got.shape == want.shape, f"{expr}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got, want.float(), rtol=rtol, atol=atol, msg=lambda m: f"{expr} value: {m}")
    cotangent = torch.randn(want.shape, dtype=torch.float64)
    (got_grad,) = torch.autograd.grad(got, ours_x, cotangent.float())
    (want_grad,) = torch.autograd.grad(want, ref_x, cotangent.to(want.dtype))
    torch.testing.assert_close(
        got_grad, want_grad.float(), rtol=rtol, atol=atol, msg=lambda m: f"{expr} gradient: {m}"
    )


def multi_hot(shape, rate=0.3):
    return (torch.rand(shape) < rate).float()


def soft_targets(shape):
    return torch.rand(shape)


def index_targets(shape, num_classes, ignore=None, every=3):
    """Random class indices; every ``every``-th position (flattened) set to ``ignore``."""
    target = torch.randint(0, num_classes, shape)
    if ignore is not None:
        target.view(-1)[::every] = ignore
    return target


def index_shape(shape):
    return (shape[0], *shape[2:])


def per_class(values, x):
    """A number, or a per-class list broadcast on dimension 1 of ``x``."""
    tensor = torch.as_tensor(values, dtype=x.dtype)
    if tensor.dim() == 0 or x.dim() < 2:
        return tensor
    return tensor.view(1, -1, *([1] * (x.dim() - 2)))


def alpha_list(num_classes):
    return [round(0.1 + 0.8 * i / (num_classes - 1), 3) for i in range(num_classes)]


def fmt(value):
    """A Python value as the expression language writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return repr(value)


def power(q, exponent):
    """``q ** exponent`` with a finite gradient where ``q = 0`` (the value there is ``0 ** exponent``)."""
    exponent = torch.as_tensor(exponent, dtype=q.dtype)
    positive = q > 0
    safe = torch.where(positive, q, torch.ones_like(q))
    at_zero = (exponent == 0).to(q.dtype).expand_as(q)
    return torch.where(positive, safe**exponent, at_zero)


def reduce(per_element, reduction, count=None):
    if reduction == "none":
        return per_element
    if reduction == "sum":
        return per_element.sum()
    if reduction == "batchmean":
        return per_element.sum() / per_element.shape[0]
    if reduction == "mean":
        return per_element.sum() / (per_element.numel() if count is None else count)
    raise AssertionError(reduction)


def bce_per_element(x, y):
    return F.binary_cross_entropy_with_logits(x, y.to(x.dtype), reduction="none")


def sigmoid_p_t(x, y):
    p = torch.sigmoid(x)
    return p * y + (1 - p) * (1 - y)


def smoothed_binary(y, s):
    return y * (1 - s) + s / 2


def softmax_log_p_t(x, target, ignore_index):
    """``log p_t`` per position from index targets, and the mask of positions that count."""
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    log_p_t = F.log_softmax(x, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    return log_p_t, valid, safe


def load_timm_loss(filename):
    """One file of timm's ``loss`` package (the package itself needs torchvision, absent here)."""
    found = importlib.util.find_spec("timm")
    if found is None or not found.submodule_search_locations:
        pytest.skip("timm is not installed")
    path = os.path.join(list(found.submodule_search_locations)[0], "loss", filename)
    if not os.path.exists(path):
        pytest.skip(f"this timm has no loss/{filename}")
    spec = importlib.util.spec_from_file_location(f"timm_{filename[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def timm_asl():
    return load_timm_loss("asymmetric_loss.py")


@pytest.fixture(scope="module")
def timm_poly():
    return load_timm_loss("poly_loss.py")


@pytest.fixture(scope="module")
def timm_zlpr():
    return load_timm_loss("zlpr_loss.py")


@pytest.fixture(scope="module")
def kornia_losses():
    return pytest.importorskip("kornia.losses")


# --------------------------------------------------------------------------------------------------
# focal, sigmoid head: torchvision.ops.sigmoid_focal_loss and kornia

GAMMAS = [0, 0.5, 1, 2, 3.5]
SIGMOID_ALPHAS = ["0.25", "none", "per-class"]


def torchvision_sigmoid_focal(x, y, gamma, alpha):
    """torchvision.ops.sigmoid_focal_loss, reduction='none', written out."""
    y = y.to(x.dtype)
    p = torch.sigmoid(x)
    ce_loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha is not None:
        a = per_class(alpha, x)
        alpha_t = a * y + (1 - a) * (1 - y)
        loss = alpha_t * loss
    return loss


def resolve_alpha(name, num_classes):
    return {"0.25": 0.25, "none": None, "per-class": alpha_list(num_classes)}[name]


@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize("alpha_name", SIGMOID_ALPHAS)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("targets", ["multi-hot", "soft"])
def test_sigmoid_focal_matches_torchvision_formula(gamma, alpha_name, layout, targets):
    shape = SHAPES[layout]
    alpha = resolve_alpha(alpha_name, shape[1])
    y = multi_hot(shape) if targets == "multi-hot" else soft_targets(shape)
    assert_parity(
        f"focal(gamma={gamma}, alpha={fmt(alpha)})", torch.randn(shape) * 3, y,
        lambda x, y: torchvision_sigmoid_focal(x, y, gamma, alpha).mean(),
    )


def test_sigmoid_focal_default_alpha_is_025_and_default_gamma_is_2():
    x, y = torch.randn(64, 10) * 3, multi_hot((64, 10))
    assert_parity("focal()", x, y, lambda x, y: torchvision_sigmoid_focal(x, y, 2, 0.25).mean())


@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
def test_sigmoid_focal_reductions_match_torchvision_formula(reduction):
    x, y = torch.randn(2, 5, 4, 4) * 3, multi_hot((2, 5, 4, 4))
    assert_parity(
        f"focal(reduction={reduction})", x, y,
        lambda x, y: reduce(torchvision_sigmoid_focal(x, y, 2, 0.25), reduction),
    )


@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize("alpha", [0.25, None])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_sigmoid_focal_matches_kornia_binary_focal_loss(kornia_losses, gamma, alpha, layout):
    shape = SHAPES[layout]
    y = multi_hot(shape)
    assert_parity(
        f"focal(gamma={gamma}, alpha={fmt(alpha)}, reduction=none)", torch.randn(shape) * 3, y,
        lambda x, y: kornia_losses.binary_focal_loss_with_logits(
            x, y.to(x.dtype), alpha=alpha, gamma=float(gamma), reduction="none"
        ),
    )


def test_sigmoid_focal_with_index_targets_equals_focal_on_their_one_hot():
    x = torch.randn(2, 5, 4, 4) * 3
    target = index_targets((2, 4, 4), 5)
    one_hot = F.one_hot(target, 5).permute(0, 3, 1, 2).float()
    assert_parity(
        "focal(gamma=2)", x, target,
        lambda x, y: torchvision_sigmoid_focal(x, one_hot, 2, 0.25).mean(),
    )


# --------------------------------------------------------------------------------------------------
# focal, softmax head: -alpha_t (1 - p_t)^gamma log p_t, and kornia.losses.focal_loss

SOFTMAX_CASES = {
    "2d": ((64, 10), -100, None),
    "4d-ignore-255": ((2, 5, 4, 4), 255, 255),
    "4d-ignore-default": ((2, 5, 4, 4), -100, -100),
}


def softmax_focal_per_position(x, target, gamma, alpha, ignore_index=-100):
    log_p_t, valid, safe = softmax_log_p_t(x, target, ignore_index)
    p_t = log_p_t.exp()
    if alpha is None:
        alpha_t = 1.0
    elif isinstance(alpha, (int, float)):
        alpha_t = alpha
    else:
        alpha_t = torch.tensor(alpha, dtype=x.dtype)[safe]
    loss = -alpha_t * (1 - p_t) ** gamma * log_p_t
    return loss * valid, valid


def softmax_alpha(name, num_classes):
    return {"none": None, "0.25": 0.25, "per-class": alpha_list(num_classes)}[name]


@pytest.mark.parametrize("case", SOFTMAX_CASES)
@pytest.mark.parametrize("alpha_name", ["none", "0.25", "per-class"])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_softmax_focal_matches_formula(gamma, alpha_name, case):
    shape, ignore_index, ignore = SOFTMAX_CASES[case]
    alpha = softmax_alpha(alpha_name, shape[1])
    target = index_targets(index_shape(shape), shape[1], ignore=ignore)
    options = f"gamma={gamma}, alpha={fmt(alpha)}"
    if ignore_index != -100:
        options += f", ignore_index={ignore_index}"

    def reference(x, y):
        loss, valid = softmax_focal_per_position(x, y, gamma, alpha, ignore_index)
        return loss.sum() / valid.sum()

    assert_parity(f"focal(head=softmax, {options})", torch.randn(shape) * 3, target, reference)


def test_softmax_focal_default_has_no_alpha():
    x, target = torch.randn(64, 10) * 3, index_targets((64,), 10)
    assert_parity(
        "focal(head=softmax)", x, target,
        lambda x, y: softmax_focal_per_position(x, y, 2, None)[0].mean(),
    )


@pytest.mark.parametrize("case", SOFTMAX_CASES)
@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_softmax_focal_matches_kornia_focal_loss(kornia_losses, gamma, alpha, case):
    """kornia weights class 0 by ``1 - alpha`` and every other class by ``alpha``: our per-class list
    ``[1 - alpha, alpha, ...]``. Its ``reduction='none'`` map has the loss in the target's slice."""
    shape, ignore_index, ignore = SOFTMAX_CASES[case]
    target = index_targets(index_shape(shape), shape[1], ignore=ignore)
    ours_alpha = None if alpha is None else [1 - alpha] + [alpha] * (shape[1] - 1)
    assert_parity(
        f"focal(head=softmax, gamma={gamma}, alpha={fmt(ours_alpha)}, ignore_index={ignore_index}, "
        "reduction=none)",
        torch.randn(shape) * 3, target,
        lambda x, y: kornia_losses.focal_loss(
            x, y, alpha=alpha, gamma=float(gamma), reduction="none", ignore_index=ignore_index
        ).sum(dim=1),
    )


# --------------------------------------------------------------------------------------------------
# asl, multi-label: timm AsymmetricLossMultiLabel, and the formula

ASL_PARAMETERS = [  # gamma_pos, gamma_neg, clip
    (1, 4, 0.05),
    (0, 4, 0.05),
    (0, 2, 0),
    (1, 4, 0),
    (0.5, 2.5, 0.2),
    (2, 2, 0),
]


def asl_logits(shape=(64, 10)):
    """Moderate logits: timm computes 1 - sigmoid(x) in float32, which cancels digits for large x
    (at x = 6.4 its gradient is already off by 4e-5 relative; ours agrees with float64 there)."""
    return (torch.randn(shape) * 2).clamp(-5, 5)


def asl_formula(x, y, gamma_pos, gamma_neg, clip, detach=False, smoothing=0.0):
    """SPEC: ``modulate(clip(bce(smoothing=s), margin=clip), gamma_pos, gamma_neg)`` written out."""
    y = smoothed_binary(y.to(x.dtype), smoothing)
    p = torch.sigmoid(x)
    log_pos = F.logsigmoid(x)
    if clip > 0:
        p_m = (p - clip).clamp(min=0)
        log_neg = torch.log((1 - p + clip).clamp(max=1))
    else:
        p_m = p
        log_neg = F.logsigmoid(-x)
    loss = -(y * log_pos + (1 - y) * log_neg)
    q = y * (1 - p) + (1 - y) * p_m
    weight = power(q, gamma_pos * y + gamma_neg * (1 - y))
    if detach:
        weight = weight.detach()
    return loss * weight


def asl_expr(gamma_pos, gamma_neg, clip, detach=False, smoothing=0.0, reduction="mean"):
    return (
        f"asl(gamma_pos={gamma_pos}, gamma_neg={gamma_neg}, clip={clip}, detach={fmt(detach)}, "
        f"smoothing={smoothing}, reduction={reduction})"
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("gamma_pos, gamma_neg, clip", ASL_PARAMETERS)
def test_asl_matches_timm_multilabel(timm_asl, gamma_pos, gamma_neg, clip, detach, smoothing):
    reference = timm_asl.AsymmetricLossMultiLabel(
        gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, disable_torch_grad_focal_loss=detach,
        smoothing=smoothing, reduction="mean",
    )
    assert_parity(
        asl_expr(gamma_pos, gamma_neg, clip, detach, smoothing), asl_logits(), multi_hot((64, 10)),
        reference, double=False,
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean", "none"])
def test_asl_reductions_match_timm_multilabel(timm_asl, reduction):
    """timm's 'batchmean' (its default) is the sum divided by N, like ours."""
    reference = timm_asl.AsymmetricLossMultiLabel(reduction=reduction)
    assert_parity(f"asl(reduction={reduction})", asl_logits(), multi_hot((64, 10)), reference, double=False)


def test_asl_defaults_match_timm_defaults(timm_asl):
    reference = timm_asl.AsymmetricLossMultiLabel(reduction="mean")  # gamma_neg=4, gamma_pos=1, clip=0.05
    assert_parity("asl()", asl_logits(), multi_hot((64, 10)), reference, double=False)


def test_asl_soft_targets_match_timm_multilabel(timm_asl):
    reference = timm_asl.AsymmetricLossMultiLabel(reduction="sum")
    assert_parity("asl(reduction=sum)", asl_logits(), soft_targets((64, 10)), reference, double=False)


@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("gamma_pos, gamma_neg, clip", ASL_PARAMETERS)
def test_asl_matches_formula(gamma_pos, gamma_neg, clip, detach, layout):
    shape = SHAPES[layout]
    assert_parity(
        asl_expr(gamma_pos, gamma_neg, clip, detach, 0.1, "none"), torch.randn(shape) * 3,
        multi_hot(shape), lambda x, y: asl_formula(x, y, gamma_pos, gamma_neg, clip, detach, 0.1),
    )


# --------------------------------------------------------------------------------------------------
# asl, single-label: timm AsymmetricLossSingleLabel (its eps is our smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("gamma_pos, gamma_neg", [(1, 4), (0, 4), (0, 0), (2, 1), (0.5, 1.5)])
def test_softmax_asl_matches_timm_single_label(timm_asl, gamma_pos, gamma_neg, smoothing):
    reference = timm_asl.AsymmetricLossSingleLabel(
        gamma_pos=gamma_pos, gamma_neg=gamma_neg, eps=smoothing, reduction="mean"
    )
    assert_parity(
        f"asl(head=softmax, gamma_pos={gamma_pos}, gamma_neg={gamma_neg}, smoothing={smoothing})",
        torch.randn(64, 10) * 3, index_targets((64,), 10), reference, double=False,
    )


def test_softmax_asl_unreduced_matches_timm_per_sample(timm_asl):
    reference = timm_asl.AsymmetricLossSingleLabel(eps=0.1, reduction="none")
    assert_parity(
        "asl(head=softmax, smoothing=0.1, reduction=none)", torch.randn(64, 10) * 3,
        index_targets((64,), 10), reference, double=False,
    )


# --------------------------------------------------------------------------------------------------
# poly: timm PolyCrossEntropy / PolyBinaryCrossEntropy, the hand-written Poly-1 focal, and Poly-N


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("eps", [1, 2, -1, 0.5])
def test_poly_ce_matches_timm_poly_cross_entropy(timm_poly, eps, smoothing, reduction):
    reference = timm_poly.PolyCrossEntropy(epsilon=eps, smoothing=smoothing, reduction=reduction)
    assert_parity(
        f"poly(ce(smoothing={smoothing}), eps={eps}, reduction={reduction})", torch.randn(64, 10) * 3,
        index_targets((64,), 10), reference, double=False,
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [1, 2, -1])
def test_poly_ce_dense_targets_match_timm_poly_cross_entropy(timm_poly, eps, reduction):
    reference = timm_poly.PolyCrossEntropy(epsilon=eps, reduction=reduction)
    target = torch.softmax(torch.randn(64, 10) * 2, dim=1)
    assert_parity(
        f"poly(ce(), eps={eps}, reduction={reduction})", torch.randn(64, 10) * 3, target, reference,
        double=False,
    )


def poly_binary_expr(eps, gamma, alpha, smoothing):
    """timm's PolyBinaryCrossEntropy in our language: alpha weights both terms, so balance is outside."""
    if smoothing == 0 and gamma:
        inner = f"focal(gamma={gamma}, alpha=none)"
    else:
        inner = f"bce(smoothing={smoothing})" if smoothing else "bce()"
        if gamma:
            inner = f"modulate({inner}, gamma={gamma})"
    expr = f"poly({inner}, eps={eps})"
    if alpha is not None:
        expr = f"balance({expr}, alpha={alpha})"
    return expr


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("gamma", [0, 0.5, 2])
@pytest.mark.parametrize("eps", [1, -1, 2])
def test_poly_bce_and_focal_match_timm_poly_binary_cross_entropy(timm_poly, eps, gamma, alpha, smoothing):
    reference = timm_poly.PolyBinaryCrossEntropy(
        epsilon=eps, gamma=gamma, alpha=alpha, smoothing=smoothing, reduction="mean"
    )
    assert_parity(
        poly_binary_expr(eps, gamma, alpha, smoothing), asl_logits(), multi_hot((64, 10)), reference,
        double=False,
    )


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
def test_poly_binary_reductions_match_timm(timm_poly, reduction):
    reference = timm_poly.PolyBinaryCrossEntropy(epsilon=1, gamma=2, alpha=0.25, reduction=reduction)
    assert_parity(
        f"balance(poly(focal(gamma=2, alpha=none), eps=1), alpha=0.25, reduction={reduction})",
        asl_logits(), multi_hot((64, 10)), reference, double=False,
    )


@pytest.mark.parametrize("layout", SHAPES)
def test_poly1_focal_weights_only_the_focal_part_with_alpha(layout):
    """SPEC: ``poly(focal(gamma=2, alpha=0.25), eps=1)`` = ``alpha_t FL + 1 * (1 - p_t)^3``."""
    shape = SHAPES[layout]

    def reference(x, y):
        y = y.to(x.dtype)
        alpha_t = 0.25 * y + 0.75 * (1 - y)
        q = 1 - sigmoid_p_t(x, y)
        return (alpha_t * q**2 * bce_per_element(x, y) + q**3).mean()

    assert_parity(
        "poly(focal(gamma=2, alpha=0.25), eps=1)", torch.randn(shape) * 3, multi_hot(shape), reference
    )


POLY_N_EPS = [[1, 0.5, 0.25], [-1, 2, -0.5], [0, 0, 1]]


@pytest.mark.parametrize("eps", POLY_N_EPS, ids=str)
@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize(
    "inner, gamma, alpha",
    [("bce()", 0, None), ("focal(gamma=2, alpha=none)", 2, None), ("focal(gamma=0.5)", 0.5, 0.25),
     ("modulate(bce(), gamma=3)", 3, None)],
)
def test_poly_n_sigmoid_adds_eps_j_times_q_to_the_j_plus_gamma(inner, gamma, alpha, layout, eps):
    shape = SHAPES[layout]

    def reference(x, y):
        y = y.to(x.dtype)
        q = 1 - sigmoid_p_t(x, y)
        loss = bce_per_element(x, y) * q**gamma
        if alpha is not None:
            loss = loss * (alpha * y + (1 - alpha) * (1 - y))
        for j, e in enumerate(eps, start=1):
            loss = loss + e * q ** (j + gamma)
        return loss

    assert_parity(
        f"poly({inner}, eps={fmt(eps)}, reduction=none)", torch.randn(shape) * 3, multi_hot(shape),
        reference,
    )


@pytest.mark.parametrize("eps", POLY_N_EPS, ids=str)
@pytest.mark.parametrize("case", ["2d", "4d-ignore-255"])
@pytest.mark.parametrize("inner, gamma", [("ce", 0), ("focal", 2), ("focal", 0.5)])
def test_poly_n_softmax_adds_eps_j_times_q_to_the_j_plus_gamma(inner, gamma, case, eps):
    shape, ignore_index, ignore = SOFTMAX_CASES[case]
    target = index_targets(index_shape(shape), shape[1], ignore=ignore)
    if inner == "ce":
        inner_expr = f"ce(ignore_index={ignore_index})"
    else:
        inner_expr = f"focal(head=softmax, gamma={gamma}, ignore_index={ignore_index})"

    def reference(x, y):
        log_p_t, valid, _ = softmax_log_p_t(x, y, ignore_index)
        q = 1 - log_p_t.exp()
        loss = -(q**gamma) * log_p_t
        for j, e in enumerate(eps, start=1):
            loss = loss + e * q ** (j + gamma)
        return (loss * valid).sum() / valid.sum()

    assert_parity(f"poly({inner_expr}, eps={fmt(eps)})", torch.randn(shape) * 3, target, reference)


# --------------------------------------------------------------------------------------------------
# ghm / density: mmdetection's GHM-C, a plain loop over bins


class GHMCReference:
    """mmdetection ``GHMC(use_sigmoid=True, loss_weight=1)``, one bin at a time, with its momentum
    accumulator (updated for non-empty bins; the caller decides whether the update is kept)."""

    def __init__(self, bins, momentum):
        self.bins = bins
        self.momentum = momentum
        self.edges = [float(i) / bins for i in range(bins + 1)]
        self.edges[-1] += 1e-6
        self.acc_sum = [0.0] * bins

    def weights(self, x, y, valid):
        # g as mmdetection computes it: float32 sigmoid, detached
        g = (torch.sigmoid(x.detach().float()) - y.float()).abs()
        weights = torch.zeros_like(x, dtype=torch.float64)
        tot = max(float(valid.float().sum()), 1.0)
        n = 0
        for i in range(self.bins):
            inds = (g >= self.edges[i]) & (g < self.edges[i + 1]) & valid
            num_in_bin = float(inds.sum())
            if num_in_bin > 0:
                if self.momentum > 0:
                    self.acc_sum[i] = self.momentum * self.acc_sum[i] + (1 - self.momentum) * num_in_bin
                    weights[inds] = tot / self.acc_sum[i]
                else:
                    weights[inds] = tot / num_in_bin
                n += 1
        if n > 0:
            weights = weights / n
        return weights, tot

    def __call__(self, x, y, valid=None):
        y = y.to(x.dtype)
        valid = torch.ones_like(y, dtype=torch.bool) if valid is None else valid.expand_as(y)
        weights, tot = self.weights(x, y, valid)
        loss = F.binary_cross_entropy_with_logits(x, y, weights.to(x.dtype), reduction="sum")
        return loss / tot


def ghm_batches(steps):
    """Batches of varied sizes and spreads, so that bins go empty and full from one step to the next."""
    shapes = [(64, 10), (4, 5), (2, 5, 4, 4), (64, 10), (8, 3)]
    scales = [3.0, 1.0, 5.0, 0.5, 2.0]
    for step in range(steps):
        shape = shapes[step % len(shapes)]
        yield torch.randn(shape) * scales[step % len(scales)], multi_hot(shape)


@pytest.mark.parametrize("bins", [1, 10, 30])
def test_ghm_without_momentum_matches_mmdetection_loop(bins):
    for x, y in ghm_batches(3):
        reference = GHMCReference(bins, 0.0)
        assert_parity(f"ghm(bins={bins})", x, y, reference)


@pytest.mark.parametrize("momentum", [0.75, 0.3])
@pytest.mark.parametrize("bins", [1, 10, 30])
def test_ghm_momentum_matches_mmdetection_loop_over_several_steps(bins, momentum):
    loss = lossdsl.compile(f"ghm(bins={bins}, momentum={momentum})")
    reference = GHMCReference(bins, momentum)
    for step, (x, y) in enumerate(ghm_batches(5)):
        assert_parity(f"ghm step {step}", x, y, reference, loss=loss)
        buffer = loss.state_dict()["terms.0.ghm_accumulator"]
        torch.testing.assert_close(
            buffer, torch.tensor(reference.acc_sum, dtype=torch.float32), rtol=RTOL, atol=ATOL,
            msg=lambda m: f"accumulator after step {step}: {m}",
        )


def test_density_over_bce_is_ghm():
    loss = lossdsl.compile("density(bce(), bins=30, momentum=0.75)")
    reference = GHMCReference(30, 0.75)
    for step, (x, y) in enumerate(ghm_batches(3)):
        assert_parity(f"density step {step}", x, y, reference, loss=loss)


def test_density_unreduced_is_weight_times_bce():
    x, y = torch.randn(64, 10) * 3, multi_hot((64, 10))
    reference = GHMCReference(10, 0.0)

    def per_element(x, y):
        weights, _ = reference.weights(x, y, torch.ones_like(y, dtype=torch.bool))
        return weights.to(x.dtype) * bce_per_element(x, y)

    assert_parity("density(bce(), bins=10, reduction=none)", x, y, per_element)


def test_ghm_eval_mode_leaves_the_accumulator_unchanged():
    loss = lossdsl.compile("ghm(bins=10, momentum=0.75)")
    for x, y in ghm_batches(2):
        loss(x, y)
    before = loss.state_dict()["terms.0.ghm_accumulator"].clone()
    training_copy = copy.deepcopy(loss)
    loss.eval()
    x, y = torch.randn(64, 10) * 2, multi_hot((64, 10))
    value = loss(x, y)
    torch.testing.assert_close(loss.state_dict()["terms.0.ghm_accumulator"], before, rtol=0, atol=0)
    # The value is the one a training step would give; only the buffer update is not kept.
    torch.testing.assert_close(value, training_copy(x, y), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(loss(x, y), value, rtol=0, atol=0)


def test_ghm_accumulator_starts_at_zero_and_lives_in_state_dict():
    loss = lossdsl.compile("ghm(bins=30, momentum=0.75)")
    buffer = loss.state_dict()["terms.0.ghm_accumulator"]
    assert buffer.shape == (30,)
    assert torch.all(buffer == 0)


@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_ghm_index_targets_with_ignore_index_count_only_valid_elements(momentum):
    loss = lossdsl.compile(f"ghm(bins=10, momentum={momentum}, ignore_index=255)")
    reference = GHMCReference(10, momentum)
    for step in range(3):
        x = torch.randn(2, 5, 4, 4) * 3
        target = index_targets((2, 4, 4), 5, ignore=255, every=2 + step)
        valid = (target != 255).unsqueeze(1)
        one_hot = F.one_hot(torch.where(target == 255, 0, target), 5).permute(0, 3, 1, 2).float()
        one_hot = one_hot * valid
        assert_parity(
            f"ghm step {step}", x, target, lambda x, _: reference(x, one_hot, valid), loss=loss
        )
        if momentum:
            torch.testing.assert_close(
                loss.state_dict()["terms.0.ghm_accumulator"],
                torch.tensor(reference.acc_sum, dtype=torch.float32), rtol=RTOL, atol=ATOL,
            )


# --------------------------------------------------------------------------------------------------
# zlpr: timm ZlprLoss and the per-sample formula


def zlpr_formula(x, y):
    """Per sample: ``log(1 + sum_neg exp(x)) + log(1 + sum_pos exp(-x))``, classes on dimension 1."""
    positive = (y > 0.5).to(x.dtype)
    negative_sum = (torch.exp(x) * (1 - positive)).sum(dim=1)
    positive_sum = (torch.exp(-x) * positive).sum(dim=1)
    return torch.log(1 + negative_sum) + torch.log(1 + positive_sum)


def zlpr_targets(shape):
    y = multi_hot(shape)
    y[0] = 0  # a sample with no positive
    y[1] = 1  # a sample with no negative
    return y


def test_zlpr_matches_timm(timm_zlpr):
    assert_parity(
        "zlpr()", torch.randn(64, 10) * 3, zlpr_targets((64, 10)), timm_zlpr.ZlprLoss(), double=False
    )


@pytest.mark.parametrize("layout", SHAPES)
def test_zlpr_unreduced_matches_formula_per_sample(layout):
    shape = SHAPES[layout]
    assert_parity("zlpr(reduction=none)", torch.randn(shape) * 3, zlpr_targets(shape), zlpr_formula)


def test_zlpr_soft_targets_above_one_half_are_positives():
    x = torch.randn(64, 10) * 3
    y = torch.rand(64, 10)
    assert_parity("zlpr(reduction=none)", x, y, lambda x, y: zlpr_formula(x, (y > 0.5).float()))


def test_zlpr_known_values():
    # The issue asking for this suite quoted [1.4417, 1.6109, 1.5661] for this input. Those numbers do
    # not follow from the ZLPR formula (SPEC section 2, Su et al. 2022) nor from timm's ZlprLoss, which
    # both give [1.8582, 2.0163, 2.0666]: e.g. the first sample is
    # log(1 + e^0.1 + e^0.3) + log(1 + e^-0.9 + e^-0.8) = 1.1599 + 0.6983 = 1.8582.
    # (The quoted values are probably from a variant without the "1 +" or with other logits.)
    x = torch.tensor([[0.9, 0.1, 0.8, 0.3], [0.3, 0.2, 0.5, 0.7], [0.7, 0.6, 0.1, 0.3]])
    y = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]])
    per_sample = lossdsl.compile("zlpr(reduction=none)")(x, y)
    torch.testing.assert_close(per_sample, torch.tensor([1.8582, 2.0163, 2.0666]), rtol=0, atol=1e-4)
    torch.testing.assert_close(lossdsl.compile("zlpr()")(x, y), torch.tensor(1.9804), rtol=0, atol=1e-4)
    torch.testing.assert_close(zlpr_formula(x.double(), y).float(), per_sample, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------------
# clip and modulate, the primitive blocks


def clip_formula(x, y, margin):
    """``-[y log p + (1-y) log(min(1 - p + m, 1))]``."""
    y = y.to(x.dtype)
    p = torch.sigmoid(x)
    negative = torch.log((1 - p + margin).clamp(max=1)) if margin else F.logsigmoid(-x)
    return -(y * F.logsigmoid(x) + (1 - y) * negative)


@pytest.mark.parametrize("targets", ["multi-hot", "soft"])
@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize("margin", [0, 0.05, 0.2, 0.5])
def test_clip_bce_matches_shifted_negative_log_term(margin, layout, targets):
    shape = SHAPES[layout]
    y = multi_hot(shape) if targets == "multi-hot" else soft_targets(shape)
    assert_parity(
        f"clip(bce(), margin={margin}, reduction=none)", torch.randn(shape) * 3, y,
        lambda x, y: clip_formula(x, y, margin),
    )


def test_clip_default_margin_is_005():
    x, y = torch.randn(64, 10) * 3, multi_hot((64, 10))
    assert_parity("clip(bce())", x, y, lambda x, y: clip_formula(x, y, 0.05).mean())


def test_clip_discards_easy_negatives_entirely():
    """Negatives with ``p <= margin`` have loss 0 and gradient 0."""
    x = torch.tensor([[-4.0, -3.0, -2.0, 2.0]], requires_grad=True)  # p = 0.018, 0.047, 0.119, 0.881
    value = lossdsl.compile("clip(bce(), margin=0.05, reduction=none)")(x, torch.zeros(1, 4))
    value.sum().backward()
    assert torch.all(value[0, :2] == 0) and torch.all(x.grad[0, :2] == 0)
    assert torch.all(value[0, 2:] > 0) and torch.all(x.grad[0, 2:] > 0)


def modulate_sigmoid_formula(x, y, gamma_pos, gamma_neg, detach=False):
    y = y.to(x.dtype)
    q = 1 - sigmoid_p_t(x, y)
    weight = power(q, gamma_pos * y + gamma_neg * (1 - y))
    if detach:
        weight = weight.detach()
    return bce_per_element(x, y) * weight


@pytest.mark.parametrize("targets", ["multi-hot", "soft"])
@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize("gamma_pos, gamma_neg", [(0, 4), (1, 4), (2, 0), (0.5, 1.5), (3, 3)])
def test_modulate_asymmetric_sigmoid_matches_formula(gamma_pos, gamma_neg, layout, targets):
    shape = SHAPES[layout]
    y = multi_hot(shape) if targets == "multi-hot" else soft_targets(shape)
    assert_parity(
        f"modulate(bce(), gamma_pos={gamma_pos}, gamma_neg={gamma_neg}, reduction=none)",
        torch.randn(shape) * 3, y, lambda x, y: modulate_sigmoid_formula(x, y, gamma_pos, gamma_neg),
    )


@pytest.mark.parametrize("gamma", [0.5, 2])
def test_modulate_symmetric_gamma_equals_equal_gamma_pos_and_gamma_neg(gamma):
    x, y = torch.randn(64, 10) * 3, soft_targets((64, 10))
    assert_parity(
        f"modulate(bce(), gamma={gamma})", x, y,
        lambda x, y: modulate_sigmoid_formula(x, y, gamma, gamma).mean(),
    )


@pytest.mark.parametrize(
    "options, gamma_pos, gamma_neg",
    [("gamma=2", 2, 2), ("gamma=0.5", 0.5, 0.5), ("gamma_pos=1, gamma_neg=3", 1, 3)],
)
def test_modulate_detach_sigmoid_treats_the_factor_as_a_constant(options, gamma_pos, gamma_neg):
    x, y = torch.randn(64, 10) * 3, multi_hot((64, 10))
    assert_parity(
        f"modulate(bce(), {options}, detach=true, reduction=none)", x, y,
        lambda x, y: modulate_sigmoid_formula(x, y, gamma_pos, gamma_neg, detach=True),
    )


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_modulate_detach_changes_the_gradient_not_the_value(head):
    if head == "sigmoid":
        x, y, base = torch.randn(64, 10) * 3, multi_hot((64, 10)), "bce()"
    else:
        x, y, base = torch.randn(64, 10) * 3, index_targets((64,), 10), "ce()"
    values, grads = [], []
    for detach in ("false", "true"):
        leaf = x.clone().requires_grad_(True)
        value = lossdsl.compile(f"modulate({base}, gamma_pos=1, gamma_neg=2, detach={detach})")(leaf, y)
        (grad,) = torch.autograd.grad(value, leaf)
        values.append(value)
        grads.append(grad)
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=0)
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


def modulate_softmax_formula(x, target, gamma_pos, gamma_neg, smoothing=0.0, ignore_index=-100, detach=False):
    """SPEC: ``l = -sum_c q_c w_c log p_c``, ``w_c = (1-p_c)^gamma_pos`` for the target class and
    ``p_c^gamma_neg`` for the others; ``q`` the smoothed target distribution. Mean over valid positions."""
    num_classes = x.shape[1]
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    one_hot = F.one_hot(safe, num_classes).movedim(-1, 1).to(x.dtype)
    log_p = F.log_softmax(x, dim=1)
    p = log_p.exp()
    weight = one_hot * power(1 - p, gamma_pos) + (1 - one_hot) * power(p, gamma_neg)
    if detach:
        weight = weight.detach()
    q = (1 - smoothing) * one_hot + smoothing / num_classes
    loss = -(q * weight * log_p).sum(dim=1) * valid
    return loss.sum() / valid.sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("case", SOFTMAX_CASES)
@pytest.mark.parametrize("gamma_pos, gamma_neg", [(0, 1), (1, 4), (2, 0.5), (0.5, 2)])
def test_modulate_softmax_asymmetric_matches_per_class_weights(gamma_pos, gamma_neg, case, smoothing):
    shape, ignore_index, ignore = SOFTMAX_CASES[case]
    target = index_targets(index_shape(shape), shape[1], ignore=ignore)
    assert_parity(
        f"modulate(ce(smoothing={smoothing}, ignore_index={ignore_index}), gamma_pos={gamma_pos}, "
        f"gamma_neg={gamma_neg})",
        torch.randn(shape) * 3, target,
        lambda x, y: modulate_softmax_formula(x, y, gamma_pos, gamma_neg, smoothing, ignore_index),
    )


# Symmetric ``gamma`` without smoothing: only the target class has mass, so every reading of SPEC
# (``l * (1-p_t)^g``, or per-class weights) gives the same number. With smoothing, see the asymmetric case.
@pytest.mark.parametrize(
    "options, gamma_pos, gamma_neg, smoothing",
    [("gamma=2", 2, 0, 0.0), ("gamma=0.5", 0.5, 0, 0.0), ("gamma_pos=1, gamma_neg=2", 1, 2, 0.1)],
)
def test_modulate_detach_softmax_treats_the_weights_as_constants(options, gamma_pos, gamma_neg, smoothing):
    x, target = torch.randn(64, 10) * 3, index_targets((64,), 10)
    assert_parity(
        f"modulate(ce(smoothing={smoothing}), {options}, detach=true)", x, target,
        lambda x, y: modulate_softmax_formula(x, y, gamma_pos, gamma_neg, smoothing, detach=True),
    )


@pytest.mark.parametrize(
    "expr, gamma",
    [("modulate(ce(), gamma=0.5)", 0.5), ("modulate(ce(), gamma=2)", 2),
     ("focal(head=softmax, gamma=0.5)", 0.5), ("focal(head=softmax)", 2)],
)
def test_softmax_focusing_on_probability_targets_scales_by_one_minus_p_t(expr, gamma):
    """SPEC 1: the softmax head accepts probability targets, ``p_t = sum_c q_c p_c``; SPEC 2: modulate
    is ``l * (1 - p_t)^g``. So ``l = -(1 - p_t)^gamma sum_c q_c log p_c`` (mixup / cutmix targets)."""
    x = torch.randn(64, 10) * 3
    target = torch.softmax(torch.randn(64, 10) * 2, dim=1)

    def reference(x, q):
        q = q.to(x.dtype)
        log_p = F.log_softmax(x, dim=1)
        p_t = (q * log_p.exp()).sum(dim=1)
        return (-(1 - p_t) ** gamma * (q * log_p).sum(dim=1)).mean()

    assert_parity(expr, x, target, reference)


# --------------------------------------------------------------------------------------------------
# balance


@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize("alpha_name", ["0.25", "per-class"])
def test_balance_sigmoid_weights_positives_by_alpha_and_negatives_by_one_minus_alpha(alpha_name, layout):
    shape = SHAPES[layout]
    alpha = resolve_alpha(alpha_name, shape[1])

    def reference(x, y):
        y = y.to(x.dtype)
        a = per_class(alpha, x)
        return bce_per_element(x, y) * (a * y + (1 - a) * (1 - y))

    assert_parity(
        f"balance(bce(), alpha={fmt(alpha)}, reduction=none)", torch.randn(shape) * 3,
        soft_targets(shape), reference,
    )


@pytest.mark.parametrize("case", SOFTMAX_CASES)
def test_balance_softmax_weights_each_position_by_alpha_of_its_target(case):
    shape, ignore_index, ignore = SOFTMAX_CASES[case]
    alpha = alpha_list(shape[1])
    target = index_targets(index_shape(shape), shape[1], ignore=ignore)

    def reference(x, y):
        loss, valid = softmax_focal_per_position(x, y, 0, alpha, ignore_index)
        return loss.sum() / valid.sum()

    assert_parity(
        f"balance(ce(ignore_index={ignore_index}), alpha={fmt(alpha)})", torch.randn(shape) * 3, target,
        reference,
    )
