"""Untrusted input never escapes as anything but LossDSLError (SPEC 5: "the base of every error").

Random text, grammar-shaped token soup, mutations of valid expressions, random YAML and random
nested data go through parse, load and compile: each returns a result or raises LossDSLError (never a
lark, pydantic, yaml, KeyError, TypeError, RecursionError... exception), and every error renders, with
its caret under the character its line and column name. Inputs past the size and nesting limits are
refused with a message that states the limit.
"""

from __future__ import annotations

import re
import string
import time

import pytest
import yaml
from conftest import RUNAWAY_S
from hypothesis import assume, example, given
from hypothesis import strategies as st
from strategies import specs

import lossdsl
from lossdsl import LossDSLError, LossSpec
from lossdsl.located import MAX_DEPTH
from lossdsl.syntax import MAX_CHARS
from lossdsl.yaml_io import MAX_YAML_CHARS, MAX_YAML_VALUES

# -- checking one call --------------------------------------------------------------------------------


def shown(char: str) -> str:
    return char if char.isprintable() else " "


def check_error(error: LossDSLError, source: str | None = None) -> None:
    """The error renders, its location is 1-based, and its caret sits under the character named."""
    rendered = str(error)
    assert isinstance(rendered, str) and rendered
    assert error.reason and error.reason in rendered
    if error.line is None:
        return
    assert error.line >= 1 and error.column is not None and error.column >= 1
    text = error.source if error.source is not None else source
    if text is None:
        return
    lines = text.split("\n")
    assert error.line <= len(lines)
    line = lines[error.line - 1].rstrip("\r")
    assert error.column <= len(line) + 1  # at most one past the end (a missing token)
    if error.column <= len(line):
        excerpt = error.excerpt()  # the source line and the caret line, as rendered
        assert excerpt and excerpt in rendered
        source_row, caret_row = excerpt.split("\n")
        assert caret_row.strip() == "^"
        assert source_row[caret_row.index("^")] == shown(line[error.column - 1])


def parse_or_error(text: str) -> LossSpec | None:
    try:
        spec = lossdsl.parse(text)
    except LossDSLError as error:
        check_error(error, text)
        return None
    assert isinstance(spec, LossSpec)
    return spec


def load_or_error(source, key=None) -> LossSpec | None:
    try:
        spec = lossdsl.load(source, key=key)
    except LossDSLError as error:
        check_error(error, source if isinstance(source, str) else None)
        return None
    assert isinstance(spec, LossSpec)
    return spec


def compile_or_error(source) -> None:
    try:
        loss = lossdsl.compile(source)
    except LossDSLError as error:
        check_error(error)
        return
    assert isinstance(loss, lossdsl.CompiledLoss)


# -- token soups --------------------------------------------------------------------------------------


def _parameter_names() -> list[str]:
    names = {"reduction", "loss", "kind", "x", "gama", "smothing"}
    for cls in lossdsl.CATALOGUE.values():
        names.update(cls.model_fields)
    return sorted(names)


NAMES = st.one_of(
    st.sampled_from(sorted(lossdsl.CATALOGUE)),
    st.sampled_from(_parameter_names()),
    st.sampled_from(["true", "false", "none", "None", "null", "sum", "none", "pos_mean", "softmax", "sigmoid"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
)
NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", ".5", "5.", "1e999", "1e-999", "-0", "2e", "1.2.3", "0x10", "1_000", "9" * 400]),
)
PUNCTUATION = st.sampled_from(list("()[]{}=,:+-*/\"'#.") + [" ", "\n", "\t", "\r", "  ", "\\", "**", "->"])
STRINGS = st.sampled_from(['"a"', "'b'", '"sum"', "'x\\'y'", '"\\\\"', '"none"', '"'])

EXPRESSION_TOKENS = st.lists(st.one_of(NAMES, NUMBERS, PUNCTUATION, STRINGS), max_size=40).map("".join)


@st.composite
def call_soup(draw) -> str:
    """Text shaped like calls, more likely to get past the parser into the validator."""
    def call(depth: int) -> str:
        name = draw(st.sampled_from(sorted(lossdsl.CATALOGUE)))
        args = []
        if depth and draw(st.booleans()):
            args.append(call(depth - 1))
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from(_parameter_names()))
            value = draw(st.one_of(NUMBERS, NAMES, STRINGS, st.lists(NUMBERS, max_size=3).map(
                lambda xs: "[" + ", ".join(xs) + "]")))
            args.append(f"{key}={value}")
        return f"{name}({', '.join(args)})"

    parts = [call(2)]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from([" + ", " - ", " * ", " / "]))
        parts.append(op + draw(st.one_of(NUMBERS, st.just(call(2)))))
    return "".join(parts)


@st.composite
def mutated(draw, source: st.SearchStrategy[str]) -> str:
    text = draw(source)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "swap"]))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        if kind == "insert":
            piece = draw(st.one_of(PUNCTUATION, NAMES, NUMBERS, st.characters()))
            text = text[:i] + piece + text[i:]
        elif kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "replace":
            text = text[:i] + draw(st.one_of(PUNCTUATION, st.characters())) + text[j:]
        elif kind == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[i:] + text[:i]
    return text


VALID_TEXT = specs(max_terms=3, depth=2).map(lambda spec: spec.to_expr())


# -- parse --------------------------------------------------------------------------------------------


@given(st.text())
@example("")
@example("\x00")
@example("ce(\x00)")
@example("ce(smoothing=1e999)")
@example("ce() * " + "2 * " * 2000 + "2")
def test_parse_random_text(text):
    parse_or_error(text)


@given(EXPRESSION_TOKENS)
@example("((((")
@example("ce(=)")
@example("ce(weight=[1,,2])")
@example("1/0*ce()")
@example("{a: ce(), a: bce()}")
@example("poly(loss=bce())")
def test_parse_token_soup(text):
    parse_or_error(text)


@given(call_soup())
def test_parse_call_soup(text):
    parse_or_error(text)


@given(mutated(VALID_TEXT))
def test_parse_mutated_valid_expressions(text):
    parse_or_error(text)


@given(mutated(VALID_TEXT))
def test_compile_mutated_valid_expressions(text):
    compile_or_error(text)


@given(call_soup())
def test_compile_call_soup(text):
    compile_or_error(text)


@given(specs(max_terms=3, depth=2))
def test_compile_generated_specs(spec):
    compile_or_error(spec)


# -- load ---------------------------------------------------------------------------------------------


YAML_TOKENS = st.one_of(
    st.sampled_from(
        ["kind:", "terms:", "expr:", "define:", "reduction:", "loss:", "weight:", "model:", "- ", ": ",
         "&a ", "*a", "*b", "&b ", "<<: *a", "!!python/object/apply:os.system ['true']", "!!str ",
         "!!binary aGk=", "!!set ", "!!omap ", "? ", "---", "...", "%YAML 1.1\n", "|\n  ", ">\n  ", "~",
         "null", "yes", "no", ".inf", ".nan", "2001-01-01", "0o17", "0x1f"]
    ),
    PUNCTUATION, NAMES, NUMBERS, STRINGS,
    st.integers(0, 6).map(lambda n: "\n" + "  " * n),
)
YAML_SOUP = st.lists(YAML_TOKENS, max_size=40).map("".join)


@given(YAML_SOUP)
@example("kind: ce\nkind: bce\n")
@example("{kind: ce, smoothing: !!float .nan}")
@example("terms: &t [*t]")
@example("a: &a {b: *a}")
@example("\x00")
@example("\ufeffce()")
@example('"\r')  # the error is at the end of a line whose "\r" the excerpt drops
def test_load_yaml_soup(text):
    load_or_error(text)
    load_or_error(text, key="model.loss")


@given(st.text())
def test_load_random_text(text):
    load_or_error(text)


@given(mutated(VALID_TEXT.map(lambda text: yaml.safe_dump({"model": {"loss": text}}))))
def test_load_mutated_yaml_documents(text):
    load_or_error(text, key="model.loss")


@given(mutated(specs(max_terms=2, depth=2).map(lambda spec: spec.to_yaml())))
def test_load_mutated_node_forms(text):
    load_or_error(text)


KEYS = st.sampled_from(
    ["kind", "terms", "expr", "define", "reduction", "loss", "weight", "tasks", "ref", "a", "b", "model"]
    + _parameter_names()
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    st.sampled_from(sorted(lossdsl.CATALOGUE)), st.sampled_from(["ce()", "a + b", "mean", "none", "1 +"]),
    st.sampled_from([10**400, -(10**400), float("inf"), b"ce()", (1, 2), object()]),
)
DATA = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS, children, max_size=4),
    ),
    max_leaves=20,
)


@given(st.dictionaries(KEYS, DATA, max_size=5))
def test_load_random_mappings(data):
    load_or_error(data)


@given(st.dictionaries(KEYS, DATA, max_size=5))
def test_compile_random_mappings(data):
    compile_or_error(data)


@st.composite
def damaged_node_forms(draw) -> dict:
    """The dict form of a valid spec with one value somewhere replaced by random data."""
    data = draw(specs(max_terms=2, depth=2)).to_dict()
    containers = []

    def walk(value):
        if isinstance(value, dict):
            containers.append(value)
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            containers.append(value)
            for child in value:
                walk(child)

    walk(data)
    target = draw(st.sampled_from(containers))
    if isinstance(target, dict):
        key = draw(st.one_of(st.sampled_from(sorted(target)), KEYS))
        target[key] = draw(DATA)
    elif target:
        target[draw(st.integers(0, len(target) - 1))] = draw(DATA)
    return data


@given(damaged_node_forms())
def test_load_damaged_node_forms(data):
    load_or_error(data)


@given(mutated(VALID_TEXT), st.sampled_from([None, "'", '"', "|", ">"]))
def test_errors_inside_yaml_strings_point_at_the_same_character_as_in_the_expression(text, style):
    assume("\n" not in text and "\r" not in text and text.strip() == text and text.isprintable())
    try:
        lossdsl.parse(text)
    except LossDSLError as error:
        expected = error
    else:
        return
    document = yaml.safe_dump({"loss": text}, default_style=style, width=10**6, allow_unicode=True)
    try:
        reloaded = yaml.safe_load(document)
    except yaml.YAMLError:
        return
    assume(reloaded == {"loss": text})
    with pytest.raises(LossDSLError) as info:
        lossdsl.load(document, key="loss")
    got = info.value
    check_error(got, document)
    # Messages that cite another column (the bracket a ')' fails to close) cite the file's column.
    assert re.sub(r"column \d+", "column N", got.reason) == re.sub(r"column \d+", "column N", expected.reason)
    if expected.column is not None and expected.column <= len(text) and got.line is not None:
        line = document.split("\n")[got.line - 1]
        if style == '"' and line[got.column - 1] == "\\":
            return  # the character is escaped in the file: the caret is under its escape sequence
        assert line[got.column - 1] == text[expected.column - 1]


# -- limits -------------------------------------------------------------------------------------------


def assert_quick_error(call, *phrases: str) -> LossDSLError:
    start = time.perf_counter()
    with pytest.raises(LossDSLError) as info:
        call()
    assert time.perf_counter() - start < RUNAWAY_S  # refused, not expanded (conftest.RUNAWAY_S)
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, message
    check_error(info.value)
    return info.value


def test_ten_thousand_nested_parentheses_are_refused_stating_a_limit():
    text = "(" * 10_000 + "ce()" + ")" * 10_000
    error = assert_quick_error(lambda: lossdsl.parse(text))
    assert f"limit is {MAX_CHARS}" in str(error) or f"deeper than {MAX_DEPTH}" in str(error)


def test_nesting_deeper_than_the_limit_is_refused_where_it_starts():
    text = "(" * 1000 + "ce()" + ")" * 1000
    error = assert_quick_error(lambda: lossdsl.parse(text), f"nested deeper than {MAX_DEPTH} levels")
    assert error.column == MAX_DEPTH + 1


def test_nesting_within_the_limit_is_fine():
    depth = MAX_DEPTH - 2
    assert lossdsl.parse("(" * depth + "ce()" + ")" * depth) == lossdsl.parse("ce()")


def test_deeply_nested_lists_and_calls_are_refused():
    assert_quick_error(lambda: lossdsl.parse("ce(weight=" + "[" * 5000 + "]" * 5000 + ")"), str(MAX_DEPTH))
    assert_quick_error(lambda: lossdsl.parse("poly(" * 3000 + "bce()" + ")" * 3000), str(MAX_DEPTH))


def test_unclosed_deep_nesting_is_refused():
    assert_quick_error(lambda: lossdsl.parse("(" * 10_000), str(MAX_DEPTH))


def test_a_3000_term_sum_parses_to_3000_terms():
    text = "+".join(["l1()"] * 1500) + "-" + "-".join(["mse()"] * 1500)
    assert len(text) <= MAX_CHARS
    spec = lossdsl.parse(text)
    assert len(spec.terms) == 3000
    assert spec.terms[-1].weight == -1


def test_a_long_chain_of_unary_minus_signs_is_fine():
    assert lossdsl.parse("-" * 10_000 + "ce()") == lossdsl.parse("ce()")


def test_long_products_of_numbers_overflowing_are_refused():
    assert_quick_error(lambda: lossdsl.parse("2 * " * 4000 + "ce()"), "too large")
    assert_quick_error(lambda: lossdsl.parse("ce()" + " * 2" * 4000), "too large")


def test_expressions_over_the_length_limit_are_refused_stating_it():
    text = " + ".join(["ce()"] * 5000)
    assert len(text) > MAX_CHARS
    assert_quick_error(lambda: lossdsl.parse(text), f"the limit is {MAX_CHARS}")


def test_long_white_space_is_counted_too():
    assert_quick_error(lambda: lossdsl.parse("ce()" + " " * (MAX_CHARS + 1)), str(MAX_CHARS))


def test_deeply_nested_yaml_flow_lists_are_refused():
    assert_quick_error(lambda: lossdsl.load("[" * 10_000 + "]" * 10_000), str(MAX_DEPTH))


def test_deeply_nested_yaml_flow_mappings_are_refused():
    assert_quick_error(lambda: lossdsl.load("{a: " * 10_000 + "1" + "}" * 10_000), str(MAX_DEPTH))


def test_deeply_nested_yaml_block_structure_is_refused():
    text = "".join("  " * i + "- \n" for i in range(300))
    assert_quick_error(lambda: lossdsl.load(text), str(MAX_DEPTH))
    text = "".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "ce()\n"
    assert_quick_error(lambda: lossdsl.load(text), str(MAX_DEPTH))


def test_nesting_within_the_yaml_limit_is_read():
    text = "".join("  " * i + "a:\n" for i in range(MAX_DEPTH - 4)) + "  " * (MAX_DEPTH - 4) + "ce()\n"
    assert lossdsl.load(text, key=".".join(["a"] * (MAX_DEPTH - 4))) == lossdsl.parse("ce()")


def test_yaml_alias_bomb_is_refused_stating_the_limit():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    text = "\n".join(lines) + "\nloss: ce()\n"
    assert_quick_error(lambda: lossdsl.load(text, key="loss"), f"more than {MAX_YAML_VALUES} values")


def test_self_referencing_yaml_alias_is_refused():
    assert_quick_error(lambda: lossdsl.load("terms: &t [*t]"))
    assert_quick_error(lambda: lossdsl.load("loss: &a {kind: ce, x: *a}", key="loss"))


def test_yaml_over_the_size_limit_is_refused_stating_it():
    text = "# padding\n" * (MAX_YAML_CHARS // 10 + 1) + "ce()"
    assert_quick_error(lambda: lossdsl.load(text), f"the limit is {MAX_YAML_CHARS}")


def test_deeply_nested_python_data_is_refused():
    data: object = {"kind": "ce"}
    for _ in range(10_000):
        data = {"expr": data}
    assert_quick_error(lambda: lossdsl.load(data), f"deeper than {MAX_DEPTH}")
    nested: object = [1.0]
    for _ in range(10_000):
        nested = [nested]
    assert_quick_error(lambda: lossdsl.load({"kind": "ce", "weight": nested}), f"deeper than {MAX_DEPTH}")


def test_self_referencing_python_data_is_refused():
    data: dict = {"kind": "ce"}
    data["weight"] = data
    assert_quick_error(lambda: lossdsl.load(data), f"deeper than {MAX_DEPTH}")
    items: list = []
    items.append(items)
    assert_quick_error(lambda: lossdsl.load({"terms": items}), f"deeper than {MAX_DEPTH}")


def test_define_chain_longer_than_the_limit_is_refused():
    defines = {f"d{i}": f"d{i + 1}" for i in range(500)}
    defines["d500"] = "ce()"
    assert_quick_error(lambda: lossdsl.load({"expr": "d0", "define": defines}), str(MAX_DEPTH))


def test_huge_integers_in_data_are_refused_or_accepted_without_overflow():
    for data in (
        {"terms": [{"loss": "ce()", "weight": 10**400}]},
        {"kind": "ce", "smoothing": 10**400},
        {"kind": "bce", "pos_weight": [10**400]},
        {"kind": "smooth_l1", "beta": 10**400},
    ):
        load_or_error(data)


def test_control_characters_in_text_are_shown_as_spaces():
    error = assert_quick_error(lambda: lossdsl.parse("ce(\x07smothing=1)"))
    assert "\x07" not in str(error)


@pytest.mark.parametrize("text", ["ce()", "0.5 * ce(smoothing=0.1) + bce()"])
def test_printable_garbage_around_a_valid_expression(text):
    for junk in string.punctuation:
        parse_or_error(junk + text)
        parse_or_error(text + junk)
