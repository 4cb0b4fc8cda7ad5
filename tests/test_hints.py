"""Hints that lead somewhere (issue 15, item 26): what explain says of reductions and of timm, other
libraries' spellings, the parser's own token names, and YAML indentation."""

from __future__ import annotations

import inspect

import pytest
import torch
from test_blocks_parity import load_timm_loss

import lossdsl
from lossdsl.catalogue.base import CATALOGUE, REDUCTIONS
from lossdsl.catalogue_text import example_of, explain, explanation
from lossdsl.cli import main
from lossdsl.printer import node_to_expr


def error_of(call) -> lossdsl.LossDSLError:
    with pytest.raises(lossdsl.LossDSLError) as info:
        call()
    return info.value


def reduction_row(name: str) -> dict:
    return next(row for row in explanation(name)["parameters"] if row["name"] == "reduction")


def test_explain_dice_offers_only_the_reductions_it_takes():
    row = reduction_row("dice")
    assert row["type"] == "one of mean, sum, batchmean, none"
    assert row["description"] == ("how the term becomes a number: mean, sum, batchmean (sum / N), none "
                                  "(the values before reducing: per sample and class, as above); on "
                                  "the outermost call of a term")
    assert "pos_mean" not in explain("dice") and "per element" not in explain("dice")


def with_reduction(expression: str, reduction: str) -> str:
    return expression[:-1] + ("" if expression.endswith("()") else ", ") + f"reduction={reduction})"


# Names over tasks or whole losses (tasks, dtp, deep) reduce inside and list no reduction of their own.
@pytest.mark.parametrize("name", sorted(n for n, cls in CATALOGUE.items()
                                        if not (cls.task_fields or cls.spec_fields)))
def test_the_reductions_explain_lists_are_those_the_validator_takes(name):
    example = example_of(CATALOGUE[name])
    if example is None:
        pytest.skip(f"{name} has no example with defaults")
    listed = reduction_row(name)["type"].removeprefix("one of ").split(", ")
    accepted = []
    for reduction in REDUCTIONS:
        try:
            lossdsl.parse(with_reduction(node_to_expr(example), reduction))
        except lossdsl.LossSpecError:
            continue
        accepted.append(reduction)
    assert listed == accepted


def test_explain_asl_gives_timms_default_reduction():
    timm = load_timm_loss("asymmetric_loss.py")
    default = inspect.signature(timm.AsymmetricLossMultiLabel).parameters["reduction"].default
    assert default == "batchmean"  # timm 1.0.31, as docs/migration.md says
    text = explain("asl")
    assert "timm sums" not in text
    assert ("timm AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=1, clip=0.05): asl(reduction=batchmean) "
            "(timm's default reduction is batchmean, lossdsl's mean)") in text
    x = torch.randn(6, 5)  # timm computes in float32
    y = (torch.rand(6, 5) < 0.3).float()
    expected = timm.AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=1, clip=0.05)(x, y)
    torch.testing.assert_close(lossdsl.compile("asl(reduction=batchmean)")(x, y), expected, rtol=2e-5, atol=0)


@pytest.mark.parametrize("written, ours", [
    ("cross_entropy", "ce"), ("CrossEntropyLoss", "ce"), ("bce_with_logits", "bce"),
    ("binary_cross_entropy", "bce"), ("BCEWithLogitsLoss", "bce"), ("sigmoid_focal_loss", "focal"),
    ("focal_loss", "focal"), ("dice_loss", "dice"), ("DiceLoss", "dice"),
    ("generalized_box_iou_loss", "giou"), ("lovasz_softmax", "lovasz"), ("mse_loss", "mse"),
])
def test_other_libraries_spellings_get_did_you_mean(written, ours):
    error = error_of(lambda: lossdsl.parse(f"0.5 * {written}()"))
    assert error.reason == f"unknown loss '{written}'"
    assert error.hint.startswith(f"did you mean '{ours}', lossdsl's name for {written}? valid losses: ")
    bare = error_of(lambda: lossdsl.load({"expr": f"ce() + {written}"}))  # a bare name in an expression
    assert bare.hint.startswith(f"did you mean '{ours}', lossdsl's name for {written}? valid names: ")


def test_a_misspelling_still_gets_the_closest_name():
    assert error_of(lambda: lossdsl.parse("focl()")).hint.startswith("did you mean 'focal'? valid losses")


def test_a_comma_between_terms_says_what_was_expected_in_words(capsys):
    error = error_of(lambda: lossdsl.parse("focal(), ghm()"))
    assert error.reason == "expected an operator or the end of the expression, got ','"
    assert error.hint == "terms of a sum are joined with '+', as in focal() + ghm()"
    assert main(["check", "focal(), ghm()"]) == 1
    assert "$END" not in capsys.readouterr().out


@pytest.mark.parametrize("text, reason, hint", [
    ("loss:\n  kind: focal\n   gamma: 2\n", "invalid YAML: mapping values are not allowed here",
     "is this line indented deeper than the key above it?"),
    ("model:\n  loss:\n    kind: focal\n   gamma: 2\n", "invalid YAML: expected <block end>, but found "
     "'<block mapping start>' (while parsing a block mapping)",
     "is this line indented differently from the lines above it?"),
    ("loss:\n\tkind: focal\n", "invalid YAML: found character '\\t' that cannot start any token "
     "(while scanning for the next token)", "YAML indents with spaces only: replace the tab with spaces"),
    ("loss: uncertainty({seg: ce(), depth: l1()})\n", "invalid YAML: mapping values are not allowed here",
     "must be quoted: loss: \"uncertainty({seg: ce(), depth: l1()})\""),
])
def test_yaml_indentation_errors_get_a_hint(text, reason, hint):
    error = error_of(lambda: lossdsl.load(text))
    assert error.reason == reason
    assert hint in error.hint
