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
from conftest import caret_target
from hypothesis import given
from strategies import specs

import lossdsl
from lossdsl import LossConfigError, LossDSLError, LossSpec, LossSpecError, Term
from lossdsl.catalogue.likelihoods import CE
from lossdsl.catalogue.multitask import Tasks
from lossdsl.catalogue.regression import L1, MSE
from lossdsl.cli import main
from lossdsl.validate import MAX_EXPANDED_NODES, MAX_TERMS

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


# -- 12. errors inside a task name the task -----------------------------------------------------------


def test_an_error_inside_a_task_of_an_expression_names_the_task_and_keeps_its_caret():
    text = "uncertainty({seg: ce(), depth: l1(gama=1)})"
    error = error_of(lambda: lossdsl.parse(text), LossSpecError)
    assert error.reason == "task 'depth': l1() has no parameter 'gama'"
    assert (error.line, error.column) == (1, text.index("gama") + 1)
    assert caret_target(error) == "g"


def test_an_error_inside_a_task_of_a_yaml_file_names_the_task_and_its_line(tmp_path):
    text = yaml_text("""
        model:
          loss:
            kind: dtp
            tasks:
              seg: ce()
              depth:
                kind: smooth_l1
                beta: -1
    """)
    path = write(tmp_path, text)
    error = error_of(lambda: lossdsl.load(path, key="model.loss"), LossSpecError)
    assert error.reason.startswith("task 'depth': smooth_l1(): beta=-1 is out of range")
    assert (error.filename, (error.line, error.column)) == (str(path), position_of(text, "-1"))


def test_a_rule_of_the_sum_broken_inside_a_task_names_the_task():
    text = "{seg: ce(), depth: l1(reduction=none) + mse()}"
    error = error_of(lambda: lossdsl.parse(text), LossSpecError)
    assert error.reason.startswith("task 'depth': reduction=none cannot be added to reduced terms")
    assert caret_target(error) == "m"  # the mse() that is reduced


def test_an_error_in_an_expression_string_of_a_task_mapping_names_the_task():
    error = error_of(lambda: lossdsl.load({"tasks": {"seg": "ce()", "box": "giou(eps=-1) +"}}))
    assert error.reason.startswith("task 'box': ")
    assert error.column == len("giou(eps=-1) +") + 1


# -- 15. composition rules hold for specs built in Python ---------------------------------------------


def _rule_message(text: str) -> str:
    return error_of(lambda: lossdsl.parse(text), LossSpecError).reason


@pytest.mark.parametrize(
    "terms, text, index",
    [
        (lambda: (Term(loss=lossdsl.parse(MULTITASK).terms[0].loss), Term(loss=CE())),
         f"{MULTITASK} + ce()", 0),
        (lambda: (Term(loss=lossdsl.parse(MULTITASK).terms[0].loss, weight=2.0),),
         f"2 * {MULTITASK}", 0),
        (lambda: (Term(loss=CE(), reduction="none"), Term(loss=L1())),
         "ce(reduction=none) + l1()", 1),
        (lambda: (Term(loss=MSE(), reduction="pos_mean"),), "mse(reduction=pos_mean)", 0),
    ],
    ids=["multitask-beside-a-term", "multitask-scaled", "mixed-none", "pos-mean-regression"],
)
def test_a_spec_built_in_python_obeys_the_rules_of_the_sum(terms, text, index):
    with pytest.raises(LossSpecError) as info:
        LossSpec(terms=terms())
    assert info.value.reason == _rule_message(text)
    assert info.value.path == f"terms[{index}]"
    assert info.value.hint


def test_a_valid_spec_built_in_python_equals_the_parsed_one():
    built = LossSpec(terms=(Term(loss=CE(), reduction="none"), Term(loss=L1(), weight=0.5, reduction="none")))
    assert built == lossdsl.parse("ce(reduction=none) + 0.5 * l1(reduction=none)")


def test_tasks_built_in_python_do_not_nest():
    inner = lossdsl.parse("{a: ce()}")
    with pytest.raises(ValueError, match="task 'outer' is itself a multi-task loss; tasks do not nest"):
        Tasks(tasks={"outer": inner})


# -- 16. define: expansion is bounded -----------------------------------------------------------------


def doubling_defines(levels: int, expr: str | None = None) -> str:
    lines = [f"expr: {expr or f'a{levels - 1}'}", "define:", "  a0: ce()"]
    lines += [f"  a{i}: a{i - 1} + a{i - 1}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("expr", [None, "poly(a18)", '"{x: a18, y: ce()}"', "0.5 * a17 + a18"])
def test_defines_that_double_at_each_level_are_refused_at_once(expr):
    text = doubling_defines(19, expr)
    assert len(text.splitlines()) == 21 and len(text) < 400  # the 19 lines, 271 bytes
    error = quick_error(lambda: lossdsl.load(text), seconds=1.0, cls=LossConfigError)
    assert error.reason == f"the define: names expand this loss to more than {MAX_TERMS} terms, the limit"
    assert "2 * a, not a + a" in error.hint
    assert (error.line, error.column) == (1, 7)


def test_defines_nested_deep_in_calls_are_refused_by_their_node_count():
    deep = "poly(" * 6 + "ce()" + ")" * 6
    text = doubling_defines(14).replace("a0: ce()", f"a0: {deep}")  # 8192 terms, 7 nodes each
    error = quick_error(lambda: lossdsl.load(text), seconds=1.0, cls=LossConfigError)
    assert error.reason == (f"the define: names expand this loss to more than {MAX_EXPANDED_NODES} "
                            "loss nodes, the limit")


def test_the_number_of_terms_is_bounded_on_every_path(monkeypatch):
    monkeypatch.setattr(lossdsl.validate, "MAX_TERMS", 10)
    error = error_of(lambda: lossdsl.load({"terms": ["ce()"] * 11}), LossConfigError)
    assert error.reason == "the loss has more than 10 terms, the limit"
    assert error.path == "terms[10]"
    assert len(lossdsl.load({"terms": ["ce()"] * 10}).terms) == 10


def test_a_define_used_thousands_of_times_and_long_written_out_sums_still_load():
    used = "+".join(["a"] * 3000)
    assert len(lossdsl.load({"expr": used, "define": {"a": "focal(gamma=2)"}}).terms) == 3000
    assert len(lossdsl.load(doubling_defines(12)).terms) == 2048
    written_out = "ce()+" * 3999 + "ce()"  # as many terms as the expression length limit allows
    assert len(lossdsl.parse(written_out).terms) == 4000
