"""The commands of the ``lossdsl`` CLI: compile (tree, expr, yaml, json, --expand, --key), check,
schema, list, explain, plot, --help, exit codes, messages without traceback or colour.

A few invocations run as real subprocesses, all started at once by one fixture (each start imports
torch, seconds apiece); everything else calls ``lossdsl.cli.main`` in this process.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import run_cli as run_main
from hypothesis import given, settings
from strategies import specs

import lossdsl
import lossdsl.schema
from lossdsl.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))  # each holds its loss at model.loss
KEY = "model.loss"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ESCAPE = "\x1b["
# FILE:LINE:COLUMN: message, as compilers and linters print them.
PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<column>\d+): (?P<message>\S.*)$")

FANCY = "poly(focal(gamma=2), eps=1) + 0.5 * ghm(bins=30, momentum=0.75)"
MULTITASK = "uncertainty({seg: ce(ignore_index=255), depth: 0.5 * smooth_l1(beta=0.5) + l1()})"

# Files with one problem each, and where the problem is: (text, the token the position points at).
BAD_FILES = {
    "typo.yaml": (
        "model:\n  name: tagger\n  loss:\n    expr: 0.5 * focal(gama=2) + ce()\n",
        "gama",
    ),
    "range.yaml": ("model:\n  loss:\n    kind: ce\n    smoothing: 3\n", "3"),
    "kind.yaml": ("model:\n  loss:\n    terms:\n      - kind: cee\n", "cee"),
    "define.yaml": (
        "model:\n  loss:\n    expr: a + b\n    define:\n      a: ce()\n      b: asl(gamma_neg=-1)\n",
        "-1",
    ),
}


def position_of(text: str, token: str) -> tuple[int, int]:
    """1-based line and column of the first occurrence of ``token``."""
    for number, line in enumerate(text.split("\n"), 1):
        if token in line:
            return number, line.index(token) + 1
    raise AssertionError(f"{token!r} not in {text!r}")


def write_bad_files(folder: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    written = {}
    for name, (text, token) in BAD_FILES.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written[name] = (path, position_of(text, token))
    return written


def console_command() -> list[str]:
    beside = Path(sys.executable).parent / "lossdsl"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("lossdsl")
    return [found] if found else [sys.executable, "-m", "lossdsl"]


# -- the subprocesses ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli_commands")
    write_bad_files(folder)
    return folder


def invocations(work: Path) -> dict[str, list[str]]:
    examples = [str(path) for path in EXAMPLE_FILES]
    return {
        "tree": ["compile", str(EXAMPLES / "tagging.yaml")],  # no --key: finds model.loss
        "expr": ["compile", str(EXAMPLES / "multitask.yaml"), "--format", "expr"],
        "yaml": ["compile", str(EXAMPLES / "segmentation.yaml"), "--key", KEY, "--format", "yaml"],
        "json": ["compile", FANCY, "--expand", "--format", "json"],
        "check_ok": ["check", *examples],
        "check_bad": ["check", examples[0], *(str(work / name) for name in BAD_FILES)],
        "schema": ["schema", "--key", KEY],
        "list": ["list"],
        "explain": ["explain", "focal"],
        "explain_unknown": ["explain", "fcal"],
        "plot": ["plot", "focal(gamma=2)", "asl()", "--out", str(work / "curves.png")],
        "sweep": ["plot", "asl()", "--sweep", "gamma_neg=0:4:5", "--out", str(work / "sweep.png")],
        "help": ["plot", "--help"],
    }


@pytest.fixture(scope="module")
def ran(work) -> dict[str, subprocess.CompletedProcess]:
    # NO_COLOR unset, TERM a colour terminal: only the pipe (not a tty) may keep colour out.
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm-256color"
    # The console script imports this checkout, whichever checkout the environment was installed from.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    running = {
        name: subprocess.Popen(
            [*console_command(), *args], cwd=work, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, args in invocations(work).items()
    }
    results = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


EXPECTED_CODES = {"check_bad": 1, "explain_unknown": 1}


@pytest.mark.parametrize("name", sorted(invocations(Path("."))))
def test_subprocess_exit_code_without_traceback_or_colour(ran, name):
    result = ran[name]
    assert result.returncode == EXPECTED_CODES.get(name, 0), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert ESCAPE not in result.stdout and ESCAPE not in result.stderr


def test_subprocess_tree_finds_the_loss_key_and_shows_the_module_state(ran):
    result = ran["tree"]
    spec = lossdsl.load(EXAMPLES / "tagging.yaml", key=KEY)
    lines = result.stdout.splitlines()
    assert lines[0] == f"loss: {spec.to_expr()}"
    assert any(line.startswith("term 1: weight 1, reduction mean, head sigmoid") for line in lines)
    assert "learnable parameters: none" in lines
    assert "running buffers: none" in lines
    assert result.stderr == ""


def test_subprocess_expr_yaml_json_load_back_to_the_same_spec(ran):
    assert lossdsl.parse(ran["expr"].stdout) == lossdsl.load(EXAMPLES / "multitask.yaml", key=KEY)
    assert lossdsl.load(ran["yaml"].stdout) == lossdsl.load(EXAMPLES / "segmentation.yaml", key=KEY)
    document = json.loads(ran["json"].stdout)
    assert lossdsl.load(document["loss"]) == lossdsl.parse(FANCY).expand()
    spec_parts = json.dumps([document[key] for key in ("expression", "expanded", "loss", "tree")])
    assert "focal" not in spec_parts and "ghm" not in spec_parts  # the buffer keeps its module name


def test_subprocess_check_reports_file_line_column_per_problem(ran, work):
    assert ran["check_ok"].stdout.strip() == f"{len(EXAMPLE_FILES)} files OK"
    result = ran["check_bad"]
    lines = result.stdout.splitlines()
    assert len(lines) == len(BAD_FILES), lines  # nothing for the valid example
    for line, name in zip(lines, BAD_FILES):
        match = PROBLEM.match(line)
        assert match, line
        expected = position_of(*BAD_FILES[name])
        assert match["file"] == str(work / name)
        assert (int(match["line"]), int(match["column"])) == expected, line


def test_subprocess_schema_validates_every_example(ran):
    schema = json.loads(ran["schema"].stdout)
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema == json.loads(json.dumps(lossdsl.schema.loss_json_schema(key=KEY)))
    validator = jsonschema.Draft7Validator(schema)
    for path in EXAMPLE_FILES:
        validator.validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def test_subprocess_list_and_explain(ran):
    listed = ran["list"].stdout
    for name in lossdsl.CATALOGUE:
        assert re.search(rf"^  {re.escape(name)}\s+\S", listed, re.M), name
    explained = ran["explain"].stdout
    assert explained.startswith("focal: ")
    assert "paper: Lin et al. 2017" in explained
    assert "expands to: balance(modulate(bce(), gamma=2), alpha=0.25)" in explained
    unknown = ran["explain_unknown"]
    assert unknown.stdout == ""
    assert "unknown loss 'fcal'" in unknown.stderr
    assert "did you mean 'focal'?" in unknown.stderr


def test_subprocess_plot_writes_png_files(ran, work):
    assert ran["plot"].stdout.strip() == f"wrote {work / 'curves.png'} (2 curves)"
    assert ran["sweep"].stdout.strip() == f"wrote {work / 'sweep.png'} (5 curves)"
    for name in ("curves.png", "sweep.png"):
        data = (work / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 20_000


def test_subprocess_help(ran):
    result = ran["help"]
    assert result.stdout.startswith("usage: lossdsl plot")
    for option in ("--out", "--sweep", "PARAM=START:STOP:COUNT"):
        assert option in result.stdout


# -- in process: helpers ------------------------------------------------------------------------------


def assert_user_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


# -- --help on every command --------------------------------------------------------------------------

COMMANDS = ["compile", "check", "schema", "list", "explain", "plot"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_on_every_command(capsys, command):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lossdsl" + (f" {command}" if command else ""))
    if command is None:
        for name in COMMANDS:
            assert name in out


def test_usage_errors_exit_2_with_usage(capsys):
    for argv in (["compile"], ["frobnicate"], ["compile", "ce()", "--format", "toml"], ["plot", "ce()"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "usage: lossdsl" in err and "Traceback" not in err


# -- compile ------------------------------------------------------------------------------------------


def test_tree_shows_parameters_head_reduction_and_running_buffers(capsys):
    code, out, err = run_main(capsys, "compile", "ghm(bins=30, momentum=0.75, reduction=sum) + 0.5 * focal()")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[1] == "term 1: weight 1, reduction sum, head sigmoid"
    assert lines[2].startswith("  ghm: bins=30, momentum=0.75")
    assert lines[3] == "term 2: weight 0.5, reduction mean, head sigmoid"
    assert lines[4].startswith("  focal: gamma=2 (default), alpha=0.25 (default), head=sigmoid (default)")
    assert "learnable parameters: none" in lines
    start = lines.index("running buffers:")
    module = lossdsl.compile("ghm(bins=30, momentum=0.75) + 0.5 * focal()")
    buffers = [name for name in module.state_dict() if name != "_extra_state"]  # running buffers only
    assert buffers and len(lines) == start + 1 + len(buffers)
    for line, name in zip(lines[start + 1:], buffers):
        assert line.startswith(f"  {name}  float32[30]  GHM-C")


def test_tree_lists_learnable_parameters_of_a_multitask_loss(capsys):
    code, out, _ = run_main(capsys, "compile", MULTITASK)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"loss: {lossdsl.parse(MULTITASK).to_expr()}"
    assert "  uncertainty: form=kendall (default)" in lines
    assert "  task seg:" in lines and "  task depth:" in lines
    assert "    term 1: weight 0.5, reduction mean, head none (regression)" in lines
    start = lines.index("learnable parameters:")
    names = [name for name, _ in lossdsl.compile(MULTITASK).named_parameters()]
    assert sorted(names) == ["log_variance.depth", "log_variance.seg"]
    shown = [line.split()[0] for line in lines[start + 1: lines.index("running buffers: none")]]
    assert shown == names


def test_tree_lists_the_running_buffers_of_dtp(capsys):
    code, out, _ = run_main(capsys, "compile", "dtp({seg: ce(), depth: l1()})")
    assert code == 0
    assert "learnable parameters: none" in out
    for task in ("seg", "depth"):  # one 0-d buffer per task, under its name
        assert re.search(rf"^  kpi_average\.{task} +float32\[\] ", out, re.M), out
        assert re.search(rf"^  kpi_seen\.{task} +bool\[\] ", out, re.M), out


def test_expand_rewrites_named_losses_in_every_format(capsys):
    for fmt in ("tree", "expr", "yaml", "json"):
        code, out, _ = run_main(capsys, "compile", FANCY, "--expand", "--format", fmt)
        assert code == 0
        out = out.split("learnable parameters:")[0]  # the state names are the module's, not the spec's
        if fmt == "json":
            out = out.split('"parameters":')[0]
        for name in ("focal", "ghm"):
            assert name not in out, (fmt, out)
    _, out, _ = run_main(capsys, "compile", FANCY, "--expand", "--format", "expr")
    assert lossdsl.parse(out) == lossdsl.parse(FANCY).expand()


ROUND_TRIP_SOURCES = [
    FANCY,
    MULTITASK,
    "dtp({a: bce(pos_weight=[1, 2]), b: mse(reduction=sum)}, gamma=2)",
    "0.7 * ce(smoothing=0.1, ignore_index=255) - 0.3 * focal(head=softmax, alpha=[0.1, 0.9])",
    "asl(gamma_neg=4, gamma_pos=0, clip=0.05, reduction=none) + balance(bce(), alpha=0.5, reduction=none)",
    *(str(path) for path in EXAMPLE_FILES),
]


def expected_spec(source: str) -> lossdsl.LossSpec:
    return lossdsl.load(Path(source), key=KEY) if source.endswith(".yaml") else lossdsl.parse(source)


def load_output(fmt: str, out: str) -> lossdsl.LossSpec:
    if fmt == "expr":
        return lossdsl.parse(out)
    if fmt == "json":  # the document of the tree; its "loss" member is the node form
        return lossdsl.load(json.loads(out)["loss"])
    return lossdsl.load(out)


@pytest.mark.parametrize("expand", [False, True], ids=["plain", "expand"])
@pytest.mark.parametrize("fmt", ["expr", "yaml", "json"])
@pytest.mark.parametrize("source", ROUND_TRIP_SOURCES, ids=lambda s: Path(s).name if s.endswith(".yaml") else s[:30])
def test_expr_yaml_json_output_loads_back_to_the_same_spec(capsys, source, fmt, expand):
    code, out, err = run_main(capsys, "compile", source, "--format", fmt, *(["--expand"] if expand else []))
    assert code == 0, err
    spec = expected_spec(source)
    assert load_output(fmt, out) == (spec.expand() if expand else spec)


@pytest.mark.parametrize("fmt", ["expr", "yaml", "json"])
def test_output_written_to_a_file_compiles_again_to_the_same_expression(capsys, tmp_path, fmt):
    _, out, _ = run_main(capsys, "compile", MULTITASK, "--format", fmt)
    path = tmp_path / f"loss.{ {'expr': 'yaml', 'yaml': 'yaml', 'json': 'json'}[fmt] }"
    path.write_text(out if fmt != "expr" else json.dumps(out.strip()), encoding="utf-8")
    code, again, err = run_main(capsys, "compile", str(path), "--format", "expr")
    assert code == 0, err
    assert again.strip() == lossdsl.parse(MULTITASK).to_expr()


@settings(max_examples=25)
@given(specs())
def test_every_generated_spec_round_trips_through_the_cli(spec):
    source = spec.to_expr()
    for fmt in ("expr", "yaml", "json"):
        stdout = io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stdout", stdout)
            assert main(["compile", source, "--format", fmt]) == 0
        assert load_output(fmt, stdout.getvalue()) == spec, (fmt, stdout.getvalue())


def test_without_key_the_first_loss_key_breadth_first_is_used(capsys, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent("""\
        experiment:
          model:
            loss: ce()
        loss_scale: 1
        train:
          loss: bce()
        """), encoding="utf-8")
    _, out, _ = run_main(capsys, "compile", str(path), "--format", "expr")
    assert out.strip() == "bce()"  # train.loss (depth 2) comes before experiment.model.loss (depth 3)
    whole = tmp_path / "whole.yaml"
    whole.write_text("kind: focal\ngamma: 3\n", encoding="utf-8")
    _, out, _ = run_main(capsys, "compile", str(whole), "--format", "expr")
    assert out.strip() == "focal(gamma=3)"


def test_a_file_without_a_loss_key_asks_for_key(capsys, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  name: x\n", encoding="utf-8")
    code, out, err = run_main(capsys, "compile", str(path))
    assert_user_error(code, out, err, "no key named 'loss' found, and the document is no loss itself",
                      "give --key with the dotted key of the loss, e.g. --key model.loss")
    assert err.count(str(path)) == 1  # the file is named once


def test_a_long_expression_is_not_taken_for_a_file_name(capsys):
    expression = " + ".join(["focal(gamma=2, alpha=0.25)"] * 12)  # longer than a file name may be
    code, out, err = run_main(capsys, "compile", expression, "--format", "expr")
    assert code == 0, err
    assert lossdsl.parse(out) == lossdsl.parse(expression)


def test_a_binary_file_is_a_user_error(capsys, tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(PNG_SIGNATURE + bytes(range(256)))
    code, out, err = run_main(capsys, "compile", str(path))
    assert_user_error(code, out, err, f"cannot read {path}")


# -- check --------------------------------------------------------------------------------------------


def test_check_accepts_every_example_with_and_without_key(capsys):
    files = [str(path) for path in EXAMPLE_FILES]
    for extra in ([], ["--key", KEY]):
        code, out, err = run_main(capsys, "check", *files, *extra)
        assert code == 0, out
        assert out.strip() == f"{len(files)} files OK" and err == ""


def test_check_prints_one_located_line_per_problem(capsys, tmp_path):
    bad = write_bad_files(tmp_path)
    good = str(EXAMPLE_FILES[0])
    code, out, err = run_main(capsys, "check", good, *(str(path) for path, _ in bad.values()), good)
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(bad)
    for line, (path, position) in zip(lines, bad.values()):
        match = PROBLEM.match(line)
        assert match and match["file"] == str(path), line
        assert (int(match["line"]), int(match["column"])) == position, line
    assert "did you mean 'gamma'?" in lines[0]
    assert "smoothing must be in [0, 1)" in lines[1]
    assert "did you mean 'ce'?" in lines[2]
    assert "gamma_neg must be >= 0" in lines[3]


def test_check_locates_yaml_errors_missing_keys_and_missing_files(capsys, tmp_path):
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("model:\n  loss: [unclosed\n", encoding="utf-8")
    wrong_key = tmp_path / "wrong_key.yaml"
    wrong_key.write_text("model:\n  name: x\n  los: ce()\n", encoding="utf-8")
    missing = tmp_path / "missing.yaml"
    code, out, _ = run_main(capsys, "check", str(syntax), str(wrong_key), str(missing), "--key", KEY)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3
    matches = [PROBLEM.match(line) for line in lines]
    assert all(matches), lines
    assert [m["file"] for m in matches] == [str(syntax), str(wrong_key), str(missing)]
    assert "invalid YAML" in lines[0] and int(matches[0]["line"]) >= 2
    assert "did you mean 'los'?" in lines[1] and int(matches[1]["line"]) == 2
    assert f"cannot read {missing}" in lines[2] and (matches[2]["line"], matches[2]["column"]) == ("1", "1")


# -- schema -------------------------------------------------------------------------------------------


def test_schema_command_prints_the_schemas_of_the_library(capsys):
    code, out, _ = run_main(capsys, "schema")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(lossdsl.json_schema()))
    code, out, _ = run_main(capsys, "schema", "--key", KEY)
    schema = json.loads(out)
    assert code == 0 and schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    validator = jsonschema.Draft7Validator(schema)
    assert not validator.is_valid({"model": {"loss": {"kind": "focal", "gama": 2}}})
    assert not validator.is_valid({"model": {"name": "no loss"}})
    # yaml-language-server shows titles and descriptions on hover and completes under `kind:`
    for name in lossdsl.CATALOGUE:
        node = schema["definitions"][f"node_{name}"]
        assert node["title"] == name and node["description"]
        assert node["properties"]["kind"]


# -- list and explain ---------------------------------------------------------------------------------


def test_list_shows_every_name_once_with_a_description(capsys):
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    entries = [line.split(None, 1) for line in out.splitlines() if line.startswith("  ")]
    assert sorted(name for name, _ in entries) == sorted(lossdsl.CATALOGUE)
    assert all(description.strip() for _, description in entries)


@pytest.mark.parametrize("name", sorted(lossdsl.CATALOGUE))
def test_explain_every_name(capsys, name):
    code, out, err = run_main(capsys, "explain", name)
    assert code == 0 and err == ""
    cls = lossdsl.CATALOGUE[name]
    assert out.startswith(f"{name}: {cls.summary}")
    parameters = out.split("\nparameters:\n", 1)[1]
    for field in cls.model_fields:
        if field not in ("kind", cls.positional):
            assert re.search(rf"^  {field}\s", parameters, re.M), field
    if cls.category == "named" and name not in ("zlpr", "varifocal"):  # those two are leaves
        assert "\nexpands to: " in out


def test_explain_shows_defaults_ranges_and_papers(capsys):
    _, out, _ = run_main(capsys, "explain", "ce")
    assert re.search(r"^  smoothing\s+a number, in \[0, 1\); default 0$", out, re.M), out
    _, out, _ = run_main(capsys, "explain", "focal")
    assert re.search(r"^  alpha .*default 0\.25 \(sigmoid\), none \(softmax\)$", out, re.M), out
    _, out, _ = run_main(capsys, "explain", "asl")
    assert "paper: Ridnik et al. 2021" in out
    assert "expands to: modulate(clip(bce(), margin=0.05), gamma_pos=1, gamma_neg=4)" in out


def test_explain_an_unknown_name_suggests_the_closest(capsys):
    code, out, err = run_main(capsys, "explain", "asll")
    assert_user_error(code, out, err, "unknown loss 'asll'", "did you mean 'asl'?")


# -- plot ---------------------------------------------------------------------------------------------


def test_plot_writes_a_png_and_a_sweep_draws_a_different_one(capsys, tmp_path):
    single, sweep = tmp_path / "single.png", tmp_path / "sweep.png"
    assert main(["plot", "asl()", "--out", str(single)]) == 0
    assert main(["plot", "asl()", "--sweep", "gamma_neg=0:4:5", "--out", str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"wrote {single} (1 curve)", f"wrote {sweep} (5 curves)"]
    one, many = single.read_bytes(), sweep.read_bytes()
    for data in (one, many):
        assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000
    assert one != many


def keep_saved_figures(monkeypatch) -> list:
    """The figures ``lossdsl plot`` writes, kept to look at."""
    import lossdsl.plotting

    save, figures = lossdsl.plotting.save, []

    def keep(figure, out):
        figures.append(figure)
        save(figure, out)

    monkeypatch.setattr(lossdsl.plotting, "save", keep)
    return figures


def test_plot_draws_labelled_axes_and_a_legend(monkeypatch, tmp_path):
    figures = keep_saved_figures(monkeypatch)
    assert main(["plot", "focal(gamma=2)", "bce()", "--out", str(tmp_path / "p.png")]) == 0
    (figure,) = figures
    axes = figure.axes
    assert len(axes) == 4
    assert {ax.get_ylabel() for ax in axes} == {"loss", "|d loss / d logit|"}
    assert all("p_t" in ax.get_xlabel() for ax in axes[2:])
    assert {ax.get_title() for ax in axes[:2]} == {"positive target (y = 1)", "negative target (y = 0)"}
    legend = axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["focal()", "bce()"]
    for ax in axes:
        assert len(ax.get_lines()) == 2


def test_plot_sweep_labels_each_value(monkeypatch, tmp_path):
    figures = keep_saved_figures(monkeypatch)
    assert main(["plot", "ghm()", "--sweep", "bins=5:25:3", "--out", str(tmp_path / "g.png")]) == 0
    labels = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert labels == ["bins=5", "bins=15", "bins=25"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["mse()"], ["mse() has no p_t"]),
        (["focal()", "--sweep", "gamma=0:4"], ["--sweep expects PARAM=START:STOP:COUNT"]),
        (["focal()", "--sweep", "gamma=0:4:0"], ["COUNT must be between 1 and 50"]),
        (["focal()", "--sweep", "gama=0:4:3"], ["no loss in focal() has a parameter 'gama'"]),
        (["focal()", "--sweep", "gamma=-1:1:3"], ["gamma=-1 is out of range"]),
        (["focal(gama=2)"], ["has no parameter 'gama'", "did you mean 'gamma'?"]),
        (["focal() + ce()"], ["cannot mix softmax and sigmoid"]),
    ],
)
def test_plot_user_errors(capsys, tmp_path, args, fragments):
    out_file = tmp_path / "never.png"
    code, out, err = run_main(capsys, "plot", *args, "--out", str(out_file))
    assert_user_error(code, out, err, *fragments)
    assert not out_file.exists()


def test_plot_to_an_unwritable_place_is_a_user_error(capsys, tmp_path):
    code, out, err = run_main(capsys, "plot", "focal()", "--out", str(tmp_path / "no" / "such" / "dir.png"))
    assert_user_error(code, out, err, "cannot write")
    code, out, err = run_main(capsys, "plot", "focal()", "--out", str(tmp_path / "plot.xyz"))
    assert_user_error(code, out, err, "cannot write", "not supported")


def test_plot_without_a_suffix_writes_png_to_that_very_name(capsys, tmp_path):
    path = tmp_path / "curves"
    assert main(["plot", "focal()", "--out", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {path} (1 curve)"
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_without_matplotlib_says_how_to_install_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out_file = tmp_path / "p.png"
    code, out, err = run_main(capsys, "plot", "focal()", "--out", str(out_file))
    assert_user_error(code, out, err, "needs matplotlib", "pip install 'lossdsl[plot]'")
    assert not out_file.exists()


# -- colour -------------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    code, _, err = run_main(capsys, "compile", "ce(smothing=0.1)")
    assert code == 1 and ESCAPE not in err  # capsys: not a terminal

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["compile", "ce(smothing=0.1)"]) == 1
    assert terminal.getvalue().startswith(f"{ESCAPE}31;1merror:{ESCAPE}0m ")

    monkeypatch.setenv("NO_COLOR", "1")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["compile", "ce(smothing=0.1)"]) == 1
    assert ESCAPE not in terminal.getvalue()
