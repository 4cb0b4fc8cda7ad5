"""Arguments past what can run get a message, not a Traceback (issue 15, item 15): bench shapes and
plot class counts that cannot fit in memory (estimated before anything is allocated), a bench of
terms that read different inputs, tolerances of diff, and schema keys no document can hold."""

from __future__ import annotations

import sys

import pytest
from conftest import run_cli as run

import lossdsl.memory

GIB = 2**30


@pytest.fixture
def eight_gib(monkeypatch):
    """A machine with 8 GiB available, whatever this one has."""
    monkeypatch.setattr(lossdsl.memory, "available_bytes", lambda device="cpu": 8 * GIB)


def test_bench_refuses_a_shape_that_cannot_fit_before_allocating_it(capsys, eight_gib):
    code, out, err = run(capsys, "bench", "focal()", "--shape", "40000,40000")
    assert (code, out) == (1, "")
    needed = 40000 * 40000 * 4 * 6 / GIB
    assert err == (
        "error: --shape 40000,40000 (1,600,000,000 float32 elements; a run holds at least 6 tensors "
        f"of that size at once) needs about {needed:.1f} GiB, more than the 8.0 GiB available on cpu\n"
        "give a smaller --shape\n"
    )


def test_plot_refuses_a_class_count_that_cannot_fit_before_allocating_it(capsys, eight_gib, tmp_path):
    pytest.importorskip("matplotlib")
    out_file = tmp_path / "curves.png"
    code, out, err = run(capsys, "plot", "ce()", "--classes", "3000000", "--out", str(out_file))
    assert (code, out) == (1, "")
    needed = 400 * 3_000_000 * 8 * 6 / GIB
    assert err == (
        "error: drawing with 3,000,000 classes (400 points x 3,000,000 classes of float64; a curve "
        f"holds at least 6 tensors of that size at once) needs about {needed:.1f} GiB, more than the "
        "8.0 GiB available on cpu\ndraw with fewer classes (--classes)\n"
    )
    assert not out_file.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/meminfo")
def test_available_memory_is_known_on_linux():
    available = lossdsl.memory.available_bytes()
    assert isinstance(available, int) and available > 0


def test_bench_refuses_terms_that_read_different_inputs(capsys):
    code, out, err = run(capsys, "bench", "dice() + giou()")
    assert (code, out) == (1, "")
    assert err == ("error: bench feeds one input to the whole loss, but the terms of dice() + giou() "
                   "read boxes [N, 4] and class logits or masks\nbench each term on its own\n")


@pytest.mark.parametrize("option, value", [("--rtol", "-1"), ("--rtol", "nan"), ("--atol", "inf")])
def test_diff_refuses_tolerances_that_mean_nothing(capsys, option, value):
    code, out, err = run(capsys, "diff", "focal()", "focal()", option, value)
    assert (code, out) == (1, "")
    name = option.lstrip("-")
    assert err.startswith(f"error: {name} must be a finite number >= 0, got {float(value)}\n")
    assert "Traceback" not in err


def test_schema_refuses_a_key_no_document_can_hold(capsys):
    key = ".".join(["a"] * 1000)
    code, out, err = run(capsys, "schema", "--key", key)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: the key '{key[:57]}...' has 1000 parts; a config nests at most 64 "
                          "levels\n")
    code, _, err = run(capsys, "schema", "--key", "model..loss")
    assert (code, err) == (1, "error: the key 'model..loss' has an empty part\n"
                              "give the dotted key of the loss, e.g. model.loss\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")
def test_a_run_the_estimate_let_through_that_runs_out_of_memory_is_a_message(capsys, monkeypatch):
    from test_hostile_config import memory_capped

    # The estimate is a lower bound: pretend it saw plenty, then let the allocator fail for real.
    monkeypatch.setattr(lossdsl.memory, "available_bytes", lambda device="cpu": 1 << 50)
    with memory_capped(extra_bytes=1 << 30):
        code, out, err = run(capsys, "bench", "focal()", "--shape", "20000,20000", "--repeat", "1")
    assert (code, out) == (1, "")
    assert err == "error: bench with --shape 20000,20000 on cpu ran out of memory\ngive a smaller --shape\n"
