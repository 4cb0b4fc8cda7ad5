"""Call-time inputs and knowledge distillation (issue 17 items 1-2; SPEC section 5b).

References: the KD formula written out (``T^2 sum_c p_c (log p_c - log q_c)`` per sample, with
``p = softmax(t/T)``, ``q = softmax(z/T)``), and ``F.kl_div(..., reduction="batchmean") * T*T``, the
form Hinton et al.'s recipe is usually written in (RepDistiller's ``DistillKL``).
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import LossInputError, LossSpecError


def kd_formula(z, t, T):
    """Per position: T^2 sum_c p_c (log p_c - log q_c), written from the definition of the KL."""
    p = torch.softmax(t / T, dim=1)
    return T * T * (p * (torch.log(p) - torch.log_softmax(z / T, dim=1))).sum(dim=1)


def kd_torch(z, t, T):
    return F.kl_div(F.log_softmax(z / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean") * T * T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1.0, 4.0, 0.5])
@pytest.mark.parametrize("shape", [(8, 10), (3, 4, 5, 6)])
def test_kd_equals_kl_div_batchmean_times_t_squared(dtype, T, shape):
    z = (3 * torch.randn(shape, dtype=dtype)).requires_grad_()
    t = 3 * torch.randn(shape, dtype=dtype)
    ours = lossdsl.compile(f"kd(T={T})")(z, teacher=t)
    expected = kd_torch(z, t, T)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    torch.testing.assert_close(ours, expected, **tol)
    torch.testing.assert_close(ours, kd_formula(z, t, T).sum() / shape[0], **tol)
    (g_ours,) = torch.autograd.grad(ours, z)
    (g_ref,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(g_ours, g_ref, **tol)


def test_kd_passes_gradcheck():
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64)
    loss = lossdsl.compile("kd(T=3, reduction=none)")
    assert torch.autograd.gradcheck(lambda z: loss(z, teacher=t), (z,))


@pytest.mark.parametrize("reduction, reduce", [
    ("sum", lambda v: v.sum()), ("mean", lambda v: v.mean()), ("none", lambda v: v),
])
def test_kd_reductions_are_over_positions(reduction, reduce):
    z, t = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    ours = lossdsl.compile(f"kd(T=2, reduction={reduction})")(z, teacher=t)
    torch.testing.assert_close(ours, reduce(kd_formula(z, t, 2.0)))


def test_the_teacher_gets_no_gradient():
    z = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 4, requires_grad=True)
    lossdsl.compile("kd()")(z, teacher=t).backward()
    assert t.grad is None and z.grad is not None


def test_hintons_recipe_adds_ce_on_the_labels_and_kd_on_the_teacher():
    z = torch.randn(8, 10, dtype=torch.float64, requires_grad=True)
    t, y = torch.randn(8, 10, dtype=torch.float64), torch.randint(0, 10, (8,))
    loss = lossdsl.compile("0.5 * ce() + 0.5 * kd(T=4)")
    value = loss(z, y, teacher=t)
    torch.testing.assert_close(value, 0.5 * F.cross_entropy(z, y) + 0.5 * kd_torch(z, t, 4.0))
    assert set(loss.last_terms) == {"ce()", "kd()", "total"}


def test_kd_takes_a_call_weight_per_sample():
    z, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    w = torch.rand(5, dtype=torch.float64)
    value = lossdsl.compile("kd(T=2)")(z, None, weight=w, teacher=t)
    torch.testing.assert_close(value, (kd_formula(z, t, 2.0) * w).sum() / 5)


def test_half_precision_is_computed_in_float32():
    z, t = torch.randn(6, 5), torch.randn(6, 5)
    loss = lossdsl.compile("kd()")
    value = loss(z.half(), teacher=t.half())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, kd_torch(z.half().float(), t.half().float(), 4.0))


def test_a_multi_task_loss_takes_the_teacher_per_task():
    loss = lossdsl.compile("{cls: 0.5 * ce() + 0.5 * kd(T=2), box: l1()}")
    preds = {"cls": torch.randn(6, 3, dtype=torch.float64), "box": torch.randn(6, 4, dtype=torch.float64)}
    targets = {"cls": torch.randint(0, 3, (6,)), "box": torch.randn(6, 4, dtype=torch.float64)}
    t = torch.randn(6, 3, dtype=torch.float64)
    value = loss(preds, targets, teacher={"cls": t})
    expected = (0.5 * F.cross_entropy(preds["cls"], targets["cls"]) + 0.5 * kd_torch(preds["cls"], t, 2.0)
                + F.l1_loss(preds["box"], targets["box"]))
    torch.testing.assert_close(value, expected)


# -- call-time inputs that do not fit -------------------------------------------------------------


def test_a_missing_input_names_the_term_and_what_it_wants():
    loss = lossdsl.compile("0.5 * ce() + 0.5 * kd(T=2)")
    with pytest.raises(LossInputError) as error:
        loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert str(error.value).startswith("kd(T=2): needs the call-time input teacher= (the teacher's logits")


def test_a_misspelt_input_suggests_the_name_a_term_reads():
    loss = lossdsl.compile("0.5 * ce() + 0.5 * kd(T=2)")
    with pytest.raises(LossInputError) as error:
        loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), teachr=torch.randn(4, 3))
    assert error.value.reason == "no term of this loss reads the input teachr="
    assert error.value.hint == "did you mean 'teacher'? kd(T=2) reads teacher="


def test_an_input_to_a_loss_that_reads_none_is_refused():
    with pytest.raises(LossInputError, match="no term of this loss reads a call-time input, but it was "
                                             "given teacher="):
        lossdsl.compile("ce()")(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), teacher=torch.randn(4, 3))


@pytest.mark.parametrize("options, expected", [
    ({"teacher": torch.randn(6, 3)}, "a multi-task loss takes teacher as a mapping by task name"),
    ({"teacher": {"box": torch.randn(6, 4)}}, "task 'box' reads no input teacher=; task 'cls' reads it"),
    ({"teachers": {"cls": torch.randn(6, 3)}}, r"did you mean 'teacher'\? task 'cls' reads teacher="),
    ({}, "task 'cls': kd\\(T=2\\): needs the call-time input teacher="),
])
def test_per_task_inputs_are_checked(options, expected):
    loss = lossdsl.compile("{cls: kd(T=2), box: l1()}")
    preds = {"cls": torch.randn(6, 3), "box": torch.randn(6, 4)}
    targets = {"cls": torch.randint(0, 3, (6,)), "box": torch.randn(6, 4)}
    with pytest.raises(LossInputError) as error:
        loss(preds, targets, **options)
    assert re.search(expected, str(error.value)), str(error.value)


@pytest.mark.parametrize("teacher, expected", [
    (torch.randn(4, 5), r"teacher= logits of shape \[4, 5\] do not match the student's \[4, 3\]"),
    (torch.randint(0, 3, (4, 3)), "teacher= must be a floating-point tensor of logits, got torch.int64"),
    (torch.full((4, 3), float("nan")), "teacher= logits must be finite"),
])
def test_a_teacher_that_does_not_fit_is_refused(teacher, expected):
    with pytest.raises(LossInputError, match=expected):
        lossdsl.compile("kd()")(torch.randn(4, 3), teacher=teacher)


def test_kd_needs_a_class_dimension():
    with pytest.raises(LossInputError, match=r"needs logits of shape \[N, C, ...\]; got \[4\]"):
        lossdsl.compile("kd()")(torch.randn(4), teacher=torch.randn(4))


# -- the language -----------------------------------------------------------------------------------


def test_kd_defaults_to_batchmean_and_prints_other_reductions():
    assert lossdsl.parse("kd(T=2)").terms[0].reduction == "batchmean"
    assert lossdsl.parse("kd(T=2, reduction=mean)").to_expr() == "kd(T=2, reduction=mean)"
    assert lossdsl.parse("kd(reduction=batchmean)").to_expr() == "kd()"
    spec = lossdsl.parse("0.5 * ce() + 0.5 * kd(T=2, reduction=sum)")
    assert lossdsl.load(spec.to_yaml()) == spec == lossdsl.parse(spec.to_expr())


@pytest.mark.parametrize("expr, expected", [
    ("kd(T=0)", "kd(): T=0 is out of range; T must be in (0, 10000]"),
    ("kd(reduction=pos_mean)", "kd compares two distributions and has no positive targets"),
    ("poly(kd())", "needs a loss with a probability p_t"),
])
def test_bad_kd_expressions(expr, expected):
    with pytest.raises(LossSpecError, match=expected.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        lossdsl.parse(expr)
