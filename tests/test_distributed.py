"""Statistics across processes: with torch.distributed initialised, GHM-C's bin counts and dtp's
indicators are summed over the process group, so N processes with a slice of the batch each compute
the weights and hold the running buffers that one process with the whole batch would.

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
    return results


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
    finally:
        dist.all_reduce = original
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def per_process(tmp_path_factory):
    """The results of each of the two processes: a list indexed by rank."""
    folder = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(
        _worker, args=(WORLD, str(folder / "rendezvous"), str(folder)), nprocs=WORLD, join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} processes did not finish within {SPAWN_TIMEOUT_S} s")
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
