"""When value checks are read (issue 18 item 3; lossdsl.value_checks).

``check_values="deferred"`` (the default) checks the first call before it computes and later calls on
the device, read by a later call: a bad target is still reported, naming the call it came from; the
bad call computed with its bad class indices left out (nothing fails on the device); the call that
reports it changes nothing. ``True`` stops at the bad call, ``False`` never looks.

On a CPU the data is on the host already, so the checks look at once and keep what they find for the
next call; the device branch (statistics copied without waiting, read when they have arrived) is
exercised here by treating CPU tensors as device data (``device_data``), and on a GPU by
``test_no_synchronisation_after_the_first_call``.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import lossdsl
from lossdsl.errors import LossInputError
from lossdsl.value_checks import CallChecks

IGNORE = 255


def batch(seed=0, classes=3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, classes, 4, 5, generator=generator, dtype=torch.float64)
    t = torch.randint(0, classes, (2, 4, 5), generator=generator)
    return x, t


def with_bad_index(t, value=7):
    bad = t.clone()
    bad[0, 1, :2] = value
    return bad


@pytest.fixture(params=["host", "device"])
def data_on(request, monkeypatch):
    """Run a test twice: with the CPU's free look at host data, and as if the data were on a device
    (the checks then go through their device statistics, copied and read by a later call)."""
    if request.param == "device":
        monkeypatch.setattr(CallChecks, "reads_now", lambda self, tensor: not self.deferred)
    return request.param


def snapshot(loss):
    return {name: value.clone() for name, value in loss.state_dict().items()}


def assert_same_state(loss, before):
    after = snapshot(loss)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name


# -- the default ----------------------------------------------------------------------------------


def test_the_default_is_deferred():
    assert lossdsl.compile("ce()").check_values == "deferred"
    assert lossdsl.compile("{a: ce(), b: dice()}").check_values == "deferred"


@pytest.mark.parametrize("mode", ["yes", 1, None, "Deferred"])
def test_check_values_takes_three_values(mode):
    with pytest.raises(LossInputError, match=r"check_values must be True, False or 'deferred', got"):
        lossdsl.compile("ce()", check_values=mode)


def test_the_first_call_is_checked_before_it_computes():
    loss = lossdsl.compile("ghm(momentum=0.5, ignore_index=-1)")
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 7, 2])
    with pytest.raises(LossInputError, match="class index 7 is out of range") as error:
        loss(x, t)
    assert "in call" not in str(error.value)
    assert not loss.state_dict()["terms.0.ghm_accumulator"].any()


@pytest.mark.parametrize("expr", ["ghm(momentum=0.5, ignore_index=255) + dice(ignore_index=255)",
                                  "ce(ignore_index=255) + dice(ignore_index=255)",
                                  "focal(head=softmax, ignore_index=255) + lovasz(ignore_index=255)"])
def test_a_bad_target_is_reported_at_the_next_call_naming_its_call(expr, data_on):
    loss, twin = lossdsl.compile(expr), lossdsl.compile(expr)
    x, t = batch()
    for _ in range(2):
        loss(x, t), twin(x, t)
    bad = with_bad_index(t)
    x_bad = x.clone().requires_grad_()
    value = loss(x_bad, bad)  # call 3: computes, with the bad indices left out
    left_out = bad.masked_fill(bad == 7, IGNORE)
    x_twin = x.clone().requires_grad_()
    expected = twin(x_twin, left_out)
    torch.testing.assert_close(value, expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(value, x_bad)[0], torch.autograd.grad(expected, x_twin)[0],
                               rtol=0, atol=0)
    before, logged = snapshot(loss), dict(loss.last_terms)
    with pytest.raises(LossInputError) as error:
        loss(x, t)  # call 4 reports call 3 and changes nothing
    message = str(error.value)
    assert "class index 7 is out of range for 3 classes (valid: 0..2, or ignore_index=255)" in message
    assert "(in call 3 of this loss)" in message
    assert "check_values=True stops at the bad call itself" in message
    assert_same_state(loss, before)
    assert loss.last_terms.keys() == logged.keys()
    assert all(torch.equal(loss.last_terms[k], logged[k]) for k in logged)
    # reported once: the calls after it go on (and match the twin, which saw the same data)
    torch.testing.assert_close(loss(x, t), twin(x, t), rtol=0, atol=0)
    assert_same_state(loss, snapshot(twin))


@pytest.mark.parametrize("expr, good, bad, found", [
    ("bce()", torch.rand(4, 3), torch.full((4, 3), float("nan")), "targets must lie in [0, 1]; found NaN"),
    ("giou()", torch.tensor([[0.0, 0, 2, 2]]).repeat(4, 1),
     torch.tensor([[0.0, 0, float("inf"), 2]]).repeat(4, 1), "target boxes must be finite; found inf"),
    ("dfl()", torch.rand(4) * 2, torch.tensor([0.0, 1, 5, 2]), "dfl targets must lie in [0, 2]"),
])
def test_other_value_checks_are_deferred_too(expr, good, bad, found, data_on):
    loss = lossdsl.compile(expr)
    x = torch.rand(4, 3) if expr != "giou()" else torch.tensor([[0.5, 0.5, 2, 3]]).repeat(4, 1)
    loss(x, good)
    loss(x, bad)  # computes as check_values=False would
    with pytest.raises(LossInputError, match=r"in call 2 of this loss") as error:
        loss(x, good)
    assert found in str(error.value)


def test_a_multi_task_loss_names_the_task_and_the_call(data_on):
    loss = lossdsl.compile("dtp({seg: ce(ignore_index=255) + dice(ignore_index=255), tags: bce()})")
    x, t = batch()
    preds, targets = {"seg": x, "tags": torch.randn(2, 4)}, {"seg": t, "tags": torch.rand(2, 4)}
    loss(preds, targets)
    loss(preds, {**targets, "seg": with_bad_index(t)})
    before = snapshot(loss)
    with pytest.raises(LossInputError) as error:
        loss(preds, targets)
    assert str(error.value).startswith("task 'seg': ce(ignore_index=255): class index 7 is out of range")
    assert "(in call 2 of this loss)" in str(error.value)
    assert_same_state(loss, before)


@pytest.mark.parametrize("task", ["focal()", "ce()"])
def test_a_deferred_bad_index_is_left_out_of_the_indicators_too(task, data_on):
    loss, twin = (lossdsl.compile(f"dtp({{cls: {task}}})") for _ in range(2))
    x, t = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0, 2])
    loss({"cls": x}, {"cls": t}), twin({"cls": x}, {"cls": t})
    bad = torch.tensor([0, 7, 2, 1, -3, 2])
    value = loss({"cls": x}, {"cls": bad})
    expected = twin({"cls": x}, {"cls": bad.masked_fill((bad < 0) | (bad > 2), -100)})
    torch.testing.assert_close(value, expected, rtol=0, atol=0)
    torch.testing.assert_close(loss.kpi_average["cls"], twin.kpi_average["cls"], rtol=0, atol=0)
    with pytest.raises(LossInputError, match=r"task 'cls': .*class index 7 .*\(in call 2 of this loss\)"):
        loss({"cls": x}, {"cls": t})


def test_a_term_called_on_its_own_defers_as_well(data_on):
    term = lossdsl.compile("ce()").terms[0]
    x, t = batch()
    term(x, t)
    term(x, with_bad_index(t))
    with pytest.raises(LossInputError, match=r"class index 7 .*\(in call 2 of this loss\)"):
        term(x, t)


# -- reading what is pending ----------------------------------------------------------------------


def test_read_checks_reports_what_is_pending_once(data_on):
    loss = lossdsl.compile("ce()")
    x, t = batch()
    loss(x, t)
    loss(x, with_bad_index(t))
    with pytest.raises(LossInputError, match=r"in call 2 of this loss"):
        loss.read_checks()  # e.g. at the end of an epoch
    loss.read_checks()  # nothing left
    loss(x, t)


def test_each_bad_call_is_reported(monkeypatch):
    """Two bad calls whose checks are both still on their way: the call that reads the first
    reports it, and the second stays pending until it is read."""
    monkeypatch.setattr(CallChecks, "reads_now", lambda self, tensor: not self.deferred)
    monkeypatch.setattr(CallChecks, "arrived", lambda self: False)
    loss = lossdsl.compile("ce()")
    x, t = batch()
    loss(x, t)
    loss(x, with_bad_index(t, 5))  # call 2
    loss(x, with_bad_index(t, 6))  # call 3: call 2's copy has not arrived
    with pytest.raises(LossInputError, match=r"class index 5 .*\(in call 2 of this loss\)"):
        loss(x, t)
    with pytest.raises(LossInputError, match=r"class index 6 .*\(in call 3 of this loss\)"):
        loss.read_checks()
    loss.read_checks()


def test_logged_terms_reads_the_pending_checks(data_on):
    loss = lossdsl.compile("ce() + dice()")
    x, t = batch()
    loss(x, t)
    loss(x, with_bad_index(t, -5))
    with pytest.raises(LossInputError, match=r"class index -5 .*\(in call 2 of this loss\)"):
        loss.logged_terms()
    assert loss.logged_terms(floats=False).keys() == {"ce", "dice", "total"}


def test_checks_still_on_their_way_are_read_one_call_later(monkeypatch):
    """On a device a call reads the previous call's checks only if their copy has arrived; a check
    whose copy is late is read (waiting for it alone) by the call after."""
    monkeypatch.setattr(CallChecks, "reads_now", lambda self, tensor: not self.deferred)
    monkeypatch.setattr(CallChecks, "arrived", lambda self: False)
    loss = lossdsl.compile("ce()")
    x, t = batch()
    loss(x, t)
    loss(x, with_bad_index(t))  # call 2
    loss(x, t)  # call 3: call 2's copy has not arrived, no wait
    with pytest.raises(LossInputError, match=r"in call 2 of this loss"):
        loss(x, t)  # call 4 waits for call 2's copy


def test_check_values_true_stops_at_the_bad_call():
    loss = lossdsl.compile("ghm(momentum=0.5) + ce()", check_values=True)
    x, t = torch.randn(6, 3), torch.randint(0, 3, (6,))
    loss(x, t)
    before = snapshot(loss)
    with pytest.raises(LossInputError) as error:
        loss(x, with_bad_index(t.view(1, 2, 3), 9).view(6))
    assert "in call" not in str(error.value)
    assert_same_state(loss, before)


def test_check_values_false_never_looks():
    loss = lossdsl.compile("bce()", check_values=False)
    for _ in range(3):
        assert loss(torch.randn(2, 3), torch.full((2, 3), 2.0)).isfinite()
    loss.read_checks()


# -- copies -----------------------------------------------------------------------------------


def test_pending_checks_stay_with_the_loss_they_came_from():
    loss = lossdsl.compile("ce()")
    x, t = batch()
    loss(x, t)
    loss(x, with_bad_index(t))
    for copied in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        copied(x, t)  # a copy starts afresh: its first call is checked, nothing is pending
        copied.read_checks()
    with pytest.raises(LossInputError, match=r"in call 2 of this loss"):
        loss.read_checks()


# -- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("expr", ["ce() + dice()", "focal()", "giou()", "ghm(momentum=0.5)"])
def test_no_synchronisation_after_the_first_call(expr):
    loss = lossdsl.compile(expr).cuda()
    if expr == "giou()":
        x = torch.rand(64, 2, device="cuda").repeat(1, 2) + torch.tensor([0, 0, 1, 1], device="cuda")
        y = x.detach() + 0.1
    elif expr == "ce() + dice()":
        x, y = torch.randn(2, 3, 8, 8, device="cuda"), torch.randint(0, 3, (2, 8, 8), device="cuda")
    else:
        x, y = torch.randn(64, 5, device="cuda"), (torch.rand(64, 5, device="cuda") < 0.2).float()
    x.requires_grad_()
    loss(x, y).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            loss(x, y).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    loss.read_checks()
