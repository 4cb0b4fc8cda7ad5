"""Nothing from the environment is printed (issue 15, item 9; SPEC section 5).

``lossdsl check`` runs as a pre-commit hook on untrusted pull requests, whose CI logs anyone may
read. The command line never evaluates an interpolation that reaches outside the file
(``${oc.env:...}``, any resolver but OmegaConf's in-file ones): a value holding one is reported as
one that cannot be checked, named as written. The Python API resolves them, but no error message
shows what they gave. A fake secret in the environment stands for a CI token throughout.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from omegaconf import OmegaConf

import lossdsl
from lossdsl.cli import main
from lossdsl.resolvers import Masks, outside_spans

SECRET = "ghp_S3CRETlossdslTEST0123456789"
VARIABLE = "LOSSDSL_TEST_TOKEN"
WRITTEN = "${oc.env:LOSSDSL_TEST_TOKEN}"
NOT_CHECKED = f"{WRITTEN} is not resolved here: lossdsl's command line never reads the environment " \
    "or runs resolvers, so this value cannot be checked"

# The secret where a loss can hold it: a parameter, an expression string, a list, a define, and a
# key of the file that the loss refers to.
CONFIGS = {
    "parameter": f"loss:\n  kind: focal\n  gamma: {WRITTEN}\n",
    "expression": f"model:\n  loss: focal(gamma={WRITTEN})\n",
    "list": f"loss:\n  kind: ce\n  weight: [1, '{WRITTEN}']\n",
    "define": f"loss:\n  expr: a + ce()\n  define:\n    a: 'focal(gamma={WRITTEN})'\n",
    "through a key": f"train:\n  g: {WRITTEN}\nloss: focal(gamma=${{train.g}})\n",
}


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv(VARIABLE, SECRET)


@pytest.fixture
def calls():
    """A resolver of the user's own, counting its calls (registered for this test only)."""
    counted: list[str] = []

    def give_secret(name: str) -> str:
        counted.append(name)
        return SECRET

    OmegaConf.register_new_resolver("lossdsl_test_vault", give_secret)
    yield counted
    OmegaConf.clear_resolver("lossdsl_test_vault")


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def write(tmp_path, text: str, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def message_of(call) -> str:
    with pytest.raises(lossdsl.LossDSLError) as info:
        call()
    return "\n".join([str(info.value), repr(info.value), info.value.reason, info.value.hint or ""])


# -- the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_check_names_the_interpolation_and_never_prints_its_value(tmp_path, capsys, case):
    path = write(tmp_path, CONFIGS[case])
    code, text = run(capsys, "check", str(path))
    assert code == 1
    assert SECRET not in text
    problem, = text.splitlines()
    assert problem.startswith(f"{path}:") and NOT_CHECKED in problem
    code, text = run(capsys, "check", "--format", "json", str(path))
    assert code == 1 and SECRET not in text
    (entry,) = json.loads(text)["files"]
    assert [p["reason"] for p in entry["problems"]] == [NOT_CHECKED]
    assert entry["problems"][0]["hint"] == ("write the value in the file, or load the config in "
                                            "Python: lossdsl.load resolves it, and its messages "
                                            "never show the value")


def test_check_points_at_the_interpolation_inside_an_expression(tmp_path, capsys):
    path = write(tmp_path, CONFIGS["expression"])
    _, text = run(capsys, "check", str(path))
    assert text.startswith(f"{path}:2:21: {NOT_CHECKED}")  # the $ of ${oc.env:...}


@pytest.mark.parametrize("command", [("compile",), ("compile", "--format", "json"),
                                     ("diff", "focal()"), ("bench",), ("plot", "--out", "x.png")])
def test_other_commands_refuse_the_value_without_printing_it(tmp_path, capsys, command):
    path = write(tmp_path, CONFIGS["expression"])
    name, *options = command
    options = [str(tmp_path / option) if option.endswith(".png") else option for option in options]
    code, text = run(capsys, name, str(path), *options)
    assert not (tmp_path / "x.png").exists()
    assert code == 1 and SECRET not in text
    assert text.startswith(f"error: {path}:2:21: {NOT_CHECKED}")


def test_check_runs_no_resolver_of_the_user(tmp_path, capsys, calls):
    path = write(tmp_path, "loss: focal(gamma=${lossdsl_test_vault:token})\n")
    code, text = run(capsys, "check", str(path))
    assert code == 1 and calls == [] and SECRET not in text
    assert "${lossdsl_test_vault:token} is not resolved here" in text


def test_check_still_resolves_keys_of_the_file_and_reports_other_problems(tmp_path, capsys):
    text = textwrap.dedent(f"""\
        g: 3
        loss:
          terms:
            - focal(gamma=${{g}}, alpha=2)
            - 'ce(smoothing={WRITTEN})'
    """)
    path = write(tmp_path, text)
    code, out = run(capsys, "check", str(path))
    assert code == 1 and SECRET not in out
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:5:") and NOT_CHECKED in lines[0]
    assert lines[1].startswith(f"{path}:4:") and "alpha=2 is out of range" in lines[1]


def test_in_file_resolvers_and_escaped_interpolations_are_no_outside_reach(tmp_path, capsys):
    text = "g: 3\nloss: focal(gamma=${oc.select:g,2})\nnote: \\${oc.env:HOME}\n"
    path = write(tmp_path, text)
    assert run(capsys, "check", str(path)) == (0, "1 file OK\n")


# -- the Python API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_api_errors_name_the_interpolation_instead_of_its_value(tmp_path, case):
    path = write(tmp_path, CONFIGS[case])
    config = OmegaConf.load(path)
    calls = {
        "load(path)": lambda: lossdsl.load(path),
        "load(text)": lambda: lossdsl.load(CONFIGS[case]),
        "load(config)": lambda: lossdsl.load(config),
        "compile(path)": lambda: lossdsl.compile(str(path)),
        "argtype": lambda: lossdsl.argtype(str(path)),
    }
    for entry, call in calls.items():
        if entry == "argtype":
            import argparse

            with pytest.raises(argparse.ArgumentTypeError) as info:
                call()
            message = str(info.value)
        else:
            message = message_of(call)
        assert SECRET not in message, entry
        assert WRITTEN in message, entry


def test_api_error_in_a_resolved_expression_keeps_its_caret_on_the_interpolation(monkeypatch):
    config = OmegaConf.create({"model": {"loss": f"focal(gamma={WRITTEN}, alpha=0.5)"}})
    monkeypatch.setenv(VARIABLE, "-1")
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(config, key="model.loss")
    error = info.value
    assert error.reason == f"focal(): gamma={WRITTEN} is out of range; gamma must be >= 0"
    assert error.excerpt() == f"    focal(gamma={WRITTEN}, alpha=0.5)\n                ^"
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(config.model)  # the same loss reached as a node of the config
    assert "-1" not in info.value.reason and WRITTEN in info.value.reason


def test_the_api_resolves_what_the_command_line_leaves(tmp_path, monkeypatch, calls):
    monkeypatch.setenv(VARIABLE, "3")
    path = write(tmp_path, CONFIGS["expression"])
    assert lossdsl.load(path) == lossdsl.parse("focal(gamma=3)")
    assert lossdsl.compile(OmegaConf.load(path).model.loss).spec == lossdsl.parse("focal(gamma=3)")
    custom = OmegaConf.create({"loss": {"kind": "focal", "gamma": "${lossdsl_test_vault:x}"}})
    assert SECRET not in message_of(lambda: lossdsl.load(custom)) and calls == ["x"]


def test_a_resolver_that_fails_is_named_without_its_message():
    def fail(value: str) -> str:
        raise ValueError(f"cannot use {value}")

    OmegaConf.register_new_resolver("lossdsl_test_fails", fail)
    try:
        config = OmegaConf.create({"loss": {"kind": "focal", "gamma": f"${{lossdsl_test_fails:{WRITTEN}}}"}})
        with pytest.raises(lossdsl.LossConfigError) as info:
            lossdsl.load(config)
    finally:
        OmegaConf.clear_resolver("lossdsl_test_fails")
    assert SECRET not in str(info.value)
    assert info.value.reason == ("cannot resolve an interpolation: a resolver raised ValueError (its "
                                 "message is not shown: it may hold a value read from outside the file)")


# -- how interpolations reaching outside are told apart ------------------------------------------


@pytest.mark.parametrize("text, spans", [
    ("${a.b} and ${.c}", []),
    ("x${oc.env:A}y", ["${oc.env:A}"]),
    ("\\${oc.env:A}", []),  # OmegaConf's escape: a literal
    ("\\\\${oc.env:A}", ["${oc.env:A}"]),  # an escaped backslash, then a live interpolation
    ("${oc.select:a,${oc.env:B}}", ["${oc.select:a,${oc.env:B}}"]),  # in-file, but holding one
    ("${a.${oc.env:B}}", ["${a.${oc.env:B}}"]),
    ("${vault:'a}b', c} ${oc.decode:'[1, 2]'}", ["${vault:'a}b', c}"]),
    ("${oc.create:{a: 1}}", []),
])
def test_interpolations_reaching_outside_are_found(text, spans):
    assert [text[start:end] for start, end in outside_spans(text)] == spans


def test_masking_leaves_them_as_written_and_resolves_the_rest():
    data = {"g": 3, "t": "${oc.env:A}", "loss": "focal(gamma=${g}, alpha=${t}) ${a.${oc.env:B}} \\${x}"}
    masks = Masks()
    resolved = masks.unmask(OmegaConf.to_container(OmegaConf.create(masks.mask(data)), resolve=True))
    assert resolved["loss"] == "focal(gamma=3, alpha=${oc.env:A}) ${a.${oc.env:B}} ${x}"


def test_interpolations_nested_past_any_recursion_limit_are_one_problem(tmp_path, capsys):
    path = write(tmp_path, 'loss: "focal(gamma=' + "${" * 20_000 + '})"\n')
    code, text = run(capsys, "check", str(path))
    assert code == 1 and "Traceback" not in text
    assert text == f"{path}:1:20: {'${' * 38}$... is not resolved here: lossdsl's command line never " \
        "reads the environment or runs resolvers, so this value cannot be checked (write the value in " \
        "the file, or load the config in Python: lossdsl.load resolves it, and its messages never " \
        "show the value)\n"
