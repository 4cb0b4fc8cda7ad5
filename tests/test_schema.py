"""lossdsl.json_schema(): a draft 7 schema of the mapping form, built from the catalogue (SPEC 3, 5)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given
from strategies import specs

import lossdsl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Every top-level example is an experiment file with its loss at model.loss.
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
EXAMPLE_KEY = "model.loss"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(lossdsl.json_schema())


def test_schema_is_a_valid_draft_7_schema():
    schema = lossdsl.json_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_schema_is_plain_json_data():
    import json

    schema = lossdsl.json_schema()
    assert json.loads(json.dumps(schema)) == schema


def test_every_catalogue_name_has_a_node_schema():
    definitions = lossdsl.json_schema()["definitions"]
    for name in lossdsl.CATALOGUE:
        assert f"node_{name}" in definitions


@given(specs())
def test_schema_accepts_the_dict_form_of_every_generated_spec(validator, spec):
    validator.validate(spec.to_dict())


@given(specs())
def test_schema_accepts_the_yaml_form_of_every_generated_spec(validator, spec):
    validator.validate(yaml.safe_load(spec.to_yaml()))


@given(specs())
def test_schema_accepts_the_expression_form_of_every_generated_spec(validator, spec):
    validator.validate(spec.to_expr())


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_schema_accepts_the_example_losses(validator, path):
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    for part in EXAMPLE_KEY.split("."):
        document = document[part]
    validator.validate(document)


def test_every_example_file_is_covered():
    # The examples are found by glob, so every one is covered; this guards against an empty folder
    # and against an example whose loss sits elsewhere (the tests would look at the wrong key).
    assert EXAMPLE_FILES
    for path in EXAMPLE_FILES:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert "loss" in document.get("model", {}), f"{path.name} has no {EXAMPLE_KEY}"


def test_schema_for_a_key_describes_the_whole_document():
    schema = lossdsl.schema.loss_json_schema(key=EXAMPLE_KEY)
    jsonschema.Draft7Validator.check_schema(schema)
    for path in EXAMPLE_FILES:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        jsonschema.Draft7Validator(schema).validate(document)
    assert not jsonschema.Draft7Validator(schema).is_valid({"model": {}})


def test_schema_accepts_the_expression_mapping_form(validator):
    validator.validate({"expr": "a + 0.5 * b", "define": {"a": "ce()", "b": "bce()"}, "reduction": "sum"})


def test_schema_accepts_the_terms_form_with_mixed_entries(validator):
    validator.validate({"terms": ["ce()", {"kind": "bce"}, {"loss": "l1()", "weight": -2, "reduction": "sum"}]})


def test_schema_rejects_a_node_with_an_unknown_parameter(validator):
    assert validator.is_valid({"kind": "ce", "smoothing": 0.1})
    assert not validator.is_valid({"kind": "ce", "smothing": 0.1})


def test_schema_rejects_an_unknown_kind(validator):
    assert not validator.is_valid({"kind": "cee"})


def test_schema_rejects_out_of_range_and_mistyped_values(validator):
    assert not validator.is_valid({"kind": "ce", "smoothing": 1})
    assert not validator.is_valid({"kind": "ce", "ignore_index": "255"})
    assert not validator.is_valid({"kind": "smooth_l1", "beta": 0})


def test_schema_rejects_an_unknown_reduction(validator):
    assert not validator.is_valid({"kind": "ce", "reduction": "summ"})
    assert not validator.is_valid({"terms": [{"loss": "ce()", "reduction": "avg"}]})


def test_schema_rejects_unknown_keys_in_the_sum_and_expression_forms(validator):
    assert not validator.is_valid({"terms": [{"loss": "ce()", "weigth": 2}]})
    assert not validator.is_valid({"expr": "ce()", "defines": {}})
    assert not validator.is_valid({"terms": []})


def test_schema_child_losses_accept_any_registered_node(validator):
    if "poly" not in lossdsl.CATALOGUE:
        pytest.skip("poly is not in the catalogue yet")
    assert validator.is_valid({"kind": "poly", "loss": {"kind": "bce"}, "eps": 2})
    assert not validator.is_valid({"kind": "poly", "loss": {"kind": "bce", "gamma": 2}})
