"""Schedules (issue 17 item 3; SPEC section 5b): term weights and block parameters that follow the
epoch or the step.

References: the schedules' definitions written out here (``steps``: the value of the last point
passed; ``ramp``: linear or half-cosine interpolation between ``start`` and ``end``), and the losses'
formulas from tests/reference.py evaluated at the schedule's value of the moment.
"""

from __future__ import annotations

import math

import pytest
import reference as ref
import torch
import torch.nn.functional as F
import yaml
from conftest import caret_target

import lossdsl
from lossdsl import LossDSLError, LossInputError, LossSpecError
from lossdsl.catalogue.modifiers import Balance, Clip, Modulate, Poly
from lossdsl.catalogue.schedules import Ramp, Steps, schedulable_parameters
from lossdsl.functional.schedules import schedule_value


def steps_at(values, at, t):
    """The value of the last point passed."""
    passed = sum(1 for point in at if t >= point)
    return values[passed]


def ramp_at(a, b, start, end, t, cosine=False):
    f = min(max((t - start) / (end - start), 0.0), 1.0)
    return a + (b - a) * ((1 - math.cos(math.pi * f)) / 2 if cosine else f)


# -- the language -----------------------------------------------------------------------------------


@pytest.mark.parametrize("expr", [
    "ramp(0, 1, end=10) * dice()",
    "ce() + ramp(0.5, 1, start=2, end=10, shape=cosine) * dice()",
    "ce() - steps([0, 0.5], at=[3]) * dice()",
    "focal(gamma=ramp(0, 2, end=5, over=step))",
    "poly(focal(gamma=steps([0, 1, 2], at=[2, 4]), alpha=ramp(0.5, 0.25, end=8)), eps=ramp(1, 0, end=20))",
    "asl(gamma_neg=ramp(0, 4, end=5), clip=ramp(0, 0.05, end=5))",
    "{cls: ramp(0, 1, end=3) * ce(), box: l1()}",
    "deep(ce() + ramp(0, 1, end=4) * dice(), weights=two)",
])
def test_schedules_round_trip_through_the_expression_and_both_yaml_forms(expr):
    spec = lossdsl.parse(expr)
    assert lossdsl.parse(spec.to_expr()) == spec
    assert lossdsl.load(spec.to_yaml()) == spec  # the node form
    assert lossdsl.load(yaml.safe_dump({"expr": expr})) == spec  # the expression form


@pytest.mark.parametrize("written, canonical", [
    ("2 * ramp(0, 1, end=10) * dice()", "ramp(0, 2, end=10) * dice()"),
    ("ramp(0, 1, end=10) / 4 * dice()", "ramp(0, 0.25, end=10) * dice()"),
    ("ce() - ramp(0, 1, end=3) * dice()", "ce() - ramp(0, 1, end=3) * dice()"),
    ("0.5 * (ce() + steps([0, 1], at=[5]) * dice())", "0.5 * ce() + steps([0, 0.5], at=[5]) * dice()"),
    ("ramp(0, 1, start=0, end=3, shape=linear, over=epoch) * ce()", "ramp(0, 1, end=3) * ce()"),
    ("focal(gamma=ramp(0, 2, over=step, end=4, start=1))",
     "focal(gamma=ramp(0, 2, start=1, end=4, over=step))"),
])
def test_the_canonical_expression_folds_numbers_into_the_schedule(written, canonical):
    assert lossdsl.parse(written).to_expr() == canonical


def test_the_node_form_of_a_schedule():
    spec = lossdsl.parse("ce() + steps([0, 0.9999], at=[160]) * dice()")
    assert spec.to_dict()["terms"][1]["weight"] == {"schedule": "steps", "values": [0.0, 0.9999], "at": [160]}
    node = lossdsl.parse("focal(gamma=ramp(0, 2, end=5, shape=cosine))").to_dict()
    assert node == {"kind": "focal", "gamma": {"schedule": "ramp", "values": [0.0, 2.0], "end": 5,
                                               "shape": "cosine"}}


def test_the_parameters_a_schedule_may_drive_are_the_blocks_numbers():
    assert schedulable_parameters(Modulate) == ("gamma", "gamma_pos", "gamma_neg")
    assert schedulable_parameters(Poly) == ("eps",)
    assert schedulable_parameters(Balance) == ("alpha",)
    assert schedulable_parameters(Clip) == ("margin",)
    from lossdsl.describe import explain

    assert "a number or a schedule (steps or ramp), >= 0; default 2" in explain("focal")


@pytest.mark.parametrize("expr, reason, at", [
    ("steps([0, 1, 2], at=[5, 3]) * ce()", "at= must increase: 3 comes after 5", "3"),
    ("steps([0, 1], at=[5, 8]) * ce()", "steps() has 2 values, so at= needs 1 point where the next one "
                                        "starts; got 2", "["),
    ("ramp(0, 1, start=5, end=5) * ce()", "ramp() must end after it starts: end=5 <= start=5", "5"),
    ("ramp(0, 1) * ce()", "ramp() requires end=, e.g. ramp(0, 1, end=10)", "r"),
    ("ramp(0, 1, end=3, shap=cosine) * ce()", "ramp() has no parameter 'shap'", "s"),
    ("ramp(0, 1, end=3, shape=square) * ce()", "ramp(): shape=square is not one of linear, cosine", "s"),
    ("ramp(0, 1, end=2.5) * ce()", "ramp(): end expects an integer, got 2.5", "2"),
    ("focal(gamma=ramp(-1, 2, end=5))",
     "focal(): gamma=ramp(-1, 2, end=5) takes the value -1, out of range; gamma must be >= 0", "-"),
    ("poly(ce(), eps=steps([1, -2], at=[4]))",
     "poly(): eps=steps([1, -2], at=[4]) takes the value -2, out of range; eps must be >= -1", "-"),
    ("clip(bce(), margin=ramp(0, 1, end=3))",
     "clip(): margin=ramp(0, 1, end=3) takes the value 1, out of range; margin must be in [0, 1)", "1"),
    ("balance(bce(), alpha=ramp(0.5, 2, end=4))",
     "balance(): alpha=ramp(0.5, 2, end=4) takes the value 2, out of range; alpha must be in [0, 1]", "2"),
    ("asl(head=softmax, clip=ramp(0, 0.1, end=5))",
     "asl(): clip shifts sigmoid probabilities; asl(head=softmax) takes no clip", "a"),
    ("bce(smoothing=ramp(0, 0.1, end=3))", "bce(): smoothing cannot follow a schedule", "r"),
    ("ramp(0, 1, end=2) * ramp(0, 1, end=3) * ce()",
     "cannot multiply two schedules; a term's weight is one schedule", "r"),
    ("ce() + ramp(0, 1, end=3)", "cannot add a schedule and a loss: a schedule weighs a loss", "r"),
    ("ce() / ramp(1, 2, end=3)", "cannot divide by a schedule; only by a number", "r"),
    ("focal(alpha=[ramp(0, 1, end=2)])", "a list holds numbers, names or strings, not schedules", "r"),
    ("steps(0, 1, at=[2]) * ce()", "steps() takes its values as one list", "0"),
    ("poly(ramp(0, 1, end=2))", "a positional argument must be a loss, not a schedule", "r"),
])
def test_bad_schedules_are_errors_that_point_at_the_expression(expr, reason, at):
    with pytest.raises(LossDSLError) as error:
        lossdsl.parse(expr)
    assert error.value.reason == reason
    assert caret_target(error.value) == at


def test_a_parameter_that_cannot_follow_a_schedule_names_those_that_can():
    with pytest.raises(LossSpecError) as error:
        lossdsl.parse("modulate(bce(), detach=ramp(0, 1, end=2))")
    assert error.value.hint == "the parameters of modulate that can: gamma, gamma_pos, gamma_neg"


def test_errors_in_a_yaml_schedule_point_into_the_file():
    text = "loss:\n  kind: focal\n  gamma: {schedule: ramp, values: [0, 2], start: 4, end: 2}\n"
    with pytest.raises(LossSpecError) as error:
        lossdsl.load(text, key="loss")
    assert error.value.reason == "ramp() must end after it starts: end=2 <= start=4"
    assert (error.value.line, error.value.column) == (3, text.splitlines()[2].index("end: 2") + 6)
    with pytest.raises(LossSpecError, match="unknown schedule 'rampp'"):
        lossdsl.load({"kind": "focal", "gamma": {"schedule": "rampp", "values": [0, 2], "end": 2}})


def test_the_json_schema_describes_schedules():
    jsonschema = pytest.importorskip("jsonschema")
    schema = lossdsl.json_schema()
    spec = lossdsl.parse("poly(focal(gamma=ramp(0, 2, end=5)), eps=steps([1, 0], at=[3])) "
                         "+ ramp(0, 1, end=10, over=step) * dice()")
    jsonschema.validate(yaml.safe_load(spec.to_yaml()), schema)
    nameless = {"terms": [{"loss": {"kind": "dice"}, "weight": {"values": [0, 1], "end": 3}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(nameless, schema)


def test_schedules_built_in_python_raise_lossdsl_errors():
    with pytest.raises(LossSpecError, match="at= must increase: 2 comes after 4"):
        Steps(values=(0, 1, 2), at=(4, 2))
    assert Ramp(values=(0, 1), end=4).value_at(1) == 0.25


# -- values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_value_is_the_definition_at_every_epoch(dtype):
    cases = [
        (Steps(values=(0, 0.9999, 0.1), at=(3, 7)), lambda t: steps_at((0, 0.9999, 0.1), (3, 7), t)),
        (Ramp(values=(1, 0), start=2, end=6), lambda t: ramp_at(1, 0, 2, 6, t)),
        (Ramp(values=(0, 2), end=5, shape="cosine"), lambda t: ramp_at(0, 2, 0, 5, t, cosine=True)),
    ]
    like = torch.zeros((), dtype=dtype)
    for schedule, definition in cases:
        for t in range(10):
            value = schedule_value(schedule, torch.tensor(t), like)
            assert value.dtype == dtype
            assert schedule.value_at(t) == pytest.approx(definition(t), abs=1e-15)
            torch.testing.assert_close(value, torch.tensor(definition(t), dtype=dtype))


def _x_y(shape=(6, 4), dtype=torch.float64):
    return (3 * torch.randn(shape, dtype=dtype)).requires_grad_(), (torch.rand(shape) > 0.6).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("expr, reference", [
    ("focal(gamma=ramp(0, 2, end=4), reduction=none)", lambda x, y, e: ref.focal(x, y, gamma=e / 2)),
    ("asl(gamma_neg=ramp(0, 4, end=4), reduction=none)",
     lambda x, y, e: ref.asl(x, y, 1.0, float(e), 0.05)),
    ("poly(bce(), eps=steps([1, -0.5], at=[2]), reduction=none)",
     lambda x, y, e: ref.poly(ref.bce(x, y), ref.one_minus_pt(x, y), [1.0 if e < 2 else -0.5])),
    ("balance(bce(), alpha=ramp(0.75, 0.25, end=4), reduction=none)",
     lambda x, y, e: ref.bce(x, y) * ref.alpha_t(y, 0.75 - 0.125 * e)),
    ("clip(bce(), margin=ramp(0, 0.2, end=4), reduction=none)",
     lambda x, y, e: ref.bce(x, y, margin=0.05 * e)),
])
def test_scheduled_sigmoid_blocks_equal_their_formula_at_every_epoch(expr, reference, dtype):
    loss = lossdsl.compile(expr)
    x, y = _x_y(dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-12}
    for epoch in range(5):
        loss.set_epoch(epoch)
        value = loss(x, y)
        expected = reference(x, y, epoch)
        torch.testing.assert_close(value, expected, **tol)
        (g_ours,) = torch.autograd.grad(value.sum(), x)
        (g_ref,) = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(g_ours, g_ref, **tol)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_scheduled_softmax_focusing_equals_its_formula(smoothing):
    loss = lossdsl.compile(f"poly(modulate(ce(smoothing={smoothing}), gamma=ramp(0, 2, end=4)), "
                           "eps=steps([0, 1], at=[2]), reduction=none)")
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    for epoch in range(5):
        loss.set_epoch(epoch)
        gamma, eps = epoch / 2, 0.0 if epoch < 2 else 1.0
        q = ref.softmax_target(x, y, smoothing)
        miss = 1 - (q * torch.softmax(x, 1)).sum(1)
        expected = ref.softmax_focal(x, y, gamma, smoothing) + eps * miss ** (1 + gamma)
        torch.testing.assert_close(loss(x, y), expected, rtol=1e-11, atol=1e-12)


def test_a_scheduled_clip_margin_of_0_is_exact_at_confident_logits():
    """margin 0 of a schedule clips nothing: bce exactly, also where 1 - p underflows (|x| > 88)."""
    x = torch.tensor([[100.0, -100.0, 5.0, 1e4, -0.5]], requires_grad=True)
    y = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])
    scheduled = lossdsl.compile("clip(bce(), margin=ramp(0, 0.05, end=4), reduction=none)")(x, y)
    (g_scheduled,) = torch.autograd.grad(scheduled.sum(), x)
    plain = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    (g_plain,) = torch.autograd.grad(plain.sum(), x)
    torch.testing.assert_close(scheduled, plain)
    torch.testing.assert_close(g_scheduled, g_plain)


def test_scheduled_blocks_pass_gradcheck():
    loss = lossdsl.compile("poly(asl(gamma_neg=ramp(1, 4, end=4), clip=ramp(0, 0.1, end=4)), "
                           "eps=ramp(1, 0.5, end=4)) "
                           "+ ramp(0.5, 1, end=4) * focal(alpha=ramp(0.25, 0.5, end=4))")
    loss.set_epoch(1)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (x, y), eps=1e-6, atol=1e-7)


def test_a_scheduled_weight_multiplies_its_term():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 4, 4))
    loss = lossdsl.compile("ce() + ramp(0, 1, end=4, shape=cosine) * dice()")
    ce, dice = lossdsl.compile("ce()")(x, y), lossdsl.compile("dice()")(x, y)
    for epoch in (1, 2, 6):
        loss.set_epoch(epoch)
        torch.testing.assert_close(loss(x, y), ce + ramp_at(0, 1, 0, 4, epoch, cosine=True) * dice)


def test_a_term_whose_weight_is_0_now_is_not_computed():
    z, y, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 3)
    loss = lossdsl.compile("ce() + steps([0, 0.5], at=[2]) * kd(T=2)")
    value = loss(z, y)  # no teacher: kd is switched off at epoch 0, so nothing reads it
    assert set(loss.last_terms) == {"ce()", "total"}
    torch.testing.assert_close(value, F.cross_entropy(z, y))
    loss.set_epoch(2)
    with pytest.raises(LossInputError, match="needs the call-time input teacher="):
        loss(z, y)
    assert set(loss.last_terms) == {"ce()", "total"}
    loss(z, y, teacher=t)
    assert set(loss.last_terms) == {"ce()", "kd(T=2)", "total"}


def test_a_loss_whose_every_weight_is_0_is_still_computed():
    x, y = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 0])
    value = lossdsl.compile("ramp(0, 1, end=4) * ce()")(x, y)
    assert value.item() == 0 and value.requires_grad


# -- the clock ------------------------------------------------------------------------------------------


def test_training_calls_count_steps_and_eval_or_failed_calls_do_not():
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    # check_values=True: the bad call below fails at once (deferred checks would report it a call later)
    loss = lossdsl.compile("ce() + ramp(0, 1, end=4, over=step) * focal(head=softmax)", check_values=True)
    focal = lossdsl.compile("focal(head=softmax)")(x, y)
    for step in range(3):
        torch.testing.assert_close(loss(x, y), F.cross_entropy(x, y) + step / 4 * focal)
    loss.eval()
    loss(x, y)
    loss.train()
    with pytest.raises(LossInputError):
        loss(x, torch.tensor([0, 1, 7, 0]))
    assert int(loss.clock.step) == 3


def test_multi_task_and_deep_losses_count_one_step_per_call_and_pass_the_epoch_on():
    loss = lossdsl.compile("{seg: deep(ce() + ramp(0, 1, end=4) * dice(), weights=same), "
                           "cls: ramp(0, 1, end=2, over=step) * ce()}")
    preds = {"seg": [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)], "cls": torch.randn(2, 5)}
    targets = {"seg": torch.randint(0, 3, (2, 8, 8)), "cls": torch.tensor([1, 4])}
    loss.set_epoch(2)
    loss(preds, targets)
    value = loss(preds, targets)
    assert int(loss.clock.step) == 2
    seg = lossdsl.compile("deep(ce() + 0.5 * dice(), weights=same)")(preds["seg"], targets["seg"])
    torch.testing.assert_close(value, seg + 0.5 * F.cross_entropy(preds["cls"], targets["cls"]))
    assert list(loss.state_dict()) == ["_extra_state", "clock.epoch", "clock.step"]


def test_a_resumed_run_continues_where_it_stopped():
    expr = "ce() + ramp(0, 1, start=2, end=6) * dice() + ramp(0, 1, end=10, over=step) * focal(head=softmax)"
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    first = lossdsl.compile(expr)
    first.set_epoch(4)
    for _ in range(3):
        first(x, y)
    resumed = lossdsl.compile(expr)
    resumed.load_state_dict(first.state_dict())
    assert (resumed.clock.host_epoch, int(resumed.clock.step)) == (4, 3)
    torch.testing.assert_close(resumed(x, y), first(x, y))
    assert set(resumed.last_terms) == set(first.last_terms)  # dice is on again after the load


@pytest.mark.parametrize("epoch", [-1, 2.5, True, "3"])
def test_set_epoch_takes_a_whole_number_from_0(epoch):
    loss = lossdsl.compile("ramp(0, 1, end=4) * dice()")
    with pytest.raises(LossInputError) as error:
        loss.set_epoch(epoch)
    assert error.value.reason == (f"set_epoch() takes the epoch as an integer >= 0, got {epoch!r} "
                                  "(the loss 'ramp(0, 1, end=4) * dice()')")


def test_a_loss_without_schedules_takes_set_epoch_and_has_no_clock():
    loss = lossdsl.compile("ce()")
    loss.set_epoch(3)
    assert loss.clock is None and list(loss.state_dict()) == ["_extra_state"]


def test_compile_shows_each_schedule_and_its_value_now():
    from lossdsl.describe import spec_tree

    loss = lossdsl.compile("focal(gamma=ramp(0, 2, end=4)) + steps([0, 1], at=[3]) * ce(head=softmax)"
                           .replace("ce(head=softmax)", "bce()"))
    loss.set_epoch(1)
    lines = spec_tree(loss.spec, module=loss).splitlines()
    start = lines.index("schedules (epoch 1, step 0):")
    assert lines[start + 1:start + 3] == [
        "  term 1 focal.gamma  ramp(0, 2, end=4)      now 0.5",
        "  term 2 weight       steps([0, 1], at=[3])  now 0 (the term is not computed)",
    ]


def test_plot_draws_the_schedules_against_the_epoch_and_the_step():
    pytest.importorskip("matplotlib")
    figure = lossdsl.plot("focal(gamma=ramp(0, 2, end=8)) + ramp(0, 1, end=100, over=step) * bce()")
    panels = [ax for ax in figure.axes if ax.get_xlabel() in ("epoch", "step")]
    assert [ax.get_xlabel() for ax in panels] == ["epoch", "step"]
    (line,) = panels[0].get_lines()
    assert list(line.get_xdata()[:3]) == [0, 1, 2]
    assert list(line.get_ydata()[:3]) == [0, 0.25, 0.5]
    assert panels[1].get_legend().get_texts()[0].get_text() == "term 2 weight: ramp(0, 1, end=100, over=step)"


@pytest.mark.parametrize("expr", [
    "focal(gamma=ramp(0, 2, end=8)) + ramp(0, 1, end=100, over=step) * bce()",
    "class_balanced(ldam(counts=[50, 9, 2]), beta=steps([0, 0.9999], at=[160]), counts=[50, 9, 2])",
])
def test_the_schedule_panels_sit_above_the_notes(expr):
    pytest.importorskip("matplotlib")
    figure = lossdsl.plot(expr)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    (notes,) = [text for text in figure.texts if text.get_position()[1] < 0.1]
    lowest = min(figure.axes, key=lambda ax: ax.get_position().y0)
    assert lowest.get_tightbbox(renderer).y0 > notes.get_window_extent(renderer).y1  # its label too


# -- torch.compile ------------------------------------------------------------------------------------


def test_changing_values_never_recompile_and_switching_a_term_on_compiles_once():
    """The values are 0-d tensors computed from the clock's buffers inside the graph; only a term
    that a zero weight switches off or on changes the graph. fullgraph=True: no graph break (a
    host read such as .item() would be one)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    loss = lossdsl.compile("poly(focal(gamma=ramp(0, 2, end=6)), eps=ramp(1, 0, end=50, over=step)) "
                           "+ steps([0, 0.5, 1], at=[3, 5]) * bce()")
    compiled = torch.compile(loss, backend=counter, fullgraph=True)
    eager = lossdsl.compile(loss.spec)
    x, y = torch.randn(8, 4), (torch.rand(8, 4) > 0.7).float()
    frames = []
    for epoch in range(7):
        loss.set_epoch(epoch)
        eager.set_epoch(epoch)
        for _ in range(2):
            torch.testing.assert_close(compiled(x, y), eager(x, y))
        frames.append(counter.frame_count)
    assert frames == [1, 1, 1, 2, 2, 2, 2]  # epoch 3 switches bce() on; every other change is data
    assert int(loss.clock.step) == int(eager.clock.step) == 14
    torch._dynamo.reset()


# -- the long-tail parameters: class_balanced's beta (DRW) and logit_adjust's tau ------------------

DRW_COUNTS = [500, 120, 40, 9, 2]


def effective_number_weight(n, beta):
    """Cui et al.: (1 - beta) / (1 - beta^n_j), normalised to sum to C (plainly, in float64)."""
    raw = [(1 - beta) / (1 - beta**count) if beta > 0 else 1.0 for count in n]
    return torch.tensor([w * len(n) / sum(raw) for w in raw], dtype=torch.float64)


def test_the_long_tail_parameters_follow_schedules():
    from lossdsl.catalogue.longtail import ClassBalanced, LogitAdjust

    assert schedulable_parameters(ClassBalanced) == ("beta",)
    assert schedulable_parameters(LogitAdjust) == ("tau",)


def test_ldam_drw_is_ldam_then_ldam_weighed_by_the_effective_number_from_the_switch():
    """Cao et al.'s LDAM-DRW: plain LDAM until epoch 160, then each sample weighed by its class's
    effective-number weight (beta=0.9999). The mean is SPEC's class_balanced mean, over samples
    (Cao's code passes the weights to F.cross_entropy(weight=), which divides by their sum instead:
    the same gradient direction, scaled per batch)."""
    counts = torch.tensor(DRW_COUNTS, dtype=torch.float64)
    loss = lossdsl.compile(f"class_balanced(ldam(counts={DRW_COUNTS}, s=30), "
                           f"beta=steps([0, 0.9999], at=[160]), counts={DRW_COUNTS})")
    x = torch.randn(32, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (32,))
    margins = counts.pow(-0.25) * (0.5 / counts.pow(-0.25).max())
    for epoch in (0, 159, 160, 199):
        loss.set_epoch(epoch)
        shifted = 30 * (x - F.one_hot(y, 5) * margins)
        beta = 0.9999 if epoch >= 160 else 0.0
        weight = effective_number_weight(DRW_COUNTS, beta)
        want = (weight[y] * F.cross_entropy(shifted, y, reduction="none")).mean()
        got = loss(x, y)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0],
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("posthoc", [False, True])
def test_a_scheduled_tau_is_the_fixed_tau_of_each_epoch_in_training_and_prediction(posthoc):
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (16,))
    flag = ", posthoc=true" if posthoc else ""
    loss = lossdsl.compile(f"logit_adjust(ce(), tau=ramp(0, 1, end=4), counts={DRW_COUNTS}{flag})")
    for epoch in range(6):
        loss.set_epoch(epoch)
        fixed = lossdsl.compile(f"logit_adjust(ce(), tau={min(epoch / 4, 1.0)}, counts={DRW_COUNTS}{flag})")
        torch.testing.assert_close(loss(x, y), fixed(x, y), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss.predict(x), fixed.predict(x), rtol=1e-12, atol=1e-12)


def test_a_scheduled_beta_on_the_sigmoid_head_and_online_counts():
    x = torch.randn(16, 5, dtype=torch.float64)
    y = (torch.rand(16, 5) > 0.6).double()
    scheduled = lossdsl.compile("class_balanced(focal(), beta=steps([0, 0.99], at=[1]))")
    before, after = (lossdsl.compile(f"class_balanced(focal(), beta={b})") for b in (0, 0.99))
    torch.testing.assert_close(scheduled(x, y), before(x, y), rtol=1e-12, atol=1e-12)
    after(x, y)  # the same targets counted online
    scheduled.set_epoch(1)
    torch.testing.assert_close(scheduled(x, y), after(x, y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scheduled.state_dict()["terms.0.frequency.class_counts"],
                               after.state_dict()["terms.0.frequency.class_counts"])


def test_a_scheduled_beta_is_checked_over_the_whole_schedule():
    with pytest.raises(LossDSLError) as error:
        lossdsl.parse("class_balanced(ce(), beta=steps([0, 1], at=[160]))")
    assert error.value.reason == ("class_balanced(): beta=steps([0, 1], at=[160]) takes the value 1, "
                                  "out of range; beta must be in [0, 1)")


def test_drw_under_torch_compile_switches_without_recompiling():
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    expr = f"class_balanced(ldam(counts={DRW_COUNTS}), beta=steps([0, 0.9999], at=[2]), counts={DRW_COUNTS})"
    loss, eager = lossdsl.compile(expr), lossdsl.compile(expr)
    compiled = torch.compile(loss, backend=counter, fullgraph=True)
    x, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    for epoch in range(4):
        loss.set_epoch(epoch)
        eager.set_epoch(epoch)
        torch.testing.assert_close(compiled(x, y), eager(x, y))
    assert counter.frame_count == 1
    torch._dynamo.reset()
