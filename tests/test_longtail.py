"""The long-tail losses against their authors' code (tests/reference_longtail.py) and the identities
SPEC section 2 states: values and gradients in float32 and float64, running state step by step.

- logit_adjust: google-research logit_adjustment (loss and post-hoc forms); tau 0 is the wrapped loss;
- balanced_softmax: BalancedMetaSoftmax; it is logit_adjust at tau 1;
- ldam: LDAM-DRW (and its deferred re-weighting); max_m 0 with s 1 is ce;
- class_balanced: Cui et al.'s softmax, sigmoid and focal losses; beta 0 is the wrapped loss;
- seesaw: mmpretrain's SeesawLoss and its test values; p = q = 0 is ce;
- eqlv2: mmdetection's EQLV2Loss over several steps; its initial state is the sum of BCE over N.
"""

from __future__ import annotations

import math

import pytest
import reference as ref
import reference_longtail as lt
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.errors import LossInputError, LossSpecError

COUNTS = [500, 120, 40, 9, 2]
C = len(COUNTS)
DTYPES = [torch.float32, torch.float64]
TOLERANCE = {torch.float32: {"rtol": 2e-5, "atol": 2e-6}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


def logits(n=12, c=C, dtype=torch.float64, scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=generator, dtype=torch.float64) * scale).to(dtype)


def labels(n=12, c=C, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n,), generator=generator)


def value_and_grad(function, x):
    leaf = x.detach().clone().requires_grad_(True)
    value = function(leaf)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


def assert_same(ours, theirs, x, dtype):
    """``ours`` and ``theirs`` (functions of the logits) agree in value and gradient."""
    value, grad = value_and_grad(ours, x)
    expected, expected_grad = value_and_grad(theirs, x)
    torch.testing.assert_close(value, expected, **TOLERANCE[dtype])
    torch.testing.assert_close(grad, expected_grad, **TOLERANCE[dtype])


def counts_text(counts=COUNTS):
    return "[" + ", ".join(str(n) for n in counts) + "]"


# -- logit_adjust ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjust_is_google_researchs_logit_adjusted_loss(dtype, tau):
    x, t = logits(dtype=dtype), labels()
    loss = lossdsl.compile(f"logit_adjust(ce(), tau={tau}, counts={counts_text()})")
    assert_same(lambda z: loss(z, t), lambda z: lt.logit_adjusted_ce(z, t, lt.prior(COUNTS), tau).mean(),
                x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_logit_adjust_with_probability_targets_shifts_the_logits_alike(dtype):
    x = logits(dtype=dtype)
    y = torch.softmax(logits(seed=3), dim=1).to(dtype)
    loss = lossdsl.compile(f"logit_adjust(ce(), counts={counts_text()})")
    shift = torch.log(lt.prior(COUNTS) + 1e-12).to(dtype)
    assert_same(lambda z: loss(z, y), lambda z: F.cross_entropy(z + shift, y), x, dtype)


def test_logit_adjust_wraps_a_softmax_focal_loss_which_focuses_on_the_adjusted_probabilities():
    x, t = logits(), labels()
    shift = torch.log(lt.prior(COUNTS) + 1e-12)
    loss = lossdsl.compile(f"logit_adjust(focal(head=softmax, gamma=2), counts={counts_text()})")
    one_hot = F.one_hot(t, C).double()
    assert_same(lambda z: loss(z, t), lambda z: ref.softmax_focal(z + shift, one_hot, 2.0).mean(), x,
                torch.float64)


def test_logit_adjust_wraps_poly_and_poly_wraps_it_alike():
    """The whole term sees the adjusted logits: poly's 1 - p_t is the adjusted one either way."""
    x, t = logits(), labels()
    shift = torch.log(lt.prior(COUNTS) + 1e-12)

    def poly1(z):
        adjusted = z + shift
        p_t = torch.softmax(adjusted, 1).gather(1, t.unsqueeze(1)).squeeze(1)
        return (F.cross_entropy(adjusted, t, reduction="none") + (1 - p_t)).mean()

    inside = lossdsl.compile(f"logit_adjust(poly(ce(), eps=1), counts={counts_text()})")
    outside = lossdsl.compile(f"poly(logit_adjust(ce(), counts={counts_text()}), eps=1)")
    assert_same(lambda z: inside(z, t), poly1, x, torch.float64)
    assert_same(lambda z: outside(z, t), poly1, x, torch.float64)


def test_logit_adjust_at_tau_0_is_the_wrapped_loss():
    x, t = logits(), labels()
    adjusted = lossdsl.compile(f"logit_adjust(focal(head=softmax), tau=0, counts={counts_text()})")
    plain = lossdsl.compile("focal(head=softmax)")
    # pi^0 + 1e-12: the shift is log(1 + 1e-12) for every class, which the softmax does not see
    assert_same(lambda z: adjusted(z, t), lambda z: plain(z, t), x, torch.float64)


def test_logit_adjust_on_a_sigmoid_head_is_an_error_that_says_why():
    with pytest.raises(LossSpecError) as info:
        lossdsl.parse("logit_adjust(focal())")
    assert "on a sigmoid head no class competes with another" in info.value.reason
    assert "class_balanced" in info.value.reason


def test_a_term_holds_one_logit_shift():
    with pytest.raises(LossSpecError) as info:
        lossdsl.parse("logit_adjust(seesaw())")
    assert "seesaw() inside already shifts the logits" in info.value.reason


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_posthoc_logit_adjustment_trains_the_wrapped_loss_and_predicts_with_adjusted_logits(dtype):
    x, t = logits(dtype=dtype), labels()
    loss = lossdsl.compile(f"logit_adjust(ce(), tau=1.5, counts={counts_text()}, posthoc=true)")
    assert_same(lambda z: loss(z, t), lambda z: F.cross_entropy(z, t), x, dtype)
    expected = torch.softmax(lt.posthoc_logits(x, lt.prior(COUNTS), 1.5), dim=1)
    torch.testing.assert_close(loss.predict(x), expected, **TOLERANCE[dtype])
    assert loss.predict(x).argmax(1).tolist() == lt.posthoc_logits(x, lt.prior(COUNTS), 1.5).argmax(1).tolist()


def test_the_loss_form_of_logit_adjustment_predicts_with_the_raw_logits():
    x = logits()
    loss = lossdsl.compile(f"logit_adjust(ce(), counts={counts_text()})")
    torch.testing.assert_close(loss.predict(x), torch.softmax(x, 1))


def test_posthoc_prediction_reads_given_probabilities_as_they_are():
    """Given counts may be probabilities (google-research's base_probs): only ratios matter, and
    nothing is floored at 1 (that is the reading of running counts only)."""
    base_probs = [0.7, 0.25, 0.05]
    loss = lossdsl.compile("logit_adjust(ce(), posthoc=true, counts=[0.7, 0.25, 0.05])")
    x = logits(4, 3)
    torch.testing.assert_close(loss.predict(x), torch.softmax(lt.posthoc_logits(x, base_probs), 1))


def test_posthoc_prediction_reads_the_online_counts_as_they_stand():
    loss = lossdsl.compile("logit_adjust(ce(), posthoc=true)")
    t = torch.tensor([0, 0, 0, 1, 2, 2])
    loss(logits(6, 3), t)
    x = logits(4, 3, seed=9)
    expected = torch.softmax(lt.posthoc_logits(x, lt.prior([3, 1, 2])), 1)
    torch.testing.assert_close(loss.predict(x), expected)


# -- balanced_softmax ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_balanced_softmax_is_balanced_meta_softmax(dtype):
    """The references add log n, lossdsl log(n / sum n + 1e-12): the constant log sum n cancels in
    the softmax; the 1e-12 moves a logit by about 1e-12 / pi_j."""
    x, t = logits(dtype=dtype), labels()
    loss = lossdsl.compile(f"balanced_softmax(counts={counts_text()})")
    value, grad = value_and_grad(lambda z: loss(z, t), x)
    expected, expected_grad = value_and_grad(lambda z: lt.balanced_softmax_loss(t, z, COUNTS, "mean"), x)
    tolerance = TOLERANCE[dtype] if dtype == torch.float32 else {"rtol": 1e-8, "atol": 1e-9}
    torch.testing.assert_close(value, expected, **tolerance)
    torch.testing.assert_close(grad, expected_grad, **tolerance)


def test_balanced_softmax_is_logit_adjustment_at_tau_1():
    x, t = logits(), labels()
    named = lossdsl.compile(f"balanced_softmax(counts={counts_text()})")
    expansion = lossdsl.compile(f"logit_adjust(ce(), tau=1, counts={counts_text()})")
    assert lossdsl.parse(f"balanced_softmax(counts={counts_text()})").expand() == lossdsl.parse(
        f"logit_adjust(ce(), counts={counts_text()})")
    value, grad = value_and_grad(lambda z: named(z, t), x)
    expected, expected_grad = value_and_grad(lambda z: expansion(z, t), x)
    assert torch.equal(value, expected) and torch.equal(grad, expected_grad)


# -- ldam ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("max_m, s", [(0.5, 30.0), (0.3, 10.0), (1.0, 1.0)])
def test_ldam_is_ldam_drws_loss(dtype, max_m, s):
    x, t = logits(dtype=dtype, scale=0.3), labels()
    loss = lossdsl.compile(f"ldam(counts={counts_text()}, max_m={max_m}, s={s})")
    assert_same(lambda z: loss(z, t), lambda z: lt.ldam_loss(z, t, COUNTS, max_m, s, reduction="mean"),
                x, dtype)


def test_ldam_with_max_m_0_and_s_1_is_ce():
    x, t = logits(), labels()
    ldam = lossdsl.compile(f"ldam(counts={counts_text()}, max_m=0, s=1)")
    assert_same(lambda z: ldam(z, t), lambda z: F.cross_entropy(z, t), x, torch.float64)


def test_ldam_drw_is_class_balanced_ldam_summed_over_the_sum_of_the_weights():
    """LDAM-DRW passes its per-class weights to F.cross_entropy(weight=...), whose mean divides by
    the batch's sum of weights; class_balanced keeps the plain mean, so reduction=sum over that sum."""
    x, t = logits(scale=0.3), labels()
    weights = lt.class_balanced_weights(COUNTS, 0.9999)
    loss = lossdsl.compile(f"class_balanced(ldam(counts={counts_text()}), beta=0.9999, "
                           f"counts={counts_text()}, reduction=sum)")
    assert_same(lambda z: loss(z, t) / weights[t].sum(),
                lambda z: lt.ldam_loss(z, t, COUNTS, 0.5, 30.0, weight=weights, reduction="mean"),
                x, torch.float64)


def test_ldam_needs_class_indices():
    loss = lossdsl.compile(f"ldam(counts={counts_text()})")
    with pytest.raises(LossInputError) as info:
        loss(logits(), torch.softmax(logits(), 1))
    assert "ldam() sets each position's logits by its target class and needs class-index targets of shape [12]" in info.value.reason
    with pytest.raises(LossInputError, match=r"ldam\(\) sets each position's logits by its target class"):
        lossdsl.compile(f"class_balanced(ldam(counts={counts_text()}))")(logits(), torch.softmax(logits(), 1))


def test_ldam_ignores_positions_labelled_ignore_index():
    x, t = logits(), labels()
    t[::4] = 255
    loss = lossdsl.compile(f"ldam(counts={counts_text()}, ignore_index=255, reduction=sum)")
    keep = t != 255
    assert_same(lambda z: loss(z, t),
                lambda z: lt.ldam_loss(z[keep], t[keep], COUNTS, reduction="sum"), x, torch.float64)


# -- class_balanced --------------------------------------------------------------------------------

BETAS = [0.9999, 0.99, 0.5]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("beta", BETAS)
def test_class_balanced_softmax_is_cuis_softmax_loss(dtype, beta):
    x, t = logits(dtype=dtype), labels()
    loss = lossdsl.compile(f"class_balanced(ce(), beta={beta}, counts={counts_text()})")
    weights = lt.class_balanced_weights(COUNTS, beta)
    assert_same(lambda z: loss(z, t), lambda z: lt.cui_softmax_loss(z, t, weights), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("beta", BETAS)
def test_class_balanced_sigmoid_is_cuis_sigmoid_loss_with_pos_mean(dtype, beta):
    x, t = logits(dtype=dtype), labels()
    loss = lossdsl.compile(f"class_balanced(bce(), beta={beta}, counts={counts_text()}, reduction=pos_mean)")
    weights = lt.class_balanced_weights(COUNTS, beta)
    assert_same(lambda z: loss(z, t), lambda z: lt.cui_sigmoid_loss(z, t, weights), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_class_balanced_focal_is_cuis_focal_loss(dtype, gamma):
    x, t = logits(dtype=dtype), labels()
    loss = lossdsl.compile(
        f"class_balanced(focal(gamma={gamma}, alpha=none), counts={counts_text()}, reduction=pos_mean)"
    )
    weights = lt.class_balanced_weights(COUNTS, 0.9999)
    assert_same(lambda z: loss(z, t), lambda z: lt.cui_focal_loss(z, t, weights, gamma), x, dtype)


@pytest.mark.parametrize("wrapped, target", [
    ("ce()", "index"), ("focal()", "index"), ("focal(head=softmax)", "probabilities"),
    ("poly(focal(), eps=1)", "multi-hot"), ("modulate(ce(smoothing=0.1), gamma=1)", "index"),
])
def test_class_balanced_with_beta_0_is_the_wrapped_loss(wrapped, target):
    x = logits()
    y = {"index": labels(), "probabilities": torch.softmax(logits(seed=4), 1),
         "multi-hot": (logits(seed=5) > 1).double()}[target]
    balanced = lossdsl.compile(f"class_balanced({wrapped}, beta=0, counts={counts_text()})")
    plain = lossdsl.compile(wrapped)
    assert_same(lambda z: balanced(z, y), lambda z: plain(z, y), x, torch.float64)


def test_class_balanced_weighs_a_multi_hot_row_by_the_mean_weight_of_its_classes():
    """One-hot rows get their class's weight; a multi-hot row the mean weight of its classes; a row
    with no positive class the mean weight, 1."""
    x = logits(4)
    y = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.float64)
    weights = lt.class_balanced_weights(COUNTS, 0.999)
    expected_rows = torch.stack([weights[0], weights[[1, 3, 4]].mean(), torch.tensor(1.0, dtype=torch.float64),
                                 weights[[0, 4]].mean()])
    loss = lossdsl.compile(f"class_balanced(bce(), beta=0.999, counts={counts_text()}, reduction=none)")
    expected = expected_rows.unsqueeze(1) * ref.bce(x, y)
    torch.testing.assert_close(loss(x, y), expected, rtol=1e-12, atol=1e-14)


def test_class_balanced_weighs_mmdetections_background_label_by_1():
    x = logits(4)
    t = torch.tensor([0, 5, 4, 5])  # 5 = C: all-negative rows with background=true
    weights = lt.class_balanced_weights(COUNTS, 0.999)
    loss = lossdsl.compile(f"class_balanced(bce(background=true), beta=0.999, counts={counts_text()}, "
                           "reduction=none)")
    dense = torch.zeros(4, C, dtype=torch.float64)
    dense[0, 0] = dense[2, 4] = 1
    row = torch.stack([weights[0], torch.tensor(1.0, dtype=torch.float64), weights[4],
                       torch.tensor(1.0, dtype=torch.float64)])
    torch.testing.assert_close(loss(x, t), row.unsqueeze(1) * ref.bce(x, dense), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_class_balanced_weights_carry_no_gradient_to_soft_targets(head):
    """The weight selects by class, as a class index does: a soft target's gradient is that of the
    wrapped loss times the (constant) weight."""
    x = logits(6)
    if head == "sigmoid":
        y = torch.rand(6, C, dtype=torch.float64).requires_grad_(True)
        wrapped, per_element = "bce()", lambda z, target: ref.bce(z, target).sum(1)
    else:
        y = torch.softmax(logits(6, seed=7), 1).requires_grad_(True)
        wrapped, per_element = "ce()", lambda z, target: ref.ce(z, target)
    loss = lossdsl.compile(f"class_balanced({wrapped}, beta=0.999, counts={counts_text()}, reduction=sum)")
    loss(x, y).backward()
    ours = y.grad.clone()
    y.grad = None
    weights = lt.class_balanced_weights(COUNTS, 0.999)
    sample = (y.detach() * weights).sum(1) / y.detach().sum(1)
    (sample * per_element(x, y)).sum().backward()
    torch.testing.assert_close(ours, y.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_poly_around_class_balanced_adds_unweighted_terms_and_inside_weighted_ones(head):
    x, t = logits(), labels()
    weights = lt.class_balanced_weights(COUNTS, 0.99)[t]
    if head == "sigmoid":
        y = F.one_hot(t, C).double()
        base, q = ref.bce(x, y).sum(1), ref.one_minus_pt(x, y).sum(1)
        wrapped = "bce()"
    else:
        p_t = torch.softmax(x, 1).gather(1, t.unsqueeze(1)).squeeze(1)
        base, q = F.cross_entropy(x, t, reduction="none"), 1 - p_t
        wrapped = "ce()"
    outside = lossdsl.compile(f"poly(class_balanced({wrapped}, beta=0.99, counts={counts_text()}), eps=2, "
                              "reduction=sum)")
    inside = lossdsl.compile(f"class_balanced(poly({wrapped}, eps=2), beta=0.99, counts={counts_text()}, "
                             "reduction=sum)")
    torch.testing.assert_close(outside(x, t), (weights * base + 2 * q).sum())
    torch.testing.assert_close(inside(x, t), (weights * (base + 2 * q)).sum())


# -- seesaw ----------------------------------------------------------------------------------------


def test_seesaw_reproduces_mmpretrains_test_values():
    """mmpretrain tests/test_models/test_losses.py test_seesaw_loss, ported."""
    x = torch.tensor([[-100.0, 100.0]])
    assert torch.allclose(lossdsl.compile("seesaw(p=0, q=0)")(x, torch.tensor([1])), torch.tensor(0.0))
    mitigation = lossdsl.compile("seesaw(p=1, q=0)")
    mitigation.load_state_dict({**mitigation.state_dict(),
                                "terms.0.frequency.class_counts": torch.tensor([math.exp(20), 0.0],
                                                                               dtype=torch.float64)})
    assert torch.allclose(mitigation(x, torch.tensor([0])), torch.tensor(180.0))
    compensation = lossdsl.compile("seesaw(p=0, q=1)")
    assert torch.allclose(compensation(x, torch.tensor([0])), torch.tensor(200.0) + torch.tensor(100.0).log())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p, q, eps", [(0.8, 2.0, 0.01), (1.0, 0.0, 0.01), (0.0, 1.5, 0.1), (0.3, 3.0, 1e-3)])
def test_seesaw_follows_mmpretrains_seesaw_loss_over_steps(dtype, p, q, eps):
    """The counts accumulate over the steps (updated from each batch first), on a long-tailed label
    distribution, so the mitigation factor moves."""
    loss = lossdsl.compile(f"seesaw(p={p}, q={q}, eps={eps})")
    reference = lt.SeesawLoss(C, p, q, eps)
    weights = torch.tensor(COUNTS, dtype=torch.float64)
    for step in range(4):
        x = logits(16, dtype=dtype, seed=10 + step)
        t = torch.multinomial(weights, 16, replacement=True, generator=torch.Generator().manual_seed(step))
        reference_counts = reference.cum_samples.clone()
        value, grad = value_and_grad(lambda z: loss(z, t), x)
        reference.cum_samples = reference_counts
        expected, expected_grad = value_and_grad(lambda z: reference(z, t).mean(), x)
        torch.testing.assert_close(value, expected, **TOLERANCE[dtype])
        torch.testing.assert_close(grad, expected_grad, **TOLERANCE[dtype])
        torch.testing.assert_close(loss.terms[0].frequency.class_counts, reference.cum_samples, rtol=0, atol=0)


def test_seesaw_with_p_and_q_0_is_ce():
    x, t = logits(), labels()
    seesaw = lossdsl.compile("seesaw(p=0, q=0)")
    assert_same(lambda z: seesaw(z, t), lambda z: F.cross_entropy(z, t), x, torch.float64)


def test_seesaw_counts_only_in_training_mode():
    loss = lossdsl.compile("seesaw()")
    loss(logits(), labels())
    before = loss.state_dict()["terms.0.frequency.class_counts"].clone()
    loss.eval()
    x, t = logits(seed=5), labels(seed=6)
    reference = lt.SeesawLoss(C)
    reference.cum_samples = before.clone()
    torch.testing.assert_close(loss(x, t), reference(x, t, count=False).mean(), rtol=1e-12, atol=1e-12)
    assert torch.equal(loss.state_dict()["terms.0.frequency.class_counts"], before)


def test_seesaw_needs_class_indices():
    with pytest.raises(LossInputError, match=r"seesaw\(\) sets each position's logits by its target class"):
        lossdsl.compile("seesaw()")(logits(), torch.softmax(logits(), 1))


# -- eqlv2 -----------------------------------------------------------------------------------------


def eqlv2_inputs(n=16, channels=C + 1, dtype=torch.float64, seed=0):
    """Labels 0..C with the background C most frequent, as a detector's sampled RoIs."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, generator=generator, dtype=torch.float64).mul(3).to(dtype)
    frequency = torch.tensor(COUNTS + [2000], dtype=torch.float64)
    t = torch.multinomial(frequency, n, replacement=True, generator=generator)
    return x, t


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_eqlv2_at_its_initial_state_is_the_sum_of_bce_over_n(dtype):
    x, t = eqlv2_inputs(dtype=dtype)
    loss = lossdsl.compile("eqlv2()")
    one_hot = F.one_hot(t, C + 1).to(dtype)
    assert_same(lambda z: loss.eval()(z, t),
                lambda z: F.binary_cross_entropy_with_logits(z, one_hot, reduction="sum") / len(t), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma, mu, alpha", [(12.0, 0.8, 4.0), (6.0, 0.5, 2.0)])
def test_eqlv2_follows_mmdetections_eqlv2_loss_over_steps(dtype, gamma, mu, alpha):
    loss = lossdsl.compile(f"eqlv2(gamma={gamma}, mu={mu}, alpha={alpha})")
    reference = lt.EQLV2Loss(C, gamma, mu, alpha)
    for step in range(4):
        x, t = eqlv2_inputs(dtype=dtype, seed=step)
        value, grad = value_and_grad(lambda z: loss(z, t), x)
        expected, expected_grad = value_and_grad(lambda z: reference(z, t, collect=False), x)
        reference(x, t)  # now collect this batch's statistics, as the loss did after computing
        torch.testing.assert_close(value, expected, **TOLERANCE[dtype])
        torch.testing.assert_close(grad, expected_grad, **TOLERANCE[dtype])
        statistics = TOLERANCE[dtype] if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
        torch.testing.assert_close(loss.terms[0].pos_grad, reference.pos_grad, **statistics)
        torch.testing.assert_close(loss.terms[0].neg_grad, reference.neg_grad, **statistics)


def test_eqlv2_predicts_with_mmdetections_activation():
    x, _ = eqlv2_inputs()
    torch.testing.assert_close(lossdsl.compile("eqlv2()").predict(x), lt.EQLV2Loss.get_activation(x.clone()))


def test_eqlv2_collects_statistics_only_in_training_mode():
    loss = lossdsl.compile("eqlv2()")
    loss(*eqlv2_inputs())
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.eval()(*eqlv2_inputs(seed=3))
    assert all(torch.equal(before[k], v) for k, v in loss.state_dict().items())


@pytest.mark.parametrize("target, message", [
    (torch.rand(16, C + 1), "eqlv2 needs integer class indices of shape [16] in 0..5 (5 is the background)"),
    (torch.full((16,), 6), "class index 6 is out of range for 6 classes"),
])
def test_eqlv2_says_which_targets_it_takes(target, message):
    with pytest.raises(LossInputError) as info:
        lossdsl.compile("eqlv2()")(eqlv2_inputs()[0], target)
    assert message in info.value.reason


def test_eqlv2_ignores_rows_labelled_ignore_index_in_the_loss_and_the_statistics():
    x, t = eqlv2_inputs()
    t[::3] = -100
    keep = t != -100
    loss, reference = lossdsl.compile("eqlv2()"), lossdsl.compile("eqlv2()")
    for _ in range(2):
        torch.testing.assert_close(loss(x, t) * keep.sum(), reference(x[keep], t[keep]) * keep.sum())
    torch.testing.assert_close(loss.terms[0].pos_grad, reference.terms[0].pos_grad)


# -- every name: sums, gradcheck ---------------------------------------------------------------------

NAMES = [
    f"logit_adjust(focal(head=softmax, gamma=1), tau=0.7, counts={counts_text()})",
    "balanced_softmax()",
    f"ldam(counts={counts_text()}, s=5)",
    "class_balanced(focal(gamma=1.5), beta=0.99)",
    f"class_balanced(poly(ce()), beta=0.9, counts={counts_text()})",
    # The compensation factor reads the scores without gradient, by definition, so finite differences
    # disagree with it; its gradient is checked against mmpretrain's above. The mitigation here.
    "seesaw(p=0.8, q=0)",
    "eqlv2()",
]


def inputs_for(expr, dtype=torch.float64, n=8):
    if expr.startswith("eqlv2"):
        return eqlv2_inputs(n, dtype=dtype)
    return logits(n, dtype=dtype), labels(n)


@pytest.mark.parametrize("expr", NAMES)
def test_gradcheck_in_float64_with_running_state_in_place(expr):
    loss = lossdsl.compile(expr)
    for seed in range(2):  # running counts and statistics that are not the initial ones
        x, t = inputs_for(expr)
        loss(x + seed, t)
    loss.eval()
    x, t = inputs_for(expr)
    assert torch.autograd.gradcheck(lambda z: loss(z, t), (x.requires_grad_(True),), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("expr", NAMES + ["seesaw()"])
def test_a_name_in_a_sum_is_its_own_term(expr):
    """``a + 0.5 * b`` is the two losses computed on their own and added (state included)."""
    other = "0.5 * ce()" if not expr.startswith("eqlv2") else "0.5 * bce()"  # (bce: C + 1 classes)
    summed, alone, second = lossdsl.compile(f"{expr} + {other}"), lossdsl.compile(expr), lossdsl.compile(other)
    for step in range(2):
        x, t = inputs_for(expr)
        x = x + step
        torch.testing.assert_close(summed(x, t), alone(x, t) + second(x, t), rtol=1e-12, atol=1e-12)
    for (name, mine), (_, theirs) in zip(summed.terms[0].state_dict().items(), alone.terms[0].state_dict().items()):
        assert torch.equal(mine, theirs), name


@pytest.mark.parametrize("expr", [name for name in NAMES if not name.startswith("eqlv2")])
def test_a_shifted_term_beside_another_softmax_term_keeps_its_shift_where_labels_are_ignored(expr):
    """Two softmax terms share the call's zeroed logits; a term whose logits a long-tail node shifted
    must go on reading its shifted ones (a regression: with an ignored label it read the unshifted)."""
    x, t = inputs_for(expr)
    t[::3] = -100  # ce's default ignore_index
    summed, alone, second = lossdsl.compile(f"{expr} + dice()"), lossdsl.compile(expr), lossdsl.compile("dice()")
    torch.testing.assert_close(summed(x, t), alone(x, t) + second(x, t), rtol=1e-12, atol=1e-12)
