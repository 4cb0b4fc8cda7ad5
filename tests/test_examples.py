"""Every example works: the experiment YAMLs pass ``lossdsl check`` and the JSON Schema, compile and
evaluate on a batch; the Hydra config instantiates; the training scripts run (shortened).

The scripts are imported from examples/ and their ``main(argv)`` is called in this process (a
subprocess would import torch again); their output is what a user sees in the terminal.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

import lossdsl
import lossdsl.schema
from lossdsl.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))  # every top-level example: an experiment file
KEY = "model.loss"
HYDRA = EXAMPLES / "hydra"
HYDRA_KEY = "loss.source"  # the loss form that hydra passes to lossdsl.compile(source=...)
HYDRA_EXPECTED = "focal(gamma=2) + 0.5 * ghm(bins=30, momentum=0.75)"

by_name = pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)


def import_example(name: str):
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"lossdsl_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo():
    return import_example("demo")


@pytest.fixture(scope="module")
def train():
    return import_example("train")


@pytest.fixture(scope="module")
def train_multitask():
    return import_example("train_multitask")


def is_multitask(spec: lossdsl.LossSpec) -> bool:
    return getattr(spec.terms[0].loss, "tasks", None) is not None


def test_there_are_examples_of_every_kind():
    names = {path.name for path in EXAMPLE_FILES}
    assert {"detector.yaml", "tagging.yaml", "segmentation.yaml", "multitask.yaml"} <= names
    assert (HYDRA / "config.yaml").is_file() and (HYDRA / "README.md").is_file()


# -- check and schema ---------------------------------------------------------------------------------


def test_lossdsl_check_accepts_every_example(capsys):
    files = [str(path) for path in EXAMPLE_FILES]
    assert cli(["check", *files]) == 0
    assert capsys.readouterr().out.strip() == f"{len(files)} files OK"


@by_name
def test_lossdsl_check_with_the_key(capsys, path):
    assert cli(["check", str(path), "--key", KEY]) == 0, capsys.readouterr().out


@by_name
def test_the_schema_accepts_the_example(path):
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(lossdsl.schema.loss_json_schema(key=KEY)).validate(document)
    jsonschema.Draft7Validator(lossdsl.json_schema()).validate(document["model"]["loss"])


# -- compile and evaluate -----------------------------------------------------------------------------


@by_name
def test_each_example_compiles_and_evaluates_on_a_batch(demo, path):
    spec = lossdsl.load(path, key=KEY)
    loss = lossdsl.compile(spec)
    assert loss.spec == spec
    assert repr(loss) == f"lossdsl.compile({spec.to_expr()!r})"
    classes = 4 if "segmentation" in path.name else 6  # segmentation has one weight per class
    inputs, target = demo.batch_for(loss, classes, torch.Generator().manual_seed(0))
    leaves = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    for leaf in leaves:
        leaf.requires_grad_(True)
    value = loss(inputs, target)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0
    assert loss.last_terms and all(torch.isfinite(term) for term in loss.last_terms.values())
    if is_multitask(spec) and spec.terms[0].loss.kind_name() == "uncertainty":
        assert [name for name, _ in loss.named_parameters()]  # learnable task weights


def test_the_demo_runs_every_example(demo, capsys):
    demo.main()
    out = capsys.readouterr().out
    for path in EXAMPLE_FILES:
        assert f"== {path.name}" in out
    assert "gradient finite: False" not in out
    assert "did you mean 'gamma'?" in out


# -- Hydra --------------------------------------------------------------------------------------------


def compose_hydra(overrides: list[str] | None = None):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(HYDRA), version_base=None):
        return compose(config_name="config", overrides=overrides or [])


def test_the_hydra_config_instantiates_the_loss():
    from hydra.utils import instantiate

    loss = instantiate(compose_hydra().loss)
    assert isinstance(loss, lossdsl.CompiledLoss) and isinstance(loss, torch.nn.Module)
    assert loss.spec == lossdsl.parse(HYDRA_EXPECTED)
    value = loss(torch.randn(8, 5), (torch.rand(8, 5) < 0.2).float())
    assert torch.isfinite(value)


def test_hydra_overrides_reach_the_loss_through_interpolation():
    from hydra.utils import instantiate

    loss = instantiate(compose_hydra(["gamma=3", "ghm_weight=0.25"]).loss)
    assert loss.spec == lossdsl.parse("focal(gamma=3) + 0.25 * ghm(bins=30, momentum=0.75)")


def test_the_hydra_config_passes_check_and_schema_once_resolved(tmp_path, capsys):
    from omegaconf import OmegaConf

    raw = yaml.safe_load((HYDRA / "config.yaml").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(lossdsl.schema.loss_json_schema(key=HYDRA_KEY)).validate(raw)
    resolved = OmegaConf.to_container(compose_hydra(), resolve=True)
    jsonschema.Draft7Validator(lossdsl.schema.loss_json_schema(key=HYDRA_KEY)).validate(resolved)
    assert lossdsl.load(resolved, key=HYDRA_KEY) == lossdsl.parse(HYDRA_EXPECTED)
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(resolved), encoding="utf-8")
    assert cli(["check", str(path), "--key", HYDRA_KEY]) == 0, capsys.readouterr().out


def test_the_hydra_readme_names_the_config_and_instantiate():
    readme = (HYDRA / "README.md").read_text(encoding="utf-8")
    assert 'compose(config_name="config")' in readme and "instantiate(cfg.loss)" in readme
    assert yaml.safe_load((HYDRA / "config.yaml").read_text())["loss"]["_target_"] == "lossdsl.compile"


# -- examples/train.py --------------------------------------------------------------------------------

STEP_LINE = re.compile(r"^step +(\d+) +loss (\S+) +\| +(.*)$")


def term_names(path: Path, demo) -> list[str]:
    """The names ``loss.last_terms`` gives each term of the example's loss."""
    loss = lossdsl.compile(lossdsl.load(path, key=KEY))
    classes = 4 if "segmentation" in path.name else 6
    inputs, target = demo.batch_for(loss, classes, torch.Generator().manual_seed(0))
    loss(inputs, target)
    return list(loss.last_terms)


SINGLE_TASK = [path for path in EXAMPLE_FILES if not is_multitask(lossdsl.load(path, key=KEY))]


@pytest.mark.parametrize("path", SINGLE_TASK, ids=lambda path: path.name)
def test_train_runs_and_logs_every_term(train, demo, capsys, path):
    assert train.main([str(path), "--steps", "30"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    spec = lossdsl.load(path, key=KEY)
    assert lines[0] == f"loss: lossdsl.compile({spec.to_expr()!r})"
    steps = [STEP_LINE.match(line) for line in lines if line.startswith("step ")]
    assert [int(match[1]) for match in steps] == [1, 30]  # the first and the last step
    names = term_names(path, demo)
    assert names
    for match in steps:
        assert float(match[2]) == float(match[2])  # a number, not nan
        for name in names:
            assert f"{name} " in match[3], (name, match[0])
    assert re.search(r"^test (mAP|macro recall) \d\.\d{3}, on the rarest third", lines[-1], re.M), out


def test_train_default_config_learns_the_rare_classes_too(train, capsys):
    assert train.main([]) == 0  # examples/tagging.yaml, its train.steps (300)
    out = capsys.readouterr().out
    assert "task: multi-label, 20 long-tailed classes, 300 steps" in out
    assert "step  300" in out
    quality = float(re.search(r"test mAP (\d\.\d+)", out)[1])
    assert quality > 0.5  # it learns, rare classes included in the mean


def test_train_refuses_a_multitask_loss_with_a_pointer(train, capsys):
    assert train.main([str(EXAMPLES / "multitask.yaml"), "--steps", "1"]) == 1
    assert "run examples/train_multitask.py instead" in capsys.readouterr().out


# -- examples/train_multitask.py ----------------------------------------------------------------------

MT_LINE = re.compile(
    r"^step +(\d+) +total (\S+) +\| +seg (\S+) +depth (\S+) +\| +weights seg\.weight (\S+) +depth\.weight (\S+)$"
)


def multitask_steps(out: str) -> list[tuple[int, float, float]]:
    """(step, seg weight, depth weight) of each logged step."""
    rows = []
    for line in out.splitlines():
        if line.startswith("step "):
            match = MT_LINE.match(line)
            assert match, line
            rows.append((int(match[1]), float(match[5]), float(match[6])))
    return rows


def test_train_multitask_logs_the_uncertainty_weights(train_multitask, capsys):
    assert train_multitask.main(["--steps", "20"]) == 0
    out = capsys.readouterr().out
    spec = lossdsl.load(EXAMPLES / "multitask.yaml", key=KEY)
    assert out.splitlines()[0] == f"loss: lossdsl.compile({spec.to_expr()!r})"
    assert "learnable loss parameters: ['log_variance.depth', 'log_variance.seg']" in out
    rows = multitask_steps(out)
    assert [step for step, _, _ in rows] == [1, 20]
    (_, seg_first, depth_first), (_, seg_last, depth_last) = rows
    assert (seg_first, depth_first) == (1.0, 0.5)  # kendall: exp(-s), and exp(-s)/2 for regression
    assert (seg_last, depth_last) != (seg_first, depth_first)  # the log-variances trained


def test_train_multitask_with_a_dtp_expression(train_multitask, capsys):
    expression = "dtp({seg: ce(ignore_index=255), depth: smooth_l1(beta=0.5)})"
    assert train_multitask.main(["--loss", expression, "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"loss: lossdsl.compile({lossdsl.parse(expression).to_expr()!r})"
    assert "learnable loss parameters: none" in out
    rows = multitask_steps(out)
    assert [step for step, _, _ in rows] == [1, 20]
    for _, seg, depth in rows:
        assert seg > 0 and depth > 0 and (seg, depth) != (1.0, 1.0)  # priorities from the KPIs


# -- the segmentation demo ----------------------------------------------------------------------------


def test_train_segmentation_prints_the_per_class_iou_of_ce_against_ce_plus_dice(capsys):
    segmentation = import_example("train_segmentation")
    assert segmentation.main(["--steps", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny segmenter, 20 steps, per-class IoU")
    rows = {line.split("  ")[0]: line for line in out[2:]}
    assert set(rows) == set(segmentation.DEFAULT_LOSSES)
    for line in rows.values():
        scores = [float(cell) for cell in line.split()[-6:-2]]
        assert all(0 <= score <= 1 for score in scores)


# -- the distillation demo ------------------------------------------------------------------------------


def test_train_distillation_compares_ce_with_kd_from_the_teachers_logits(capsys):
    distillation = import_example("train_distillation")
    assert distillation.main(["--epochs", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("teacher (4,000 clean examples): test accuracy ")
    assert out[1] == "student: 300 examples, 88 with a wrong label, 2 epochs"
    rows = {line.strip().split("  ")[0]: float(line.split()[-1]) for line in out[2:]}
    assert set(rows) == set(distillation.DEFAULT_LOSSES)
    assert all(0 <= accuracy <= 1 for accuracy in rows.values())


# -- the long-tail demo -------------------------------------------------------------------------------


def test_train_longtail_prints_the_table_of_the_long_tail_papers(capsys):
    """Shortened (one seed, a few steps): the table's rows and groups, not its accuracies."""
    longtail = import_example("train_longtail")
    assert longtail.main(["--seeds", "1", "--steps", "3", "--test-per-class", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("long-tailed digits: 242 training images, per class "
                             "[100, 59, 35, 21, 12, 7, 4, 2, 1, 1] (imbalance ratio 100), 100 balanced")
    assert out[2].split() == ["loss", "balanced", "many", "medium", "few", "time"]
    labels = [label for label, _ in longtail.default_losses([1] * 10)]
    assert [line[: len(label)] for line, label in zip(out[3:], labels)] == labels
    assert len(out) == 3 + len(labels)
    for line in out[3:]:
        cells = line.rsplit("  ", 1)[0].split("+-")
        assert len(cells) == 5  # four "mean +- spread" cells
