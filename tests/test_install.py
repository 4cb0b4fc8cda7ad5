"""What users install is the wheel: it must hold every module and the grammar, and work on its own.

The project is copied to a scratch folder (so the build leaves nothing in the checkout); an sdist and a
wheel are built from it, a second wheel is built from the unpacked sdist (so the sdist is complete
too), and that wheel is installed into a target folder. The probe then runs with ``python -I -S``:
no site-packages processing, so no ``.pth`` file and no editable finder of a development install can
answer an import the wheel lacks; ``sys.path`` holds only the install target and the folders of the
runtime dependencies (torch, lark, pydantic, PyYAML). Every module of the package is imported from
there with ``pkgutil.walk_packages`` and the CLI runs.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "lossdsl", "grammar")
RUNTIME_DEPENDENCIES = ("torch", "lark", "pydantic", "pydantic_core", "yaml", "annotated_types",
                        "typing_extensions", "typing_inspection")

pytestmark = pytest.mark.slow

PROBE = textwrap.dedent(
    """
    import sys
    target, checkout, *deps = sys.argv[1:]
    sys.path[:0] = [target, *deps]
    import importlib, importlib.util, pathlib, pkgutil

    import lossdsl
    target, checkout = pathlib.Path(target).resolve(), pathlib.Path(checkout).resolve()
    imported = []
    for info in pkgutil.walk_packages(lossdsl.__path__, "lossdsl."):
        try:
            module = importlib.import_module(info.name)
        except ImportError as error:  # an adapter whose framework is an optional extra, not here
            assert info.name.startswith("lossdsl.integrations.") and "pip install 'lossdsl[" in str(error)
            module = sys.modules.get(info.name) or importlib.util.find_spec(info.name)
            where = pathlib.Path(module.origin).resolve()
            assert where.is_relative_to(target), (info.name, where)
            imported.append(info.name)
            continue
        where = pathlib.Path(module.__file__).resolve()
        assert where.is_relative_to(target) and not where.is_relative_to(checkout), (info.name, where)
        imported.append(info.name)

    from importlib import resources
    grammar = resources.files("lossdsl.grammar").joinpath("lossdsl.lark")
    assert pathlib.Path(str(grammar)).resolve().is_relative_to(target), grammar

    import torch
    loss = lossdsl.compile("0.5 * ce(smoothing=0.1) + 0.5 * poly(focal(head=softmax), eps=1)")
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]], requires_grad=True)
    loss(logits, torch.tensor([0, 2])).backward()
    assert torch.isfinite(logits.grad).all()

    from lossdsl.cli import main
    assert main(["compile", "poly(focal(gamma=2), eps=1) + 0.5 * ghm(bins=30)", "--format", "expr"]) == 0
    print("IMPORTED", " ".join(sorted(imported)))
    """
)


def _build(source: Path, out: Path, kind: str) -> Path:
    """Build an sdist or a wheel of ``source`` with setuptools' PEP 517 backend (no isolation: the
    test venv's setuptools, nothing downloaded)."""
    code = (
        "import sys; from setuptools import build_meta as backend; "
        f"print(backend.build_{kind}(sys.argv[1]))"
    )
    built = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True,
                           text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    return out / built.stdout.strip().splitlines()[-1]


def _package_files() -> set[str]:
    """Every module of the checkout's package, and the grammar, as paths inside an installed wheel."""
    modules = {
        path.relative_to(ROOT).as_posix() for path in (ROOT / "lossdsl").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    grammar = {f"lossdsl/grammar/{path.name}" for path in (ROOT / "grammar").iterdir()
               if path.suffix in (".py", ".lark")}
    return modules | grammar


def _dependency_folders() -> list[str]:
    folders = []
    for name in RUNTIME_DEPENDENCIES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        folder = origin.parent.parent if origin.name == "__init__.py" else origin.parent
        if str(folder) not in folders:
            folders.append(str(folder))
    return folders


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, source / name)
    dist = tmp / "dist"
    dist.mkdir()
    sdist = _build(source, dist, "sdist")
    wheel = _build(source, dist, "wheel")
    # A wheel built from the unpacked sdist: what pip does when it installs from the sdist.
    unpacked = tmp / "unpacked"
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    from_sdist_dir = tmp / "from_sdist"
    from_sdist_dir.mkdir()
    from_sdist = _build(next(unpacked.iterdir()), from_sdist_dir, "wheel")
    return {"tmp": tmp, "sdist": sdist, "wheel": wheel, "from_sdist": from_sdist}


def test_the_wheel_holds_every_module_and_the_grammar(built):
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    missing = sorted(_package_files() - names)
    assert not missing, f"the wheel lacks {missing}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "lossdsl = lossdsl.cli:main" in zipfile.ZipFile(built["wheel"]).read(entry_points).decode()
    # Only the package: no top-level grammar/, tests/ or examples/ package beside it.
    assert {name.split("/")[0] for name in names if not name.startswith("lossdsl-")} == {"lossdsl"}


def test_the_mit_license_ships_in_the_sdist_and_the_wheel(built):
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License\n")
    with tarfile.open(built["sdist"]) as archive:
        (member,) = [m for m in archive.getmembers() if m.name.endswith("/LICENSE")]
        assert archive.extractfile(member).read().decode() == license_text
    for wheel in (built["wheel"], built["from_sdist"]):
        archive = zipfile.ZipFile(wheel)
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(name).decode() == license_text
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: MIT" in archive.read(metadata).decode()


def test_the_sdist_builds_a_complete_wheel(built):
    names = set(zipfile.ZipFile(built["from_sdist"]).namelist())
    missing = sorted(_package_files() - names)
    assert not missing, f"a wheel built from the sdist lacks {missing}"


def test_the_installed_wheel_imports_every_module_and_runs_the_cli_on_its_own(built):
    target = built["tmp"] / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--disable-pip-version-check", "--target", str(target), str(built["from_sdist"])],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = built["tmp"] / "elsewhere"
    elsewhere.mkdir()
    # -I: no PYTHONPATH, no user site, no script folder on the path; -S: no site-packages, so no
    # .pth files (an editable install's finder is one) run.
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(target), str(ROOT), *_dependency_folders()],
        cwd=elsewhere, capture_output=True, text=True, timeout=300, check=False,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert "poly(focal()) + 0.5 * ghm(bins=30)" in probe.stdout
    imported = probe.stdout.split("IMPORTED", 1)[1].split()
    expected = {
        path[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for path in _package_files() if path.endswith(".py")
    } - {"lossdsl"}
    assert set(imported) >= expected - {"lossdsl.__main__"}
