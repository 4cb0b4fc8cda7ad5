"""Installed plug-ins reach the command line through the entry-point group ``lossdsl.plugins``
(issue 15, item 22; SPEC section 5): the pre-commit hook knows their names without any code.

Two distributions are installed into a temporary folder as pip lays them out (the package and its
``.dist-info`` with ``entry_points.txt``) and put on the path of a fresh interpreter: one announces
a class and a module of plug-ins, the other a module that does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''
from typing import Literal

import lossdsl


class Squared(lossdsl.ElementLoss):  # no docstring: the schema and explain still describe it
    kind: Literal["squared"] = "squared"

    def elementwise(self, p, y):
        return (p - y) ** 2
'''

NAMED = '''
from typing import Literal

import lossdsl


@lossdsl.register
class Sharp(lossdsl.LossNode):
    """Focal loss with gamma 3."""

    kind: Literal["sharp"] = "sharp"
    summary = "focal loss with gamma 3"

    def expand(self):
        return lossdsl.parse("focal(gamma=3)").terms[0].loss
'''

# Runs the command line's main() on each argv in this fresh interpreter, as `lossdsl ...` would.
DRIVER = '''
import contextlib, io, json, sys
from lossdsl.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
'''


def install(site: Path, name: str, version: str, entry_points: str, files: dict[str, str]) -> None:
    for path, text in files.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(textwrap.dedent(text), encoding="utf-8")
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[lossdsl.plugins]\n{entry_points}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    install(site, "lossdsl-test-plugin", "0.1",
            "squared = lossdsl_test_plugin:Squared\nsharp = lossdsl_test_plugin.named",
            {"lossdsl_test_plugin/__init__.py": PLUGIN, "lossdsl_test_plugin/named.py": NAMED})
    install(site, "lossdsl-broken-plugin", "0.2", "broken = lossdsl_missing_module:Loss", {})
    return site


def environment(site: Path) -> dict[str, str]:
    path = os.pathsep.join([str(site), str(ROOT)])  # this checkout, whichever one is installed
    return dict(os.environ, PYTHONPATH=path, NO_COLOR="1")


BROKEN = ("warning: plug-in 'broken' (lossdsl_missing_module:Loss, from lossdsl-broken-plugin 0.2) "
          "was not loaded: ModuleNotFoundError: No module named 'lossdsl_missing_module'\n")


def test_the_pre_commit_hook_checks_installed_plugin_names(site, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("model:\n  loss: 0.5 * squared() + sharp()\n", encoding="utf-8")
    checked = subprocess.run([sys.executable, "-m", "lossdsl", "check", str(config), "squared(gama=1)"],
                             env=environment(site), capture_output=True, text=True, timeout=120)
    assert checked.returncode == 1
    assert checked.stderr == BROKEN  # named, no Traceback, and the other plug-ins still load
    assert checked.stdout == ("squared(gama=1):1:9: squared() has no parameter 'gama' (valid "
                              "parameters of squared: head, ignore_index, reduction)\n")


def test_compile_list_explain_and_schema_know_installed_plugins(site):
    commands = [["compile", "sharp() + squared()", "--expand", "--format", "expr"], ["list"],
                ["explain", "squared"], ["explain", "sharp"], ["schema"]]
    run = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], env=environment(site),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    (compiled, listed, squared, sharp, schema) = json.loads(run.stdout)
    assert all(code == 0 and err == BROKEN for code, _, err in (compiled, listed, squared, sharp, schema))
    assert compiled[1] == "balance(modulate(bce(), gamma=3)) + squared()\n"
    assert listed[1].endswith("registered plug-ins:\n  sharp    focal loss with gamma 3\n  squared\n")
    assert squared[1].startswith("squared\nusage: squared(")
    assert sharp[1].startswith("sharp: focal loss with gamma 3\n")
    definitions = json.loads(schema[1])["definitions"]
    assert definitions["node_squared"]["description"] == "squared (a plug-in)"
    assert definitions["node_sharp"]["description"] == "focal loss with gamma 3"
