"""State of a multi-task loss: stored by task name, kept in float32, never part of a graph, never
half-updated; any task name the language accepts compiles; input errors name their task.

References are written from the formulas (dtp: ``k <- alpha kpi + (1 - alpha) k``, weight
``-(1-k)^gamma log k``) or from a second module fed the same data, never from lossdsl's helpers.
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import lossdsl

DTP3 = "dtp({seg: ce(ignore_index=255), tags: bce(), depth: l1()}, gamma=2, alpha=0.7)"
DTP3_REORDERED = "dtp({depth: l1(), tags: bce(), seg: ce(ignore_index=255)}, gamma=2, alpha=0.7)"
UNCERTAINTY3 = "uncertainty({seg: ce(ignore_index=255), tags: ghm(momentum=0.5), depth: l1()}, form=FORM)"
UNCERTAINTY3_REORDERED = (
    "uncertainty({depth: l1(), seg: ce(ignore_index=255), tags: ghm(momentum=0.5)}, form=FORM)"
)


def dtp_weight(k, gamma):
    return -((1 - k) ** gamma) * math.log(k)


def batch(step, n=8):
    """seg (softmax, ignored positions), tags (sigmoid, multi-hot) and depth (regression); the seg
    logits lean towards the truth more at each step, so the indicators move."""
    generator = torch.Generator().manual_seed(500 + step)
    seg_t = torch.randint(0, 3, (n, 5), generator=generator)
    seg_t[0, :2] = 255
    seg = torch.randn(n, 3, 5, generator=generator) + step * F.one_hot(seg_t.clamp(max=2), 3).permute(0, 2, 1)
    tags = torch.randn(n, 4, generator=generator)
    tags_t = (torch.rand(n, 4, generator=generator) > 0.5).float()
    depth, depth_t = torch.randn(n, 5, generator=generator), torch.randn(n, 5, generator=generator)
    return {"seg": seg, "tags": tags, "depth": depth}, {"seg": seg_t, "tags": tags_t, "depth": depth_t}


def seg_accuracy(logits, target):
    valid = target != 255
    return ((logits.argmax(dim=1) == target) & valid).sum().item() / valid.sum().item()


def tags_agreement(logits, target):
    return ((logits > 0) == (target > 0.5)).float().mean().item()


def train_dtp(expr=DTP3, steps=3):
    loss = lossdsl.compile(expr)
    for step in range(steps):
        loss.observe(depth=0.15 + 0.2 * step)
        loss(*batch(step))
    return loss


def snapshot(loss):
    return {name: value.clone() for name, value in loss.state_dict().items()}


def assert_unchanged(loss, before):
    after = loss.state_dict()
    assert set(after) == set(before)
    for name, value in after.items():
        assert torch.equal(value, before[name]), name


# --------------------------------------------------------------------------------------------------
# 6. state is stored by task name


def test_dtp_state_dict_keys_name_the_tasks():
    loss = lossdsl.compile(DTP3)
    assert set(loss.state_dict()) == {f"kpi_{what}.{task}" for what in ("average", "seen")
                                      for task in ("seg", "tags", "depth")} | {"_extra_state"}


def test_dtp_state_loads_into_the_same_tasks_listed_in_another_order():
    trained = train_dtp()
    resumed = lossdsl.compile(DTP3_REORDERED)
    assert resumed.spec == trained.spec  # the specs compare equal, so a resume must work
    resumed.load_state_dict(trained.state_dict())
    preds, targets = batch(9)
    expected = trained(preds, targets)  # no observe: depth keeps its average
    got = resumed(preds, targets)
    for task in ("seg", "tags", "depth"):
        assert torch.equal(resumed.last_terms[f"{task}.weight"], trained.last_terms[f"{task}.weight"]), task
        assert torch.equal(resumed.kpi_average[task], trained.kpi_average[task]), task
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_dtp_resumed_in_another_order_continues_the_moving_average_of_each_task():
    trained = train_dtp(steps=2)
    average = {task: trained.kpi_average[task].item() for task in ("seg", "tags", "depth")}
    resumed = lossdsl.compile(DTP3_REORDERED)
    resumed.load_state_dict(trained.state_dict())
    preds, targets = batch(5)
    resumed.observe(depth=0.9)
    resumed(preds, targets)
    measured = {"seg": seg_accuracy(preds["seg"], targets["seg"]),
                "tags": tags_agreement(preds["tags"], targets["tags"]), "depth": 0.9}
    for task, kpi in measured.items():
        k = 0.7 * kpi + 0.3 * average[task]
        torch.testing.assert_close(resumed.kpi_average[task].item(), k, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(resumed.last_terms[f"{task}.weight"].item(), dtp_weight(k, 2),
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", ["kendall", "simple", "positive"])
def test_uncertainty_state_loads_into_the_same_tasks_listed_in_another_order(form):
    trained = lossdsl.compile(UNCERTAINTY3.replace("FORM", form))
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.3)
    for step in range(3):
        optimizer.zero_grad()
        trained(*batch(step)).backward()
        optimizer.step()
    resumed = lossdsl.compile(UNCERTAINTY3_REORDERED.replace("FORM", form))
    resumed.load_state_dict(trained.state_dict())
    name = "scale" if form == "positive" else "log_variance"
    for task in ("seg", "tags", "depth"):
        assert torch.equal(getattr(resumed, name)[task], getattr(trained, name)[task]), task
    preds, targets = batch(9)
    torch.testing.assert_close(resumed(preds, targets), trained(preds, targets), rtol=1e-6, atol=0)
    assert torch.equal(resumed.tasks["tags"].terms[0].ghm_accumulator,
                       trained.tasks["tags"].terms[0].ghm_accumulator)


def test_an_optimizer_state_resumes_with_the_same_tasks_listed_in_another_order():
    """Adam keeps its moments by parameter position: the order of loss.parameters() must not
    depend on the order the tasks are written in."""
    trained = lossdsl.compile(UNCERTAINTY3.replace("FORM", "kendall"))
    optimizer = torch.optim.Adam(trained.parameters(), lr=0.1)
    for step in range(3):
        optimizer.zero_grad()
        trained(*batch(step)).backward()
        optimizer.step()
    resumed = lossdsl.compile(UNCERTAINTY3_REORDERED.replace("FORM", "kendall"))
    resumed.load_state_dict(trained.state_dict())
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=0.1)
    resumed_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file
    for loss, opt in ((trained, optimizer), (resumed, resumed_optimizer)):
        opt.zero_grad()
        loss(*batch(7)).backward()
        opt.step()
    for task in ("seg", "tags", "depth"):
        torch.testing.assert_close(resumed.log_variance[task], trained.log_variance[task], rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------------
# 7. running statistics stay float32 whatever the module's dtype


@pytest.mark.parametrize(
    "convert", [lambda m: m.half(), lambda m: m.to(torch.float16), lambda m: m.bfloat16(),
                lambda m: m.double(), lambda m: m.to(torch.float64), lambda m: m.type(torch.float16)],
    ids=["half", "to-float16", "bfloat16", "double", "to-float64", "type-float16"],
)
def test_dtp_averages_keep_float32_and_their_exact_values_when_the_module_changes_dtype(convert):
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    loss.observe(seg=0.123456789, depth=0.987654321)  # neither is a float16 or bfloat16 number
    before = snapshot(loss)
    assert convert(loss) is loss
    for task in ("seg", "depth"):
        assert loss.kpi_average[task].dtype == torch.float32
        assert loss.kpi_seen[task].dtype == torch.bool
    assert_unchanged(loss, before)


def test_dtp_averages_follow_the_module_to_another_device_and_stay_float32():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    loss.to("meta", torch.float16)
    for task in ("seg", "depth"):
        assert loss.kpi_average[task].device.type == "meta"
        assert loss.kpi_average[task].dtype == torch.float32
        assert loss.kpi_seen[task].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dtp_averages_follow_the_module_to_cuda_in_float32():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})").cuda().half()
    loss.observe(depth=torch.tensor(0.3, device="cuda", dtype=torch.float16))
    loss({"seg": torch.randn(4, 3, device="cuda"), "depth": torch.zeros(4, device="cuda")},
         {"seg": torch.tensor([0, 1, 2, 0], device="cuda"), "depth": torch.ones(4, device="cuda")})
    for task in ("seg", "depth"):
        assert loss.kpi_average[task].device.type == "cuda"
        assert loss.kpi_average[task].dtype == torch.float32


def test_dtp_on_a_half_module_averages_in_float32_like_a_float32_module():
    half, full = lossdsl.compile(DTP3), lossdsl.compile(DTP3)
    half.half()
    for step in range(4):
        preds, targets = batch(step)
        preds = {task: value.half() for task, value in preds.items()}
        for loss in (half, full):
            loss.observe(depth=0.1 + 0.2 * step)
            loss(preds, targets)
    for task in ("seg", "tags", "depth"):
        assert half.kpi_average[task].dtype == torch.float32
        torch.testing.assert_close(half.kpi_average[task], full.kpi_average[task], rtol=0, atol=0)


def test_uncertainty_parameters_follow_the_module_dtype_like_any_parameter():
    loss = lossdsl.compile("uncertainty({seg: ce(), depth: l1()})").double()
    assert all(value.dtype == torch.float64 for value in loss.log_variance.values())
    assert all(isinstance(value, torch.nn.Parameter) for value in loss.parameters())


# --------------------------------------------------------------------------------------------------
# 9. observe(): detached, one number per task, checked before anything is stored


def test_observe_with_autograd_history_leaves_the_buffers_as_graph_leaves():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    score = torch.tensor(0.4, requires_grad=True)
    loss.observe(depth=score * 1.5)
    loss.observe(depth=torch.sigmoid(score))
    for value in loss.state_dict().values():
        assert value.is_leaf and not value.requires_grad and value.grad_fn is None
    k = 0.9 * torch.sigmoid(torch.tensor(0.4)).item() + 0.1 * 0.6
    torch.testing.assert_close(loss.kpi_average["depth"].item(), k, rtol=1e-6, atol=1e-7)


def test_a_loss_that_observed_a_tensor_with_history_can_be_deep_copied_and_trained():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    depth = torch.zeros(4, requires_grad=True)
    for _ in range(2):  # backward twice: nothing of the first step's graph is kept by the buffers
        loss.observe(depth=torch.exp(-(depth - 1).abs().mean()))
        loss({"seg": torch.randn(4, 3), "depth": depth}, {"seg": torch.tensor([0, 1, 2, 0]),
                                                          "depth": torch.ones(4)}).backward()
    clone = copy.deepcopy(loss)
    assert torch.equal(clone.kpi_average["depth"], loss.kpi_average["depth"])


@pytest.mark.parametrize(
    "value, expected",
    [(0.25, 0.25), (1, 1.0), (0, 0.0), (torch.tensor(0.25, dtype=torch.float64), 0.25),
     (torch.tensor(0.25, dtype=torch.float16), 0.25), (torch.tensor(1), 1.0),
     (torch.tensor(0.25, dtype=torch.bfloat16), 0.25)],
    ids=["float", "int-1", "int-0", "float64-tensor", "float16-tensor", "int-tensor", "bfloat16-tensor"],
)
def test_observe_accepts_numbers_and_zero_dimensional_tensors(value, expected):
    loss = lossdsl.compile("dtp({depth: l1()})")
    loss.observe(depth=value)
    assert loss.kpi_average["depth"].dtype == torch.float32
    assert loss.kpi_average["depth"].item() == expected


@pytest.mark.parametrize(
    "value, shown",
    [(None, "NoneType"), ("0.5", "str '0.5'"), ([0.5], "list [0.5]"), (True, "bool True"),
     (0.5j, "complex"), (torch.tensor([0.5, 0.6]), "shape [2]"), (torch.tensor([0.5]), "shape [1]"),
     (torch.tensor(True), "torch.bool"), ({"a": 0.5}, "dict")],
    ids=["none", "string", "list", "bool", "complex", "vector", "one-element-vector", "bool-tensor", "dict"],
)
def test_observe_refuses_anything_but_one_number_naming_the_task_and_the_value(value, shown):
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    with pytest.raises(lossdsl.LossDSLError) as caught:
        loss.observe(depth=value)
    assert isinstance(caught.value, lossdsl.LossDSLError)
    message = str(caught.value)
    assert "task 'depth'" in message and shown in message, message
    assert not loss.kpi_seen["depth"]


@pytest.mark.parametrize("value, shown", [(10**400, "1000"), (-(10**400), "-1000"), (float("inf"), "inf"),
                                          (torch.tensor(float("nan")), "nan"), (torch.tensor(2), "2")])
def test_observe_of_a_number_outside_zero_one_names_the_task_and_the_number(value, shown):
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    with pytest.raises(lossdsl.LossDSLError, match=rf"task 'depth' must lie in \[0, 1\], got {shown}"):
        loss.observe(depth=value)
    assert not loss.kpi_seen["depth"]


def test_observe_checks_every_indicator_before_storing_any():
    loss = lossdsl.compile("dtp({seg: ce(), tags: bce(), depth: l1()})")
    seg_t = torch.tensor([0, 1, 2, 0])
    preds = {"seg": 10 * F.one_hot(seg_t, 3).float(), "tags": torch.ones(4, 2), "depth": torch.zeros(4)}
    targets = {"seg": seg_t, "tags": torch.ones(4, 2), "depth": torch.ones(4)}
    loss.observe(seg=0.5, tags=0.5, depth=0.5)
    loss(preds, targets)  # the observed values start every average
    before = snapshot(loss)
    for bad in ({"seg": 0.9, "depth": 1.5}, {"tags": 0.2, "depth": None}, {"seg": 0.1, "normals": 0.2}):
        with pytest.raises(lossdsl.LossDSLError):
            loss.observe(**bad)
        assert_unchanged(loss, before)
    # Nothing is pending either: the next step measures seg and tags (both perfect) itself.
    loss(preds, targets)
    for task in ("seg", "tags"):
        torch.testing.assert_close(loss.kpi_average[task].item(), 0.9 * 1.0 + 0.1 * 0.5)
    assert loss.kpi_average["depth"].item() == 0.5


# --------------------------------------------------------------------------------------------------
# 11. every task name the language accepts compiles and works


# Attributes of nn.Module, of lossdsl's containers (store, _entries), protocol methods that copy
# and pickle look up on the instance, and the first parameter of observe().
MODULE_ATTRIBUTE_NAMES = [
    "type", "items", "keys", "values", "training", "float", "half", "forward", "parameters",
    "state_dict", "cuda", "to", "_modules", "_parameters", "_buffers", "__dict__", "__class__",
    "T_destination", "dump_patches", "register_buffer", "store", "_entries", "__deepcopy__",
    "__getstate__", "__copy__", "self",
]


@pytest.mark.parametrize("name", MODULE_ATTRIBUTE_NAMES)
def test_uncertainty_with_a_task_named_like_a_module_attribute_compiles_and_trains(name):
    expr = f"uncertainty({{{name}: ghm(momentum=0.5), depth: l1()}})"
    loss = lossdsl.compile(expr)
    assert {f"log_variance.{name}", "log_variance.depth", f"tasks.{name}.terms.0.ghm_accumulator",
            "_extra_state"} == set(
        loss.state_dict()
    )
    tags, tags_t = torch.randn(4, 5, requires_grad=True), (torch.rand(4, 5) > 0.5).float()
    preds, targets = {name: tags, "depth": torch.zeros(3)}, {name: tags_t, "depth": torch.ones(3)}
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.5)
    loss(preds, targets).backward()
    assert tags.grad is not None and loss.log_variance[name].grad is not None
    optimizer.step()
    assert loss.log_variance[name].item() != 0.0  # the optimizer reached the task's parameter
    assert loss.tasks[name].terms[0].ghm_accumulator.sum() > 0

    resumed = lossdsl.compile(expr)
    resumed.load_state_dict(loss.state_dict())
    assert torch.equal(resumed(preds, targets), loss(preds, targets))
    loss.eval().train()
    assert loss.tasks.training is True  # attributes of the containers are untouched
    loss.to(torch.float64)
    assert loss.log_variance[name].dtype == torch.float64
    assert isinstance(loss.log_variance[name], torch.nn.Parameter)


@pytest.mark.parametrize("name", MODULE_ATTRIBUTE_NAMES)
def test_dtp_with_a_task_named_like_a_module_attribute_compiles_observes_and_resumes(name):
    expr = f"dtp({{{name}: ce(), depth: l1()}}, alpha=0.5)"
    loss = lossdsl.compile(expr)
    assert set(loss.state_dict()) == {f"kpi_average.{name}", f"kpi_seen.{name}", "kpi_average.depth",
                                      "kpi_seen.depth", "_extra_state"}
    loss.observe(**{name: 0.25, "depth": 0.5})
    seg_t = torch.tensor([0, 1, 2, 0])
    preds, targets = ({name: 10 * F.one_hot(seg_t, 3).float(), "depth": torch.zeros(4)},
                      {name: seg_t, "depth": torch.ones(4)})
    loss(preds, targets)
    loss(preds, targets)  # measured: accuracy 1, blended into the observed 0.25
    assert loss.kpi_average[name].item() == 0.5 * 1.0 + 0.5 * 0.25
    resumed = lossdsl.compile(expr)
    resumed.load_state_dict(loss.state_dict())
    loss.eval(), resumed.eval()
    assert torch.equal(resumed(preds, targets), loss(preds, targets))
    loss.half()
    assert loss.kpi_average[name].dtype == torch.float32


@pytest.mark.parametrize("name", ["training", "type", "to"])
def test_assigning_load_keeps_the_containers_working(name):
    trained = lossdsl.compile(f"uncertainty({{{name}: ce(), depth: l1()}})")
    with torch.no_grad():
        trained.log_variance[name].fill_(0.75)
    resumed = lossdsl.compile(f"uncertainty({{{name}: ce(), depth: l1()}})")
    resumed.load_state_dict(trained.state_dict(), assign=True)
    resumed.eval().train()
    assert resumed.log_variance[name].item() == 0.75
    assert resumed.log_variance.training is True
    names = [n for n, _ in resumed.named_parameters()]
    assert names == sorted([f"log_variance.{name}", "log_variance.depth"])


@pytest.mark.parametrize("name", ["type", "__deepcopy__", "__copy__", "__getstate__", "__reduce_ex__"])
def test_a_task_named_like_a_module_attribute_can_be_copied_and_pickled(name):
    loss = lossdsl.compile(f"dtp({{{name}: ce(), to: l1()}})")
    loss.observe(**{"to": 0.5, name: 0.25})
    for clone in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss)), copy.copy(loss)):
        assert clone.kpi_average[name].item() == 0.25 and clone.kpi_average["to"].item() == 0.5
        assert list(clone.tasks) == [name, "to"]


def test_tasks_keep_the_order_written_and_parameters_are_sorted_by_name():
    loss = lossdsl.compile("uncertainty({to: ce(), keys: l1(), items: mse()})")
    assert list(loss.tasks) == ["to", "keys", "items"]
    assert len(loss.tasks) == 3 and "keys" in loss.tasks and "depth" not in loss.tasks
    assert list(loss.log_variance.keys()) == ["items", "keys", "to"]
    assert [name for name, _ in loss.named_parameters()] == ["log_variance.items", "log_variance.keys",
                                                             "log_variance.to"]


# --------------------------------------------------------------------------------------------------
# 12. input errors say which task they come from


@pytest.mark.parametrize(
    "task, pred, target, reason",
    [
        ("depth", torch.randn(4, 6), torch.randn(5, 6), "l1()"),                    # shapes
        ("depth", torch.randint(0, 3, (4, 6)), torch.randn(4, 6), "floating point"),  # dtype
        ("seg", torch.randn(4, 3), torch.tensor([0, 1, 7, 2]), "class index 7"),  # value
        ("tags", torch.randn(4, 5), torch.ones(4), "must be integers"),            # dtype
        ("tags", torch.randn(4, 5), torch.full((4, 5), 2.0), "[0, 1]"),             # value
    ],
    ids=["depth-shape", "depth-dtype", "seg-index", "tags-dtype", "tags-range"],
)
def test_a_tasks_input_error_starts_with_the_task_name(task, pred, target, reason):
    loss = lossdsl.compile("{seg: ce(), tags: bce(), depth: l1()}")
    preds = {"seg": torch.randn(4, 3), "tags": torch.randn(4, 5), "depth": torch.randn(4, 6)}
    targets = {"seg": torch.tensor([0, 1, 2, 2]), "tags": torch.ones(4, 5), "depth": torch.randn(4, 6)}
    preds[task], targets[task] = pred, target
    with pytest.raises(lossdsl.LossDSLError) as caught:
        loss(preds, targets)
    assert caught.value.reason.startswith(f"task '{task}': "), caught.value.reason
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"task '{task}': ")


# --------------------------------------------------------------------------------------------------
# nothing half-updated: a rejected call leaves every buffer of every task alone


HALF_UPDATE = (
    "dtp({tags: ghm(momentum=0.5), seg: ce(ignore_index=255), depth: density(bce(), momentum=0.25)})"
)


def good_half_update_batch():
    generator = torch.Generator().manual_seed(3)
    seg_t = torch.randint(0, 3, (6,), generator=generator)
    return ({"tags": torch.randn(6, 4, generator=generator), "seg": torch.randn(6, 3, generator=generator),
             "depth": torch.randn(6, 2, generator=generator)},
            {"tags": (torch.rand(6, 4, generator=generator) > 0.5).float(), "seg": seg_t,
             "depth": (torch.rand(6, 2, generator=generator) > 0.5).float()})


@pytest.mark.parametrize(
    "task, bad",
    [("tags", ("target", torch.ones(5, 4))), ("seg", ("target", torch.tensor([0, 1, 9, 0, 1, 2]))),
     ("depth", ("target", torch.full((6, 2), 3.0))), ("depth", ("pred", torch.randn(6, 3)))],
    ids=["first-task-shape", "middle-task-index", "last-task-range", "last-task-shape"],
)
def test_a_rejected_call_changes_no_buffer_of_any_task(task, bad):
    loss = lossdsl.compile(HALF_UPDATE, check_values=True)  # rejected at the call itself
    loss(*good_half_update_batch())  # every buffer holds something
    before = snapshot(loss)
    assert any(value.float().abs().sum() > 0 for name, value in before.items() if "ghm" in name)
    preds, targets = good_half_update_batch()
    side, value = bad
    (targets if side == "target" else preds)[task] = value
    with pytest.raises(lossdsl.LossDSLError, match=f"task '{task}'"):
        loss(preds, targets)
    assert_unchanged(loss, before)
    # the next good call continues from the same state as a loss that never saw the bad call
    twin = lossdsl.compile(HALF_UPDATE)
    twin(*good_half_update_batch())
    assert torch.equal(loss(*good_half_update_batch()), twin(*good_half_update_batch()))
    assert_unchanged(loss, snapshot(twin))


# --------------------------------------------------------------------------------------------------
# the containers print their values (issue 15 item 26)


def test_uncertainty_parameters_and_dtp_state_print_their_values_by_task():
    loss = lossdsl.compile("uncertainty({seg: ce(), depth: l1()})")
    with torch.no_grad():
        loss.log_variance["depth"].fill_(-0.25)
    assert repr(loss.log_variance) == "TaskParameters(depth=-0.25, seg=0)"
    dtp = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    dtp.observe(depth=0.125)
    assert repr(dtp.kpi_average) == "RunningState(seg=0, depth=0.125)"
    assert repr(dtp.kpi_seen) == "RunningState(seg=False, depth=True)"
    dtp.to("meta")
    assert repr(dtp.kpi_average) == "RunningState(seg=<no data>, depth=<no data>)"


def test_an_observed_indicator_waits_through_eval_calls_for_the_next_training_step():
    """observe() stands for the next training step's measure; a validation call in between does not
    use it up (it stores nothing)."""
    loss, twin = lossdsl.compile(DTP3), lossdsl.compile(DTP3)
    for module in (loss, twin):
        module.observe(seg=0.3, depth=0.5)
    loss.eval()
    loss(*batch(1))
    loss.train()
    for module in (loss, twin):
        module(*batch(2))
    assert_unchanged(loss, snapshot(twin))
    torch.testing.assert_close(loss.kpi_average["seg"], torch.tensor(0.3))
