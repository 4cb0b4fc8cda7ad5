"""State of a multi-task loss: stored by task name, kept in float32, never part of a graph, never
half-updated; any task name the language accepts compiles; input errors name their task.

References are written from the formulas (dtp: ``k <- alpha kpi + (1 - alpha) k``, weight
``-(1-k)^gamma log k``) or from a second module fed the same data, never from lossdsl's helpers.
"""

from __future__ import annotations

import math

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
    loss = lossdsl.compile(HALF_UPDATE)
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
