"""Multi-task losses: task dictionaries, uncertainty weighting and dynamic task prioritization.

Every formula is re-computed here from torch.nn.functional and the formulas of the issue, never
from lossdsl's own helpers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

RTOL, ATOL = 1e-5, 1e-6

TASKS_EXPR = "{seg: ce(ignore_index=255), depth: 0.5 * l1()}"
FIVE_TASKS = "{seg: ce(ignore_index=255), tags: bce(), depth: l1(), normals: mse(), edges: smooth_l1(beta=0.5)}"
REGRESSION = {"depth", "normals", "edges"}


def close(actual, expected, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), rtol=rtol, atol=atol)


def seg_batch(n=4, classes=3, size=6):
    """Softmax logits [N, C, S] and class indices [N, S], two positions ignored (255)."""
    logits = torch.randn(n, classes, size)
    target = torch.randint(0, classes, (n, size))
    target[0, :2] = 255
    return logits, target


def tags_batch(n=4, labels=5):
    """Sigmoid logits [N, L] and multi-hot targets."""
    return torch.randn(n, labels), (torch.rand(n, labels) > 0.5).float()


def regression_batch(n=4, size=6):
    return torch.randn(n, size), torch.randn(n, size)


def five_task_batch():
    preds, targets = {}, {}
    preds["seg"], targets["seg"] = seg_batch()
    preds["tags"], targets["tags"] = tags_batch()
    for name in ("depth", "normals", "edges"):
        preds[name], targets[name] = regression_batch()
    return preds, targets


def raw_losses(preds, targets):
    """Each task's own loss, from torch.nn.functional."""
    return {
        "seg": F.cross_entropy(preds["seg"], targets["seg"], ignore_index=255),
        "tags": F.binary_cross_entropy_with_logits(preds["tags"], targets["tags"]),
        "depth": F.l1_loss(preds["depth"], targets["depth"]),
        "normals": F.mse_loss(preds["normals"], targets["normals"]),
        "edges": F.smooth_l1_loss(preds["edges"], targets["edges"], beta=0.5),
    }


# --------------------------------------------------------------------------------------------------
# language


MULTITASK_EXPRESSIONS = [
    TASKS_EXPR,
    "uncertainty({seg: ce(), depth: l1()}, form=kendall)",
    "uncertainty({seg: focal(gamma=1), depth: 0.3 * smooth_l1(beta=0.5)}, form=simple)",
    "uncertainty({a: poly(focal(), eps=1) + 0.5 * ghm(bins=30), b: mse()}, form=positive)",
    "dtp({seg: focal(head=softmax), depth: l1()}, gamma=1, alpha=0.9)",
    "dtp({seg: ce(ignore_index=255), tags: asl()}, gamma=2.5, alpha=0.5)",
]


@pytest.mark.parametrize("expr", MULTITASK_EXPRESSIONS)
def test_multitask_spec_round_trips_through_its_expression(expr):
    spec = lossdsl.parse(expr)
    assert lossdsl.parse(spec.to_expr()) == spec


@pytest.mark.parametrize("expr", MULTITASK_EXPRESSIONS)
def test_multitask_spec_round_trips_through_yaml(expr):
    spec = lossdsl.parse(expr)
    assert lossdsl.load(spec.to_yaml()) == spec


def test_yaml_mapping_form_of_a_multitask_loss_loads_to_the_expressions_spec():
    mapping = {"kind": "uncertainty", "form": "simple", "tasks": {"seg": "ce()", "depth": {"kind": "l1"}}}
    assert lossdsl.load(mapping) == lossdsl.parse("uncertainty({seg: ce(), depth: l1()}, form=simple)")


def test_yaml_text_of_a_mapping_form_loads_too():
    text = "kind: dtp\ngamma: 2\ntasks:\n  seg: ce(ignore_index=255)\n  depth: 0.5 * l1()\n"
    assert lossdsl.load(text) == lossdsl.parse("dtp({seg: ce(ignore_index=255), depth: 0.5 * l1()}, gamma=2)")


def test_uncertainty_form_defaults_to_kendall():
    assert lossdsl.parse("uncertainty({seg: ce(), depth: l1()})") == lossdsl.parse(
        "uncertainty({seg: ce(), depth: l1()}, form=kendall)"
    )


@pytest.mark.parametrize(
    "expr",
    [
        "{seg: ce(), depth: l1()} + ce()",
        "ce() + {seg: ce(), depth: l1()}",
        "uncertainty({seg: ce()}) + uncertainty({depth: l1()})",
        "dtp({seg: ce()}) - bce()",
    ],
)
def test_adding_a_multitask_loss_to_anything_is_an_error(expr):
    with pytest.raises(lossdsl.LossDSLError, match="entire loss"):
        lossdsl.parse(expr)


@pytest.mark.parametrize(
    "expr", ["2 * {seg: ce(), depth: l1()}", "0.5 * uncertainty({seg: ce()})", "dtp({seg: ce()}) / 2"]
)
def test_scaling_a_multitask_loss_is_an_error(expr):
    with pytest.raises(lossdsl.LossDSLError, match="entire loss"):
        lossdsl.parse(expr)


@pytest.mark.parametrize(
    "expr", ["{a: {b: ce()}}", "uncertainty({a: {b: ce()}, c: l1()})", "{a: dtp({b: ce()})}"]
)
def test_nesting_task_dictionaries_is_an_error(expr):
    with pytest.raises(lossdsl.LossDSLError, match="nest"):
        lossdsl.parse(expr)


@pytest.mark.parametrize("name", ["uncertainty", "dtp"])
def test_weighting_a_single_loss_instead_of_named_tasks_is_an_error(name):
    with pytest.raises(lossdsl.LossDSLError, match="named tasks"):
        lossdsl.parse(f"{name}(ce())")


@pytest.mark.parametrize(
    "expr", ["uncertainty({seg: ce()}, form=bayes)", "dtp({seg: ce()}, alpha=0)", "dtp({seg: ce()}, gamma=-1)"]
)
def test_out_of_range_weighting_parameters_are_errors(expr):
    with pytest.raises(lossdsl.LossDSLError):
        lossdsl.parse(expr)


# --------------------------------------------------------------------------------------------------
# task dictionaries


def test_task_dictionary_returns_the_sum_of_the_tasks_weighted_losses():
    loss = lossdsl.compile(TASKS_EXPR)
    (seg, seg_t), (depth, depth_t) = seg_batch(), regression_batch()
    value = loss({"seg": seg, "depth": depth}, {"seg": seg_t, "depth": depth_t})
    close(value, F.cross_entropy(seg, seg_t, ignore_index=255) + 0.5 * F.l1_loss(depth, depth_t))


def test_task_dictionary_gives_gradients_to_every_tasks_predictions():
    loss = lossdsl.compile(TASKS_EXPR)
    (seg, seg_t), (depth, depth_t) = seg_batch(), regression_batch()
    seg.requires_grad_(True)
    depth.requires_grad_(True)
    loss({"seg": seg, "depth": depth}, {"seg": seg_t, "depth": depth_t}).backward()
    seg_ref, depth_ref = seg.detach().clone().requires_grad_(True), depth.detach().clone().requires_grad_(True)
    (F.cross_entropy(seg_ref, seg_t, ignore_index=255) + 0.5 * F.l1_loss(depth_ref, depth_t)).backward()
    close(seg.grad, seg_ref.grad)
    close(depth.grad, depth_ref.grad)


def test_task_dictionary_has_no_parameters_or_buffers():
    loss = lossdsl.compile(TASKS_EXPR)
    assert list(loss.parameters()) == []
    assert list(loss.state_dict()) == ["_extra_state"]  # the recorded expression only


@pytest.mark.parametrize("side", ["preds", "targets"])
def test_missing_task_key_is_an_error_naming_the_task(side):
    loss = lossdsl.compile(TASKS_EXPR)
    (seg, seg_t), (depth, depth_t) = seg_batch(), regression_batch()
    preds, targets = {"seg": seg, "depth": depth}, {"seg": seg_t, "depth": depth_t}
    del (preds if side == "preds" else targets)["depth"]
    with pytest.raises(lossdsl.LossDSLError, match="'depth'"):
        loss(preds, targets)


@pytest.mark.parametrize("side", ["preds", "targets"])
def test_unexpected_task_key_is_an_error_naming_the_key(side):
    loss = lossdsl.compile(TASKS_EXPR)
    (seg, seg_t), (depth, depth_t) = seg_batch(), regression_batch()
    preds, targets = {"seg": seg, "depth": depth}, {"seg": seg_t, "depth": depth_t}
    (preds if side == "preds" else targets)["normals"] = depth
    with pytest.raises(lossdsl.LossDSLError, match="'normals'"):
        loss(preds, targets)


def test_a_tensor_instead_of_a_mapping_is_an_error():
    loss = lossdsl.compile(TASKS_EXPR)
    seg, seg_t = seg_batch()
    with pytest.raises(lossdsl.LossDSLError, match="mapping"):
        loss(seg, seg_t)


def test_task_dictionary_last_terms_hold_raw_loss_weight_and_weighted_loss_per_task():
    loss = lossdsl.compile(TASKS_EXPR)
    (seg, seg_t), (depth, depth_t) = seg_batch(), regression_batch()
    seg.requires_grad_(True)
    total = loss({"seg": seg, "depth": depth}, {"seg": seg_t, "depth": depth_t})
    terms = loss.last_terms
    assert {"seg", "seg.weight", "seg.weighted", "depth", "depth.weight", "depth.weighted"} <= set(terms)
    ce = F.cross_entropy(seg.detach(), seg_t, ignore_index=255)
    l1 = 0.5 * F.l1_loss(depth, depth_t)  # the task's own loss includes its inner weight
    close(terms["seg"], ce)
    close(terms["depth"], l1)
    close(terms["seg.weight"], 1.0)
    close(terms["depth.weight"], 1.0)
    close(terms["seg.weighted"], ce)
    close(terms["depth.weighted"], l1)
    close(terms["seg.weighted"] + terms["depth.weighted"], total.detach())
    assert not any(value.requires_grad for value in terms.values())


def test_task_dictionary_input_errors_name_the_tasks_term():
    loss = lossdsl.compile(TASKS_EXPR)
    seg, seg_t = seg_batch()
    with pytest.raises(lossdsl.LossDSLError):
        loss({"seg": seg, "depth": torch.randn(4, 6)}, {"seg": seg_t, "depth": torch.randn(5, 6)})


# --------------------------------------------------------------------------------------------------
# uncertainty


def test_uncertainty_has_one_log_variance_parameter_per_task_starting_at_zero():
    loss = lossdsl.compile("uncertainty({seg: ce(), depth: l1()})")
    assert set(loss.log_variance.keys()) == {"seg", "depth"}
    for value in loss.log_variance.values():
        assert isinstance(value, torch.nn.Parameter) and value.requires_grad
        assert value.item() == 0.0
    assert len(list(loss.parameters())) == 2
    assert {"log_variance.seg", "log_variance.depth"} <= set(loss.state_dict())


def set_parameters(loss, name, values):
    with torch.no_grad():
        for task, value in values.items():
            getattr(loss, name)[task].fill_(value)


def test_uncertainty_kendall_weighs_classification_by_exp_minus_s_and_regression_by_half_that():
    loss = lossdsl.compile(f"uncertainty({FIVE_TASKS}, form=kendall)")
    s = {"seg": 0.3, "tags": -0.4, "depth": 0.7, "normals": -1.1, "edges": 0.25}
    set_parameters(loss, "log_variance", s)
    preds, targets = five_task_batch()
    raw = raw_losses(preds, targets)
    expected = sum(
        math.exp(-s[t]) * raw[t] / (2 if t in REGRESSION else 1) + s[t] / 2 for t in raw
    )
    close(loss(preds, targets), expected)


def test_uncertainty_simple_is_exp_minus_s_times_loss_plus_s_for_every_task():
    loss = lossdsl.compile(f"uncertainty({FIVE_TASKS}, form=simple)")
    s = {"seg": 0.3, "tags": -0.4, "depth": 0.7, "normals": -1.1, "edges": 0.25}
    set_parameters(loss, "log_variance", s)
    preds, targets = five_task_batch()
    raw = raw_losses(preds, targets)
    close(loss(preds, targets), sum(math.exp(-s[t]) * raw[t] + s[t] for t in raw))


def test_uncertainty_positive_has_a_scale_per_task_starting_at_one():
    loss = lossdsl.compile("uncertainty({seg: ce(), depth: l1()}, form=positive)")
    assert set(loss.scale.keys()) == {"seg", "depth"}
    assert all(value.item() == 1.0 for value in loss.scale.values())
    assert {"scale.seg", "scale.depth"} <= set(loss.state_dict())
    assert len(list(loss.parameters())) == 2


def test_uncertainty_positive_is_loss_over_two_c_squared_plus_log_of_one_plus_c_squared():
    loss = lossdsl.compile(f"uncertainty({FIVE_TASKS}, form=positive)")
    c = {"seg": 0.6, "tags": 1.0, "depth": 1.7, "normals": -0.8, "edges": 2.5}
    set_parameters(loss, "scale", c)
    preds, targets = five_task_batch()
    raw = raw_losses(preds, targets)
    expected = sum(raw[t] / (2 * c[t] ** 2) + math.log(1 + c[t] ** 2) for t in raw)
    close(loss(preds, targets), expected)


def test_uncertainty_at_its_initial_parameters_weighs_classification_fully_and_regression_by_half():
    loss = lossdsl.compile(f"uncertainty({FIVE_TASKS})")
    preds, targets = five_task_batch()
    raw = raw_losses(preds, targets)
    close(loss(preds, targets), sum(raw[t] * (0.5 if t in REGRESSION else 1.0) for t in raw))


@pytest.mark.parametrize(
    "form, d_loss_d_param",
    [
        # derivatives of each form with respect to its parameter, written out by hand
        ("kendall", lambda L, s, regression: -math.exp(-s) * L / (2 if regression else 1) + 0.5),
        ("simple", lambda L, s, regression: -math.exp(-s) * L + 1.0),
        ("positive", lambda L, c, regression: -L / c**3 + 2 * c / (1 + c**2)),
    ],
)
def test_gradients_reach_the_learnable_task_weights(form, d_loss_d_param):
    loss = lossdsl.compile(f"uncertainty({FIVE_TASKS}, form={form})")
    name = "scale" if form == "positive" else "log_variance"
    values = {"seg": 0.3, "tags": -0.4, "depth": 0.7, "normals": 1.1, "edges": 0.25}
    set_parameters(loss, name, values)
    preds, targets = five_task_batch()
    raw = raw_losses(preds, targets)
    loss(preds, targets).backward()
    for task, param in getattr(loss, name).items():
        expected = d_loss_d_param(raw[task].item(), values[task], task in REGRESSION)
        close(param.grad, expected, rtol=1e-4, atol=1e-5)


def test_uncertainty_scales_the_gradient_of_each_tasks_predictions_by_its_weight():
    loss = lossdsl.compile("uncertainty({seg: ce(ignore_index=255), depth: l1()})")
    set_parameters(loss, "log_variance", {"seg": 0.5, "depth": -0.3})
    (seg, seg_t), (depth, depth_t) = seg_batch(), regression_batch()
    seg.requires_grad_(True)
    loss({"seg": seg, "depth": depth}, {"seg": seg_t, "depth": depth_t}).backward()
    seg_ref = seg.detach().clone().requires_grad_(True)
    (math.exp(-0.5) * F.cross_entropy(seg_ref, seg_t, ignore_index=255)).backward()
    close(seg.grad, seg_ref.grad)


def test_uncertainty_parameters_are_trained_by_an_optimizer_over_loss_parameters():
    loss = lossdsl.compile("uncertainty({seg: ce(), depth: l1()})")
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)
    (seg, seg_t), (depth, depth_t) = seg_batch(), regression_batch()
    loss({"seg": seg, "depth": depth}, {"seg": seg_t.clamp(max=2), "depth": depth_t}).backward()
    optimizer.step()
    assert all(value.item() != 0.0 for value in loss.log_variance.values())


def test_uncertainty_last_terms_hold_the_weight_and_the_weighted_contribution():
    loss = lossdsl.compile("uncertainty({seg: ce(ignore_index=255), depth: l1()})")
    set_parameters(loss, "log_variance", {"seg": 0.4, "depth": -0.2})
    (seg, seg_t), (depth, depth_t) = seg_batch(), regression_batch()
    total = loss({"seg": seg, "depth": depth}, {"seg": seg_t, "depth": depth_t})
    terms = loss.last_terms
    ce, l1 = F.cross_entropy(seg, seg_t, ignore_index=255), F.l1_loss(depth, depth_t)
    close(terms["seg"], ce)
    close(terms["depth"], l1)
    close(terms["seg.weight"], math.exp(-0.4))
    close(terms["depth.weight"], math.exp(0.2) / 2)
    close(terms["seg.weighted"], math.exp(-0.4) * ce + 0.2)
    close(terms["depth.weighted"], math.exp(0.2) * l1 / 2 - 0.1)
    close(terms["seg.weighted"] + terms["depth.weighted"], total.detach())
    assert not any(value.requires_grad for value in terms.values())


@pytest.mark.parametrize("form", ["kendall", "simple", "positive"])
def test_uncertainty_state_dict_round_trip_gives_identical_next_losses(form):
    expr = f"uncertainty({FIVE_TASKS}, form={form})"
    trained = lossdsl.compile(expr)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        trained(*five_task_batch()).backward()
        optimizer.step()
    fresh = lossdsl.compile(expr)
    fresh.load_state_dict(trained.state_dict())
    preds, targets = five_task_batch()
    assert torch.equal(fresh(preds, targets), trained(preds, targets))


# --------------------------------------------------------------------------------------------------
# dtp


def dtp_weight(k, gamma):
    return -((1 - k) ** gamma) * math.log(k)


def seg_accuracy(logits, target, ignore_index=255):
    valid = target != ignore_index
    return ((logits.argmax(dim=1) == target) & valid).sum().item() / valid.sum().item()


def tags_agreement(logits, target):
    """1 - Hamming loss of the predictions at logit 0."""
    return ((logits > 0) == (target > 0.5)).float().mean().item()


def averages(loss):
    """dtp's running averages, one per task in the order the tasks are written."""
    return torch.stack([loss.kpi_average[task] for task in loss.tasks])


def dtp_expr(gamma, alpha):
    return f"dtp({{seg: ce(ignore_index=255), tags: bce(), depth: l1()}}, gamma={gamma}, alpha={alpha})"


def dtp_batch(step):
    """Batches whose indicators move from step to step (the seg logits lean towards the truth)."""
    generator = torch.Generator().manual_seed(100 + step)
    seg_t = torch.randint(0, 3, (8, 5), generator=generator)
    seg_t[0, :3] = 255
    seg = torch.randn(8, 3, 5, generator=generator) + step * F.one_hot(seg_t.clamp(max=2), 3).permute(0, 2, 1)
    tags = torch.randn(8, 4, generator=generator)
    tags_t = (torch.rand(8, 4, generator=generator) > 0.5).float()
    depth, depth_t = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    return {"seg": seg, "tags": tags, "depth": depth}, {"seg": seg_t, "tags": tags_t, "depth": depth_t}


def test_dtp_indicators_are_buffers_in_the_state_dict_and_not_parameters():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    assert set(loss.state_dict()) == {
        "kpi_average.seg", "kpi_average.depth", "kpi_seen.seg", "kpi_seen.depth", "_extra_state"
    }
    assert list(loss.parameters()) == []


def test_dtp_first_step_starts_the_average_with_the_measured_indicator():
    loss = lossdsl.compile(dtp_expr(gamma=1, alpha=0.9))
    loss.observe(depth=0.4)
    preds, targets = dtp_batch(0)
    total = loss(preds, targets)
    k = {"seg": seg_accuracy(preds["seg"], targets["seg"]),
         "tags": tags_agreement(preds["tags"], targets["tags"]), "depth": 0.4}
    raw = {"seg": F.cross_entropy(preds["seg"], targets["seg"], ignore_index=255),
           "tags": F.binary_cross_entropy_with_logits(preds["tags"], targets["tags"]),
           "depth": F.l1_loss(preds["depth"], targets["depth"])}
    for task, k_task in k.items():
        close(loss.last_terms[f"{task}.weight"], dtp_weight(k_task, 1))
    close(total, sum(dtp_weight(k[t], 1) * raw[t] for t in k))


@pytest.mark.parametrize("gamma, alpha", [(1, 0.9), (2, 0.5), (0.5, 1.0)])
def test_dtp_averages_follow_the_moving_average_over_several_steps(gamma, alpha):
    loss = lossdsl.compile(dtp_expr(gamma=gamma, alpha=alpha))
    depth_scores = [0.3, 0.5, 0.45, 0.8]
    average = {}
    for step, depth_score in enumerate(depth_scores):
        preds, targets = dtp_batch(step)
        loss.observe(depth=depth_score)
        total = loss(preds, targets)
        measured = {"seg": seg_accuracy(preds["seg"], targets["seg"]),
                    "tags": tags_agreement(preds["tags"], targets["tags"]), "depth": depth_score}
        for task, kpi in measured.items():
            average[task] = kpi if task not in average else alpha * kpi + (1 - alpha) * average[task]
        raw = {"seg": F.cross_entropy(preds["seg"], targets["seg"], ignore_index=255),
               "tags": F.binary_cross_entropy_with_logits(preds["tags"], targets["tags"]),
               "depth": F.l1_loss(preds["depth"], targets["depth"])}
        close(total, sum(dtp_weight(average[t], gamma) * raw[t] for t in raw))
        for task, raw_task in raw.items():
            close(loss.last_terms[f"{task}.weight"], dtp_weight(average[task], gamma))
            close(loss.last_terms[f"{task}.weighted"], dtp_weight(average[task], gamma) * raw_task)
    close(averages(loss), [average["seg"], average["tags"], average["depth"]])
    assert all(loss.kpi_seen.values())


def test_dtp_softmax_indicator_does_not_count_ignored_positions():
    loss = lossdsl.compile("dtp({seg: ce(ignore_index=255)})")
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0]]]).permute(0, 2, 1)  # predicts class 0 then 1
    loss({"seg": logits}, {"seg": torch.tensor([[0, 255]])})
    close(averages(loss), [1.0])  # one counted position, predicted right
    loss = lossdsl.compile("dtp({seg: ce(ignore_index=255)})")
    loss({"seg": logits}, {"seg": torch.tensor([[1, 1]])})
    close(averages(loss), [0.5])


def test_dtp_sigmoid_indicator_is_one_minus_hamming_loss_at_logit_zero():
    loss = lossdsl.compile("dtp({tags: focal()})")
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [-0.5, 1.0, 1.0, 4.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])  # 3 of 8 labels wrong
    loss({"tags": logits}, {"tags": target})
    close(averages(loss), [5 / 8])


def test_dtp_sigmoid_indicator_with_class_index_targets_uses_their_one_hot():
    loss = lossdsl.compile("dtp({tags: bce(ignore_index=255)})")
    logits = torch.tensor([[2.0, -1.0, -3.0], [1.0, 1.0, -1.0], [5.0, 5.0, 5.0]])
    target = torch.tensor([0, 1, 255])  # one-hot rows [1,0,0] and [0,1,0]; the last row is ignored
    loss({"tags": logits}, {"tags": target})
    close(averages(loss), [5 / 6])


def test_dtp_weight_carries_no_gradient():
    loss = lossdsl.compile(dtp_expr(gamma=1, alpha=0.9))
    loss.observe(depth=0.5)
    preds, targets = dtp_batch(1)
    seg = preds["seg"].requires_grad_(True)
    loss(preds, targets).backward()
    weight = loss.last_terms["seg.weight"]
    seg_ref = seg.detach().clone().requires_grad_(True)
    (weight * F.cross_entropy(seg_ref, targets["seg"], ignore_index=255)).backward()
    close(seg.grad, seg_ref.grad)


def test_dtp_with_a_perfect_indicator_gives_a_finite_weight_near_zero():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    target = torch.tensor([0, 2, 1, 1])
    logits = 10 * F.one_hot(target, 3).float()  # every prediction right: accuracy 1.0
    loss.observe(depth=1.0)
    total = loss({"seg": logits, "depth": torch.zeros(4)}, {"seg": target, "depth": torch.ones(4)})
    close(averages(loss), [1.0, 1.0])
    for task in ("seg", "depth"):
        weight = loss.last_terms[f"{task}.weight"]
        assert torch.isfinite(weight) and 0 <= weight.item() < 1e-3
    assert torch.isfinite(total)


def test_dtp_with_a_zero_indicator_gives_a_finite_weight_above_any_positive_indicators():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    target = torch.tensor([0, 2, 1, 1])
    logits = 10 * F.one_hot((target + 1) % 3, 3).float()  # every prediction wrong: accuracy 0.0
    loss.observe(depth=0.0)
    total = loss({"seg": logits, "depth": torch.zeros(4)}, {"seg": target, "depth": torch.ones(4)})
    close(averages(loss), [0.0, 0.0])
    for task in ("seg", "depth"):
        weight = loss.last_terms[f"{task}.weight"]
        assert torch.isfinite(weight) and weight.item() > dtp_weight(1e-3, 1)
    assert torch.isfinite(total)


def test_dtp_recovers_from_a_zero_indicator_by_the_moving_average():
    loss = lossdsl.compile("dtp({depth: l1()}, alpha=0.5)")
    batch = ({"depth": torch.zeros(3)}, {"depth": torch.ones(3)})
    for score, expected in [(0.0, 0.0), (1.0, 0.5), (1.0, 0.75)]:
        loss.observe(depth=score)
        loss(*batch)
        close(averages(loss), [expected])
        assert torch.isfinite(loss.last_terms["depth.weight"])
    close(loss.last_terms["depth.weight"], dtp_weight(0.75, 1))


def test_dtp_regression_task_without_an_indicator_is_an_error_naming_it():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    seg, seg_t = torch.randn(4, 3), torch.randint(0, 3, (4,))
    with pytest.raises(lossdsl.LossDSLError, match="'depth'"):
        loss({"seg": seg, "depth": torch.zeros(4)}, {"seg": seg_t, "depth": torch.ones(4)})


def test_dtp_missing_indicator_error_leaves_every_running_buffer_alone():
    loss = lossdsl.compile("dtp({tags: ghm(momentum=0.5), depth: l1()})")
    before = {name: value.clone() for name, value in loss.state_dict().items()}
    tags, tags_t = tags_batch()
    with pytest.raises(lossdsl.LossDSLError):
        loss({"tags": tags, "depth": torch.zeros(4)}, {"tags": tags_t, "depth": torch.ones(4)})
    for name, value in loss.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_dtp_observed_indicator_replaces_the_measured_one_for_that_step():
    loss = lossdsl.compile("dtp({seg: ce(), tags: bce()}, alpha=0.5)")
    seg_t = torch.tensor([0, 1, 2, 0])
    seg = 10 * F.one_hot(seg_t, 3).float()  # measured accuracy would be 1.0
    tags, tags_t = tags_batch()
    loss.observe(seg=0.2)
    loss({"seg": seg, "tags": tags}, {"seg": seg_t, "tags": tags_t})
    close(loss.kpi_average["seg"], 0.2)
    loss({"seg": seg, "tags": tags}, {"seg": seg_t, "tags": tags_t})  # measured again: 1.0
    close(loss.kpi_average["seg"], 0.5 * 1.0 + 0.5 * 0.2)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_dtp_observe_outside_zero_one_is_an_error(value):
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    with pytest.raises(lossdsl.LossDSLError, match="depth"):
        loss.observe(depth=value)
    assert not any(loss.kpi_seen.values())


def test_dtp_observe_of_more_than_one_number_is_an_error():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    with pytest.raises(lossdsl.LossDSLError, match="depth"):
        loss.observe(depth=torch.tensor([0.2, 0.3]))


def test_dtp_observe_accepts_a_zero_dimensional_tensor():
    loss = lossdsl.compile("dtp({depth: l1()})")
    loss.observe(depth=torch.tensor(0.25))
    close(averages(loss), [0.25])


def test_dtp_observe_of_an_unknown_task_is_an_error_naming_it():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    with pytest.raises(lossdsl.LossDSLError, match="'normals'"):
        loss.observe(normals=0.5)


def test_observe_on_a_loss_without_indicators_is_an_error():
    loss = lossdsl.compile("uncertainty({seg: ce(), depth: l1()})")
    with pytest.raises(lossdsl.LossDSLError, match="dtp"):
        loss.observe(depth=0.5)


def test_dtp_in_eval_mode_leaves_the_running_averages_alone():
    loss = lossdsl.compile(dtp_expr(gamma=1, alpha=0.9))
    loss.observe(depth=0.6)
    loss(*dtp_batch(0))
    trained = {name: value.clone() for name, value in loss.state_dict().items()}
    loss.eval()
    preds, targets = dtp_batch(3)
    total = loss(preds, targets)
    for name, value in loss.state_dict().items():
        assert torch.equal(value, trained[name]), name
    k = [trained[f"kpi_average.{task}"].item() for task in ("seg", "tags", "depth")]
    raw = [F.cross_entropy(preds["seg"], targets["seg"], ignore_index=255),
           F.binary_cross_entropy_with_logits(preds["tags"], targets["tags"]),
           F.l1_loss(preds["depth"], targets["depth"])]
    close(total, sum(dtp_weight(k_t, 1) * raw_t for k_t, raw_t in zip(k, raw)))


def test_running_ghm_buffers_of_a_task_are_left_alone_in_eval_mode():
    loss = lossdsl.compile("dtp({tags: ghm(momentum=0.75), depth: l1()})")
    loss.observe(depth=0.5)
    tags, tags_t = tags_batch()
    loss({"tags": tags, "depth": torch.zeros(4)}, {"tags": tags_t, "depth": torch.ones(4)})
    trained = {name: value.clone() for name, value in loss.state_dict().items()}
    assert any("ghm_accumulator" in name for name in trained)
    loss.eval()
    loss({"tags": torch.randn(4, 5), "depth": torch.zeros(4)}, {"tags": tags_t, "depth": torch.ones(4)})
    for name, value in loss.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_dtp_state_dict_round_trip_gives_identical_next_losses():
    expr = dtp_expr(gamma=2, alpha=0.7)
    trained = lossdsl.compile(expr)
    for step in range(3):
        trained.observe(depth=0.2 + 0.1 * step)
        trained(*dtp_batch(step))
    fresh = lossdsl.compile(expr)
    fresh.load_state_dict(trained.state_dict())
    close(averages(fresh), averages(trained), rtol=0, atol=0)
    preds, targets = dtp_batch(7)
    first, second = fresh(preds, targets), trained(preds, targets)  # no observe: depth keeps its average
    assert torch.equal(first, second)
    assert torch.equal(averages(fresh), averages(trained))


def test_dtp_loaded_regression_indicator_is_used_without_a_new_observation():
    trained = lossdsl.compile("dtp({depth: l1()})")
    trained.observe(depth=0.3)
    fresh = lossdsl.compile("dtp({depth: l1()})")
    fresh.load_state_dict(trained.state_dict())
    batch = ({"depth": torch.zeros(3)}, {"depth": torch.ones(3)})
    assert torch.equal(fresh(*batch), trained(*batch))
