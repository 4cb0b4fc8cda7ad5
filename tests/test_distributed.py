"""Statistics across processes: with torch.distributed initialised, GHM-C's bin counts and dtp's
indicators are summed over the process group, so N processes with a slice of the batch each compute
the weights and hold the running buffers that one process with the whole batch would. In eval mode
a loss makes no collective call: rank 0 alone computes a validation loss without waiting.

Two CPU processes (start method spawn, gloo backend, a file:// rendezvous in a temporary folder)
each run the same steps on their half of every batch; the single-process reference is the same code
on the whole batch in this process, where torch.distributed is not initialised.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

import lossdsl
from lossdsl.functional.distributed import sum_over_processes

WORLD = 2
STEPS = 4
GHM_EXPR = "ghm(bins=10, momentum=0.75, reduction=sum)"
# Class-index targets with ignored rows: the number of valid elements differs between the halves.
GHM_IGNORE_EXPR = "density(bce(ignore_index=255), bins=10, momentum=0.75, reduction=sum)"
DTP_EXPR = "dtp({seg: ce(ignore_index=255), tags: bce()}, gamma=1, alpha=0.9)"
SPAWN_TIMEOUT_S = 90

# all_reduce calls made in a worker (the worker wraps torch.distributed.all_reduce to count them).
ALL_REDUCE_CALLS: list[int] = []


# --------------------------------------------------------------------------------------------------
# the batches (deterministic per step) and the steps every process runs


def ghm_batch(step):
    generator = torch.Generator().manual_seed(10 + step)
    logits = 3 * torch.randn(16, 6, generator=generator)  # spread |p - y| over many bins
    target = (torch.rand(16, 6, generator=generator) > 0.6).float()
    return logits, target


def ghm_ignore_batch(step):
    generator = torch.Generator().manual_seed(20 + step)
    logits = 3 * torch.randn(16, 6, generator=generator)
    target = torch.randint(0, 6, (16,), generator=generator)
    target[: 3 + step % 3] = 255  # ignored rows, all in the first half
    return logits, target


def dtp_batch(step):
    """The first half of each batch is easier and has ignored positions; the second half has none:
    the mean of the halves' accuracies is not the accuracy of the whole batch."""
    generator = torch.Generator().manual_seed(30 + step)
    seg_t = torch.randint(0, 3, (8, 5), generator=generator)
    seg = torch.randn(8, 3, 5, generator=generator)
    seg[:4] += 3 * torch.nn.functional.one_hot(seg_t[:4], 3).permute(0, 2, 1)
    seg_t[:2, : 2 + step % 3] = 255
    tags = torch.randn(8, 4, generator=generator)
    tags_t = (torch.rand(8, 4, generator=generator) > 0.5).float()
    tags[:4] += 4 * (2 * tags_t[:4] - 1)
    return {"seg": seg, "tags": tags}, {"seg": seg_t, "tags": tags_t}


def half(value, rank, world):
    if isinstance(value, dict):
        return {key: half(item, rank, world) for key, item in value.items()}
    return value.chunk(world)[rank]


def run_steps(rank: int, world: int, distributed: bool) -> dict:
    """Every scenario's losses, buffers and all_reduce counts over STEPS steps on this rank's slice."""
    results = {}
    for name, expr, batch in (("ghm", GHM_EXPR, ghm_batch), ("ghm_ignore", GHM_IGNORE_EXPR, ghm_ignore_batch)):
        loss = lossdsl.compile(expr, distributed=distributed)
        losses, accumulators, calls = [], [], []
        for step in range(STEPS):
            x, y = batch(step)
            before = len(ALL_REDUCE_CALLS)
            losses.append(loss(half(x, rank, world), half(y, rank, world)).detach())
            calls.append(len(ALL_REDUCE_CALLS) - before)
            accumulators.append(loss.terms[0].ghm_accumulator.clone())
        results[name] = {"losses": torch.stack(losses), "accumulators": torch.stack(accumulators),
                         "calls": calls}
    loss = lossdsl.compile(DTP_EXPR, distributed=distributed)
    averages, weights, calls = [], [], []
    for step in range(STEPS):
        preds, targets = dtp_batch(step)
        before = len(ALL_REDUCE_CALLS)
        loss(half(preds, rank, world), half(targets, rank, world))
        calls.append(len(ALL_REDUCE_CALLS) - before)
        averages.append(torch.stack([loss.kpi_average[task] for task in ("seg", "tags")]))
        weights.append(torch.stack([loss.last_terms["seg.weight"], loss.last_terms["tags.weight"]]))
    results["dtp"] = {"averages": torch.stack(averages), "weights": torch.stack(weights), "calls": calls}
    results["longtail"] = longtail_steps(rank, world, distributed)
    results["longtail_ddp"] = longtail_ddp_steps(rank, world, distributed, inside_ddp=True)
    results["longtail_ddp_outside"] = longtail_ddp_steps(rank, world, distributed, inside_ddp=False)
    results["pos_mean"] = pos_mean_steps(rank, world, distributed)
    results["uncertainty"] = uncertainty_steps(rank, world, distributed, inside_ddp=False)
    if world > 1:
        results["uncertainty_ddp"] = uncertainty_steps(rank, world, distributed, inside_ddp=True)
    return results


# Long-tail losses: online counts, seesaw's counts and EQLv2's gradient statistics (SPEC 4b).
LONGTAIL_EXPRS = {
    "balanced_softmax": "balanced_softmax(reduction=sum)",
    "seesaw": "seesaw(reduction=sum)",
    "class_balanced_sigmoid": "class_balanced(focal(), beta=0.99, reduction=sum)",
    "eqlv2": "eqlv2(reduction=sum)",
}
LONGTAIL_SUM = "balanced_softmax() + 0.5 * seesaw() + class_balanced(focal(), beta=0.99) + eqlv2()"


def longtail_batch(step):
    """Long-tailed labels 0..4 (4 is also EQLv2's background), unevenly split between the halves."""
    generator = torch.Generator().manual_seed(60 + step)
    features = torch.randn(16, 3, generator=generator)
    logits = 3 * torch.randn(16, 5, generator=generator)
    target = torch.multinomial(torch.tensor([8.0, 4, 2, 1, 6]), 16, replacement=True, generator=generator)
    target[:4] = 0  # the first half holds more of the frequent class
    return features, logits, target


def longtail_steps(rank: int, world: int, distributed: bool) -> dict:
    results = {}
    for name, expr in LONGTAIL_EXPRS.items():
        loss = lossdsl.compile(expr, distributed=distributed)
        losses, states, calls = [], [], []
        for step in range(STEPS):
            _, x, y = longtail_batch(step)
            before = len(ALL_REDUCE_CALLS)
            losses.append(loss(half(x, rank, world), half(y, rank, world)).detach())
            calls.append(len(ALL_REDUCE_CALLS) - before)
            states.append({key: value.clone() for key, value in loss.state_dict().items()})
        loss.eval()  # no collective and no update in eval mode
        before = len(ALL_REDUCE_CALLS)
        loss(half(x, rank, world), half(y, rank, world))
        results[name] = {"losses": torch.stack(losses), "states": states, "calls": calls,
                         "eval_calls": len(ALL_REDUCE_CALLS) - before,
                         "after_eval": {key: value.clone() for key, value in loss.state_dict().items()}}
    return results


class LongTailModel(torch.nn.Module):
    """A linear classifier that returns its loss (the loss inside the DDP-wrapped module)."""

    def __init__(self, distributed: bool) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 5)
        with torch.no_grad():
            self.linear.weight.copy_(torch.linspace(-1, 1, 15).reshape(5, 3))
            self.linear.bias.zero_()
        self.loss = lossdsl.compile(LONGTAIL_SUM, distributed=distributed)

    def forward(self, features, target):
        return self.loss(self.linear(features), target)


def longtail_ddp_steps(rank: int, world: int, distributed: bool, inside_ddp: bool) -> dict:
    """SGD on a linear layer with the long-tail losses, the loss inside the DDP-wrapped module (DDP
    broadcasts rank 0's buffers before each forward) or outside it."""
    model = LongTailModel(distributed)
    wrap = torch.nn.parallel.DistributedDataParallel if world > 1 else (lambda module: module)
    if inside_ddp:
        ddp = wrap(model)
        step_loss = ddp
    else:
        ddp = wrap(model.linear)
        step_loss = lambda features, target: model.loss(ddp(features), target)  # noqa: E731
    optimizer = torch.optim.SGD(model.linear.parameters(), lr=0.1)
    weights, states = [], []
    for step in range(STEPS):
        features, _, target = longtail_batch(step)
        optimizer.zero_grad()
        step_loss(half(features, rank, world), half(target, rank, world)).backward()
        optimizer.step()
        weights.append(model.linear.weight.detach().clone())
        states.append({key: value.clone() for key, value in model.loss.state_dict().items()})
    return {"weights": torch.stack(weights), "states": states}


def pos_mean_batch(step):
    """Positives unevenly split: the first half holds most of them."""
    generator = torch.Generator().manual_seed(40 + step)
    features = torch.randn(16, 3, generator=generator)
    target = torch.zeros(16, 4)
    target[: 5 + step, 0] = 1.0
    target[12:, 2] = 1.0
    return features, target


def pos_mean_steps(rank: int, world: int, distributed: bool) -> dict:
    """The gradient of a shared linear layer under focal(reduction=pos_mean), averaged over the
    processes as DDP would (SPEC 4b: the local sum over the group's mean positive count)."""
    loss = lossdsl.compile("focal(reduction=pos_mean)", distributed=distributed)
    weight = torch.linspace(-1, 1, 12).reshape(3, 4).requires_grad_(True)
    values, grads = [], []
    for step in range(STEPS):
        features, target = pos_mean_batch(step)
        value = loss(half(features, rank, world) @ weight, half(target, rank, world))
        (grad,) = torch.autograd.grad(value, weight)
        if world > 1:  # what DDP does to a parameter's gradient
            dist.all_reduce(grad)
            grad = grad / world
        values.append(value.detach())
        grads.append(grad)
    return {"values": torch.stack(values), "grads": torch.stack(grads)}


def uncertainty_batch(step):
    generator = torch.Generator().manual_seed(50 + step)
    preds = {"a": torch.randn(8, 3, generator=generator), "b": torch.randn(8, 2, generator=generator)}
    targets = {"a": (torch.rand(8, 3, generator=generator) > 0.5).float(),
               "b": torch.randn(8, 2, generator=generator) * (1 + 3 * (torch.arange(8) < 4)).unsqueeze(1)}
    return preds, targets


def uncertainty_steps(rank: int, world: int, distributed: bool, inside_ddp: bool) -> dict:
    """SGD on uncertainty's task weights, the loss outside or inside a DDP-wrapped module."""
    loss = lossdsl.compile("uncertainty({a: bce(), b: mse()})", distributed=distributed)
    module = torch.nn.parallel.DistributedDataParallel(loss) if inside_ddp else loss
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.5)
    history = []
    for step in range(STEPS + 1):
        preds, targets = uncertainty_batch(step)
        optimizer.zero_grad()
        module(half(preds, rank, world), half(targets, rank, world)).backward()
        optimizer.step()
        history.append(torch.stack([loss.log_variance["a"], loss.log_variance["b"]]).detach().clone())
    return {"log_variance": torch.stack(history)}


# --------------------------------------------------------------------------------------------------
# eval mode: a validation loss computed on rank 0 only (SPEC 4b: no collective call in eval mode)

def pos_mean_eval_batch():
    return torch.randn(16, 4, generator=torch.Generator().manual_seed(60)), pos_mean_batch(0)[1]


def task_eval_batch():
    logits, labels = pos_mean_eval_batch()
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]]).repeat(16, 1)
    shift = 0.1 * torch.rand(16, 4, generator=torch.Generator().manual_seed(61))
    return {"cls": logits, "box": boxes + shift}, {"cls": labels, "box": boxes}


# Every loss that synchronises something in training mode, with its batch.
EVAL_CASES = {
    "pos_mean": ("focal(reduction=pos_mean)", pos_mean_eval_batch),
    "ghm": (GHM_EXPR, lambda: ghm_batch(0)),
    "ghm_plain": ("ghm(bins=10)", lambda: ghm_batch(1)),
    "dtp": (DTP_EXPR, lambda: dtp_batch(0)),
    "uncertainty": ("uncertainty({a: bce(), b: mse()})", lambda: uncertainty_batch(0)),
    "task_pos_mean": ("{cls: focal(reduction=pos_mean), box: giou()}", task_eval_batch),
}
# How long rank 1 waits for rank 0's validation (it normally takes well under a second).
EVAL_WAIT_S = 30


def eval_call(expr: str, preds, targets, world: int) -> dict:
    """One eval-mode call (and its backward) on rank 0's slice: the value, the gradients of the
    loss's parameters and the number of all_reduce calls it made."""
    loss = lossdsl.compile(expr).eval()
    before = len(ALL_REDUCE_CALLS)
    value = loss(half(preds, 0, world), half(targets, 0, world))
    if value.requires_grad:  # uncertainty's gradient averaging would run in the backward pass
        value.backward()
    return {"value": value.detach(), "calls": len(ALL_REDUCE_CALLS) - before,
            "grads": [parameter.grad for parameter in loss.parameters()]}


def eval_on_rank_zero(rank: int, world: int, out_dir: str) -> None:
    """Rank 0 calls each loss in eval mode (backward included) and records that it returned; the
    other ranks make no call at all and wait (without any collective) for rank 0's marker file. A
    loss that made a collective call would block rank 0 here instead of returning."""
    folder = Path(out_dir)
    if rank != 0:
        deadline = time.monotonic() + EVAL_WAIT_S
        while not (folder / "eval_done").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    for name, (expr, batch) in EVAL_CASES.items():
        try:
            record = eval_call(expr, *batch(), world)
        except Exception as error:  # noqa: BLE001 - a collective that failed once rank 1 left
            record = {"error": f"{type(error).__name__}: {error}"}
        torch.save(record, folder / f"eval_{name}.pt")
    (folder / "eval_done").touch()


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    original = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        ALL_REDUCE_CALLS.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    try:
        results = {"synchronised": run_steps(rank, world, True), "local": run_steps(rank, world, False)}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        eval_on_rank_zero(rank, world, out_dir)  # last: a regression blocks rank 0 in it
    finally:
        dist.all_reduce = original
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def worker_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def per_process(worker_folder):
    """The results of each of the two processes: a list indexed by rank."""
    folder = worker_folder
    context = mp.start_processes(
        _worker, args=(WORLD, str(folder / "rendezvous"), str(folder)), nprocs=WORLD, join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while True:
        try:
            if context.join(timeout=1):
                break
        except ProcessException:  # a rank failed: the results it saved are still read below
            break
        if time.monotonic() > deadline:
            break
    for process in context.processes:
        if process.is_alive():
            process.kill()
    missing = [rank for rank in range(WORLD) if not (folder / f"rank{rank}.pt").exists()]
    if missing:
        pytest.fail(f"the {WORLD} processes did not finish within {SPAWN_TIMEOUT_S} s (no results of rank "
                    f"{missing[0]})")
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.fixture(scope="module")
def single_process():
    """The same steps on whole batches in one process (torch.distributed not initialised here)."""
    assert not (dist.is_available() and dist.is_initialized())
    return run_steps(0, 1, True)


# --------------------------------------------------------------------------------------------------
# GHM-C


@pytest.mark.parametrize("scenario", ["ghm", "ghm_ignore"])
def test_ghm_losses_of_the_processes_add_up_to_the_single_process_loss(per_process, single_process, scenario):
    summed = sum(results["synchronised"][scenario]["losses"] for results in per_process)
    torch.testing.assert_close(summed, single_process[scenario]["losses"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scenario", ["ghm", "ghm_ignore"])
def test_ghm_momentum_buffers_of_every_process_equal_the_single_process_buffer(
    per_process, single_process, scenario
):
    for results in per_process:
        torch.testing.assert_close(
            results["synchronised"][scenario]["accumulators"], single_process[scenario]["accumulators"],
            rtol=1e-6, atol=1e-6,
        )


@pytest.mark.parametrize("scenario", ["ghm", "ghm_ignore"])
def test_ghm_sums_its_counts_with_one_all_reduce_per_call(per_process, scenario):
    for results in per_process:
        assert results["synchronised"][scenario]["calls"] == [1] * STEPS


def test_ghm_without_distributed_keeps_each_process_to_its_own_counts(per_process, single_process):
    for scenario in ("ghm", "ghm_ignore"):
        summed = sum(results["local"][scenario]["losses"] for results in per_process)
        assert not torch.allclose(summed, single_process[scenario]["losses"], rtol=1e-3)
        for results in per_process:
            assert not torch.allclose(
                results["local"][scenario]["accumulators"], single_process[scenario]["accumulators"]
            )
            assert results["local"][scenario]["calls"] == [0] * STEPS


# --------------------------------------------------------------------------------------------------
# dtp


def test_dtp_averages_of_every_process_equal_the_single_process_averages(per_process, single_process):
    for results in per_process:
        torch.testing.assert_close(
            results["synchronised"]["dtp"]["averages"], single_process["dtp"]["averages"], rtol=1e-6, atol=1e-7
        )


def test_dtp_weights_of_every_process_equal_the_single_process_weights(per_process, single_process):
    for results in per_process:
        torch.testing.assert_close(
            results["synchronised"]["dtp"]["weights"], single_process["dtp"]["weights"], rtol=1e-6, atol=1e-7
        )


def test_dtp_sums_every_tasks_indicator_counts_with_one_all_reduce_per_call(per_process):
    for results in per_process:
        assert results["synchronised"]["dtp"]["calls"] == [1] * STEPS


def test_dtp_without_distributed_averages_each_processs_own_indicators(per_process, single_process):
    first, second = (results["local"]["dtp"]["averages"] for results in per_process)
    assert not torch.allclose(first, single_process["dtp"]["averages"])
    assert not torch.allclose(second, single_process["dtp"]["averages"])
    assert not torch.allclose(first, second)
    assert all(results["local"]["dtp"]["calls"] == [0] * STEPS for results in per_process)


# --------------------------------------------------------------------------------------------------
# long-tail losses


def assert_same_states(first, second, **tolerance):
    assert [sorted(state) for state in first] == [sorted(state) for state in second]
    for left, right in zip(first, second):
        for key in left:
            torch.testing.assert_close(left[key], right[key], **tolerance, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("scenario", LONGTAIL_EXPRS)
def test_longtail_losses_of_the_processes_add_up_to_the_single_process_loss(per_process, single_process, scenario):
    summed = sum(results["synchronised"]["longtail"][scenario]["losses"] for results in per_process)
    torch.testing.assert_close(summed, single_process["longtail"][scenario]["losses"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scenario", LONGTAIL_EXPRS)
def test_longtail_statistics_of_every_process_equal_the_single_process_ones(per_process, single_process, scenario):
    for results in per_process:
        assert_same_states(results["synchronised"]["longtail"][scenario]["states"],
                           single_process["longtail"][scenario]["states"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scenario", LONGTAIL_EXPRS)
def test_longtail_statistics_are_summed_with_one_all_reduce_per_training_call_and_none_in_eval(per_process, scenario):
    for results in per_process:
        assert results["synchronised"]["longtail"][scenario]["calls"] == [1] * STEPS
        assert results["synchronised"]["longtail"][scenario]["eval_calls"] == 0
        assert_same_states([results["synchronised"]["longtail"][scenario]["after_eval"]],
                           results["synchronised"]["longtail"][scenario]["states"][-1:], rtol=0, atol=0)


def test_longtail_statistics_without_distributed_are_each_processs_own(per_process, single_process):
    first, second = (results["local"]["longtail"]["seesaw"]["states"][-1] for results in per_process)
    assert not torch.equal(first["terms.0.frequency.class_counts"], second["terms.0.frequency.class_counts"])
    assert all(results["local"]["longtail"]["seesaw"]["calls"] == [0] * STEPS for results in per_process)


@pytest.mark.parametrize("scenario", ["longtail_ddp", "longtail_ddp_outside"])
def test_longtail_training_under_ddp_equals_one_process_and_the_buffer_broadcast_changes_nothing(
    per_process, single_process, scenario
):
    """Inside the DDP-wrapped module DDP broadcasts rank 0's buffers before each forward: every rank
    holds the summed statistics already, so nothing is overwritten that would differ."""
    for results in per_process:
        torch.testing.assert_close(results["synchronised"][scenario]["weights"],
                                   single_process["longtail_ddp"]["weights"], rtol=1e-5, atol=1e-6)
        assert_same_states(results["synchronised"][scenario]["states"],
                           single_process["longtail_ddp"]["states"], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# pos_mean and uncertainty (SPEC 4b)


def test_pos_mean_gradients_averaged_over_processes_equal_the_single_process_gradient(per_process, single_process):
    for results in per_process:
        torch.testing.assert_close(results["synchronised"]["pos_mean"]["grads"],
                                   single_process["pos_mean"]["grads"], rtol=1e-5, atol=1e-6)
    mean_value = sum(r["synchronised"]["pos_mean"]["values"] for r in per_process) / WORLD
    torch.testing.assert_close(mean_value, single_process["pos_mean"]["values"], rtol=1e-5, atol=1e-6)


def test_pos_mean_without_distributed_divides_by_each_processs_own_positives(per_process, single_process):
    for results in per_process:
        assert not torch.allclose(results["local"]["pos_mean"]["grads"], single_process["pos_mean"]["grads"],
                                  rtol=1e-3)


@pytest.mark.parametrize("scenario", ["uncertainty", "uncertainty_ddp"])
def test_uncertainty_weights_stay_identical_on_every_process_and_equal_one_process(
    per_process, single_process, scenario
):
    """Outside DDP the loss averages its weights' gradients itself; inside DDP, DDP averages the
    already averaged (identical) gradients again, which changes nothing."""
    first, second = (results["synchronised"][scenario]["log_variance"] for results in per_process)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, single_process["uncertainty"]["log_variance"], rtol=1e-5, atol=1e-6)


def test_uncertainty_without_distributed_drifts_apart_outside_ddp(per_process):
    first, second = (results["local"]["uncertainty"]["log_variance"] for results in per_process)
    assert not torch.allclose(first, second)


# --------------------------------------------------------------------------------------------------
# eval mode on rank 0 only


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_an_eval_mode_loss_called_on_rank_zero_only_returns_without_a_collective(
    per_process, worker_folder, case
):
    """A validation loss on the main process (SPEC 4b): the other rank never calls it, so any
    collective would block; rank 0 returns, having computed on its own slice exactly what one
    process computes on that slice."""
    saved = worker_folder / f"eval_{case}.pt"
    expr, batch = EVAL_CASES[case]
    assert saved.exists(), (
        f"rank 0's eval-mode call of {expr} did not return within {SPAWN_TIMEOUT_S} s: it waits in a "
        "collective for a rank that never calls the loss"
    )
    record = torch.load(saved)
    assert "error" not in record, (
        f"rank 0's eval-mode call of {expr} waited in a collective for a rank that never calls the "
        f"loss, until that rank left: {record.get('error')}"
    )
    assert record["calls"] == 0
    expected = eval_call(expr, *batch(), WORLD)  # here torch.distributed is not initialised
    torch.testing.assert_close(record["value"], expected["value"], rtol=1e-6, atol=1e-7)
    for got, want in zip(record["grads"], expected["grads"]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# one process


def test_sum_over_processes_is_the_identity_without_a_process_group():
    value = torch.arange(4.0)
    assert sum_over_processes(value) is value


@pytest.mark.parametrize("expr", [GHM_EXPR, DTP_EXPR])
def test_distributed_option_changes_nothing_in_a_single_process(expr):
    synchronised, local = lossdsl.compile(expr), lossdsl.compile(expr, distributed=False)
    for step in range(2):
        batch = ghm_batch(step) if expr == GHM_EXPR else dtp_batch(step)
        assert torch.equal(synchronised(*batch), local(*batch))
    for (name, a), (_, b) in zip(synchronised.state_dict().items(), local.state_dict().items()):
        assert torch.equal(a, b), name
