"""A spec survives every representation: canonical text, YAML and the plain node form (SPEC 3, 5)."""

from __future__ import annotations

import yaml
from hypothesis import given
from strategies import generated_specs, specs

import lossdsl

# -- properties over the whole catalogue --------------------------------------------------------------


@given(generated_specs())
def test_validator_builds_the_same_spec_as_the_models_directly(generated):
    assert generated.spec == generated.direct


@given(specs())
def test_parsing_the_canonical_expression_gives_the_same_spec(spec):
    assert lossdsl.parse(spec.to_expr()) == spec


@given(specs())
def test_canonical_expression_is_a_fixed_point(spec):
    text = spec.to_expr()
    assert lossdsl.parse(text).to_expr() == text


@given(specs())
def test_loading_the_yaml_form_gives_the_same_spec(spec):
    assert lossdsl.load(spec.to_yaml()) == spec


@given(specs())
def test_loading_the_dict_form_gives_the_same_spec(spec):
    assert lossdsl.load(spec.to_dict()) == spec


@given(specs())
def test_yaml_form_is_the_dict_form(spec):
    assert yaml.safe_load(spec.to_yaml()) == spec.to_dict()


@given(specs())
def test_expression_inside_a_yaml_mapping_gives_the_same_spec(spec):
    assert lossdsl.load({"model": {"loss": spec.to_expr()}}, key="model.loss") == spec


@given(specs())
def test_expression_as_a_yaml_string_gives_the_same_spec(spec):
    document = yaml.safe_dump({"loss": spec.to_expr()}, width=10**6)
    assert lossdsl.load(document, key="loss") == spec


@given(specs())
def test_equal_specs_are_interchangeable_as_dictionary_keys(spec):
    again = lossdsl.parse(spec.to_expr())
    assert hash(again) == hash(spec)
    assert {spec: 1}[again] == 1


@given(specs())
def test_str_of_a_spec_is_its_canonical_expression(spec):
    assert str(spec) == spec.to_expr()


# -- explicit examples --------------------------------------------------------------------------------


def test_defaults_are_left_out_of_the_canonical_expression():
    assert lossdsl.parse("ce(smoothing=0, ignore_index=-100, weight=none)").to_expr() == "ce()"


def test_parameters_print_in_declaration_order_whatever_order_they_were_written_in():
    a = lossdsl.parse("ce(smoothing=0.1, ignore_index=255)")
    b = lossdsl.parse("ce(ignore_index=255, smoothing=0.1)")
    assert a == b
    assert a.to_expr() == b.to_expr() == "ce(ignore_index=255, smoothing=0.1)"


def test_readme_example_prints_canonically():
    spec = lossdsl.parse("0.7 * ce(smoothing=0.1, ignore_index=255) + 0.3 * bce(pos_weight=[1,2])")
    assert spec.to_expr() == "0.7 * ce(ignore_index=255, smoothing=0.1) + 0.3 * bce(pos_weight=[1, 2])"


def test_weight_times_a_parenthesised_sum_flattens_to_two_weighted_terms():
    spec = lossdsl.parse("2 * (ce() + 3 * l1())")
    assert [(t.loss.kind_name(), t.weight) for t in spec.terms] == [("ce", 2.0), ("l1", 6.0)]
    assert spec == lossdsl.parse("2 * ce() + 6 * l1()")


def test_negated_loss_is_one_term_of_weight_minus_one():
    spec = lossdsl.parse("-ce()")
    assert len(spec.terms) == 1
    assert spec.terms[0].weight == -1
    assert lossdsl.parse(spec.to_expr()) == spec


def test_division_by_a_number_scales_the_weight():
    spec = lossdsl.parse("l1() / 4")
    assert spec.terms[0].weight == 0.25
    assert spec.to_expr() == "0.25 * l1()"


def test_subtraction_prints_as_a_minus_sign():
    spec = lossdsl.parse("ce() - 0.5 * l1()")
    assert spec.terms[1].weight == -0.5
    assert spec.to_expr() == "ce() - 0.5 * l1()"


def test_weight_one_is_not_printed_and_whole_weights_print_without_a_point():
    assert lossdsl.parse("1.0 * ce() + 2.0 * bce()").to_expr() == "ce() + 2 * bce()"


def test_reduction_prints_on_the_call_as_a_bare_word():
    spec = lossdsl.parse("mse(reduction=none) + 0.5 * l1(reduction=none)")
    assert spec.to_expr() == "mse(reduction=none) + 0.5 * l1(reduction=none)"


def test_default_reduction_is_left_out():
    assert lossdsl.parse("ce(reduction=mean)").to_expr() == "ce()"


def test_extreme_weights_survive_the_round_trip():
    for weight in (5e-324, 1.7976931348623157e308, -1e-300, 0.1 + 0.2):
        spec = lossdsl.load({"terms": [{"loss": "ce()", "weight": weight}, "bce()"]})
        assert spec.terms[0].weight == weight
        assert lossdsl.parse(spec.to_expr()) == spec
        assert lossdsl.load(spec.to_yaml()) == spec


def test_single_unweighted_term_dict_form_is_a_bare_node():
    assert lossdsl.parse("bce(pos_weight=2, reduction=sum)").to_dict() == {
        "kind": "bce", "pos_weight": 2, "reduction": "sum",
    }


def test_weighted_sum_dict_form_lists_terms():
    assert lossdsl.parse("0.5 * ce() + l1(reduction=sum)").to_dict() == {
        "terms": [{"loss": {"kind": "ce"}, "weight": 0.5}, {"loss": {"kind": "l1"}, "reduction": "sum"}]
    }


def test_per_class_lists_become_tuples_and_print_as_lists():
    spec = lossdsl.parse("ce(weight=[1, 0.5])")
    assert spec.terms[0].loss.weight == (1.0, 0.5)
    assert spec.to_expr() == "ce(weight=[1, 0.5])"
    assert spec.to_dict() == {"kind": "ce", "weight": [1, 0.5]}


def test_a_bare_catalogue_name_is_the_call_with_defaults():
    assert lossdsl.parse("ce") == lossdsl.parse("ce()")


def test_equal_specs_from_different_texts_print_the_same():
    a = lossdsl.parse("  0.50*ce( smoothing = 0.1 ,)\n")
    b = lossdsl.parse("ce(smoothing=1e-1) / 2")
    assert a == b and a.to_expr() == b.to_expr() == "0.5 * ce(smoothing=0.1)"


# -- plug-ins -----------------------------------------------------------------------------------------


def test_a_registered_plugin_is_generated_and_round_trips():
    """Names registered later (lossdsl.register) are picked up by the strategies and the printer."""
    from typing import Annotated, Literal

    from hypothesis import settings
    from pydantic import Field, Strict

    from lossdsl.catalogue import CATALOGUE, LossNode, register

    class PluginWrap(LossNode):
        kind: Literal["plugin_wrap"] = "plugin_wrap"
        inner: lossdsl.catalogue.base.Child
        scale: Annotated[float, Strict(), Field(gt=0, le=10)] = 1.0
        mode: Literal["fast", "exact"] | None = None
        counts: tuple[Annotated[int, Strict(), Field(ge=0)], ...] = ()

        positional = "inner"
        loss_fields = ("inner",)

        @property
        def head(self):
            return getattr(self.inner, "head", None)

    register(PluginWrap)
    seen = []
    try:
        # Derandomized: with three dozen names in the catalogue, a random run of this size could
        # miss the plug-in (the test was flaky); a fixed sequence of examples is a fixed answer.
        @settings(max_examples=200, derandomize=True)
        @given(specs(max_terms=2))
        def check(spec):
            text = spec.to_expr()
            if "plugin_wrap(" in text:
                seen.append(text)
            assert lossdsl.parse(text) == spec
            assert lossdsl.load(spec.to_dict()) == spec

        check()
        spec = lossdsl.parse("plugin_wrap(ce(), scale=2, mode=exact, counts=[1, 2], reduction=sum)")
        assert spec.to_expr() == "plugin_wrap(ce(), scale=2, mode=exact, counts=[1, 2], reduction=sum)"
    finally:
        del CATALOGUE["plugin_wrap"]
        lossdsl.parse.cache_clear()  # no cached spec may outlive the plug-in
    assert seen, "the plug-in was never generated"
