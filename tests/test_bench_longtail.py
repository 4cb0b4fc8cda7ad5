"""The long-tail benchmark and ``lossdsl bench`` on the long-tail names run (no timing is asserted:
the numbers are machine-dependent and reported, not tested)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch

import lossdsl.bench

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_longtail", ROOT / "benchmarks" / "bench_longtail.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_long_tail_benchmark_has_a_row_per_name_against_its_plain_formula(capsys):
    benchmark = load_benchmark()
    assert benchmark.main(["--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines[3:] if line.strip()]
    names = ["logit_adjust", "balanced_softmax", "ldam", "class_balanced(ce", "class_balanced(focal", "seesaw",
             "eqlv2"]
    assert [name for name in names if any(name in row for row in rows)] == names
    assert len(rows) == len(names)
    for row in rows:
        ours, theirs, ratio = (float(cell) for cell in row.split()[-3:])
        assert ours > 0 and theirs > 0 and ratio > 0  # (ms printed to 0.1: the ratio is the raw one's)


def test_the_plain_formulas_of_the_benchmark_compute_the_same_losses_as_lossdsl():
    """The benchmark compares equal work: each plain formula gives lossdsl's value (first step)."""
    benchmark = load_benchmark()
    for expr, _, reference, counts, background in benchmark.rows(6):
        channels = 7 if background else 6
        x = torch.randn(40, channels, dtype=torch.float64)
        t = torch.multinomial(benchmark.long_tailed_counts(channels), 40, replacement=True)
        ours = lossdsl.compile(expr.replace("counts=...", f"counts={counts}") if counts else expr)
        torch.testing.assert_close(ours(x, t), reference(x, t).to(torch.float64), rtol=1e-5, atol=1e-6,
                                   msg=lambda m, expr=expr: f"{expr}: {m}")


def test_time_pair_takes_another_clock():
    calls = []

    def clock():
        calls.append(1)
        return time.perf_counter()

    loss = lossdsl.compile("ce()")
    x, t = torch.randn(8, 3), torch.randint(0, 3, (8,))
    lossdsl.bench.time_pair(loss, loss, x, t, 2, "cpu", warmup=0, clock=clock)
    assert len(calls) == 2 * 2 * 2  # start and stop, both losses, two runs


def test_lossdsl_bench_gives_eqlv2_class_indices_with_the_background_label():
    result = lossdsl.bench.bench("eqlv2()", shape=(64, 5), repeat=1, warmup=0)
    assert result.target == "class indices [64] (label 4: the background)"
    assert result.floor == "F.binary_cross_entropy_with_logits"
