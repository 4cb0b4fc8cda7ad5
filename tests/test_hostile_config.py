"""Configs as a hostile or careless user writes them (issue 8, items 10 and 12-19).

Every bad input gets a ``LossDSLError`` that says what is wrong and where, never another exception
type; every limit holds on every path (the API, YAML text, files, OmegaConf, the command line); and
specs, once built, cannot be changed by whoever holds them.
"""

from __future__ import annotations

import copy
import pickle
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given
from strategies import specs

import lossdsl
from lossdsl import LossDSLError, LossSpec, Term
from lossdsl.catalogue.multitask import Tasks
from lossdsl.cli import main

MULTITASK = "uncertainty({seg: ce(ignore_index=255), depth: 0.5 * l1()})"


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def error_of(call, cls: type[LossDSLError] = LossDSLError) -> LossDSLError:
    with pytest.raises(cls) as info:
        call()
    return info.value


def quick_error(call, seconds: float = 1.0, cls: type[LossDSLError] = LossDSLError) -> LossDSLError:
    start = time.perf_counter()
    error = error_of(call, cls)
    elapsed = time.perf_counter() - start
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    return error


def write(folder: Path, text: str, name: str = "exp.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def position_of(text: str, token: str) -> tuple[int, int]:
    for number, line in enumerate(text.split("\n"), 1):
        if token in line:
            return number, line.index(token) + 1
    raise AssertionError(f"{token!r} not in {text!r}")


# -- 10. specs are deeply immutable -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda tasks: tasks.pop("seg"),
        lambda tasks: tasks.__delitem__("seg"),
        lambda tasks: tasks.__setitem__("extra", lossdsl.parse("ce()")),
        lambda tasks: tasks.update(extra=lossdsl.parse("ce()")),
        lambda tasks: tasks.setdefault("extra", lossdsl.parse("ce()")),
        lambda tasks: tasks.popitem(),
        lambda tasks: tasks.clear(),
        lambda tasks: tasks.__ior__({"extra": lossdsl.parse("ce()")}),
    ],
    ids=["pop", "del", "set", "update", "setdefault", "popitem", "clear", "ior"],
)
def test_the_tasks_of_a_parsed_spec_cannot_be_changed(change):
    tasks = lossdsl.parse(MULTITASK).terms[0].loss.tasks
    with pytest.raises(TypeError, match="a spec's tasks cannot be changed; build a new spec instead"):
        change(tasks)
    again = lossdsl.parse(MULTITASK)  # the cached spec every later parse returns
    assert list(again.terms[0].loss.tasks) == ["seg", "depth"]
    assert again.to_expr() == MULTITASK


def test_frozen_tasks_compare_print_and_serialise_as_a_plain_dict():
    spec = lossdsl.parse(MULTITASK)
    tasks = spec.terms[0].loss.tasks
    plain = {"seg": lossdsl.parse("ce(ignore_index=255)"), "depth": lossdsl.parse("0.5 * l1()")}
    assert tasks == plain
    assert repr(tasks) == repr(plain)
    assert spec.to_dict() == {
        "kind": "uncertainty",
        "tasks": {"seg": {"kind": "ce", "ignore_index": 255},
                  "depth": {"terms": [{"loss": {"kind": "l1"}, "weight": 0.5}]}},
    }
    assert spec.terms[0].loss.model_dump()["tasks"]["seg"] == plain["seg"].model_dump()
    assert lossdsl.load(spec.to_yaml()) == spec
    task_schema = lossdsl.json_schema()["definitions"]["node_uncertainty"]["properties"]["tasks"]
    assert task_schema == {"title": "Tasks", "type": "object", "minProperties": 1,
                           "additionalProperties": {"$ref": "#/definitions/Loss"}}


def test_specs_with_tasks_can_be_hashed_copied_and_pickled():
    spec = lossdsl.parse(MULTITASK)
    assert hash(spec) == hash(lossdsl.load(spec.to_dict()))
    assert {spec: 1}[lossdsl.parse(spec.to_expr())] == 1
    for copied in (copy.copy(spec), copy.deepcopy(spec), pickle.loads(pickle.dumps(spec))):
        assert copied == spec
        with pytest.raises(TypeError, match="cannot be changed"):
            copied.terms[0].loss.tasks.pop("seg")


def test_expanded_and_rebuilt_tasks_stay_frozen():
    spec = lossdsl.parse("dtp({cls: focal(gamma=2), box: l1()})")
    built = Tasks(tasks={"box": spec.terms[0].loss.tasks["box"]})
    for node in (spec.expand().terms[0].loss, lossdsl.load(spec.to_dict()).terms[0].loss, built):
        with pytest.raises(TypeError, match="cannot be changed"):
            node.tasks["extra"] = lossdsl.parse("ce()")
    assert spec.expand().terms[0].loss.tasks["cls"] == lossdsl.parse("focal(gamma=2)").expand()


def _containers(value, seen=()):
    """Every container reachable from a spec's fields (models are walked through their fields)."""
    if isinstance(value, (LossSpec, Term, lossdsl.LossNode)):
        for name in type(value).model_fields:
            yield from _containers(getattr(value, name))
    elif isinstance(value, (list, tuple, dict, set)):
        yield value
        for child in value.values() if isinstance(value, dict) else value:
            yield from _containers(child)


@given(specs(max_terms=3, depth=2))
def test_every_container_of_a_spec_is_immutable(spec):
    multitask = lossdsl.parse(f"dtp({{a: {spec.to_expr()}, b: l1()}})") if _composable(spec) else spec
    for candidate in (spec, multitask):
        hash(candidate)  # fails on any list, dict or set inside
        for container in _containers(candidate):
            assert isinstance(container, tuple) or type(container).__name__ == "FrozenDict", container


def _composable(spec: LossSpec) -> bool:
    return not any(term.loss.task_fields for term in spec.terms)
