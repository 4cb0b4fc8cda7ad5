"""benchmarks/bench_gpu.py (issue 12's GPU benchmark) runs on the CPU and writes the tables it promises.

GPU time is scarce, so the script must not fail there for a reason the CPU could have shown: these
tests run its ``main`` in-process at --quick sizes, on rows whose references need no optional library.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
ROWS = ["`focal()`", "`ghm(bins=30, momentum=0.75)`", "`focal(head=softmax)`"]
FLOORS = ["`F.binary_cross_entropy_with_logits` (floor)", "`F.cross_entropy` (floor)"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def table(markdown: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header starts with ``| first_column |``, as dicts."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    cells = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]  # noqa: E731
    header = cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, cells(line))))
    return rows


def number(text: str) -> float:
    value = float(text)
    assert math.isfinite(value), text
    return value


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    threads = torch.get_num_threads()
    rows = "focal,ghm,softmax_focal"
    args = ["--quick", "--device", "cpu", "--no-compile", "--rows", rows, "--out", str(out)]
    buffer = io.StringIO()
    gc.freeze()  # the test session's objects: peak_mib's gc.collect() need not walk them each time
    try:
        with contextlib.redirect_stdout(buffer):
            code = bench.main(args)
    finally:
        gc.unfreeze()
    return code, buffer.getvalue(), out, threads


def test_quick_cpu_run_has_every_selected_row_in_both_dtypes(quick_run):
    code, markdown, _, _ = quick_run
    assert code == 0
    rows = table(markdown, "loss")
    assert {(r["loss"], r["mode"], r["dtype"]) for r in rows} == {
        (loss, "eager", dtype) for loss in ROWS + FLOORS for dtype in ("fp32", "bf16")
    }
    for row in rows:
        assert number(row["ms"]) > 0 and number(row["floor ms"]) > 0
        assert number(row["x floor"]) > 0
        assert number(row["% peak BW"]) >= 0
        number(row["MiB"])
        if row["loss"] in ROWS:
            assert number(row["ref ms"]) > 0 and number(row["x ref"]) > 0
            assert row["reference"]
        else:
            assert number(row["x floor"]) == pytest.approx(1.0)
        assert row["note"] == ""  # no error, and lossdsl and the reference compute the same value


def test_value_check_table_counts_host_reads_and_none_without_checks(quick_run):
    _, markdown, _, _ = quick_run
    rows = table(markdown, "loss")  # the first table
    checks = table(markdown[markdown.index("Value checks"):], "loss")
    assert [r["loss"] for r in checks] == ROWS
    assert len(rows) > len(checks)
    for row in checks:
        assert number(row["ms on"]) > 0 and number(row["ms off"]) > 0
        number(row["cost ms"])
        first, fifth = (int(n) for n in row["host reads on"].split(" / "))
        assert first >= 0 and fifth >= 0
        # SPEC 6: with checks off nothing is read on a GPU. On the CPU, where nothing waits, class-index
        # targets are looked at to take the path without a mask when none is ignored (issue 18).
        index_targets = row["loss"] == "`focal(head=softmax)`"
        assert row["host reads off"] == ("1 / 1" if index_targets else "0 / 0")
        assert row["syncs on"] == "n/a"  # counted with CUDA's sync debug mode only


def test_results_file_holds_the_same_tables_and_the_setup(bench, quick_run):
    _, markdown, out, threads = quick_run
    written = out / bench.file_name(bench.device_name("cpu"), quick=True)
    assert written.read_text() == markdown
    assert f"torch {torch.__version__}" in markdown
    assert "- date: " in markdown and "512x80" in markdown and "Peak bandwidth:" in markdown
    assert torch.get_num_threads() == threads  # --quick's single thread does not leak out of main


def test_a_row_whose_reference_library_is_missing_is_skipped_with_a_line(bench, monkeypatch, capsys):
    def missing(device):
        raise bench.Missing("timm is not installed")

    cases = [c if c.id != "asl" else bench.Case(**{**c.__dict__, "make_ref": missing}) for c in bench.CASES]
    monkeypatch.setattr(bench, "CASES", cases)
    assert bench.main(["--quick", "--no-compile", "--rows", "asl", "--dtypes", "fp32"]) == 0
    markdown = capsys.readouterr().out
    assert "- asl (asl()): skipped, timm is not installed" in markdown
    assert "`asl()`" not in markdown


def test_an_unknown_row_id_is_refused_with_the_known_ones(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--rows", "focal,nope"])
    assert "unknown row id(s) nope" in capsys.readouterr().err


def test_compile_rows_run_with_a_quick_backend(bench, capsys):
    # Inductor takes seconds per graph here; dynamo's eager backend checks the compile rows' plumbing.
    code = bench.main(["--quick", "--rows", "focal", "--dtypes", "fp32", "--compile-backend", "eager"])
    assert code == 0
    rows = table(capsys.readouterr().out, "loss")
    compiled = {r["loss"]: r for r in rows if r["mode"] == "compile"}
    assert set(compiled) == {"`focal()`", FLOORS[0]}
    assert number(compiled["`focal()`"]["x floor"]) > 0 and number(compiled["`focal()`"]["x ref"]) > 0
    assert compiled["`focal()`"]["note"].startswith("first call")


def test_a_reference_that_computes_another_value_is_flagged(bench):
    case = next(c for c in bench.CASES if c.id == "focal")
    twice = lambda device: lambda x, y: 2 * case.make_ref(device)(x, y)  # noqa: E731
    doubled = bench.Case(**{**case.__dict__, "make_ref": twice})
    x, y = torch.randn(64, 8), (torch.rand(64, 8) < 0.1).float()
    assert bench.same_value(case, x, y, "cpu") == ""
    assert bench.same_value(doubled, x, y, "cpu").startswith("value differs from the reference")
