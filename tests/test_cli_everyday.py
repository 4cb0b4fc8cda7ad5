"""The everyday commands of issue 11: ``check`` reports every problem, ``--format json`` of ``check``,
``compile``, ``diff`` and ``bench``, ``--version``, stdin (``-``), ``diff`` and ``bench``, and the
aligned columns of ``compile``'s tree.

Everything calls ``lossdsl.cli.main`` in this process (stdin replaced by a StringIO); one subprocess
checks ``--version`` and stdin through the real entry point.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli as run

import lossdsl

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<column>\d+): (?P<message>\S.*)$")


def column_of(line: str, token: str) -> int:
    return line.index(token) + 1


# -- check: every problem ---------------------------------------------------------------------------

# Three independent problems on one line: none follows from another.
THREE = "0.5 * focal(gama=2, alpha=3) + ce(smothing=0.1)"


def test_check_reports_every_independent_problem_of_a_file(capsys, tmp_path):
    path = tmp_path / "exp.yaml"
    line = f"  loss: {THREE}"
    path.write_text(f"model:\n{line}\n", encoding="utf-8")
    code, out, err = run(capsys, "check", str(path))
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert [PROBLEM.match(text)["column"] for text in lines] == [
        str(column_of(line, "gama")), str(column_of(line, "3)")), str(column_of(line, "smothing"))
    ]
    assert all(PROBLEM.match(text)["file"] == str(path) and PROBLEM.match(text)["line"] == "2"
               for text in lines)
    assert "focal() has no parameter 'gama' (did you mean 'gamma'?" in lines[0]
    assert "alpha=3 is out of range; alpha must be in [0, 1]" in lines[1]
    assert "ce() has no parameter 'smothing'" in lines[2]


def test_check_reports_each_definition_and_each_task(capsys, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "loss:\n"
        "  expr: a + b + c\n"
        "  define:\n"
        "    a: focal(gama=2)\n"
        "    b: asl(gamma_neg=-1)\n"
        "    c: 'uncertainty({seg: ce(smoothing=2), depth: l1(beta=1)})'\n",
        encoding="utf-8",
    )
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1
    found = [(int(m["line"]), m["message"]) for m in map(PROBLEM.match, out.splitlines())]
    assert [line for line, _ in found] == [4, 5, 6, 6]
    assert "task 'seg': ce(): smoothing=2 is out of range" in found[2][1]
    assert "task 'depth': l1() has no parameter 'beta'" in found[3][1]


def test_check_does_not_report_what_follows_from_another_problem(capsys, tmp_path):
    path = tmp_path / "exp.yaml"
    # The misspelt gamma_pos leaves gamma_neg alone, which modulate() would refuse by itself; the
    # bad child of poly leaves poly without a loss, which it would also refuse. Neither is reported.
    path.write_text("loss: modulate(bce(), gama_pos=1, gamma_neg=2) + poly(foo())\n", encoding="utf-8")
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2, lines
    assert "modulate() has no parameter 'gama_pos'" in lines[0]
    assert "unknown loss 'foo'" in lines[1]


def test_the_first_problem_check_reports_is_the_error_parse_raises(capsys, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(f"loss: {THREE}\n", encoding="utf-8")
    with pytest.raises(lossdsl.LossDSLError) as raised:
        lossdsl.load(path, key="loss")
    _, out, _ = run(capsys, "check", str(path))
    error = raised.value
    assert out.splitlines()[0].startswith(f"{path}:{error.line}:{error.column}: {error.reason}")


def test_check_reports_one_line_per_bad_file_among_many(capsys, tmp_path):
    good = [str(path) for path in sorted(EXAMPLES.glob("*.yaml"))]
    bad = []
    for index in range(5):
        path = tmp_path / f"bad{index}.yaml"
        path.write_text(f"model:\n  loss: focal(gamma=-{index + 1})\n", encoding="utf-8")
        bad.append(str(path))
    code, out, _ = run(capsys, "check", *good, *bad)
    assert code == 1
    assert [PROBLEM.match(line)["file"] for line in out.splitlines()] == bad


# -- check --format json ----------------------------------------------------------------------------


def test_check_json_document(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model:\n  loss: {THREE}\n", encoding="utf-8")
    good = EXAMPLES / "tagging.yaml"
    code, out, err = run(capsys, "check", str(good), str(bad), "--format", "json")
    assert code == 1 and err == ""
    document = json.loads(out)
    assert set(document) == {"format", "ok", "files"}
    assert document["format"] == "lossdsl.check/1" and document["ok"] is False
    first, second = document["files"]
    assert first == {
        "file": str(good), "key": "model.loss", "ok": True,
        "expr": lossdsl.load(good, key="model.loss").to_expr(), "problems": [],
    }
    assert second["ok"] is False and second["expr"] is None and second["key"] == "model.loss"
    assert len(second["problems"]) == 3
    problem = second["problems"][0]
    assert problem == {
        "file": str(bad), "line": 2, "column": column_of(f"  loss: {THREE}", "gama"),
        "reason": "focal() has no parameter 'gama'",
        "hint": problem["hint"], "path": "model.loss.terms[0].loss.gama", "error": "LossSpecError",
    }
    assert problem["hint"].startswith("did you mean 'gamma'?")


def test_check_json_of_good_files_exits_0(capsys):
    code, out, _ = run(capsys, "check", str(EXAMPLES / "detector.yaml"), "--format", "json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_check_json_reports_unreadable_files_as_problems(capsys, tmp_path):
    missing = tmp_path / "missing.yaml"
    code, out, _ = run(capsys, "check", str(missing), "--format", "json")
    assert code == 1
    (entry,) = json.loads(out)["files"]
    assert entry["key"] is None and entry["problems"][0]["reason"].startswith(f"cannot read {missing}")
    assert (entry["problems"][0]["line"], entry["problems"][0]["column"]) == (1, 1)


# -- stdin ------------------------------------------------------------------------------------------


def test_check_takes_expressions_as_compile_does(capsys):
    code, out, _ = run(capsys, "check", "focal(gama=2)", "ce()")
    assert code == 1
    assert out == ("focal(gama=2):1:7: focal() has no parameter 'gama' (did you mean 'gamma'? valid "
                   "parameters of focal: alpha, background, gamma, head, ignore_index, reduction)\n")
    assert run(capsys, "check", "ce()", "focal(gamma=3)") == (0, "2 files OK\n", "")


def test_check_reads_an_expression_from_stdin(capsys, monkeypatch):
    code, out, _ = run(capsys, "check", "-", stdin="ce() +\n  focal(gama=2)\n", monkeypatch=monkeypatch)
    assert code == 1
    assert out.startswith("<stdin>:2:9: focal() has no parameter 'gama'")


def test_check_reads_a_document_from_stdin(capsys, monkeypatch):
    text = "model:\n  loss:\n    kind: focal\n    gamma: -1\n"
    code, out, _ = run(capsys, "check", "-", stdin=text, monkeypatch=monkeypatch)
    assert code == 1 and out.startswith("<stdin>:4:12: focal(): gamma=-1 is out of range")
    code, out, _ = run(capsys, "check", "-", stdin="kind: focal\ngamma: 3\n", monkeypatch=monkeypatch)
    assert code == 0 and out.strip() == "1 file OK"


def test_compile_reads_stdin(capsys, monkeypatch):
    code, out, _ = run(capsys, "compile", "-", "--format", "expr",
                       stdin='{"kind": "asl", "gamma_neg": 3}', monkeypatch=monkeypatch)
    assert (code, out) == (0, "asl(gamma_neg=3)\n")
    # Read as a file is: an expression holding ': ' is quoted in YAML.
    code, out, _ = run(capsys, "compile", "-", "--format", "expr",
                       stdin='"uncertainty({seg: ce(),\n  depth: l1()})"\n', monkeypatch=monkeypatch)
    assert (code, out) == (0, "uncertainty({seg: ce(), depth: l1()})\n")
    code, out, err = run(capsys, "compile", "-", stdin="focal(gama=2)", monkeypatch=monkeypatch)
    assert code == 1 and out == ""
    assert err.startswith(
        "error: <stdin>:1:7: focal() has no parameter 'gama'\n    focal(gama=2)\n          ^"
    )


def test_stdin_read_twice_or_empty_is_a_user_error(capsys, monkeypatch):
    code, _, err = run(capsys, "check", "-", "-", stdin="ce()", monkeypatch=monkeypatch)
    assert code == 1 and "stdin (-) can be read once" in err
    code, out, _ = run(capsys, "check", "-", stdin="  \n", monkeypatch=monkeypatch)
    assert code == 1 and out.startswith("<stdin>:1:1: nothing on stdin")


def test_version_and_stdin_through_the_entry_point(tmp_path):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)  # this checkout, whichever one the environment installed
    version = subprocess.run([sys.executable, "-m", "lossdsl", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert (version.returncode, version.stdout) == (0, f"lossdsl {lossdsl.__version__}\n")
    checked = subprocess.run([sys.executable, "-m", "lossdsl", "check", "-"], input="focal(gama=2)\n",
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 1
    assert checked.stdout.startswith("<stdin>:1:7: focal() has no parameter 'gama'")


# -- compile --format json --------------------------------------------------------------------------

MULTITASK = "uncertainty({seg: ce(ignore_index=255), depth: 0.5 * smooth_l1(beta=0.5)})"


def test_compile_json_document_of_a_sum(capsys):
    code, out, _ = run(capsys, "compile", "poly(focal(gamma=3), eps=1) + 0.5 * ghm(bins=30, momentum=0.75)",
                       "--format", "json")
    assert code == 0
    document = json.loads(out)
    assert list(document) == ["format", "expression", "expanded", "loss", "tree", "parameters", "buffers"]
    assert document["format"] == "lossdsl.compile/1"
    spec = lossdsl.parse(document["expression"])
    assert lossdsl.load(document["loss"]) == spec
    assert lossdsl.parse(document["expanded"]) == spec.expand()
    first, second = document["tree"]
    assert {k: first[k] for k in ("index", "key", "name", "weight", "reduction", "head")} == {
        "index": 1, "key": "poly(focal(gamma=3))", "name": None, "weight": 1.0, "reduction": "mean",
        "head": "sigmoid",
    }
    assert first["node"]["kind"] == "poly"
    assert first["node"]["parameters"]["eps"] == {"value": 1.0, "default": True}
    assert first["node"]["loss"]["parameters"]["gamma"] == {"value": 3.0, "default": False}
    assert second["weight"] == 0.5 and second["node"]["kind"] == "ghm"
    assert document["parameters"] == []
    assert document["buffers"] == [{
        "name": "terms.1.ghm_accumulator", "dtype": "float32", "shape": [30],
        "note": "GHM-C bin counts, momentum average (updated in training mode)",
    }]


def test_compile_json_document_of_a_multitask_loss(capsys):
    code, out, _ = run(capsys, "compile", MULTITASK, "--format", "json")
    assert code == 0
    document = json.loads(out)
    (term,) = document["tree"]
    tasks = term["node"]["tasks"]
    assert list(tasks) == ["seg", "depth"]
    assert tasks["depth"]["expression"] == "0.5 * smooth_l1(beta=0.5)"
    assert tasks["depth"]["tree"][0]["key"] == "smooth_l1(beta=0.5)"
    assert [p["name"] for p in document["parameters"]] == ["log_variance.depth", "log_variance.seg"]


def test_compile_json_output_compiles_again_without_key(capsys, tmp_path):
    _, out, _ = run(capsys, "compile", MULTITASK, "--format", "json")
    path = tmp_path / "loss.json"
    path.write_text(out, encoding="utf-8")
    code, again, _ = run(capsys, "compile", str(path), "--format", "expr")
    assert code == 0 and again.strip() == lossdsl.parse(MULTITASK).to_expr()


def test_compile_json_carries_term_names(capsys, tmp_path):
    path = tmp_path / "named.yaml"
    path.write_text("terms:\n  - {loss: focal(), name: cls}\n  - {loss: ghm(), weight: 0.5, name: hard}\n",
                    encoding="utf-8")
    code, out, _ = run(capsys, "compile", str(path), "--format", "json")
    assert code == 0
    document = json.loads(out)
    assert [(t["name"], t["key"]) for t in document["tree"]] == [("cls", "cls"), ("hard", "hard")]
    assert lossdsl.load(document["loss"]) == lossdsl.load(path)


# -- compile's tree: aligned columns ----------------------------------------------------------------


def state_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("  ") and not line.startswith("   ")
            and ("float32[" in line or "bool[" in line)]


@pytest.mark.parametrize("expression", [
    "dtp({seg: ce(), depth: l1()})",
    "uncertainty({segmentation: ce(), depth: l1()})",
    "ghm(momentum=0.5) + 0.5 * poly(ghm(bins=30, momentum=0.9))",
])
def test_tree_state_columns_line_up(capsys, expression):
    code, out, _ = run(capsys, "compile", expression)
    assert code == 0
    rows = state_rows(out)
    assert len(rows) >= 2
    shape_columns = {re.search(r"  (float32|bool)\[", row).start() for row in rows}
    note_columns = {re.search(r"\]\s+(\S)", row).start(1) for row in rows}
    assert len(shape_columns) == 1 and len(note_columns) == 1, rows


def test_tree_shows_term_names(capsys, tmp_path):
    path = tmp_path / "named.yaml"
    path.write_text("terms:\n  - {loss: focal(), name: cls}\n  - {loss: ce(), weight: 0.5}\n",
                    encoding="utf-8")
    _, out, _ = run(capsys, "compile", str(path))
    assert "term 1 (cls): weight 1, reduction mean, head sigmoid" in out.splitlines()
    assert "term 2: weight 0.5, reduction mean, head softmax" in out.splitlines()


# -- diff -------------------------------------------------------------------------------------------


def test_diff_names_the_parameter_that_differs(capsys):
    code, out, err = run(capsys, "diff", "focal(gamma=2) + 0.5 * ghm()", "focal(gamma=3) + 0.5 * ghm()")
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert lines[:5] == [
        "A: focal() + 0.5 * ghm()",
        "B: focal(gamma=3) + 0.5 * ghm()",
        "as written: different",
        "  term 1: focal(): gamma 2 -> 3",
        "after expansion: different",
    ]
    assert "  term 1: balance() > modulate(): gamma 2 -> 3" in lines
    assert any(line.startswith("numerically: different") for line in lines)
    assert lines[-1] == "different losses"


def test_diff_of_a_name_and_its_expansion_is_the_same(capsys):
    code, out, _ = run(capsys, "diff", "dice(smooth=2e-5)", "tversky(alpha=0.5, beta=0.5, smooth=1e-5)")
    assert code == 0
    lines = out.splitlines()
    assert lines[2:5] == ["as written: different", "  term 1: dice(smooth=2e-05) -> tversky()",
                          "after expansion: the same"]
    assert lines[5].startswith("numerically: the same on class indices")
    assert lines[-1] == "the same loss"


def test_diff_terms_added_removed_reordered_and_reweighted(capsys):
    code, out, _ = run(capsys, "diff", "ce() + 0.5 * focal(head=softmax)", "0.5 * focal(head=softmax) + ce()")
    assert code == 0 and "  the same terms in another order" in out.splitlines()
    code, out, _ = run(capsys, "diff", "ce() + dice()", "ce() + 0.3 * dice(reduction=sum) + 0.1 * jaccard()")
    assert code == 1
    lines = out.splitlines()
    assert "  term 2: weight 1 -> 0.3" in lines
    assert "  term 2: reduction mean -> sum" in lines
    assert "  term 3 only in B: 0.1 * jaccard()" in lines
    code, out, _ = run(capsys, "diff", "ce() + 0.1 * mse()", "ce()")
    assert "  term 2 only in A: 0.1 * mse()" in out.splitlines()


def test_diff_numerically_the_same_though_written_differently(capsys):
    code, out, _ = run(capsys, "diff", "bce()", "focal(gamma=0, alpha=none)")
    assert code == 0
    assert "after expansion: different" in out
    assert "numerically: the same on" in out


def test_diff_tells_ignored_labels_apart(capsys):
    code, out, _ = run(capsys, "diff", "focal()", "focal(ignore_index=255)")
    assert code == 1
    assert "  term 1: focal(): ignore_index -100 -> 255" in out.splitlines()
    assert "class indices with label 255 (predictions [4, 3, 5, 5], targets [4, 5, 5]): A fails: focal(): " \
           "class index 255 is out of range" in out


def test_diff_multitask_names_the_task(capsys):
    code, out, _ = run(capsys, "diff", "uncertainty({a: ce(), b: l1()})",
                       "uncertainty({b: l1(), a: ce(smoothing=0.1)}, form=simple)")
    assert code == 1
    lines = out.splitlines()
    assert "  uncertainty(): form kendall -> simple" in lines
    assert "  task a: term 1: ce(): smoothing 0 -> 0.1" in lines


def test_diff_reads_files(capsys, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  loss: focal(gamma=2)\n", encoding="utf-8")
    code, out, _ = run(capsys, "diff", str(path), "focal()", "--key", "model.loss")
    assert code == 0 and out.splitlines()[2] == "as written: the same"


def test_diff_json_document(capsys):
    code, out, _ = run(capsys, "diff", "ghm(momentum=0.5)", "ghm()", "--format", "json")
    assert code == 1
    document = json.loads(out)
    assert document["format"] == "lossdsl.diff/1"
    assert (document["same"], document["a"], document["b"]) == (False, "ghm(momentum=0.5)", "ghm()")
    assert document["as_written"] == {"same": False, "differences": ["term 1: ghm(): momentum 0.5 -> 0"]}
    numeric = document["numerically"]
    assert numeric["same"] is False and numeric["rtol"] == 1e-6
    assert {entry["outcome"] for entry in numeric["inputs"]} == {"different"}
    # with momentum the first step already differs: the running counts start at 0
    assert numeric["inputs"][0]["detail"].startswith("step 1: value ")


def test_diff_python_api():
    compare = lossdsl.diff.compare  # no import of the submodule needed

    result = compare(lossdsl.parse("asl()"), lossdsl.compile("asl(gamma_neg=4)"))
    assert result.same and result.as_written
    result = compare("asl()", "focal()", numeric=False)
    assert not result.same and result.differences == ["term 1: asl() -> focal()"]
    assert result.numerically_same is None and "not compared (skipped)" in result.report()


def test_diff_of_two_stdins_is_a_user_error(capsys, monkeypatch):
    code, _, err = run(capsys, "diff", "-", "-", stdin="ce()", monkeypatch=monkeypatch)
    assert code == 1 and "stdin (-) can be read once" in err


# -- bench ------------------------------------------------------------------------------------------


def test_bench_reports_time_and_memory_ratios_against_the_floor(capsys):
    code, out, err = run(capsys, "bench", "focal()", "--shape", "256,8", "--repeat", "2")
    assert code == 0 and err == ""  # no progress off a terminal for a short run
    lines = out.splitlines()
    assert lines[0].startswith("focal() on cpu: forward+backward, median of 2 runs")
    assert lines[1] == "input: logits [256, 8], multi-hot targets [256, 8] (1% positive)"
    assert lines[2].startswith("floor: F.binary_cross_entropy_with_logits (sigmoid head")
    header, ours, floor, ratio = lines[4:8]
    assert ours.startswith("focal() ") and floor.startswith("F.binary_cross_entropy_with_logits (floor) ")
    assert re.fullmatch(r"ratio +\d+\.\d\dx +(\d+\.\d\dx|n/a)", ratio), ratio
    # the columns line up: every row ends its time column at the same place
    assert len({line.index(" ms") for line in (ours, floor)}) == 1


@pytest.mark.parametrize(("expression", "floor", "target"), [
    ("focal(head=softmax)", "F.cross_entropy", "class indices [64]"),
    ("ce() + dice()", "F.cross_entropy", "class indices [2, 8, 8]"),
    ("dice(head=sigmoid)", "F.binary_cross_entropy_with_logits", "masks [2, 3, 8, 8]"),
    ("smooth_l1()", "F.smooth_l1_loss", "targets [64, 3]"),
    ("giou()", "F.l1_loss", "target boxes [64, 4]"),
    ("dfl()", "F.cross_entropy (lower bin)", "distances [64, 4] in [0, 16]"),
    ("qfocal()", "F.binary_cross_entropy_with_logits", "soft IoU targets [64, 3]"),
])
def test_bench_chooses_inputs_and_floor_by_kind(expression, floor, target):
    from lossdsl.bench import bench

    shape = {"ce() + dice()": (2, 3, 8, 8), "dice(head=sigmoid)": (2, 3, 8, 8), "giou()": (64, 4),
             "dfl()": (64, 4, 17)}.get(expression, (64, 3))
    result = bench(expression, shape=shape, repeat=1, warmup=1)
    assert result.floor == floor and result.target.startswith(target)
    assert result.time_ms > 0 and result.floor_time_ms > 0


def test_bench_json(capsys):
    code, out, _ = run(capsys, "bench", "bce()", "--shape", "64,4", "--repeat", "1", "--format", "json")
    assert code == 0
    document = json.loads(out)
    assert document["format"] == "lossdsl.bench/1"
    assert {k: document[k] for k in ("expression", "device", "compiled", "shape", "floor", "repeat")} == {
        "expression": "bce()", "device": "cpu", "compiled": False, "shape": [64, 4],
        "floor": "F.binary_cross_entropy_with_logits", "repeat": 1,
    }
    assert document["time_ratio"] == pytest.approx(document["time_ms"] / document["floor_time_ms"])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bench_progress_on_a_terminal_and_in_a_log():
    from lossdsl.bench import bench, terminal_progress

    terminal = Terminal()
    bench("focal()", shape=(32, 4), repeat=3, warmup=1, progress=terminal_progress(terminal))
    shown = terminal.getvalue()
    assert "\r\x1b[Klossdsl bench: timing 1/3" in shown and shown.endswith("\r\x1b[K")
    log = io.StringIO()
    bench("focal()", shape=(32, 4), repeat=2, warmup=1, progress=terminal_progress(log, quiet_seconds=0))
    assert log.getvalue().splitlines() == ["lossdsl bench: warming up...", "lossdsl bench: timing...",
                                           "lossdsl bench: measuring memory..."]


@pytest.mark.parametrize(("args", "fragment"), [
    (["focal()", "--shape", "4096,x"], "--shape expects integers"),
    (["focal()", "--shape", "0,3"], "--shape expects positive integers"),
    (["focal()", "--shape", "64"], "logits need a class dimension"),
    (["dice()", "--shape", "4,3"], "a region loss compares masks: give --shape N,C,H,W"),
    (["focal()", "--device", "cuda:0"] if not __import__("torch").cuda.is_available() else
     ["focal()", "--device", "nonsense"], "--device"),
    (["{a: ce(), b: l1()}"], "bench each task's loss"),
    (["focal()", "--repeat", "0"], "--repeat must be at least 1"),
])
def test_bench_user_errors(capsys, args, fragment):
    code, out, err = run(capsys, "bench", *args)
    assert code == 1 and out == "" and err.startswith("error: ") and fragment in err
