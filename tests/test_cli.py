"""The command line: `lossdsl compile` and `python -m lossdsl compile` (README "Command line").

The entry points themselves run as subprocesses from a folder that is not the repository (all at
once: each one imports torch, which takes seconds); the remaining behaviours of the command call
``lossdsl.cli.main`` in this process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli as run_main

import lossdsl

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Every top-level example is an experiment file with its loss at model.loss.
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))

GOOD = "0.7 * ce(smoothing=0.1, ignore_index=255) + 0.3*mse(reduction=sum)"
GOOD_TREE = [
    "loss: 0.7 * ce(ignore_index=255, smoothing=0.1) + 0.3 * mse(reduction=sum)",
    "term 1: weight 0.7, reduction mean, head softmax",
    "  ce: weight=none (default), ignore_index=255, smoothing=0.1",
    "term 2: weight 0.3, reduction sum, head none (regression)",
    "  mse",
    "learnable parameters: none",
    "running buffers: none",
]
BAD = "0.5 * ce(smothing=0.1)"


def console_script() -> str | None:
    beside = Path(sys.executable).parent / "lossdsl"
    if beside.exists():
        return str(beside)
    return shutil.which("lossdsl")


# (entry point, arguments) of every subprocess the tests look at.
INVOCATIONS = [
    ("module", ("compile", GOOD)),
    ("module", ("compile", BAD)),
    ("module", ("compile", str(EXAMPLES / "segmentation.yaml"), "--key", "model.loss")),
    ("module", ("compile", "focal(gamma=3)", "--expand")),
    ("script", ("compile", GOOD)),
    ("script", ("compile", BAD)),
]


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("elsewhere")
    commands = {"module": [sys.executable, "-m", "lossdsl"], "script": [console_script()]}
    # The entry points import this checkout, whichever checkout the environment was installed from.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    running = {}
    for entry, args in INVOCATIONS:
        if commands[entry][0] is None:
            continue
        running[entry, args] = subprocess.Popen(
            [*commands[entry], *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for key, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[key] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def result_of(ran: dict, entry: str, *args: str) -> subprocess.CompletedProcess:
    if (entry, args) not in ran:
        pytest.skip("the lossdsl console script is not installed next to this Python")
    return ran[entry, args]


# -- the entry points, as subprocesses ----------------------------------------------------------------


@pytest.mark.parametrize("entry", ["module", "script"])
def test_compile_prints_the_canonical_expression_and_the_term_tree(ran, entry):
    result = result_of(ran, entry, "compile", GOOD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == GOOD_TREE
    assert result.stderr == ""


@pytest.mark.parametrize("entry", ["module", "script"])
def test_invalid_expression_exits_non_zero_with_the_caret_message_and_no_traceback(ran, entry):
    result = result_of(ran, entry, "compile", BAD)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert "1:10: ce() has no parameter 'smothing'" in lines[0]
    assert lines[1].strip() == BAD
    assert lines[2].index("^") == lines[1].index("smothing")
    assert "did you mean 'smoothing'?" in result.stderr
    assert "Traceback" not in result.stderr


def term_lines(spec: lossdsl.LossSpec) -> list[str]:
    """The "term N: weight W, reduction R" prefixes the tree shows for a single-task spec."""
    from lossdsl.printer import format_number

    return [
        f"term {index}: weight {format_number(term.weight)}, reduction {term.reduction}, head "
        for index, term in enumerate(spec.terms, 1)
    ]


def test_key_selects_the_loss_inside_an_example_file(ran):
    path = EXAMPLES / "segmentation.yaml"
    result = result_of(ran, "module", "compile", str(path), "--key", "model.loss")
    assert result.returncode == 0, result.stderr
    spec = lossdsl.load(path, key="model.loss")
    lines = result.stdout.splitlines()
    assert lines[0] == f"loss: {spec.to_expr()}"
    assert len(spec.terms) == 2
    for prefix in term_lines(spec):
        assert any(line.startswith(prefix + "softmax") for line in lines), (prefix, lines)
    assert lines[-2:] == ["learnable parameters: none", "running buffers: none"]


def test_expand_rewrites_named_losses_into_primitive_blocks(ran):
    if "focal" not in lossdsl.CATALOGUE:
        pytest.skip("focal is not in the catalogue yet")
    result = result_of(ran, "module", "compile", "focal(gamma=3)", "--expand")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert "focal" not in first
    assert first.startswith("loss: balance(modulate(bce(), gamma=3)")


# -- the command, in process --------------------------------------------------------------------------


def test_main_prints_the_same_tree(capsys):
    code, out, err = run_main(capsys, "compile", GOOD)
    assert code == 0 and err == ""
    assert out.splitlines() == GOOD_TREE


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_key_on_every_example(capsys, path):
    code, out, err = run_main(capsys, "compile", str(path), "--key", "model.loss")
    assert code == 0, err
    spec = lossdsl.load(path, key="model.loss")
    lines = out.splitlines()
    assert lines[0] == f"loss: {spec.to_expr()}"
    if getattr(spec.terms[0].loss, "tasks", None) is None:  # multi-task trees show tasks instead
        for prefix in term_lines(spec):
            assert any(line.startswith(prefix) for line in lines), (prefix, lines)
    assert any(line.startswith("learnable parameters:") for line in lines)
    assert any(line.startswith("running buffers:") for line in lines)


def test_wrong_key_names_the_file_and_suggests_the_key(capsys):
    path = EXAMPLES / "segmentation.yaml"
    code, out, err = run_main(capsys, "compile", str(path), "--key", "model.los")
    assert code != 0 and out == ""
    assert str(path) in err
    assert "did you mean 'loss'?" in err


def test_error_inside_a_file_reports_the_file_line_and_column(capsys, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  loss: 0.5 * ce(smothing=2)\n", encoding="utf-8")
    code, _, err = run_main(capsys, "compile", str(path), "--key", "model.loss")
    assert code != 0
    assert f"{path}:2:18:" in err
    assert "smothing=2)" in err


def test_expand_leaves_primitive_losses_unchanged(capsys):
    _, plain, _ = run_main(capsys, "compile", "ce(smoothing=0.1) + l1()")
    _, expanded, _ = run_main(capsys, "compile", "ce(smoothing=0.1) + l1()", "--expand")
    assert plain == expanded


def test_tree_shows_every_parameter_with_its_default_marked(capsys):
    code, out, _ = run_main(capsys, "compile", "bce(pos_weight=2, reduction=pos_mean)")
    assert code == 0
    assert out.splitlines()[1:] == [
        "term 1: weight 1, reduction pos_mean, head sigmoid",
        "  bce: weight=none (default), pos_weight=2, smoothing=0 (default), ignore_index=-100 (default), "
        "background=false (default)",
        "learnable parameters: none",
        "running buffers: none",
    ]


def test_key_with_an_expression_is_an_error(capsys):
    code, _, err = run_main(capsys, "compile", "ce()", "--key", "model.loss")
    assert code != 0
    assert "--key" in err


def test_no_command_prints_usage_and_fails(capsys):
    code, out, err = run_main(capsys)
    assert code != 0
    assert "compile" in out + err


def test_missing_file_says_it_cannot_be_read(capsys, tmp_path):
    path = tmp_path / "missing.yaml"
    code, out, err = run_main(capsys, "compile", str(path))
    assert code != 0 and out == ""
    assert f"cannot read {path}" in err
