"""Shared test settings: deterministic torch, a bounded hypothesis profile for CI."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=int(os.environ.get("LOSSDSL_EXAMPLES", "150")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# Inputs built to explode (YAML alias bombs, interpolations that double at each level: 2^40 values
# and more) must be refused rather than expanded. A test proves the refusal by the call returning at
# all: this bound only turns a runaway into a failure instead of a hung CI job, so it is generous
# (a loaded shared machine must never trip it) and never a speed measurement (benchmarks/ do that).
RUNAWAY_S = 60.0


def caret_target(error) -> str:
    """The character printed above the caret in ``str(error)`` (for error-location tests)."""
    lines = str(error).split("\n")
    for index, line in enumerate(lines[1:], 1):
        if line.strip() == "^":
            return lines[index - 1][line.index("^")]
    raise AssertionError(f"no caret in:\n{error}")


def run_cli(capsys, *args: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """``lossdsl ARGS`` in this process: its exit code, stdout and stderr (``stdin``: the text it
    reads, with ``monkeypatch``)."""
    import io
    import sys

    from lossdsl.cli import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
