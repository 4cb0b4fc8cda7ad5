"""Class counts in their three forms (SPEC "Long-tail losses"), and the running statistics of the
long-tail losses: how they are counted, when they move, how they are saved and loaded.

- a list: checked against the logits' classes at call time; a zero count names its class;
- a quoted file path: a JSON list or numbers separated by white space, read relative to the YAML
  file that names it (the working directory for an expression), reported by ``lossdsl check`` where
  the path is written when it is missing or malformed;
- ``online``: counted from each training-mode call's targets before the loss, read as max(n, 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import reference_longtail as lt
import torch
from conftest import caret_target

import lossdsl
from lossdsl.catalogue.counts import MAX_COUNTS_FILE_CHARS
from lossdsl.cli import main
from lossdsl.errors import LossInputError, LossSpecError

COUNTS = [500, 120, 40, 9, 2]


def prior_ce(x, t, counts):
    return torch.nn.functional.cross_entropy(x + torch.log(lt.prior(counts) + 1e-12).to(x.dtype), t)


# -- lists -----------------------------------------------------------------------------------------


def test_a_counts_list_is_checked_against_the_logits_classes_at_call_time():
    loss = lossdsl.compile("balanced_softmax(counts=[5, 3, 1])")
    with pytest.raises(LossInputError) as info:
        loss(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    assert info.value.reason == ("balanced_softmax(counts=[5, 3, 1]): counts has 3 values but the input "
                                 "has 5 classes (dimension 1 of [4, 5])")


def test_a_zero_count_is_an_error_naming_the_class_where_the_counts_are_written():
    text = "ldam(counts=[5, 3, 0, 1])"
    with pytest.raises(LossSpecError) as info:
        lossdsl.parse(text)
    assert "class 2 has a count of 0, so its prior would be 0 and its log -inf" in info.value.reason
    assert "or use counts=online" in info.value.reason
    assert caret_target(info.value) == "["


@pytest.mark.parametrize("counts, fragment", [
    ("[5, -1]", "the count of class 1 is -1; counts must be finite and > 0"),
    ("[5, true]", "the count of class 1 must be a number, got true"),
    ("[]", "no numbers; expected one count per class"),
    ("[1e308, 1e308]", "the counts add up to more than the largest float"),
    ("3", "expected a list of numbers, a quoted file path or online, got int"),
])
def test_bad_counts_are_refused_with_the_reason(counts, fragment):
    with pytest.raises(LossSpecError) as info:
        lossdsl.parse(f"class_balanced(ce(), counts={counts})")
    assert fragment in info.value.reason


# -- files -----------------------------------------------------------------------------------------


def test_a_counts_file_is_read_relative_to_the_yaml_file_that_names_it(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "counts.json").write_text(json.dumps(COUNTS))
    (folder / "exp.yaml").write_text('model:\n  loss: balanced_softmax(counts="counts.json")\n')
    monkeypatch.chdir(tmp_path)  # another folder: the path is the YAML file's, not the working one's
    spec = lossdsl.load(Path("configs/exp.yaml"), key="model.loss")
    assert spec.terms[0].loss.counts.counts == tuple(float(n) for n in COUNTS)
    x, t = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(lossdsl.compile(spec)(x, t), prior_ce(x, t, COUNTS))


def test_a_counts_file_of_numbers_separated_by_white_space_as_google_researchs_base_probs(tmp_path, monkeypatch):
    probabilities = [n / sum(COUNTS) for n in COUNTS]
    (tmp_path / "base_probs.txt").write_text("\n".join(f"{p:.17g}" for p in probabilities) + "\n")
    monkeypatch.chdir(tmp_path)  # a bare expression reads from the working directory
    loss = lossdsl.compile('logit_adjust(ce(), tau=1, counts="base_probs.txt")')
    x, t = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(loss(x, t), lt.logit_adjusted_ce(x, t, probabilities).mean(), rtol=1e-12,
                               atol=1e-12)


def test_a_counts_file_prints_as_its_path_and_round_trips(tmp_path, monkeypatch):
    (tmp_path / "c.json").write_text("[3, 2, 1]")
    monkeypatch.chdir(tmp_path)
    spec = lossdsl.parse('class_balanced(focal(head=softmax), counts="c.json")')
    assert spec.to_expr() == 'class_balanced(focal(head=softmax), counts="c.json")'
    assert lossdsl.parse(spec.to_expr()) == spec
    assert lossdsl.load(spec.to_yaml()) == spec
    assert spec.to_dict()["counts"] == "c.json" and type(spec.to_dict()["counts"]) is str


def test_the_same_path_with_other_counts_is_another_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text("[3, 2, 1]")
    before = lossdsl.parse('balanced_softmax(counts="c.json")')
    (tmp_path / "c.json").write_text("[3, 2, 2]")
    after = lossdsl.parse('balanced_softmax(counts="c.json")')  # read again, not served from a cache
    assert after.terms[0].loss.counts.counts == (3.0, 2.0, 2.0)
    assert before != after


@pytest.mark.parametrize("content, fragment", [
    ("[5, 3, 0]", "counts file 'c.json': class 2 has a count of 0"),
    ("[5, 3,", "counts file 'c.json' is not valid JSON"),
    ('{"person": 5}', "counts file 'c.json' holds a JSON mapping; expected a list of numbers"),
    ("5 3\n2 x1\n", "counts file 'c.json', line 2: 'x1' is not a number"),
    ("", "counts file 'c.json': no numbers; expected one count per class"),
    ("1 " * (MAX_COUNTS_FILE_CHARS // 2 + 1), f"longer than {MAX_COUNTS_FILE_CHARS} characters"),
])
def test_lossdsl_check_reports_a_malformed_counts_file_where_its_path_is_written(tmp_path, capsys, content, fragment):
    (tmp_path / "c.json").write_text(content)
    config = tmp_path / "exp.yaml"
    config.write_text('loss:\n  expr: 0.5 * ce() + ldam(counts="c.json")\n')
    code = main(["check", str(config)])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith(f"{config}:2:34: ldam(): counts: "), out
    assert fragment in out


def test_lossdsl_check_reports_a_missing_counts_file_and_where_it_was_looked_for(tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text('loss: seesaw() + balanced_softmax(counts="lvis_counts.json")\n')
    code = main(["check", str(config)])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith(f"{config}:1:42: balanced_softmax(): counts: cannot read counts file "
                          "'lvis_counts.json': No such file or directory"), out
    assert f"here {tmp_path}" in out


def test_an_unquoted_misspelling_of_online_is_read_as_a_file_and_the_message_says_so():
    with pytest.raises(LossSpecError) as info:
        lossdsl.parse("balanced_softmax(counts=onlin)")
    assert "counts=online (unquoted) counts the training targets, a file is a quoted path" in info.value.reason


# -- online ----------------------------------------------------------------------------------------


def running_counts(loss, term=0):
    return loss.terms[term].frequency.class_counts


def test_online_counts_count_the_class_indices_that_are_not_ignored():
    loss = lossdsl.compile("balanced_softmax(ignore_index=255)")
    loss(torch.randn(2, 4, 3), torch.tensor([[0, 255, 1], [1, 3, 255]]))
    assert running_counts(loss).tolist() == [1.0, 2.0, 0.0, 1.0]
    assert running_counts(loss).dtype == torch.float64


def test_online_counts_add_probability_targets():
    loss = lossdsl.compile("logit_adjust(ce())")
    y = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    loss(torch.randn(2, 3), y)
    assert running_counts(loss).tolist() == [0.5, 1.25, 0.25]


def test_online_counts_on_the_sigmoid_head_count_positives_and_not_the_background():
    dense = lossdsl.compile("class_balanced(focal())")
    dense(torch.randn(3, 4), torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]]))
    assert running_counts(dense).tolist() == [2.0, 1.0, 1.0, 0.0]
    index = lossdsl.compile("class_balanced(focal(background=true))")
    index(torch.randn(4, 3), torch.tensor([0, 3, 2, 3]))  # 3 = C: background rows count nothing
    assert running_counts(index).tolist() == [1.0, 0.0, 1.0]


def test_online_counts_are_counted_before_the_loss_and_read_as_at_least_one():
    loss = lossdsl.compile("balanced_softmax()")
    x, t = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 0, 1])
    # this batch's counts [3, 2, 0, 0] -> [3, 2, 1, 1]
    torch.testing.assert_close(loss(x, t), prior_ce(x, t, [3, 2, 1, 1]), rtol=1e-12, atol=1e-12)


def test_online_counts_move_in_training_mode_only():
    loss = lossdsl.compile("class_balanced(ce(), beta=0.9)")
    loss(torch.randn(3, 3), torch.tensor([0, 0, 2]))
    loss.eval()
    loss(torch.randn(3, 3), torch.tensor([1, 1, 1]))
    assert running_counts(loss).tolist() == [2.0, 0.0, 1.0]


def test_one_term_counts_once_however_many_of_its_blocks_read_online_counts():
    loss = lossdsl.compile("class_balanced(logit_adjust(ce()), beta=0.9)")
    assert [name for name, _ in loss.named_buffers()] == ["terms.0.frequency.class_counts"]
    loss(torch.randn(3, 3), torch.tensor([0, 0, 2]))
    assert running_counts(loss).tolist() == [2.0, 0.0, 1.0]


def test_statistics_stay_float64_whatever_the_modules_dtype():
    loss = lossdsl.compile("seesaw() + eqlv2()")
    loss.half()
    loss.double()
    assert {tensor.dtype for tensor in loss.state_dict().values() if tensor.is_floating_point()} == {torch.float64}


# -- nothing moves on failure ----------------------------------------------------------------------


def test_a_term_refusing_its_inputs_leaves_every_statistic_as_it_was():
    loss = lossdsl.compile("balanced_softmax() + ldam()")
    loss(torch.randn(2, 3), torch.tensor([0, 1]))
    before = {name: value.clone() for name, value in loss.state_dict().items()}
    with pytest.raises(LossInputError, match="needs class-index targets"):
        loss(torch.randn(2, 3), torch.softmax(torch.randn(2, 3), 1))
    assert all(torch.equal(before[name], value) for name, value in loss.state_dict().items())


def test_a_failure_while_computing_leaves_every_statistic_as_it_was(monkeypatch):
    loss = lossdsl.compile("seesaw() + eqlv2() + 0.5 * ce()")
    x, t = torch.randn(4, 4), torch.tensor([0, 3, 1, 3])
    loss(x, t)
    before = {name: value.clone() for name, value in loss.state_dict().items()}

    def broken(inputs):
        raise RuntimeError("the third term fails after the first two computed")

    monkeypatch.setattr(loss.terms[2], "compute", broken)
    with pytest.raises(RuntimeError):
        loss(x, t)
    assert all(torch.equal(before[name], value) for name, value in loss.state_dict().items())


def test_a_failure_before_the_first_call_leaves_the_statistics_empty(monkeypatch):
    loss = lossdsl.compile("balanced_softmax() + eqlv2() + 0.5 * ce()")
    monkeypatch.setattr(loss.terms[2], "compute", lambda inputs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        loss(torch.randn(4, 4), torch.tensor([0, 3, 1, 3]))
    assert all(value.numel() == 0 for name, value in loss.state_dict().items() if name != "_extra_state")


# -- state_dict --------------------------------------------------------------------------------------

STATEFUL = [
    ("logit_adjust(focal(head=softmax))", "index"),
    ("class_balanced(focal())", "multi-hot"),
    ("seesaw() + ldam()", "index"),
    ("eqlv2()", "index"),
]


def batch(kind, step, classes=5):
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(8, classes, generator=generator)
    if kind == "index":
        return x, torch.multinomial(torch.tensor([8.0, 4, 2, 1, 1]), 8, replacement=True, generator=generator)
    return x, (torch.rand(8, classes, generator=generator) < 0.3).float()


@pytest.mark.parametrize("expr, kind", STATEFUL)
def test_state_dict_round_trips_into_a_fresh_loss(expr, kind):
    trained = lossdsl.compile(expr)
    for step in range(3):
        trained(*batch(kind, step))
    fresh = lossdsl.compile(expr)
    fresh.load_state_dict(trained.state_dict())
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    x, t = batch(kind, 7)
    assert torch.equal(fresh(x, t), trained(x, t))
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


@pytest.mark.parametrize("expr, kind", STATEFUL)
def test_a_state_saved_before_the_first_call_empties_the_statistics(expr, kind):
    untouched = lossdsl.compile(expr).state_dict()
    trained = lossdsl.compile(expr)
    trained(*batch(kind, 0))
    trained.load_state_dict(untouched)
    assert all(value.numel() == 0 for name, value in trained.state_dict().items() if name != "_extra_state")


def test_statistics_of_another_number_of_classes_are_refused():
    five, six = lossdsl.compile("seesaw()"), lossdsl.compile("seesaw()")
    five(*batch("index", 0))
    six(torch.randn(3, 6), torch.tensor([0, 5, 1]))
    with pytest.raises(LossInputError, match=r"'terms.0.frequency.class_counts' \(running counts\) has "
                       r"shape \[5\]; this loss's has shape \[6\]; nothing was loaded"):
        six.load_state_dict(five.state_dict())
    with pytest.raises(LossInputError) as info:
        five(torch.randn(3, 6), torch.tensor([0, 5, 1]))
    assert info.value.reason == ("seesaw(): the running class counts hold 5 classes but the input has 6 "
                                 "(dimension 1 of [3, 6])")


@pytest.mark.parametrize("expr", [
    'logit_adjust(focal(head=softmax, gamma=1), tau=0.5, counts=[3, 2, 1], posthoc=true)',
    "balanced_softmax(counts=[3, 2, 1], ignore_index=255)",
    "ldam(counts=[3, 2, 1], max_m=0.3, s=10)",
    "class_balanced(poly(focal(), eps=2), beta=0.99, counts=[3, 2.5, 1])",
    "seesaw(p=0.5, q=1, eps=0.1, reduction=sum)",
    "eqlv2(gamma=6, mu=0.5, alpha=2, reduction=pos_mean) + 0.5 * balanced_softmax()",
])
def test_every_name_round_trips_through_expression_and_yaml(expr):
    spec = lossdsl.parse(expr)
    assert lossdsl.parse(spec.to_expr()) == spec
    assert lossdsl.load(spec.to_yaml()) == spec
    assert lossdsl.load(spec.to_dict()) == spec
    assert repr(lossdsl.compile(spec)) == f"lossdsl.compile({spec.to_expr()!r})"


def test_seesaw_mitigation_reads_counts_of_e20_as_mmpretrain_sets_them():
    """A checkpoint of mmpretrain's cum_samples loads as the running counts (mmpretrain's test)."""
    loss = lossdsl.compile("seesaw(p=1, q=0)")
    loss.load_state_dict({"terms.0.frequency.class_counts": torch.tensor([math.exp(20), 0.0], dtype=torch.float64),
                          "_extra_state": loss.state_dict()["_extra_state"]})
    assert torch.allclose(loss(torch.tensor([[-100.0, 100.0]]), torch.tensor([0])), torch.tensor(180.0))
