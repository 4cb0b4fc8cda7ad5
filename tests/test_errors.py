"""Every error a user can meet on bad input: its class, its words, and where its caret points (SPEC 5).

Errors on text carry a 1-based ``line`` and ``column`` and print the source line with a caret under
the offending character; unknown names suggest the closest valid ones; range errors state the range.
"""

from __future__ import annotations

import re

import pytest
from conftest import caret_target
from hypothesis import given
from hypothesis import strategies as st
from strategies import specs

import lossdsl
from lossdsl import LossConfigError, LossDSLError, LossSpecError, LossSyntaxError


def error_of(text: str, cls: type[LossDSLError] = LossDSLError) -> LossDSLError:
    with pytest.raises(cls) as info:
        lossdsl.parse(text)
    return info.value




def assert_points_at(error: LossDSLError, text: str, line: int, column: int, char: str) -> None:
    assert (error.line, error.column) == (line, column)
    assert text.split("\n")[line - 1][column - 1] == char  # the expectation itself is right
    assert caret_target(error) == char
    assert str(error).startswith(f"{line}:{column}: {error.reason}")
    source_line = text.split("\n")[line - 1]
    if len(source_line) <= 100 and column <= 60:  # long lines are cut around the caret
        assert source_line in str(error)  # the whole source line is shown


# -- hierarchy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [LossSyntaxError, LossSpecError, LossConfigError, lossdsl.LossInputError])
def test_every_error_class_is_a_lossdsl_error_and_a_value_error(cls):
    assert issubclass(cls, LossDSLError)
    assert issubclass(cls, ValueError)


# -- syntax errors ------------------------------------------------------------------------------------


def test_missing_closing_parenthesis_is_reported_at_the_end_with_the_opening_one_named():
    text = "0.5 * ce(smoothing=0.1"
    error = error_of(text, LossSyntaxError)
    assert error.reason == "missing ')'"
    assert (error.line, error.column) == (1, len(text) + 1)
    assert "column 9" in error.hint  # the '(' that is never closed


def test_missing_value_after_equals():
    text = "ce(smoothing=)"
    error = error_of(text, LossSyntaxError)
    assert "expected a value after '='" in error.reason
    assert_points_at(error, text, 1, 14, ")")


def test_missing_value_after_equals_at_the_end_of_the_text():
    error = error_of("ce(smoothing=", LossSyntaxError)
    assert "expected a value after '='" in error.reason


def test_unexpected_character_names_the_character():
    text = "ce() $ bce()"
    error = error_of(text, LossSyntaxError)
    assert error.reason == "unexpected character '$'"
    assert_points_at(error, text, 1, 6, "$")


def test_unmatched_closing_parenthesis():
    text = "ce())"
    error = error_of(text, LossSyntaxError)
    assert error.reason == "unmatched ')'"
    assert_points_at(error, text, 1, 5, ")")


def test_mismatched_bracket_names_the_opener():
    text = "ce(weight=[1, 2)"
    error = error_of(text, LossSyntaxError)
    assert "']'" in error.reason and "'['" in error.reason
    assert_points_at(error, text, 1, 16, ")")


def test_unterminated_string():
    text = "focal(head='softmax)"
    error = error_of(text, LossSyntaxError)
    assert "unterminated string" in error.reason
    assert_points_at(error, text, 1, 12, "'")


def test_product_of_two_losses_is_an_error_at_the_second_loss():
    text = "ce() * bce()"
    error = error_of(text, LossSyntaxError)
    assert "cannot multiply two losses" in error.reason
    assert_points_at(error, text, 1, 8, "b")
    assert "0.5 * ce() + 0.5" in error.hint


def test_sum_of_numbers_is_an_error():
    text = "1 + 2"
    error = error_of(text, LossSyntaxError)
    assert "a sum needs at least one loss" in error.reason
    assert_points_at(error, text, 1, 1, "1")


def test_a_lone_number_is_not_a_loss():
    error = error_of("0.5", LossSyntaxError)
    assert "expected a loss, got a number" in error.reason


@pytest.mark.parametrize(
    ("text", "column", "verb"),
    [("ce() + 1", 8, "add"), ("1 + ce()", 1, "add"), ("ce() - 0.5", 8, "subtract")],
)
def test_constant_added_to_a_loss_is_an_error_at_the_constant(text, column, verb):
    error = error_of(text, LossSyntaxError)
    assert f"cannot {verb} a number and a loss" in error.reason
    assert "no gradient" in error.reason
    assert_points_at(error, text, 1, column, text[column - 1])


def test_division_by_zero():
    text = "ce() / 0"
    error = error_of(text, LossSyntaxError)
    assert error.reason == "division by zero"
    assert_points_at(error, text, 1, 8, "0")


def test_division_by_a_computed_zero():
    error = error_of("ce() / (0 * 3)", LossSyntaxError)
    assert error.reason == "division by zero"


def test_division_by_a_loss():
    text = "2 / ce()"
    error = error_of(text, LossSyntaxError)
    assert "cannot divide by a loss" in error.reason
    assert_points_at(error, text, 1, 5, "c")


def test_second_positional_argument():
    text = "poly(bce(), bce())"
    error = error_of(text, LossSyntaxError)
    assert "takes one positional loss" in error.reason and "second" in error.reason
    assert_points_at(error, text, 1, 13, "b")


def test_number_as_positional_argument():
    error = error_of("poly(2, eps=1)", LossSyntaxError)
    assert "positional argument must be a loss" in error.reason


def test_duplicate_keyword_points_at_the_second_one():
    text = "ce(smoothing=0.1, smoothing=0.2)"
    error = error_of(text, LossSyntaxError)
    assert error.reason == "smoothing= is given twice in ce()"
    assert_points_at(error, text, 1, 19, "s")


def test_empty_expression():
    error = error_of("   ", LossSyntaxError)
    assert "empty expression" in error.reason
    assert error.line == 1


def test_comment_only_expression_expects_a_loss():
    error = error_of("# nothing here", LossSyntaxError)
    assert "the end of the expression" in error.reason


def test_two_losses_without_an_operator():
    text = "ce() bce()"
    error = error_of(text, LossSyntaxError)
    assert error.reason == "expected an operator or the end of the expression, got 'bce'"
    assert_points_at(error, text, 1, 6, "b")


def test_missing_comma_between_arguments():
    text = "ce(smoothing=0.1 ignore_index=3)"
    error = error_of(text, LossSyntaxError)
    assert error.reason == "expected ',' or ')', got 'ignore_index'"
    assert_points_at(error, text, 1, 18, "i")


def test_missing_comma_in_a_list():
    text = "ce(weight=[1 2])"
    error = error_of(text, LossSyntaxError)
    assert error.reason == "expected ',' or ']', got '2'"
    assert_points_at(error, text, 1, 14, "2")


def test_a_call_as_a_parameter_value():
    text = "poly(loss=bce())"
    error = error_of(text, LossSyntaxError)
    assert "a parameter value cannot be a call" in error.reason
    assert_points_at(error, text, 1, 14, "(")


def test_dangling_operator():
    text = "ce() +"
    error = error_of(text, LossSyntaxError)
    assert "after '+'" in error.reason
    assert (error.line, error.column) == (1, 7)


def test_too_large_number_literal():
    text = "1e999 * ce()"
    error = error_of(text, LossSyntaxError)
    assert "too large" in error.reason
    assert_points_at(error, text, 1, 1, "1")


def test_weight_overflowing_through_products():
    error = error_of("1e200 * 1e200 * ce()", LossSyntaxError)
    assert "too large" in error.reason


def test_integer_weight_beyond_float_range():
    error = error_of("1" + "0" * 400 + " * ce()", LossSyntaxError)
    assert "too large" in error.reason


def test_integer_literal_too_long_to_convert():
    error = error_of("ce(ignore_index=" + "9" * 5000 + ")", LossSyntaxError)
    assert "too long" in error.reason
    assert (error.line, error.column) == (1, 17)


def test_non_string_expression_is_refused():
    with pytest.raises(LossDSLError, match="expression string"):
        lossdsl.parse(b"ce()")  # type: ignore[arg-type]


# -- catalogue names and parameters -------------------------------------------------------------------


def test_unknown_loss_suggests_the_closest_name():
    text = "0.5 * cee(smoothing=0.1)"
    error = error_of(text, LossSpecError)
    assert error.reason == "unknown loss 'cee'"
    assert error.hint.startswith("did you mean 'ce'?")
    assert_points_at(error, text, 1, 7, "c")


def test_unknown_loss_lists_the_catalogue():
    error = error_of("xyzzy()", LossSpecError)
    assert error.hint.startswith("valid losses: ")
    for name in lossdsl.CATALOGUE:
        assert name in error.hint


def test_unknown_bare_name_suggests_a_catalogue_name():
    error = error_of("0.5 * bcee", LossSpecError)
    assert error.reason == "unknown name 'bcee'"
    assert "did you mean 'bce'?" in error.hint


def test_unknown_parameter_suggests_the_closest_and_lists_the_valid_ones():
    text = "0.5 * ce(smothing=0.1)"
    error = error_of(text, LossSpecError)
    assert error.reason == "ce() has no parameter 'smothing'"
    assert error.hint == (
        "did you mean 'smoothing'? valid parameters of ce: ignore_index, reduction, smoothing, weight"
    )
    assert_points_at(error, text, 1, 10, "s")


def test_regression_loss_with_a_parameter_lists_only_reduction():
    error = error_of("mse(beta=1)", LossSpecError)
    assert error.reason == "mse() has no parameter 'beta'"
    assert error.hint.endswith("valid parameters of mse: reduction")


@pytest.mark.parametrize(
    ("text", "phrase", "column"),
    [
        ("ce(smoothing=1)", "smoothing must be in [0, 1)", 14),
        ("ce(smoothing=-0.1)", "smoothing must be in [0, 1)", 14),
        ("bce(smoothing=1.5)", "smoothing must be in [0, 1)", 15),
        ("smooth_l1(beta=0)", "beta must be > 0", 16),
        ("smooth_l1(beta=-2.5)", "beta must be > 0", 16),
    ],
)
def test_range_errors_state_the_allowed_range(text, phrase, column):
    error = error_of(text, LossSpecError)
    assert phrase in error.reason
    assert "out of range" in error.reason
    assert (error.line, error.column) == (1, column)


def test_range_error_inside_a_list_points_at_the_element():
    text = "ce(weight=[1, -1, 2])"
    error = error_of(text, LossSpecError)
    assert "weight must be >= 0" in error.reason
    assert_points_at(error, text, 1, 15, "-")


def test_range_error_on_a_nested_node_points_into_it():
    text = "0.3 * bce() + 0.7 * ce(ignore_index=255, smoothing=2)"
    error = error_of(text, LossSpecError)
    assert "smoothing must be in [0, 1)" in error.reason
    assert_points_at(error, text, 1, 52, "2")


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("ce(smoothing=true)", "smoothing expects a number, got true"),
        ("ce(smoothing='a')", "smoothing expects a number, got a"),
        ("ce(ignore_index=1.5)", "ignore_index expects an integer, got 1.5"),
        ("ce(ignore_index=true)", "ignore_index expects an integer, got true"),
        ("ce(weight=5)", "weight expects a list of numbers or none, got 5"),
        ("smooth_l1(beta=[1])", "beta expects a number"),
    ],
)
def test_type_errors_say_what_was_expected_and_what_was_given(text, phrase):
    error = error_of(text, LossSpecError)
    assert phrase in error.reason
    assert error.reason.startswith(text.split("(")[0] + "(): ")


def test_positional_argument_to_a_loss_that_wraps_nothing():
    text = "ce(bce())"
    error = error_of(text, LossSpecError)
    assert error.reason == "ce() takes no positional argument"
    assert_points_at(error, text, 1, 4, "b")


# -- reductions ---------------------------------------------------------------------------------------


def test_unknown_reduction_suggests_the_closest():
    text = "ce(reduction=summ)"
    error = error_of(text, LossSpecError)
    assert error.reason == "unknown reduction 'summ'"
    assert error.hint == "did you mean 'sum'? valid reductions: batchmean, mean, none, pos_mean, sum"
    assert_points_at(error, text, 1, 14, "s")


def test_reduction_none_mixed_with_reduced_terms():
    text = "ce(reduction=none) + 0.5 * bce()"
    error = error_of(text, LossSpecError)
    assert "reduction=none cannot be added to reduced terms" in error.reason
    assert "every term" in error.hint
    assert_points_at(error, text, 1, 28, "b")


def test_reduction_none_on_the_second_term_only():
    text = "ce(reduction=sum) + bce(reduction=none)"
    error = error_of(text, LossSpecError)
    assert "reduction=none" in error.reason
    assert_points_at(error, text, 1, 21, "b")


@pytest.mark.parametrize("name", ["mse", "l1", "smooth_l1"])
def test_pos_mean_on_a_regression_loss(name):
    error = error_of(f"{name}(reduction=pos_mean)", LossSpecError)
    assert "pos_mean" in error.reason
    assert "regression" in error.reason
    assert name in error.reason


def test_pos_mean_on_a_classification_loss_is_fine():
    assert lossdsl.parse("bce(reduction=pos_mean)").terms[0].reduction == "pos_mean"


# -- multi-line text ----------------------------------------------------------------------------------


def test_multi_line_expression_reports_the_line_and_shows_only_that_line():
    text = "0.5 * ce()\n  + 0.5 * bce(\n      smothing=0.1)"
    error = error_of(text, LossSpecError)
    assert_points_at(error, text, 3, 7, "s")
    assert "0.5 * ce()" not in str(error)


def test_multi_line_missing_parenthesis_names_the_line_of_the_opener():
    text = "ce()\n+ bce(\n  pos_weight=2"
    error = error_of(text, LossSyntaxError)
    assert error.reason == "missing ')'"
    assert error.line == 3
    assert "line 2" in error.hint


def test_comments_and_line_breaks_do_not_shift_locations():
    text = "# main term\nce()  # comment with ) and (\n  + bce(smoothing=7)"
    error = error_of(text, LossSpecError)
    assert_points_at(error, text, 3, 19, "7")


def test_tabs_count_as_one_column():
    text = "ce()\t+\tbce(smoothing=7)"
    error = error_of(text, LossSpecError)
    assert (error.line, error.column) == (1, 22)
    assert caret_target(error) == "7"


def test_carriage_returns_do_not_start_a_new_line():
    text = "ce(\r\n  smothing=1)"
    error = error_of(text, LossSpecError)
    assert (error.line, error.column) == (2, 3)
    assert caret_target(error) == "s"
    text = "ce(\rsmothing=1)"  # a lone "\r" is white space inside the line
    error = error_of(text, LossSpecError)
    assert (error.line, error.column) == (1, 5)
    assert caret_target(error) == "s"


def test_long_lines_are_cut_around_the_caret():
    text = "0.5 * bce() + " * 30 + "ce(smoothing=9)"
    error = error_of(text, LossSpecError)
    assert error.column == len(text) - 1
    assert caret_target(error) == "9"
    assert "..." in str(error)
    assert max(len(line) for line in str(error).split("\n")[1:3]) < 120


# -- attributes ---------------------------------------------------------------------------------------


def test_reason_and_hint_are_kept_apart_from_the_rendering():
    error = error_of("ce(smothing=0.1)")
    assert error.reason == "ce() has no parameter 'smothing'"
    assert error.hint.startswith("did you mean")
    rendered = str(error)
    assert rendered.splitlines()[0] == "1:4: ce() has no parameter 'smothing'"
    assert rendered.splitlines()[-1] == error.hint


def test_errors_without_text_name_the_path_instead():
    with pytest.raises(LossSpecError) as info:
        lossdsl.load({"terms": [{"loss": {"kind": "ce", "smoothing": 3}, "weight": 0.5}]})
    error = info.value
    assert error.line is None and error.column is None
    assert error.path == "terms[0].loss.smoothing"
    assert "(at terms[0].loss.smoothing)" in str(error)
    assert "smoothing must be in [0, 1)" in str(error)


def test_compile_raises_the_same_errors_as_parse():
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile("ce(smoothing=1)")
    assert "smoothing must be in [0, 1)" in info.value.reason
    assert re.match(r"1:14: ", str(info.value))


# -- modifiers and named losses (SPEC 2) --------------------------------------------------------------


def needs(*names: str):
    missing = [name for name in names if name not in lossdsl.CATALOGUE]
    return pytest.mark.skipif(bool(missing), reason=f"not in the catalogue yet: {missing}")


@needs("poly")
def test_reduction_on_an_inner_node_belongs_on_the_outermost_call():
    text = "poly(bce(reduction=sum), eps=1)"
    error = error_of(text, LossSpecError)
    assert "reduction= belongs on the outermost call of a term" in error.reason
    assert "poly(" in error.hint
    assert_points_at(error, text, 1, 10, "r")


@needs("poly")
def test_reduction_on_the_outermost_call_of_a_modifier_is_fine():
    assert lossdsl.parse("poly(bce(), reduction=sum)").terms[0].reduction == "sum"


@needs("poly")
def test_a_modifier_wraps_one_loss_not_a_weighted_sum():
    error = error_of("poly(0.5 * bce())", LossSpecError)
    assert "wraps one loss" in error.reason
    error = error_of("poly(bce() + ce())", LossSpecError)
    assert "wraps one loss" in error.reason


@needs("poly")
def test_modifier_without_its_loss():
    error = error_of("poly(eps=1)", LossSpecError)
    assert "poly()" in error.reason and "'loss'" in error.reason


@needs("poly")
def test_poly_leading_coefficient_range():
    error = error_of("poly(bce(), eps=-2)", LossSpecError)
    assert "eps must be >= -1" in error.reason
    assert caret_target(error) == "-"


@needs("modulate")
def test_modifier_around_a_regression_loss_is_refused():
    error = error_of("modulate(mse(), gamma=2)", LossSpecError)
    assert error.reason.startswith("modulate(): ")
    assert "mse()" in error.reason


@needs("clip")
def test_clip_around_a_softmax_loss_is_refused():
    error = error_of("clip(ce())", LossSpecError)
    assert error.reason.startswith("clip(): ")
    assert "sigmoid" in error.reason


@needs("density")
def test_density_bins_range():
    error = error_of("density(bce(), bins=0)", LossSpecError)
    assert re.search(r"bins must be (>= 1|in \[1, \d+\])", error.reason)


@needs("focal")
def test_named_loss_parameter_suggestion():
    error = error_of("focal(gama=2)", LossSpecError)
    assert error.reason == "focal() has no parameter 'gama'"
    assert error.hint.startswith("did you mean 'gamma'?")


@needs("focal")
def test_enumerated_value_suggestion():
    text = "focal(head=softmx)"
    error = error_of(text, LossSpecError)
    assert "head=softmx" in error.reason
    assert "did you mean 'softmax'?" in error.hint
    assert_points_at(error, text, 1, 12, "s")


# -- configuration errors -----------------------------------------------------------------------------


def test_invalid_yaml_is_a_config_error_with_its_location():
    with pytest.raises(LossConfigError) as info:
        lossdsl.load("kind: ce\nsmoothing: [0.1\n")
    error = info.value
    assert error.reason.startswith("invalid YAML: ")
    assert error.line is not None and error.line >= 2
    check = str(error).split("\n")
    assert check[0].startswith(f"{error.line}:{error.column}: invalid YAML")


def test_yaml_mapping_value_error_points_at_the_colon():
    text = "a: b: c"
    with pytest.raises(LossConfigError) as info:
        lossdsl.load(text)
    assert_points_at(info.value, text, 1, 5, ":")


def test_a_mapping_that_is_not_a_loss_is_a_config_error():
    # ({"loss": "ce()"} is a document holding a loss under 'loss', found as the CLI finds it.)
    with pytest.raises(LossConfigError) as info:
        lossdsl.load({"lost": "ce()"})
    assert "not a loss" in info.value.reason
    assert "'kind'" in info.value.hint and "'terms'" in info.value.hint and "'expr'" in info.value.hint


def test_missing_key_is_a_config_error():
    with pytest.raises(LossConfigError) as info:
        lossdsl.load({"model": {"loss": "ce()"}}, key="model.losss")
    assert "'model.losss' not found" in info.value.reason
    assert "did you mean 'loss'?" in info.value.hint


# -- locations in generated expressions ---------------------------------------------------------------


@st.composite
def text_with_an_unknown_parameter(draw):
    """A valid canonical expression with `zzz=1, ` inserted into one of its calls."""
    text = draw(specs(max_terms=3)).to_expr()
    calls = [m.end() for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*\(", text)]
    at = draw(st.sampled_from(calls))
    name = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\($", text[:at]).group(1)
    newline = draw(st.booleans())
    inserted = ("\n  " if newline else "") + "zzz=1, "
    return text[:at] + inserted + text[at:], name


@given(text_with_an_unknown_parameter())
def test_an_unknown_parameter_anywhere_is_reported_where_it_is(case):
    text, name = case
    error = error_of(text, LossSpecError)
    assert error.reason == f"{name}() has no parameter 'zzz'"
    offset = text.index("zzz")
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    assert_points_at(error, text, line, column, "z")
