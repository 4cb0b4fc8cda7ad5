"""Where a loss comes from (issue 15, items 16-18): one rule finds it in an experiment file for the
command line, ``lossdsl.load``, ``lossdsl.compile`` and ``lossdsl.argtype``; stdin is read exactly
as a file is."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import run_cli as run
from omegaconf import OmegaConf

import lossdsl

EXPERIMENT = "model:\n  name: tiny\n  loss: focal(gamma=3)\ntrain:\n  lr: 0.1\n"
DEEPER = "model:\n  name: tiny\n  criterion:\n    kind: focal\n    gamma: 3\n  aux: ce(smoothing=0.1)\n"


def error_of(call) -> lossdsl.LossDSLError:
    with pytest.raises(lossdsl.LossDSLError) as info:
        call()
    return info.value


# -- 18. one rule ------------------------------------------------------------------------------------


def test_every_entry_point_finds_the_loss_of_an_experiment_file(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT, encoding="utf-8")
    expected = lossdsl.parse("focal(gamma=3)")
    assert run(capsys, "compile", str(path), "--format", "expr") == (0, "focal(gamma=3)\n", "")
    assert lossdsl.load(path) == expected
    assert lossdsl.load(EXPERIMENT) == expected  # YAML text
    assert lossdsl.compile(str(path)).spec == expected
    assert lossdsl.argtype(str(path)) == expected
    assert lossdsl.load({"model": {"loss": "focal(gamma=3)"}}) == expected
    assert lossdsl.compile(OmegaConf.create(EXPERIMENT)).spec == expected


def test_the_first_loss_key_breadth_first_wins_in_the_api_too():
    text = "experiment:\n  model:\n    loss: ce()\ntrain:\n  loss: bce()\n"
    assert lossdsl.load(text) == lossdsl.parse("bce()")


def test_a_loss_deeper_under_another_name_is_named_in_the_hint(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(DEEPER, encoding="utf-8")
    error = error_of(lambda: lossdsl.load(path))
    assert error.reason == "no key named 'loss' found, and the document is no loss itself"
    assert error.hint == ("give key='model.criterion': the keys that hold a loss here are "
                          "model.criterion, model.aux")
    assert lossdsl.load(path, key=error.hint.split("'")[1]) == lossdsl.parse("focal(gamma=3)")
    code, _, err = run(capsys, "compile", str(path))
    assert code == 1
    assert err.endswith("give --key model.criterion: the keys that hold a loss here are "
                        "model.criterion, model.aux\n")
    with pytest.raises(argparse.ArgumentTypeError, match="give key='model.criterion'"):
        lossdsl.argtype(str(path))


def test_a_file_without_any_loss_asks_for_a_key():
    error = error_of(lambda: lossdsl.load("model:\n  name: tiny\n"))
    assert error.hint == "give key= with the dotted key of the loss, e.g. key='model.loss'"


def test_a_flat_mapping_that_is_no_loss_still_says_why():
    error = error_of(lambda: lossdsl.load({"name": "ce", "gamma": 2}))
    assert error.reason == "this mapping is not a loss (its keys: 'name', 'gamma')"


# -- 16. stdin is a file -----------------------------------------------------------------------------


def test_the_json_document_of_compile_reads_back_through_stdin(capsys, monkeypatch):
    expression = "poly(focal(gamma=3), eps=2) + 0.5 * ce(smoothing=0.1)"
    code, document, _ = run(capsys, "compile", expression, "--format", "json")
    assert code == 0 and document.startswith("{\n  ")  # pretty-printed
    code, out, err = run(capsys, "compile", "-", "--format", "expr", stdin=document, monkeypatch=monkeypatch)
    assert (code, out, err) == (0, expression + "\n", "")


def test_pretty_printed_json_on_stdin_is_a_document(capsys, monkeypatch):
    text = json.dumps({"kind": "focal", "gamma": 3}, indent=4)
    code, out, _ = run(capsys, "compile", "-", "--format", "expr", stdin=text, monkeypatch=monkeypatch)
    assert (code, out) == (0, "focal(gamma=3)\n")


def test_a_yaml_list_on_stdin_is_refused_as_in_a_file(capsys, monkeypatch, tmp_path):
    text = "- focal()\n- ghm()\n"
    path = tmp_path / "list.yaml"
    path.write_text(text, encoding="utf-8")
    _, _, from_file = run(capsys, "compile", str(path))
    code, out, from_stdin = run(capsys, "compile", "-", stdin=text, monkeypatch=monkeypatch)
    assert code == 1 and out == ""
    assert from_stdin.startswith("error: <stdin>:1:1: expected a loss, got a list")
    assert from_stdin == from_file.replace(str(path), "<stdin>")
