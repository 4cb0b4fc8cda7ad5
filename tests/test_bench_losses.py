"""benchmarks/bench_losses.py's issue-18 table and its README update, and lossdsl.bench.best_rounds
(no timing is asserted: the numbers are machine-dependent and reported, not tested)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import lossdsl
import lossdsl.bench

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_losses", ROOT / "benchmarks" / "bench_losses.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_issue18_table_prints_every_row_with_time_and_memory(capsys):
    benchmark = load_benchmark()
    assert benchmark.main(["--quick", "--rounds", "1", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines[3:] if line.strip()]
    names = list(benchmark.ISSUE18_GOALS)
    assert len(rows) == len(names)
    for name, row in zip(names, rows):
        assert row.startswith(name + " ")
        ours, floor, ratio, goal, mib, floor_mib, fastest, *rounds = row[len(name):].split()[-8:]
        assert float(fastest) > 0
        assert float(ours) >= 0 and float(floor) >= 0 and float(goal) == benchmark.ISSUE18_GOALS[name]
        assert len(rounds) == 1  # one ratio per round


def test_update_rewrites_only_between_the_markers(tmp_path, capsys):
    benchmark = load_benchmark()
    readme = tmp_path / "README.md"
    before = ("# Title\n\ntext before\n\n<!-- speed-table:begin -->\nold table\n<!-- speed-table:end -->\n"
              "\ntext after\n")
    readme.write_text(before)
    assert benchmark.main(["--quick", "--rounds", "1", "--repeat", "1", "--only", "bce()", "focal()",
                           "--update", str(readme)]) == 0
    after = readme.read_text()
    head, rest = after.split("<!-- speed-table:begin -->\n")
    table, tail = rest.split("<!-- speed-table:end -->")
    assert head == "# Title\n\ntext before\n\n" and tail == "\n\ntext after\n"
    assert "old table" not in table
    assert "| `bce()` | `F.binary_cross_entropy_with_logits` |" in table
    assert "| `focal()` |" in table and "poly" not in table
    assert f"updated {readme}" in capsys.readouterr().out


def test_update_without_markers_refuses_and_leaves_the_file():
    benchmark = load_benchmark()
    with pytest.raises(SystemExit, match="markers"):
        benchmark.update_between_markers("no markers here\n", "| table |\n")
    text = "a\n<!-- speed-table:end -->\nb\n<!-- speed-table:begin -->\n"  # out of order
    with pytest.raises(SystemExit):
        benchmark.update_between_markers(text, "| table |\n")


def test_the_readme_has_the_speed_table_markers():
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- speed-table:begin -->") == 1 and text.count("<!-- speed-table:end -->") == 1
    assert text.index("<!-- speed-table:begin -->") < text.index("<!-- speed-table:end -->")


def test_best_rounds_keeps_every_round_and_reports_the_lowest_ratio():
    loss = lossdsl.compile("bce()")
    x, y = torch.randn(16, 3), (torch.rand(16, 3) < 0.5).float()
    calls = []

    def clock():
        calls.append(1)
        return float(len(calls))  # every timed run takes 1 "second"

    rounds = lossdsl.bench.best_rounds(loss, loss, x, y, 3, 2, "cpu", warmup=1, clock=clock)
    assert len(rounds.first_ms) == len(rounds.second_ms) == 3
    assert len(calls) == 3 * 2 * 2 * 2  # rounds x runs x sides x (start, stop)
    assert rounds.ratios == [1.0, 1.0, 1.0] and rounds.ratio == 1.0

    picked = lossdsl.bench.Rounds([3.0, 2.0, 4.0], [2.0, 2.0, 1.0])
    assert picked.best == 1 and picked.ratio == 1.0 and picked.best_times_ratio == 2.0
    with pytest.raises(ValueError):
        lossdsl.bench.best_rounds(loss, loss, x, y, 0, 1, "cpu")
