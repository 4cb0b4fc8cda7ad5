"""Configs as a hostile or careless user writes them (issue 8, items 10 and 12-19).

Every bad input gets a ``LossDSLError`` that says what is wrong and where, never another exception
type; every limit holds on every path (the API, YAML text, files, OmegaConf, the command line); and
specs, once built, cannot be changed by whoever holds them.
"""

from __future__ import annotations

import copy
import os
import pickle
import resource
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import RUNAWAY_S, caret_target
from conftest import run_cli as run_main
from hypothesis import given
from omegaconf import OmegaConf
from strategies import specs

import lossdsl
from lossdsl import LossConfigError, LossDSLError, LossSpec, LossSpecError, Term
from lossdsl.catalogue.likelihoods import CE
from lossdsl.catalogue.multitask import Tasks
from lossdsl.catalogue.regression import L1, MSE
from lossdsl.interpolation import MAX_EVALUATIONS
from lossdsl.validate import MAX_EXPANDED_NODES, MAX_TERMS
from lossdsl.yaml_io import MAX_YAML_CHARS, MAX_YAML_VALUES

MULTITASK = "uncertainty({seg: ce(ignore_index=255), depth: 0.5 * l1()})"


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def error_of(call, cls: type[LossDSLError] = LossDSLError) -> LossDSLError:
    with pytest.raises(cls) as info:
        call()
    return info.value


def quick_error(call, cls: type[LossDSLError] = LossDSLError) -> LossDSLError:
    """The error ``call`` raises, refused rather than expanded (see conftest.RUNAWAY_S)."""
    start = time.perf_counter()
    error = error_of(call, cls)
    elapsed = time.perf_counter() - start
    assert elapsed < RUNAWAY_S, f"took {elapsed:.2f} s: the input was expanded, not refused"
    return error


def write(folder: Path, text: str, name: str = "exp.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


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
    described = {key: value for key, value in task_schema.items() if "escription" not in key}
    assert described == {"title": "Tasks", "type": "object", "minProperties": 1,
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


# -- 13. YAML scalars that cannot be built, wrong argument types, OmegaConf interpolations ----------


@pytest.mark.parametrize(
    "text, token, reason",
    [
        ("kind: ce\nignore_index: !!int abc\n", "!!int", "'abc' is not an integer (tag !!int)"),
        ("kind: ce\nsmoothing: !!float abc\n", "!!float", "'abc' is not a number (tag !!float)"),
        ("kind: focal\nalpha: !!bool maybe\n", "!!bool",
         "'maybe' is not a boolean (true/false, yes/no, on/off) (tag !!bool)"),
        ("model:\n  date: !!timestamp x\n  loss: ce()\n", "!!timestamp",
         "'x' is not a date (YYYY-MM-DD) or a timestamp (YYYY-MM-DD hh:mm:ss) (tag !!timestamp)"),
        ("model:\n  date: 2001-13-45\n  loss: ce()\n", "2001",
         "YAML reads '2001-13-45' as a date, but it is not a valid one; quote it to keep it a string"),
        ("kind: ce\nignore_index: !!int ''\n", "!!int", "'' is not an integer (tag !!int)"),
    ],
    ids=["int", "float", "bool", "timestamp", "implicit-date", "empty-int"],
)
def test_scalars_yaml_cannot_build_are_errors_where_they_are(text, token, reason):
    error = error_of(lambda: lossdsl.load(text, key="model.loss" if "model" in text else None),
                     LossConfigError)
    assert error.reason == reason
    assert (error.line, error.column) == position_of(text, token)
    assert caret_target(error) == token[0]


def test_an_integer_too_long_for_python_is_an_error_stating_the_limit():
    text = "kind: ce\nignore_index: " + "9" * 5000 + "\n"
    error = error_of(lambda: lossdsl.load(text), LossConfigError)
    assert error.reason == (f"the integer '{'9' * 37}...' has 5000 digits; "
                            f"the limit is {sys.get_int_max_str_digits()}")
    assert (error.line, error.column) == (2, 15)


@pytest.mark.parametrize("key", [5, 1.5, ["model", "loss"], b"model.loss"])
def test_load_refuses_a_key_that_is_not_a_string(key):
    error = error_of(lambda: lossdsl.load("model: {loss: ce()}", key=key), LossConfigError)
    assert error.reason == (
        f"key must be a dotted key string such as 'model.loss', or None; got {type(key).__name__}"
    )


@pytest.mark.parametrize("value", [["ce()"], {"kind": "ce"}, {"ce()"}, b"ce()", None, 3])
def test_parse_refuses_what_is_not_a_string_before_caching(value):
    error = error_of(lambda: lossdsl.parse(value), LossConfigError)
    assert error.reason == f"parse() expects an expression string, got {type(value).__name__}"


def test_parse_keeps_its_cache_controls():
    lossdsl.parse.cache_clear()
    lossdsl.parse("ce()")
    lossdsl.parse("ce()")
    assert lossdsl.parse.cache_info().hits >= 1


OMEGACONF_ERRORS = {
    "missing key": ({"loss": {"kind": "focal", "gamma": "${nope}"}},
                    "cannot resolve an interpolation: Interpolation key 'nope' not found",
                    "an interpolation names a key by its full dotted path"),
    "cycle": ({"a": "${b}", "b": "${a}", "loss": {"kind": "focal", "gamma": "${a}"}},
              "cannot resolve an interpolation: Recursive interpolation detected",
              "refers back to itself"),
    "unset env": ({"loss": {"kind": "focal", "gamma": "${oc.env:LOSSDSL_TEST_UNSET_VARIABLE}"}},
                  "cannot resolve an interpolation: Environment variable "
                  "'LOSSDSL_TEST_UNSET_VARIABLE' not found",
                  "give a default: ${oc.env:NAME,default}"),
}


@pytest.mark.parametrize("case", sorted(OMEGACONF_ERRORS))
@pytest.mark.parametrize("entry", ["load", "compile"])
def test_omegaconf_interpolation_errors_are_config_errors_naming_the_key(case, entry):
    data, reason, hint = OMEGACONF_ERRORS[case]
    config = OmegaConf.create(data)
    call = (lambda: lossdsl.load(config, key="loss")) if entry == "load" else (
        lambda: lossdsl.compile(config.loss))
    error = error_of(call, LossConfigError)
    assert error.reason == reason
    assert hint in error.hint
    assert error.path in ("loss.gamma", "a", "b")


def test_an_interpolation_cycle_through_containers_is_an_error():
    config = OmegaConf.create({"a": {"b": "${c}"}, "c": {"d": "${a}"}, "loss": "ce()"})
    error = error_of(lambda: lossdsl.compile({"x": config.a, "kind": "ce"}), LossConfigError)
    assert error.reason == "an interpolation here refers to a mapping or list that holds it"


def test_load_resolves_only_the_loss_of_an_omegaconf_config():
    # ${now:...} is a resolver that only Hydra registers; the loss does not use it.
    config = OmegaConf.create({"run": {"dir": "${now:%Y-%m-%d}"}, "g": 3,
                               "model": {"loss": "focal(gamma=${g})"}})
    assert lossdsl.load(config, key="model.loss") == lossdsl.parse("focal(gamma=3)")


def test_a_missing_key_of_an_omegaconf_config_says_what_is_there_without_resolving_it():
    config = OmegaConf.create({"run": "${now:%Y}", "model": {"los": "ce()"}})
    error = error_of(lambda: lossdsl.load(config, key="model.loss"), LossConfigError)
    assert error.reason == "key 'model.loss' not found: no 'loss' at model"
    assert error.hint.startswith("did you mean 'los'?")


def test_a_mandatory_loss_left_unset_says_so():
    config = OmegaConf.create({"model": {"loss": "???"}})
    error = error_of(lambda: lossdsl.load(config, key="model.loss"), LossConfigError)
    assert error.reason == "model.loss is ???, a mandatory value that was never set"


@pytest.mark.parametrize("case", sorted(OMEGACONF_ERRORS))
def test_cli_reports_interpolation_errors_at_their_line(tmp_path, capsys, case):
    data, reason, hint = OMEGACONF_ERRORS[case]
    if case == "unset env":  # the command line never reads the environment (issue 15, item 9)
        reason = "${oc.env:LOSSDSL_TEST_UNSET_VARIABLE} is not resolved here"
        hint = "write the value in the file, or load the config in Python"
    text = yaml.safe_dump(data, sort_keys=False)
    path = write(tmp_path, text)
    code, out, _ = run_main(capsys, "check", str(path), "--key", "loss")
    assert code == 1
    line, column = position_of(text, "gamma")
    assert out.startswith(f"{path}:{line}:")
    assert reason in out and hint in out


# -- 14. YAML merge keys ------------------------------------------------------------------------------


def test_a_merge_key_with_an_override_lets_the_override_win():
    text = yaml_text("""
        base: &base {kind: focal, gamma: 2, alpha: 0.5}
        loss:
          <<: *base
          gamma: 3
    """)
    assert lossdsl.load(text, key="loss") == lossdsl.parse("focal(gamma=3, alpha=0.5)")
    assert yaml.safe_load(text)["loss"]["gamma"] == 3  # what PyYAML itself builds


def test_with_a_list_of_merges_the_first_listed_mapping_wins():
    # YAML's merge rule: keys of earlier mappings override the same keys of later ones.
    text = yaml_text("""
        soft: &soft {kind: focal, head: softmax, gamma: 1}
        strong: &strong {kind: focal, gamma: 5, alpha: 0.5}
        loss:
          <<: [*strong, *soft]
    """)
    assert lossdsl.load(text, key="loss") == lossdsl.parse("focal(head=softmax, gamma=5, alpha=0.5)")


def test_merged_tasks_keep_their_order_and_an_override_keeps_its_place():
    text = yaml_text("""
        shared: &shared {seg: ce(), depth: l1()}
        loss:
          tasks:
            <<: *shared
            seg: focal(head=softmax)
            normals: mse()
    """)
    tasks = lossdsl.load(text, key="loss").terms[0].loss.tasks
    assert list(tasks) == ["seg", "depth", "normals"]
    assert tasks["seg"] == lossdsl.parse("focal(head=softmax)")


def test_a_key_written_twice_beside_a_merge_is_still_a_duplicate():
    text = "base: &base {kind: focal}\nloss:\n  <<: *base\n  gamma: 3\n  gamma: 4\n"
    error = error_of(lambda: lossdsl.load(text, key="loss"), LossConfigError)
    assert error.reason == "duplicate key 'gamma'"
    assert (error.line, error.column) == (5, 3)


def test_an_error_in_a_merged_value_points_at_the_anchor_where_it_is_written():
    text = "base: &base {kind: focal, gamma: -2}\nloss:\n  <<: *base\n  alpha: 0.5\n"
    error = error_of(lambda: lossdsl.load(text, key="loss"), LossSpecError)
    assert "gamma=-2 is out of range" in error.reason
    assert (error.line, error.column) == position_of(text, "-2")


def test_merging_something_that_is_not_a_mapping_is_an_error_where_it_is():
    text = "loss:\n  <<: 3\n  kind: ce\n"
    error = error_of(lambda: lossdsl.load(text, key="loss"), LossConfigError)
    assert error.reason == "<< merges a mapping or a list of mappings into this one"
    assert (error.line, error.column) == (2, 7)


def test_merging_the_same_anchor_again_and_again_does_not_grow_the_mapping():
    lines = ["a0: &a0 {kind: ce, smoothing: 0.1}"]
    lines += [f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}" for i in range(1, 60)]
    start = time.perf_counter()
    assert lossdsl.load("\n".join(lines), key="a59") == lossdsl.parse("ce(smoothing=0.1)")
    assert time.perf_counter() - start < RUNAWAY_S


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
    error = quick_error(lambda: lossdsl.load(text), cls=LossConfigError)
    assert error.reason == f"the define: names expand this loss to more than {MAX_TERMS} terms, the limit"
    assert "2 * a, not a + a" in error.hint
    assert (error.line, error.column) == (1, 7)


def test_defines_nested_deep_in_calls_are_refused_by_their_node_count():
    deep = "poly(" * 6 + "ce()" + ")" * 6
    text = doubling_defines(14).replace("a0: ce()", f"a0: {deep}")  # 8192 terms, 7 nodes each
    error = quick_error(lambda: lossdsl.load(text), cls=LossConfigError)
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


# -- 17. the YAML value limit holds when the CLI resolves interpolations ------------------------------


def alias_bomb(levels: int) -> str:
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_cli_keeps_the_alias_limit_for_a_file_with_interpolations(tmp_path, capsys):
    text = "g: 3\n" + alias_bomb(6) + "model:\n  loss: focal(gamma=${g})\n"  # 10^6 values
    path = write(tmp_path, text)
    start = time.perf_counter()
    code, out, _ = run_main(capsys, "check", str(path), "--key", "model.loss")
    assert time.perf_counter() - start < RUNAWAY_S
    assert code == 1
    assert f"YAML expands to more than {MAX_YAML_VALUES} values" in out


def test_interpolations_that_double_a_list_at_each_level_are_bounded(tmp_path, capsys):
    lines = ["a0: [1, 2]"] + [f'a{i}: ["${{a{i - 1}}}", "${{a{i - 1}}}"]' for i in range(1, 40)]
    text = "\n".join(lines) + '\nloss: {kind: ce, weight: "${a39}"}\n'
    path = write(tmp_path, text)
    start = time.perf_counter()
    code, out, _ = run_main(capsys, "check", str(path), "--key", "loss")
    assert time.perf_counter() - start < RUNAWAY_S
    assert code == 1
    assert f"configuration expands to more than {MAX_YAML_VALUES} values" in out
    config = OmegaConf.create(yaml.safe_load(text))
    error = quick_error(lambda: lossdsl.load(config, key="loss"), cls=LossConfigError)
    assert error.reason.startswith(f"configuration expands to more than {MAX_YAML_VALUES} values")


@pytest.mark.parametrize("relative", [False, True])
def test_interpolations_that_double_a_string_at_each_level_are_refused_before_omegaconf(
    tmp_path, capsys, relative
):
    dot = "." if relative else ""  # ${.s1} names a sibling, as ${m.s1} does from the top
    lines = ["m:", "  s0: ''"] + [f'  s{i}: "${{{dot or "m."}s{i - 1}}}${{{dot or "m."}s{i - 1}}}"'
                                   for i in range(1, 30)]
    text = "\n".join(lines) + f'\n  loss: "focal(gamma=${{{dot or "m."}s29}})"\n'
    path = write(tmp_path, text)
    start = time.perf_counter()
    code, out, _ = run_main(capsys, "check", str(path), "--key", "m.loss")
    assert time.perf_counter() - start < RUNAWAY_S
    assert code == 1
    assert out.startswith(f"{path}:32:9: the interpolations of this loss take more than "
                          f"{MAX_EVALUATIONS} evaluations, the limit")


def test_many_interpolations_of_one_large_value_count_together(tmp_path, capsys):
    lines = ["big: [" + ", ".join(["1"] * 10_000) + "]", "loss:", "  kind: ce"]
    lines += [f"  p{i}: ${{big}}" for i in range(11)]  # each alone is within the limit
    path = write(tmp_path, "\n".join(lines) + "\n")
    code, out, _ = run_main(capsys, "check", str(path), "--key", "loss")
    assert code == 1
    # The tenth brings the count past 100,000: line 13 (p9).
    assert out.startswith(f"{path}:13:7: configuration expands to more than {MAX_YAML_VALUES} values")


def test_cli_resolves_only_the_loss_and_keeps_locations_elsewhere(tmp_path, capsys):
    text = yaml_text("""
        hydra:
          run:
            dir: outputs/${now:%Y-%m-%d}
        g: 2
        model:
          loss:
            expr: a + b
            define:
              a: focal(gamma=${g})
              b: ce(smoothing=3)
    """)
    path = write(tmp_path, text)
    code, out, _ = run_main(capsys, "check", str(path))
    assert code == 1
    line, column = position_of(text, "3)")  # exactly: this define has no interpolation
    assert out.startswith(f"{path}:{line}:{column}: ce(): smoothing=3 is out of range")


# -- 18. files are read only up to the limit ----------------------------------------------------------


@contextmanager
def memory_capped(extra_bytes: int = 2 << 30):
    """Cap this process's address space, so that reading a file whole fails fast instead of
    exhausting the machine's memory (the behaviour this section guards against)."""
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + extra_bytes if hard == resource.RLIM_INFINITY else min(hard, used + extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


needs_dev_zero = pytest.mark.skipif(
    not (Path("/dev/zero").exists() and Path("/proc/self/statm").exists()), reason="Linux devices"
)
TOO_LONG = f"the file is longer than {MAX_YAML_CHARS} characters, the limit for a config file"


@needs_dev_zero
def test_loading_an_endless_file_stops_at_the_limit():
    with memory_capped():
        error = quick_error(lambda: lossdsl.load(Path("/dev/zero")), cls=LossConfigError)
    assert error.reason == TOO_LONG
    assert str(error).startswith(f"/dev/zero: {TOO_LONG}")


@needs_dev_zero
@pytest.mark.parametrize("command", ["check", "compile"])
def test_the_cli_stops_reading_an_endless_file_at_the_limit(capsys, command):
    with memory_capped():
        code, out, err = run_main(capsys, command, "/dev/zero")
    assert code == 1
    assert TOO_LONG in (out if command == "check" else err)


def test_a_file_one_character_over_the_limit_is_refused_and_one_at_it_is_read(tmp_path):
    body = "ce()\n#"
    at_limit = write(tmp_path, body + "x" * (MAX_YAML_CHARS - len(body)), "at.yaml")
    assert lossdsl.load(at_limit) == lossdsl.parse("ce()")
    over = write(tmp_path, body + "x" * (MAX_YAML_CHARS - len(body) + 1), "over.yaml")
    assert error_of(lambda: lossdsl.load(over), LossConfigError).reason == TOO_LONG


# -- 19. the CLI reads Hydra files whose loss is an interpolated expression ---------------------------


HYDRA_EXPRESSION = "g: 3\nmodel:\n  name: tagger\n  loss: focal(gamma=${g}, alpha=0.5)\n"


@pytest.mark.parametrize("key", [None, "model.loss"])
def test_cli_checks_and_compiles_an_interpolated_expression(tmp_path, capsys, key):
    path = write(tmp_path, HYDRA_EXPRESSION)
    options = ["--key", key] if key else []
    assert run_main(capsys, "check", str(path), *options) == (0, "1 file OK\n", "")
    code, out, err = run_main(capsys, "compile", str(path), *options, "--format", "expr")
    assert (code, out, err) == (0, "focal(gamma=3, alpha=0.5)\n", "")


def test_an_error_in_an_interpolated_expression_points_at_its_string(tmp_path, capsys):
    text = HYDRA_EXPRESSION.replace("g: 3", "g: -3")
    path = write(tmp_path, text)
    code, out, _ = run_main(capsys, "check", str(path))
    assert code == 1
    line, column = position_of(text, "focal")
    assert out == f"{path}:{line}:{column}: focal(): gamma=-3 is out of range; gamma must be >= 0\n"


def test_cli_resolves_a_loss_that_is_one_interpolation_of_a_mapping(tmp_path, capsys):
    text = "losses:\n  sharp: {kind: focal, gamma: 4}\nmodel:\n  loss: ${losses.sharp}\n"
    path = write(tmp_path, text)
    code, out, _ = run_main(capsys, "compile", str(path), "--format", "expr")
    assert (code, out) == (0, "focal(gamma=4)\n")
