"""How the package imports (issue 11, items 1 and 5).

- Module-level imports between lossdsl's modules form no cycle: a layer never needs the one above it
  (STYLE.md: kernels <- catalogue <- syntax/spec <- validate <- compiler <- api <- cli).
- Checking a config needs no torch: ``import lossdsl``, ``parse``, ``load`` and ``lossdsl check``,
  ``schema``, ``list`` and ``explain`` run without importing it; compiling a loss imports it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lossdsl"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """The lossdsl modules ``path`` imports when it is imported (not inside functions, not under
    ``if TYPE_CHECKING:``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("lossdsl"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lossdsl"))
    return found


def test_module_level_imports_form_no_cycle():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in top_level_imports(path):
            while target and target not in modules:  # `from .x import name`: the module is x
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    # A package's __init__ importing its own submodules is how registration works, not a cycle
    # of layers: leave those edges out.
    for name, targets in graph.items():
        if modules[name].name == "__init__.py":
            graph[name] = {t for t in targets if not t.startswith(name + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


CHECK_WITHOUT_TORCH = """
import sys
import lossdsl
from lossdsl.cli import main
spec = lossdsl.parse("poly(focal(gamma=2), eps=1) + dice()")
lossdsl.load("focal()")
for argv in (["check", sys.argv[1]], ["schema"], ["list"], ["explain", "focal"], ["compile", "asl()",
             "--format", "expr"]):
    assert main(argv) == 0, argv
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:5]
lossdsl.compile("focal()")
assert "torch" in sys.modules
print("OK")
"""


def test_checking_a_config_does_not_import_torch():
    """The CLI's tree view (`compile` without a format) compiles the loss to list its state, so it
    imports torch; everything else that only reads configs does not."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_TORCH, str(ROOT / "examples" / "detector.yaml")],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("OK")


def every_import(path: Path) -> set[str]:
    """Like top_level_imports, but also the imports inside functions (the lazy ones)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in skipped and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            found.add(".".join(base + ([node.module] if node.module else [])))
    return found


def test_the_catalogue_imports_nothing_above_it_not_even_lazily():
    """The catalogue (names, specs, printing) sits below the validator, the compiler and the CLI:
    what it needs from them is handed in (catalogue.base.CHILD_BUILDER), never imported."""
    above = ("lossdsl.validate", "lossdsl.api", "lossdsl.compiler", "lossdsl.cli", "lossdsl.printer",
             "lossdsl.spec", "lossdsl.syntax", "lossdsl.module", "lossdsl.terms", "lossdsl.functional")
    for path in (PACKAGE / "catalogue").glob("*.py"):
        wrong = {target for target in every_import(path) if target.startswith(above)}
        assert not wrong, f"{path.name} imports {sorted(wrong)}"


def test_the_pre_commit_hook_runs_lossdsl_check_on_config_files():
    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    (hook,) = hooks
    assert hook["id"] == "lossdsl-check" and hook["entry"] == "lossdsl check"
    assert hook["language"] == "python"
    import re

    assert re.search(hook["files"], "configs/exp.yaml") and not re.search(hook["files"], "train.py")
