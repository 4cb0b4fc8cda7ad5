"""Framework integration details (issue 11, item 4, and item 3's compile(path)): argparse and Hydra
show lossdsl's own messages, logging-safe term names (``last_terms``, ``logged_terms``, ``name:``),
and a state_dict that knows which loss it belongs to.
"""

from __future__ import annotations

import argparse
import io
import re
import warnings
from contextlib import redirect_stderr
from pathlib import Path

import jsonschema
import pytest
import torch

import lossdsl

ROOT = Path(__file__).resolve().parent.parent
HYDRA = ROOT / "examples" / "hydra"
# What MLflow accepts in a metric name.
MLFLOW_NAME = re.compile(r"^[/\w.\- ]+$")


def error_of(text: str) -> lossdsl.LossDSLError:
    with pytest.raises(lossdsl.LossDSLError) as raised:
        lossdsl.parse(text)
    return raised.value


# -- argparse ---------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train")
    parser.add_argument("--loss", type=lossdsl.argtype, default="focal()")
    return parser


def test_argtype_gives_the_validated_spec():
    args = parser().parse_args(["--loss", "poly(focal(gamma=3), eps=1)"])
    assert args.loss == lossdsl.parse("poly(focal(gamma=3), eps=1)")
    assert parser().parse_args([]).loss == lossdsl.parse("focal()")  # string defaults go through it too
    assert isinstance(lossdsl.compile(args.loss), torch.nn.Module)


def test_argtype_reads_a_loss_file(tmp_path):
    path = tmp_path / "loss.yaml"
    path.write_text("kind: asl\ngamma_neg: 3\n", encoding="utf-8")
    assert parser().parse_args(["--loss", str(path)]).loss == lossdsl.parse("asl(gamma_neg=3)")


def test_argparse_prints_the_caret_message_verbatim():
    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit) as exit_:
        parser().parse_args(["--loss", "focal(gama=2)"])
    assert exit_.value.code == 2
    error = error_of("focal(gama=2)")
    assert stderr.getvalue() == (
        "usage: train [-h] [--loss LOSS]\n"
        f"train: error: argument --loss: {error}\n"
    )
    lines = stderr.getvalue().splitlines()
    assert lines[1] == "train: error: argument --loss: 1:7: focal() has no parameter 'gama'"
    assert lines[2] == "    focal(gama=2)"
    assert lines[3].index("^") == lines[2].index("gama")
    assert lines[4].startswith("did you mean 'gamma'? valid parameters of focal: ")
    assert "invalid" not in stderr.getvalue()  # not argparse's "invalid loss value"


def test_argparse_shows_file_errors_too(tmp_path):
    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit):
        parser().parse_args(["--loss", str(tmp_path / "missing.yaml")])
    assert f"train: error: argument --loss: cannot read {tmp_path / 'missing.yaml'}" in stderr.getvalue()


# -- Hydra ------------------------------------------------------------------------------------------


def test_repr_of_an_error_is_its_class_and_whole_message():
    error = error_of("focal(gama=2)")
    assert repr(error) == f"LossSpecError: {error}"
    assert repr(error).splitlines()[1:3] == ["    focal(gama=2)", "          ^"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(HYDRA), version_base=None):
        return hydra_compose(config_name="config", overrides=overrides)


def test_a_quoted_expression_override_composes_and_instantiates():
    from hydra.utils import instantiate

    cfg = compose(['loss.source.expr="asl(gamma_neg=5)"'])  # the shell saw '...="asl(gamma_neg=5)"'
    assert cfg.loss.source.expr == "asl(gamma_neg=5)"
    assert instantiate(cfg.loss).spec == lossdsl.parse("asl(gamma_neg=5)")
    cfg = compose(["loss.source.expr='uncertainty({seg: ce(), depth: l1()})'"])
    assert instantiate(cfg.loss).spec == lossdsl.parse("uncertainty({seg: ce(), depth: l1()})")


def test_an_unquoted_call_is_read_by_hydra_as_its_own_function():
    from hydra.errors import OverrideParseException

    with pytest.raises(OverrideParseException, match="Unknown function 'asl'"):
        compose(["loss.source.expr=asl(gamma_neg=5)"])


def test_a_failing_instantiate_shows_the_caret_message():
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose(['loss.source.expr="focal(gama=2) + ghm()"'])
    with pytest.raises(InstantiationException) as raised:
        instantiate(cfg.loss)
    message = str(raised.value)
    error = error_of("focal(gama=2) + ghm()")
    assert f"\nLossSpecError: {error}\n" in message
    lines = message.splitlines()
    source = lines.index("    focal(gama=2) + ghm()")
    assert lines[source + 1].index("^") == lines[source].index("gama")


# -- last_terms, names, logged_terms ----------------------------------------------------------------


def batch(classes: int = 3):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, classes, generator=generator, requires_grad=True)
    return x, (torch.rand(8, classes, generator=generator) < 0.3).float()


def test_last_terms_holds_the_total_of_a_single_task_loss():
    loss = lossdsl.compile("focal() + 0.5 * ghm(bins=30)")
    value = loss(*batch())
    assert list(loss.last_terms) == ["focal()", "ghm(bins=30)", "total"]
    torch.testing.assert_close(loss.last_terms["total"], value.detach())
    torch.testing.assert_close(loss.last_terms["focal()"] + 0.5 * loss.last_terms["ghm(bins=30)"],
                               value.detach())


def test_logged_terms_are_safe_metric_names_with_a_prefix():
    loss = lossdsl.compile("poly(focal(gamma=3), eps=-0.5) + 0.5 * bce(pos_weight=[1, 2, 3]) + ghm(bins=30)")
    loss(*batch())
    logged = loss.logged_terms(prefix="loss/")
    assert list(logged) == ["loss/poly_focal_gamma_3_eps_-0.5", "loss/bce_pos_weight_1_2_3",
                            "loss/ghm_bins_30", "loss/total"]
    assert all(MLFLOW_NAME.match(name) for name in logged)
    assert all(isinstance(value, float) for value in logged.values())
    assert logged["loss/total"] == pytest.approx(loss.last_terms["total"].item())
    tensors = loss.logged_terms(floats=False)
    assert all(isinstance(value, torch.Tensor) for value in tensors.values())


def test_logged_terms_stay_unique_when_labels_sanitise_alike():
    loss = lossdsl.compile("ce() + ce()")  # labels "ce()" and "ce()#2"
    loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert list(loss.logged_terms()) == ["ce", "ce_2", "total"]


def test_logged_terms_of_a_multitask_loss():
    loss = lossdsl.compile("uncertainty({seg: ce(), depth: l1()})")
    loss({"seg": torch.randn(4, 3), "depth": torch.randn(4, 1)},
         {"seg": torch.tensor([0, 1, 2, 0]), "depth": torch.randn(4, 1)})
    assert list(loss.logged_terms(prefix="train/")) == [
        "train/seg", "train/seg.weight", "train/seg.weighted", "train/depth", "train/depth.weight",
        "train/depth.weighted", "train/total",
    ]


def test_logged_terms_keep_per_element_values_as_tensors():
    loss = lossdsl.compile("bce(reduction=none)")
    loss(*batch())
    assert loss.logged_terms()["bce_reduction_none"].shape == (8, 3)


def test_a_prefix_with_characters_metric_stores_refuse_is_an_error():
    loss = lossdsl.compile("ce()")
    with pytest.raises(lossdsl.LossDSLError, match="prefix 'loss:' has characters metric stores refuse"):
        loss.logged_terms(prefix="loss:")


NAMED = """\
model:
  loss:
    terms:
      - {loss: "focal(gamma=3)", name: cls}
      - {loss: "ghm(bins=30)", weight: 0.5, name: hard_negatives}
      - "0.1 * ce()"
"""


def test_term_names_key_last_terms_and_logged_terms(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(NAMED, encoding="utf-8")
    loss = lossdsl.compile(str(path), key="model.loss")
    loss(*batch())
    assert list(loss.last_terms) == ["cls", "hard_negatives", "ce()", "total"]
    assert list(loss.logged_terms(prefix="loss/")) == [
        "loss/cls", "loss/hard_negatives", "loss/ce", "loss/total"
    ]


def test_term_names_print_back_in_the_node_form_and_not_in_the_expression():
    spec = lossdsl.load(NAMED, key="model.loss")
    assert [term.name for term in spec.terms] == ["cls", "hard_negatives", None]
    assert lossdsl.load(spec.to_dict()) == spec
    assert lossdsl.load(spec.to_yaml()) == spec
    assert spec.to_dict()["terms"][0] == {"loss": {"kind": "focal", "gamma": 3.0}, "name": "cls"}
    assert spec.to_expr() == "focal(gamma=3) + 0.5 * ghm(bins=30) + 0.1 * ce()"
    assert lossdsl.parse(spec.to_expr()) == spec.without_names()
    assert repr(lossdsl.compile(spec)) == f"lossdsl.compile({spec.to_expr()!r})"
    one = lossdsl.load("terms:\n  - {loss: focal(), name: cls}\n")
    assert one.to_dict() == {"terms": [{"loss": {"kind": "focal"}, "name": "cls"}]}  # not the bare node


@pytest.mark.parametrize(("text", "token", "fragment"), [
    ("terms:\n  - {loss: focal(), name: cls}\n  - {loss: ce(), name: cls}\n", "cls}\n",
     "two terms are named 'cls'; term names must be unique"),
    ("terms:\n  - {loss: focal(), name: 2nd}\n", "2nd", "a term name must be an identifier"),
    ("terms:\n  - {loss: focal(), name: my-loss}\n", "my-loss", "a term name must be an identifier"),
    ("terms:\n  - {loss: focal(), name: total}\n", "total",
     "'total' is reserved (last_terms['total'] holds the whole loss)"),
    ("terms:\n  - {loss: focal() + ce(), name: both}\n", "both",
     "name: labels one term, but this loss is a sum of 2 terms"),
    ("terms:\n  - {loss: focal(), nme: cls}\n", "nme", "unexpected key 'nme' in a term"),
])
def test_bad_term_names_point_at_the_name(text, token, fragment):
    with pytest.raises(lossdsl.LossDSLError) as raised:
        lossdsl.load(text)
    error = raised.value
    assert fragment in error.reason
    rows = text.split("\n")
    expected_line = max(i for i, row in enumerate(rows) if token.strip() in row) + 1
    assert error.line == expected_line, str(error)
    assert rows[error.line - 1][error.column - 1:].startswith(token.strip()), str(error)


def test_term_names_are_checked_on_specs_built_in_python():
    node = lossdsl.parse("ce()").terms[0].loss
    with pytest.raises(lossdsl.LossSpecError, match="must be an identifier"):
        lossdsl.Term(loss=node, name="a b")
    with pytest.raises(lossdsl.LossSpecError, match="two terms are named 'x'"):
        lossdsl.LossSpec(terms=(lossdsl.Term(loss=node, name="x"), lossdsl.Term(loss=node, name="x")))


def test_the_schema_describes_term_names():
    schema = lossdsl.json_schema()
    name = schema["definitions"]["Term"]["properties"]["name"]
    assert name["type"] == "string" and "last_terms" in name["description"]
    validator = jsonschema.Draft7Validator(schema)
    assert validator.is_valid({"terms": [{"loss": "focal()", "name": "cls"}]})
    assert not validator.is_valid({"terms": [{"loss": "focal()", "name": "2nd"}]})
    assert not validator.is_valid({"terms": [{"loss": "focal()", "name": "total"}]})


# -- state_dict records its loss ----------------------------------------------------------------------


def trained(expression: str):
    loss = lossdsl.compile(expression)
    loss(*batch())
    return loss


def test_state_dict_records_the_canonical_expression():
    loss = lossdsl.compile("ghm(bins=30, momentum=0.75) + focal()")
    state = loss.state_dict()
    assert list(state) == ["_extra_state", "terms.0.ghm_accumulator"]
    assert state["_extra_state"].dtype == torch.uint8  # a tensor: checkpoint tools move it like any other
    assert bytes(state["_extra_state"].tolist()).decode() == "ghm(bins=30, momentum=0.75) + focal()"


def test_loading_the_state_of_another_loss_names_both():
    saved = trained("ghm(bins=30, momentum=0.75) + focal()").state_dict()
    other = lossdsl.compile("ghm(bins=30, momentum=0.9) + focal()")
    before = other.state_dict()["terms.0.ghm_accumulator"].clone()
    with pytest.raises(lossdsl.LossDSLError) as raised:
        other.load_state_dict(saved)
    assert raised.value.reason == (
        "this state_dict was saved from the loss 'ghm(bins=30, momentum=0.75) + focal()', not from "
        "this loss 'ghm(bins=30, momentum=0.9) + focal()'"
    )
    assert "delete state_dict['_extra_state'] first" in raised.value.hint
    assert torch.equal(other.state_dict()["terms.0.ghm_accumulator"], before)  # nothing loaded
    with pytest.raises(lossdsl.LossDSLError, match="saved from the loss"):
        other.load_state_dict(saved, strict=False)  # torch's strict is about keys, not about losses


def test_a_loss_inside_a_model_names_its_entry():
    class Model(torch.nn.Module):
        def __init__(self, expression: str) -> None:
            super().__init__()
            self.head = torch.nn.Linear(2, 3)
            self.loss = lossdsl.compile(expression)

    saved = Model("focal()").state_dict()
    with pytest.raises(lossdsl.LossDSLError) as raised:
        Model("ce()").load_state_dict(saved)
    assert "saved from the loss 'focal()', not from this loss 'ce()'" in raised.value.reason
    assert "state_dict['loss._extra_state']" in raised.value.hint
    del saved["loss._extra_state"]  # the way to load it anyway
    Model("ce()").load_state_dict(saved)


def test_equal_losses_written_differently_load():
    saved = lossdsl.compile("uncertainty({seg: ce(), depth: l1()})")
    with torch.no_grad():
        saved.log_variance["seg"].fill_(0.5)
    resumed = lossdsl.compile("uncertainty({depth: l1(), seg: ce()})")  # the same tasks in another order
    resumed.load_state_dict(saved.state_dict())
    assert resumed.log_variance["seg"].item() == 0.5
    lossdsl.compile("balance(modulate(bce()), alpha=0.25)").load_state_dict(
        lossdsl.compile("focal()").state_dict()  # a name and its expansion
    )
    named = lossdsl.compile(lossdsl.load("terms:\n  - {loss: focal(), name: cls}\n"))
    named.load_state_dict(lossdsl.compile("focal()").state_dict())  # names only label the logs


def test_a_checkpoint_saved_before_the_record_loads(tmp_path):
    old = trained("ghm(bins=30, momentum=0.75)").state_dict()
    del old["_extra_state"]
    resumed = lossdsl.compile("ghm(bins=30, momentum=0.75)")
    resumed.load_state_dict(old)
    assert torch.equal(resumed.state_dict()["terms.0.ghm_accumulator"], old["terms.0.ghm_accumulator"])


def test_the_record_survives_torch_save_with_weights_only(tmp_path):
    path = tmp_path / "loss.pt"
    torch.save(trained("asl()").state_dict(), path)
    state = torch.load(path, weights_only=True)
    lossdsl.compile("asl()").load_state_dict(state)
    with pytest.raises(lossdsl.LossDSLError, match="saved from the loss 'asl\\(\\)'"):
        lossdsl.compile("asl(clip=0)").load_state_dict(state)


def test_tasks_of_a_multitask_loss_record_nothing_of_their_own():
    loss = lossdsl.compile("dtp({seg: ce(), depth: l1()})")
    assert [key for key in loss.state_dict() if key.endswith("_extra_state")] == ["_extra_state"]


def test_an_unreadable_record_is_named():
    loss = lossdsl.compile("ce()")
    with pytest.raises(lossdsl.LossDSLError, match="'_extra_state' is not a lossdsl expression"):
        loss.load_state_dict({"_extra_state": torch.zeros(2, 2)})


# -- compile(path) ------------------------------------------------------------------------------------


def test_compile_reads_a_path_string(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  loss: focal(gamma=3)\n", encoding="utf-8")
    assert lossdsl.compile(str(path), key="model.loss").spec == lossdsl.parse("focal(gamma=3)")
    whole = tmp_path / "loss.yml"
    whole.write_text("kind: asl\n", encoding="utf-8")
    assert lossdsl.compile(str(whole)).spec == lossdsl.parse("asl()")
    plain = tmp_path / "loss"  # no suffix, but an existing file named with its folder
    plain.write_text("ce(smoothing=0.1)\n", encoding="utf-8")
    assert lossdsl.compile(str(plain)).spec == lossdsl.parse("ce(smoothing=0.1)")


def test_compile_of_a_missing_yaml_path_says_it_cannot_be_read(tmp_path):
    with pytest.raises(lossdsl.LossDSLError, match="cannot read"):
        lossdsl.compile(str(tmp_path / "missing.yaml"))


def test_a_bare_name_stays_an_expression_whatever_files_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("focal").write_text("ce()\n", encoding="utf-8")
    assert lossdsl.compile("focal").spec == lossdsl.parse("focal()")


def test_key_with_an_expression_is_an_error():
    with pytest.raises(lossdsl.LossDSLError, match="selects a loss inside a file or mapping"):
        lossdsl.compile("focal()", key="model.loss")


def test_no_warnings_on_the_everyday_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = lossdsl.compile("focal()")
        loss(*batch())
        loss.load_state_dict(loss.state_dict())
        loss.logged_terms()
