"""The catalogue describes itself from one source: each parameter's pydantic field (issue 11, item 1).

The JSON Schema, `lossdsl explain`, `lossdsl list --params` and the README's table all read the
field's description, type, range and default; nothing is written twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import lossdsl
from lossdsl.catalogue import CATALOGUE
from lossdsl.catalogue_text import catalogue_listing, explain, explanation, update_readme

README = Path(__file__).resolve().parent.parent / "README.md"
BUILTIN = sorted(name for name, cls in CATALOGUE.items() if cls.__module__.startswith("lossdsl."))


def parameters(name):
    cls = CATALOGUE[name]
    return [f for f in cls.model_fields if f != "kind" and f not in cls.loss_fields]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_parameter_is_described_on_its_field(name):
    cls = CATALOGUE[name]
    missing = [field for field in parameters(name) if not cls.model_fields[field].description]
    assert not missing, f"{name}: describe {missing} with Field(description=...)"


@pytest.mark.parametrize("name", BUILTIN)
def test_the_schema_and_explain_read_the_same_description(name):
    schema = lossdsl.json_schema()["definitions"][f"node_{name}"]["properties"]
    text = explain(name)
    for field in parameters(name):
        description = CATALOGUE[name].model_fields[field].description
        assert schema[field]["description"] == description
        assert schema[field]["markdownDescription"].startswith(description)  # editors' hover text
        assert " ".join(description.split()[:4]) in " ".join(text.split())


def test_explain_is_plain_text_with_a_usage_line_targets_and_equivalents():
    text = explain("focal")
    assert "``" not in text
    assert "\nusage: focal(gamma=2, alpha=0.25, head=sigmoid, ignore_index=-100, background=false, " \
           "reduction=mean)\n" in text
    assert "\ntargets: the logits' shape" in text
    assert "\nsame as:\n  torchvision.ops.sigmoid_focal_loss(" in text
    info = explanation("dice")
    assert info["expands_to"].startswith("tversky(")
    assert any(call.startswith("monai.losses.DiceLoss(") for call in info["equivalents"])


def test_list_params_shows_each_parameter_with_its_default_and_meaning():
    text = catalogue_listing(params=True)
    assert "    gamma=2  focusing exponent: the loss is multiplied by (1 - p_t)^gamma" in text
    assert "    margin=0.05  probability shift of negatives" in text


def test_the_readme_catalogue_table_is_current():
    text = README.read_text(encoding="utf-8")
    assert update_readme(text) == text, "run: python -m lossdsl.catalogue_text --update README.md"
