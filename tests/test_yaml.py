"""The YAML and mapping forms of a loss (SPEC 3, README "YAML"), and loading them safely."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import caret_target
from omegaconf import OmegaConf

import lossdsl
from lossdsl import LossConfigError, LossSpecError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")




# -- the forms ----------------------------------------------------------------------------------------


def test_a_yaml_string_is_an_expression():
    assert lossdsl.load("0.7 * ce(smoothing=0.1) + 0.3 * bce()") == lossdsl.parse(
        "0.7 * ce(smoothing=0.1) + 0.3 * bce()"
    )


def test_a_quoted_yaml_string_is_an_expression():
    assert lossdsl.load("'ce(ignore_index=255)'") == lossdsl.parse("ce(ignore_index=255)")


def test_expr_mapping_substitutes_defines():
    text = yaml_text("""
        expr: main + 0.1 * smooth
        define:
          main: ce(weight=[0.5, 1.0, 2.0], ignore_index=255)
          smooth: ce(smoothing=0.1, ignore_index=255)
    """)
    written_out = "ce(weight=[0.5, 1.0, 2.0], ignore_index=255) + 0.1 * ce(smoothing=0.1, ignore_index=255)"
    assert lossdsl.load(text) == lossdsl.parse(written_out)


def test_expr_mapping_reduction_is_the_default_of_every_term():
    text = yaml_text("""
        expr: a + 0.5 * b
        define:
          a: ce()
          b: bce(smoothing=0.1)
        reduction: sum
    """)
    assert lossdsl.load(text) == lossdsl.parse("ce(reduction=sum) + 0.5 * bce(smoothing=0.1, reduction=sum)")


def test_a_terms_own_reduction_overrides_the_expr_mapping_default():
    spec = lossdsl.load({"expr": "ce(reduction=sum) + bce()", "reduction": "batchmean"})
    assert [t.reduction for t in spec.terms] == ["sum", "batchmean"]


def test_expr_mapping_reduction_none_applies_to_every_term():
    spec = lossdsl.load({"expr": "ce() + bce()", "reduction": "none"})
    assert [t.reduction for t in spec.terms] == ["none", "none"]


def test_define_chain_is_substituted_with_weights_multiplied():
    text = yaml_text("""
        expr: 3 * outer
        define:
          outer: 2 * (inner + l1())
          inner: ce(smoothing=0.2)
    """)
    assert lossdsl.load(text) == lossdsl.parse("6 * ce(smoothing=0.2) + 6 * l1()")


def test_define_used_twice_gives_two_terms():
    spec = lossdsl.load({"expr": "a + a", "define": {"a": "ce()"}})
    assert spec == lossdsl.parse("ce() + ce()")


def test_define_cycle_is_an_error_naming_the_cycle():
    text = yaml_text("""
        expr: a
        define:
          a: 0.5 * b
          b: a
    """)
    with pytest.raises(LossConfigError) as info:
        lossdsl.load(text)
    assert "refers to itself" in info.value.reason
    assert "a -> b -> a" in info.value.reason
    assert (info.value.line, info.value.column) == (4, 6)


def test_define_referring_to_itself_is_an_error():
    with pytest.raises(LossConfigError, match="refers to itself"):
        lossdsl.load({"expr": "a", "define": {"a": "ce() + a"}})


@pytest.mark.parametrize("name", ["ce", "bce", "mse"])
def test_define_name_shadowing_a_catalogue_name_is_an_error(name):
    text = f"expr: {name}\ndefine:\n  {name}: l1()\n"
    with pytest.raises(LossConfigError) as info:
        lossdsl.load(text)
    assert f"'{name}'" in info.value.reason and "catalogue" in info.value.reason
    assert (info.value.line, info.value.column) == (3, 3)


def test_define_name_must_be_an_identifier():
    with pytest.raises(LossConfigError, match="not an identifier"):
        lossdsl.load({"expr": "ce()", "define": {"my loss": "ce()"}})


def test_unknown_name_in_expr_suggests_a_define():
    with pytest.raises(LossSpecError) as info:
        lossdsl.load({"expr": "mian + l1()", "define": {"main": "ce()"}})
    assert info.value.reason == "unknown name 'mian'"
    assert "did you mean 'main'?" in info.value.hint


def test_unexpected_key_in_an_expr_mapping_suggests_the_valid_one():
    with pytest.raises(LossConfigError) as info:
        lossdsl.load({"expr": "a", "defines": {"a": "ce()"}})
    assert "unexpected key 'defines'" in info.value.reason
    assert "did you mean 'define'?" in info.value.hint


def test_terms_form_with_nodes_and_expression_strings():
    text = yaml_text("""
        terms:
          - loss: {kind: smooth_l1, beta: 0.11}
          - {loss: "l1()", weight: 0.1}
    """)
    assert lossdsl.load(text) == lossdsl.parse("smooth_l1(beta=0.11) + 0.1 * l1()")


def test_terms_form_accepts_bare_losses_and_per_term_reductions():
    text = yaml_text("""
        terms:
          - ce()
          - {kind: bce, pos_weight: 2}
          - {loss: mse(), weight: -0.5, reduction: sum}
    """)
    assert lossdsl.load(text) == lossdsl.parse("ce() + bce(pos_weight=2) - 0.5 * mse(reduction=sum)")


def test_terms_form_conflicting_reductions_is_an_error():
    with pytest.raises(LossSpecError, match="reduction is given twice"):
        lossdsl.load({"terms": [{"loss": "ce(reduction=sum)", "reduction": "mean"}]})


def test_terms_form_repeating_the_same_reduction_is_fine():
    spec = lossdsl.load({"terms": [{"loss": "ce(reduction=none)", "reduction": "none"}]})
    assert spec.terms[0].reduction == "none"


def test_terms_form_term_without_a_loss_is_an_error():
    with pytest.raises(LossConfigError, match="a term needs a 'loss'"):
        lossdsl.load({"terms": [{"weight": 2}]})


def test_terms_form_needs_a_non_empty_list():
    with pytest.raises(LossConfigError, match="non-empty list"):
        lossdsl.load({"terms": []})


def test_terms_weight_must_be_a_number():
    with pytest.raises(LossConfigError, match="weight must be a finite number"):
        lossdsl.load({"terms": [{"loss": "ce()", "weight": "half"}]})


def test_bare_node_form_with_reduction():
    text = yaml_text("""
        kind: bce
        pos_weight: [1.0, 2.0, 4.0]
        reduction: batchmean
    """)
    assert lossdsl.load(text) == lossdsl.parse("bce(pos_weight=[1, 2, 4], reduction=batchmean)")


def test_node_form_child_given_as_a_mapping_or_a_string():
    if "poly" not in lossdsl.CATALOGUE:
        pytest.skip("poly is not in the catalogue yet")
    as_mapping = lossdsl.load({"kind": "poly", "loss": {"kind": "bce", "smoothing": 0.1}, "eps": 2})
    as_string = lossdsl.load({"kind": "poly", "loss": "bce(smoothing=0.1)", "eps": 2})
    assert as_mapping == as_string == lossdsl.parse("poly(bce(smoothing=0.1), eps=2)")


def test_a_mapping_that_is_no_loss_form_names_its_keys():
    with pytest.raises(LossConfigError) as info:
        lossdsl.load({"name": "ce", "gamma": 2})
    assert "'name', 'gamma'" in info.value.reason
    assert "'kind'" in info.value.hint


def test_null_is_not_a_loss():
    with pytest.raises(LossConfigError, match="expected a loss"):
        lossdsl.load("~")


def test_empty_document_is_an_error():
    with pytest.raises(LossConfigError, match="empty"):
        lossdsl.load("")


# -- keys ---------------------------------------------------------------------------------------------


EXPERIMENT = yaml_text("""
    model:
      name: tiny
      loss:
        expr: 0.5 * ce() + 0.5 * l1()
    train:
      lr: 0.1
""")


def test_whole_document_and_dotted_key_give_the_same_spec():
    whole = lossdsl.load("expr: 0.5 * ce() + 0.5 * l1()")
    assert lossdsl.load(EXPERIMENT, key="model.loss") == whole


def test_missing_key_names_it_and_suggests_the_closest():
    with pytest.raises(LossConfigError) as info:
        lossdsl.load(EXPERIMENT, key="model.los")
    error = info.value
    assert "model.los" in error.reason and "'los'" in error.reason
    assert "did you mean 'loss'?" in error.hint
    assert error.line == 2  # the mapping that lacks it


def test_missing_top_level_key():
    with pytest.raises(LossConfigError) as info:
        lossdsl.load(EXPERIMENT, key="modle.loss")
    assert "'modle'" in info.value.reason
    assert "did you mean 'model'?" in info.value.hint


def test_key_below_a_value_that_is_not_a_mapping():
    with pytest.raises(LossConfigError, match="not a mapping"):
        lossdsl.load(EXPERIMENT, key="model.name.loss")


def test_key_works_for_dicts_too():
    data = {"model": {"loss": "ce()"}}
    assert lossdsl.load(data, key="model.loss") == lossdsl.parse("ce()")


def test_error_paths_include_the_key():
    with pytest.raises(LossSpecError) as info:
        lossdsl.load({"model": {"loss": {"kind": "ce", "smoothing": 5}}}, key="model.loss")
    assert info.value.path == "model.loss.smoothing"


# -- files --------------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml_text(text), encoding="utf-8")
    return path


def test_a_path_loads_the_file(tmp_path):
    path = write(tmp_path, EXPERIMENT)
    assert lossdsl.load(path, key="model.loss") == lossdsl.parse("0.5 * ce() + 0.5 * l1()")


def test_a_path_string_ending_in_yaml_loads_the_file(tmp_path):
    path = write(tmp_path, "loss: bce()\n")
    assert lossdsl.load(str(path), key="loss") == lossdsl.parse("bce()")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(LossConfigError, match="cannot read"):
        lossdsl.load(tmp_path / "nope.yaml")


def test_error_in_a_node_reports_file_line_and_column(tmp_path):
    path = write(tmp_path, """
        model:
          loss:
            kind: ce
            smoothing: 2
    """)
    with pytest.raises(LossSpecError) as info:
        lossdsl.load(path, key="model.loss")
    error = info.value
    assert error.filename == str(path)
    assert (error.line, error.column) == (4, 16)
    assert str(error).startswith(f"{path}:4:16: ")
    assert "smoothing must be in [0, 1)" in str(error)
    assert caret_target(error) == "2"


def test_unknown_parameter_in_a_node_points_at_the_key(tmp_path):
    path = write(tmp_path, "loss:\n  kind: ce\n  smothing: 0.1\n")
    with pytest.raises(LossSpecError) as info:
        lossdsl.load(path, key="loss")
    assert (info.value.line, info.value.column) == (3, 3)
    assert "did you mean 'smoothing'?" in info.value.hint


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        # plain scalar
        ("loss: 0.5 * ce(smothing=0.1)\n", 1, 16),
        # double-quoted
        ('loss: "0.5 * ce(smothing=0.1)"\n', 1, 17),
        # single-quoted
        ("loss: '0.5 * ce(smothing=0.1)'\n", 1, 17),
        # literal block
        ("loss: |\n  0.5 * ce(\n    smothing=0.1)\n", 3, 5),
        # folded block
        ("loss: >\n  0.5 * ce(\n    smothing=0.1)\n", 3, 5),
        # plain scalar over two lines
        ("loss: 0.5 * ce()\n  + bce(smothing=0.1)\n", 2, 9),
    ],
    ids=["plain", "double-quoted", "single-quoted", "literal-block", "folded-block", "plain-multiline"],
)
def test_error_inside_an_expression_string_points_into_the_file(tmp_path, text, line, column):
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LossSpecError) as info:
        lossdsl.load(path, key="loss")
    error = info.value
    assert (error.filename, error.line, error.column) == (str(path), line, column)
    assert str(error).startswith(f"{path}:{line}:{column}: ")
    assert caret_target(error) == "s"
    assert text.split("\n")[line - 1] in str(error)


def test_syntax_error_inside_a_define_points_into_the_file(tmp_path):
    path = write(tmp_path, """
        expr: a + b
        define:
          a: ce()
          b: bce(pos_weight=)
    """)
    with pytest.raises(lossdsl.LossSyntaxError) as info:
        lossdsl.load(path)
    error = info.value
    assert (error.filename, error.line, error.column) == (str(path), 4, 21)
    assert caret_target(error) == ")"


def test_escapes_in_a_double_quoted_expression_keep_the_caret_aligned(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text('loss: "ce(\\t smothing=0.1)"\n', encoding="utf-8")
    with pytest.raises(LossSpecError) as info:
        lossdsl.load(path, key="loss")
    assert caret_target(info.value) == "s"


def test_invalid_yaml_reports_file_line_and_column(tmp_path):
    path = write(tmp_path, "loss:\n  kind: ce\n  weight: [1, 2\n")
    with pytest.raises(LossConfigError) as info:
        lossdsl.load(path, key="loss")
    error = info.value
    assert error.filename == str(path)
    assert error.line is not None and error.line >= 3
    assert "invalid YAML" in error.reason
    assert str(error).startswith(f"{path}:")


def test_yaml_text_errors_have_no_file_name():
    with pytest.raises(LossConfigError) as info:
        lossdsl.load("a: b: c")
    assert info.value.filename is None
    assert (info.value.line, info.value.column) == (1, 5)


# -- mappings from Python and from OmegaConf ----------------------------------------------------------


def test_plain_dict_and_omegaconf_config_give_the_same_spec():
    data = {
        "model": {
            "loss": {
                "expr": "main + 0.1 * smooth",
                "define": {"main": "ce(weight=[0.5, 1.0], ignore_index=255)", "smooth": "ce(smoothing=0.1)"},
                "reduction": "sum",
            }
        }
    }
    from_dict = lossdsl.load(data, key="model.loss")
    from_config = lossdsl.load(OmegaConf.create(data), key="model.loss")
    from_yaml = lossdsl.load(OmegaConf.to_yaml(OmegaConf.create(data)), key="model.loss")
    assert from_dict == from_config == from_yaml


def test_omegaconf_interpolations_are_resolved():
    config = OmegaConf.create({"ignore": 255, "loss": {"kind": "ce", "ignore_index": "${ignore}"}})
    assert lossdsl.load(config, key="loss") == lossdsl.parse("ce(ignore_index=255)")


def test_omegaconf_node_form_with_lists():
    config = OmegaConf.create({"kind": "bce", "pos_weight": [1.0, 2.0], "reduction": "sum"})
    assert lossdsl.load(config) == lossdsl.parse("bce(pos_weight=[1, 2], reduction=sum)")


def test_compile_accepts_a_mapping():
    loss = lossdsl.compile({"kind": "mse", "reduction": "sum"})
    assert loss.spec == lossdsl.parse("mse(reduction=sum)")


def test_non_string_keys_are_refused():
    with pytest.raises(LossConfigError, match="keys must be strings"):
        lossdsl.load({"kind": "ce", 1: 2})


def test_unsupported_source_types_are_refused():
    for source in (3, [1, 2], None, b"ce()"):
        with pytest.raises(LossConfigError, match="cannot load a loss"):
            lossdsl.load(source)


# -- safety -------------------------------------------------------------------------------------------


def test_duplicate_keys_are_rejected_where_the_second_one_is():
    text = "kind: ce\nsmoothing: 0.1\nsmoothing: 0.2\n"
    with pytest.raises(LossConfigError) as info:
        lossdsl.load(text)
    assert info.value.reason == "duplicate key 'smoothing'"
    assert (info.value.line, info.value.column) == (3, 1)


def test_duplicate_keys_in_a_flow_mapping_are_rejected():
    with pytest.raises(LossConfigError, match="duplicate key 'kind'"):
        lossdsl.load("{kind: ce, kind: bce}")


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system",
        "!!python/object/apply:subprocess.check_call",
        "!!python/object/new:os.system",
        "!!python/name:os.system",
        "!!python/module:os",
    ],
)
def test_python_tags_are_refused_and_nothing_runs(tmp_path, tag):
    marker = tmp_path / "created"
    if tag.startswith("!!python/object"):
        argument = f" [touch {marker}]" if "os.system" in tag else f" [[touch, {marker}]]"
    else:
        argument = " ''"
    for text in (f"loss: {tag}{argument}\n", f"{tag}{argument}\n"):
        with pytest.raises(LossConfigError) as info:
            lossdsl.load(text)
        assert "is not allowed" in info.value.reason
        assert "safe loader" in info.value.reason
        assert tag.split(":")[0] in info.value.reason or "python" in info.value.reason
    assert not marker.exists()


def test_python_tag_in_a_file_reports_its_location(tmp_path):
    marker = tmp_path / "created"
    path = write(tmp_path, f"model:\n  loss: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(LossConfigError) as info:
        lossdsl.load(path, key="model.loss")
    assert (info.value.filename, info.value.line) == (str(path), 2)
    assert not marker.exists()


def test_examples_load():
    # Every top-level example is an experiment file with its loss at model.loss.
    paths = sorted(EXAMPLES.glob("*.yaml"))
    assert paths
    for path in paths:
        assert isinstance(lossdsl.load(path, key="model.loss"), lossdsl.LossSpec), path.name


def test_a_mistyped_file_name_says_the_file_cannot_be_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("exp.yaml", "configs/exp.yml", "exp.json"):
        with pytest.raises(LossConfigError) as info:
            lossdsl.load(name)
        assert info.value.reason.startswith(f"cannot read {name}")


def test_errors_inside_a_define_name_the_full_path():
    data = {"model": {"loss": {"expr": "a", "define": {"a": {"kind": "ce", "smoothing": 3}}}}}
    with pytest.raises(LossSpecError) as info:
        lossdsl.load(data, key="model.loss")
    assert info.value.path == "model.loss.define.a.smoothing"


def test_control_characters_in_yaml_are_refused_where_they_are():
    with pytest.raises(LossConfigError) as info:
        lossdsl.load("kind: ce\nsmoothing: 0.1\x07\n")
    assert "'\\x07' is not allowed" in info.value.reason
    assert (info.value.line, info.value.column) == (2, 15)
