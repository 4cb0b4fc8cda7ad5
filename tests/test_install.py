"""A regular (non-editable) install works on its own: the package finds its grammar inside itself.

The project is copied to a scratch folder (so the build leaves nothing in the checkout), installed
with pip into a target folder, and used from a third folder where the checkout is not importable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "lossdsl", "grammar")

pytestmark = pytest.mark.slow

PROBE = textwrap.dedent(
    """
    import pathlib, sys
    import torch
    import lossdsl

    target = pathlib.Path(sys.argv[1]).resolve()
    checkout = pathlib.Path(sys.argv[2]).resolve()
    package = pathlib.Path(lossdsl.__file__).resolve().parent
    assert package.is_relative_to(target), package
    assert not package.is_relative_to(checkout), package

    import lossdsl.grammar
    from importlib import resources
    grammar = resources.files("lossdsl.grammar").joinpath("lossdsl.lark")
    assert pathlib.Path(str(grammar)).resolve().is_relative_to(target), grammar
    assert "?start" in grammar.read_text(encoding="utf-8")

    loss = lossdsl.compile("0.5 * ce(smoothing=0.1) + 0.5 * ce(ignore_index=3)")
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    target_ = torch.tensor([0, 2])
    value = loss(logits, target_)
    expected = 0.5 * torch.nn.functional.cross_entropy(logits, target_, label_smoothing=0.1) \\
        + 0.5 * torch.nn.functional.cross_entropy(logits, target_, ignore_index=3)
    assert torch.allclose(value, expected), (value, expected)
    print("OK", repr(loss))
    """
)


def test_a_non_editable_install_compiles_and_evaluates_an_expression(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, source / name)
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (target / "lossdsl" / "grammar" / "lossdsl.lark").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(target), str(ROOT)],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert probe.stdout.startswith("OK lossdsl.compile(")
