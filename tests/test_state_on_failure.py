"""A call that fails while computing moves no running state (SPEC 6; issue 15 item 6).

Every input check of a call runs before any term computes, but some failures can only happen while
computing: a plug-in's own function raises or returns something unusable, dtp's indicator of a
task. Whatever fails, and wherever (the last term of a sum, the second task of a multi-task loss),
GHM-C's counts, dtp's averages and seen flags, the observed indicators waiting for their step and
``last_terms`` stay as they were, and the next good call continues exactly like a loss that never
saw the failing one. A plug-in's unusable output is an error naming the plug-in's function and what
it should have returned.
"""

from __future__ import annotations

from typing import Literal

import pytest
import torch

import lossdsl
from lossdsl import LossInputError

# What a faulty plug-in does instead of its computation.
FAULTS = ["raise", "float", "shape", "integer", "device"]


class PluginBroke(RuntimeError):
    """Raised by the faulty plug-ins' "raise" fault (their own bug, not an input error)."""


def faulty_output(fault: str, good: torch.Tensor):
    if fault == "raise":
        raise PluginBroke("the plug-in's own computation failed")
    if fault == "float":
        return 1.0
    if fault == "shape":
        return good.sum(dim=0)
    if fault == "integer":
        return good.round().long()
    if fault == "device":
        return good.to("meta")
    return good


@pytest.fixture(scope="module")
def faulty_element():
    if "faulty_element" not in lossdsl.CATALOGUE:

        @lossdsl.register
        class FaultyElement(lossdsl.ElementLoss):
            """An element loss ``(p - y)^2`` that can be told to fail."""

            kind: Literal["faulty_element"] = "faulty_element"
            fault: Literal["ok", "raise", "float", "shape", "integer", "device"] = "ok"

            def elementwise(self, p, y):
                return faulty_output(self.fault, (p - y) ** 2)

    return lossdsl.CATALOGUE["faulty_element"]


@pytest.fixture(scope="module")
def faulty_region():
    if "faulty_region" not in lossdsl.CATALOGUE:

        @lossdsl.register
        class FaultyRegion(lossdsl.RegionLoss):
            """A region loss ``1 - soft recall`` per sample and class that can be told to fail."""

            kind: Literal["faulty_region"] = "faulty_region"
            fault: Literal["ok", "raise", "float", "shape", "integer", "device"] = "ok"

            def region(self, p, y, valid):
                dims = tuple(range(2, p.dim()))
                return faulty_output(self.fault, 1 - (p * y).sum(dims) / (y.sum(dims) + 1))

    return lossdsl.CATALOGUE["faulty_region"]


def snapshot(loss):
    """The running state (the expression saved beside it left out)."""
    return {name: value.clone() for name, value in loss.state_dict().items() if name != "_extra_state"}


def assert_unchanged(loss, before):
    after = snapshot(loss)
    assert set(after) == set(before)
    for name, value in after.items():
        assert torch.equal(value, before[name]), name


def expected_message(fault: str, function: str, shape: str, per: str) -> str:
    found = {"float": "float 1.0", "shape": "shape [", "integer": "a torch.int64 tensor",
             "device": "a tensor on meta (the input is on cpu)"}[fault]
    return (f"{function} must return a floating-point tensor of shape {shape} (one value per {per}); "
            f"it returned {found}")


def element_batch(seed):
    generator = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(6, 4, generator=generator), (torch.rand(6, 4, generator=generator) > 0.6).float()


def region_batch(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, 3, 4, 4, generator=generator)
    return logits, torch.randint(0, 3, (2, 4, 4), generator=generator)


PLUGINS = {"element": ("faulty_element", element_batch), "region": ("faulty_region", region_batch)}


# --------------------------------------------------------------------------------------------------
# a plug-in fails in the last term of a sum that holds GHM-C's running counts


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("family", ["element", "region"])
def test_a_failing_plugin_in_the_last_term_moves_no_ghm_count(faulty_element, faulty_region, family, fault):
    plugin, batch = PLUGINS[family]
    expr = f"ghm(momentum=0.5) + focal() + {plugin}(fault={fault})"
    loss, twin = lossdsl.compile(expr), lossdsl.compile(expr.replace(f"fault={fault}", "fault=ok"))
    twin(*batch(0))
    with torch.no_grad():  # the same counts as the twin, not zero
        loss.terms[0].ghm_accumulator.copy_(twin.terms[0].ghm_accumulator)
    loss.last_terms = dict(twin.last_terms)
    before, logged = snapshot(loss), dict(loss.last_terms)
    assert loss.terms[0].ghm_accumulator.sum() > 0
    if fault == "raise":
        with pytest.raises(PluginBroke):  # the plug-in's own error, unchanged
            loss(*batch(1))
    else:
        function, shape, per = ((f"{plugin}.elementwise()", "[6, 4]", "element") if family == "element"
                                else (f"{plugin}.region()", "[2, 3]", "sample and class"))
        with pytest.raises(LossInputError) as caught:
            loss(*batch(1))
        assert caught.value.reason.startswith(f"{plugin}(fault={fault}): ")
        assert expected_message(fault, function, shape, per) in caught.value.reason
        assert "torch operations from the p and y" in caught.value.hint
    assert_unchanged(loss, before)
    assert loss.last_terms.keys() == logged.keys()
    assert all(loss.last_terms[key] is logged[key] for key in logged)
    # the counts the failing call computed were thrown away: the next call continues from `before`
    twin(*batch(2))
    loss.terms[2].node = twin.terms[2].node  # the plug-in now computes
    loss(*batch(2))
    assert_unchanged(loss, snapshot(twin))


@pytest.mark.parametrize("family", ["element", "region"])
def test_a_plugin_output_in_another_float_dtype_is_used_in_the_computation_dtype(
    faulty_element, faulty_region, family
):
    plugin, batch = PLUGINS[family]
    x, y = batch(0)
    loss = lossdsl.compile(f"{plugin}()")
    node = loss.terms[0].node
    function = "elementwise" if family == "element" else "region"
    original = getattr(type(node), function)

    class Float64Output(type(node)):
        def elementwise(self, p, y):
            return original(self, p, y).double()

        def region(self, p, y, valid):
            return original(self, p, y, valid).double()

    loss.terms[0].node = Float64Output(**node.model_dump())
    value = loss(x, y)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, lossdsl.compile(f"{plugin}()")(x, y))


# --------------------------------------------------------------------------------------------------
# a failure in the second task of a multi-task loss


def task_batch(seed):
    x, y = element_batch(seed)
    x2, y2 = element_batch(seed + 100)
    return {"a": x, "b": x2}, {"a": y, "b": y2}


@pytest.mark.parametrize("weighting", ["tasks", "dtp", "uncertainty"])
@pytest.mark.parametrize("fault", ["raise", "float"])
def test_a_failure_in_the_second_task_moves_nothing_of_the_first(faulty_element, weighting, fault):
    loss = lossdsl.compile(f"{weighting}({{a: ghm(momentum=0.5), b: faulty_element()}})")
    loss(*task_batch(0))  # counts, averages and flags hold something
    loss.tasks["b"].terms[0].node = faulty_element(fault=fault)  # from now on the plug-in fails
    before, logged = snapshot(loss), dict(loss.last_terms)
    assert loss.tasks["a"].terms[0].ghm_accumulator.sum() > 0
    task_logged = dict(loss.tasks["a"].last_terms)
    with pytest.raises((PluginBroke, LossInputError)) as caught:
        loss(*task_batch(1))
    if fault == "float":
        assert str(caught.value).startswith("task 'b': faulty_element(): faulty_element.elementwise() must")
    assert_unchanged(loss, before)
    assert loss.last_terms == logged
    assert loss.tasks["a"].last_terms == task_logged  # the first task's log waits for the whole call


def test_an_indicator_observed_before_a_failing_call_still_stands_for_the_next_step(faulty_element):
    """observe() gives the indicator of the next training step; a step that failed did not use it."""
    expr = "dtp({a: ghm(momentum=0.5), b: faulty_element(fault=FAULT)}, alpha=0.5)"
    loss = lossdsl.compile(expr.replace("FAULT", "float"))
    twin = lossdsl.compile(expr.replace("FAULT", "ok"))
    for module in (loss, twin):
        module.observe(a=0.25)
    with pytest.raises(LossInputError):
        loss(*task_batch(1))
    loss.tasks["b"].terms[0].node = twin.tasks["b"].terms[0].node
    for module in (loss, twin):
        module(*task_batch(2))
    torch.testing.assert_close(loss.kpi_average["a"], torch.tensor(0.25))  # not blended with a measure
    assert_unchanged(loss, snapshot(twin))


def test_a_failure_in_dtps_indicator_moves_no_buffer_and_keeps_the_observed_values(monkeypatch):
    """The indicators are measured after every task has computed: a failure there (here a
    simulated one) leaves the tasks' GHM-C counts, the averages, the flags and observe() alone."""
    import lossdsl.multitask

    expr = "dtp({a: ghm(momentum=0.5), c: ce(), d: l1()}, alpha=0.5)"
    loss = lossdsl.compile(expr)
    generator = torch.Generator().manual_seed(5)
    preds = {"a": torch.randn(6, 4, generator=generator), "c": torch.randn(6, 3, generator=generator),
             "d": torch.randn(6, generator=generator)}
    targets = {"a": (torch.rand(6, 4, generator=generator) > 0.5).float(),
               "c": torch.randint(0, 3, (6,), generator=generator), "d": torch.randn(6, generator=generator)}
    loss.observe(d=0.5)
    loss(preds, targets)
    loss.observe(a=0.75, d=0.25)
    before, logged = snapshot(loss), dict(loss.last_terms)

    def failing_hits(*args):
        raise PluginBroke("simulated failure while measuring an indicator")

    monkeypatch.setattr(lossdsl.multitask, "softmax_hits", failing_hits)
    with pytest.raises(PluginBroke):
        loss(preds, targets)
    assert_unchanged(loss, before)
    assert loss.last_terms == logged
    monkeypatch.undo()
    loss(preds, targets)
    # this step's indicator of a is the observed one, already in the average: nothing measured
    assert torch.equal(loss.kpi_average["a"], before["kpi_average.a"])


# --------------------------------------------------------------------------------------------------
# dtp on a task whose loss reads index C as background


def test_dtp_measures_a_background_task_with_label_c_as_an_all_negative_row():
    loss = lossdsl.compile("dtp({det: ghm(momentum=0.5, background=true), cls: ce()}, alpha=0.5)")
    generator = torch.Generator().manual_seed(8)
    det = torch.randn(8, 3, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 3, 1, 3, 0])  # 3 = C, mmdetection's background label
    cls, cls_t = torch.randn(8, 4, generator=generator), torch.randint(0, 4, (8,), generator=generator)
    loss({"det": det, "cls": cls}, {"det": labels, "cls": cls_t})
    # the reference: the agreement of (logit > 0) with the one-hot rows, background rows all 0
    rows = torch.zeros(8, 3)
    for i, label in enumerate(labels.tolist()):
        if label < 3:
            rows[i, label] = 1
    agreement = ((det > 0) == (rows > 0.5)).float().mean()
    torch.testing.assert_close(loss.kpi_average["det"], agreement)
    assert loss.tasks["det"].terms[0].ghm_accumulator.sum() > 0
