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


def caret_target(error) -> str:
    """The character printed above the caret in ``str(error)`` (for error-location tests)."""
    lines = str(error).split("\n")
    for index, line in enumerate(lines[1:], 1):
        if line.strip() == "^":
            return lines[index - 1][line.index("^")]
    raise AssertionError(f"no caret in:\n{error}")
