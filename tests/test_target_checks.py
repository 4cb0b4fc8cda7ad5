"""Class-index targets of every integer dtype, the value checks' messages and what they suggest
(issue 15 items 1, 3, 5, 19 and 20; SPEC sections 4 and 6).

- Class indices of any integer dtype are compared with ``ignore_index`` and the class range as
  integers: a uint8 mask with ``ignore_index=255`` equals the int64 one (and ``F.cross_entropy`` on
  it), and a value that only wraps into ``ignore_index`` in the target's dtype (255 in uint8 against
  ``ignore_index=-1``) is out of range, with the same clear error on every head.
- One class on a softmax head is an error that says to use the sigmoid head (kornia refuses it too).
- Non-finite box coordinates are refused like non-finite targets.
- Hints name only options the loss takes: ``background=true`` where the loss has it, ``ignore_index``
  for a void value, never ``check_values=False`` for indices; NaN reads "NaN".
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.errors import LossInputError

INDEX_LOSSES = [  # every head and kind of term that reads class indices
    "ce", "bce", "focal", "ghm", "asl", "focal(head=softmax", "asl(head=softmax", "poly(ce", "dice",
    "tversky", "lovasz", "dice(head=sigmoid", "lovasz(head=sigmoid",
]


def with_option(name: str, option: str) -> str:
    """``focal(head=softmax`` + ``ignore_index=255`` -> ``focal(head=softmax, ignore_index=255)``;
    ``poly(ce`` -> ``poly(ce(ignore_index=255))``."""
    if name.startswith("poly("):
        return f"poly({with_option(name[5:], option)})"
    return f"{name}, {option})" if "(" in name else f"{name}({option})"


def batch(seed=0, void=None, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, 3, 4, 5, generator=generator, dtype=dtype) * 2).requires_grad_()
    t = torch.randint(0, 3, (2, 4, 5), generator=generator)
    if void is not None:
        t[0, 1] = void
        t[1, 2, ::2] = void
    return x, t


def value_and_grad(loss, x, t):
    value = loss(x, t)
    return value, torch.autograd.grad(value, x)[0]


def message_of(call) -> str:
    with pytest.raises(LossInputError) as error:
        call()
    return str(error.value)


# -- 1. integer dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", INDEX_LOSSES)
def test_a_uint8_mask_with_ignore_index_255_equals_the_int64_one(name):
    x, t = batch(void=255)
    loss = lossdsl.compile(with_option(name, "ignore_index=255"))
    expected = value_and_grad(loss, x, t)
    got = value_and_grad(loss, x, t.to(torch.uint8))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_uint8_mask_gives_f_cross_entropy():
    x, t = batch(void=255)
    ours = lossdsl.compile("ce(ignore_index=255)")(x, t.to(torch.uint8))
    torch.testing.assert_close(ours, F.cross_entropy(x, t, ignore_index=255))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32])
@pytest.mark.parametrize("name", ["ce", "bce", "focal(head=softmax", "dice", "lovasz"])
def test_signed_dtypes_with_a_negative_void_equal_int64(dtype, name):
    x, t = batch(void=-1)
    loss = lossdsl.compile(with_option(name, "ignore_index=-1"))
    expected = value_and_grad(loss, x, t)
    torch.testing.assert_close(value_and_grad(loss, x, t.to(dtype)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", INDEX_LOSSES)
def test_a_value_that_only_wraps_into_ignore_index_is_out_of_range_on_every_head(name):
    # uint8 cannot hold -1: 255 compared in uint8 would equal ignore_index=-1 and pass as ignored (or
    # reach torch's kernels as an index); as integers it is out of range.
    x, t = batch(void=255)
    loss = lossdsl.compile(with_option(name, "ignore_index=-1"))
    message = message_of(lambda: loss(x, t.to(torch.uint8)))
    assert "class index 255 is out of range for 3 classes (valid: 0..2, or ignore_index=-1)" in message


def test_int8_compares_a_large_ignore_index_as_an_integer():
    x, t = batch(void=-56)
    loss = lossdsl.compile("ce(ignore_index=200)")  # 200 wraps to -56 in int8
    message = message_of(lambda: loss(x, t.to(torch.int8)))
    assert "class index -56 is out of range for 3 classes (valid: 0..2, or ignore_index=200)" in message


@pytest.mark.parametrize("task", ["ce(ignore_index=255)", "bce(ignore_index=255)", "dice(ignore_index=255)"])
def test_multi_task_indicators_read_uint8_masks_as_integers(task):
    x, t = batch(void=255)
    values, averages = [], []
    for target in (t, t.to(torch.uint8)):
        loss = lossdsl.compile(f"dtp({{seg: {task}}})")
        values.append(loss({"seg": x}, {"seg": target}))
        averages.append(loss.kpi_average["seg"].clone())
    torch.testing.assert_close(values[1], values[0], rtol=0, atol=0)
    torch.testing.assert_close(averages[1], averages[0], rtol=0, atol=0)


def test_a_task_refuses_a_wrapped_void_value_by_name():
    x, t = batch(void=255)
    loss = lossdsl.compile("dtp({seg: ce(ignore_index=-1)})")
    message = message_of(lambda: loss({"seg": x}, {"seg": t.to(torch.uint8)}))
    assert message.startswith("task 'seg': ce(ignore_index=-1): class index 255 is out of range")
    assert not bool(loss.kpi_seen["seg"])


# -- 3. one class on a softmax head -----------------------------------------------------------------


@pytest.mark.parametrize("expr, sigmoid", [
    ("ce()", "bce()"), ("poly(ce())", "bce()"), ("focal(head=softmax)", "focal(head=sigmoid)"),
    ("asl(head=softmax)", "asl(head=sigmoid)"), ("dice()", "dice(head=sigmoid)"),
    ("tversky()", "tversky(head=sigmoid)"), ("jaccard()", "jaccard(head=sigmoid)"),
    ("gdice()", "gdice(head=sigmoid)"), ("lovasz()", "lovasz(head=sigmoid)"),
])
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
def test_one_class_on_a_softmax_head_is_an_error_that_points_to_the_sigmoid_head(expr, sigmoid, targets):
    x = torch.randn(2, 1, 4, 4)
    t = torch.zeros(2, 4, 4, dtype=torch.long) if targets == "indices" else torch.ones(2, 1, 4, 4)
    message = message_of(lambda: lossdsl.compile(expr)(x, t))
    assert "softmax over 1 class (dimension 1 of [2, 1, 4, 4]) gives p = 1 everywhere: the loss is " \
           "constant and trains nothing" in message
    assert f"for a binary mask use the sigmoid head with one logit per position: {sigmoid}" in message
    mask = (torch.rand(2, 1, 4, 4) < 0.5).float()
    assert torch.isfinite(lossdsl.compile(sigmoid)(x, mask))  # the hint, followed, computes


def test_one_class_is_refused_by_kornia_too():
    kornia = pytest.importorskip("kornia.losses")
    x, t = torch.rand(1, 1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long)
    # kornia's own test: lovasz_softmax_loss refuses BxNxHxW with N = 1
    with pytest.raises(ValueError, match="with N > 1"):
        kornia.lovasz_softmax_loss(x, t)
    with pytest.raises(LossInputError, match="softmax over 1 class"):
        lossdsl.compile("lovasz()")(x, t)


def test_one_class_on_the_sigmoid_head_still_computes():
    x, mask = torch.randn(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) < 0.5).float()
    for expr in ("dice(head=sigmoid)", "lovasz(head=sigmoid)", "bce()", "focal()"):
        assert torch.isfinite(lossdsl.compile(expr)(x, mask))


# -- 5. non-finite box coordinates ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("bad, found", [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")])
@pytest.mark.parametrize("which", ["predicted", "target"])
def test_non_finite_box_coordinates_are_refused(kind, bad, found, which):
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]])
    broken = boxes.clone()
    broken[1, 2] = bad  # x2
    pred, target = (broken, boxes) if which == "predicted" else (boxes, broken)
    message = message_of(lambda: lossdsl.compile(f"{kind}()")(pred, target))
    assert f"{kind}(): {which} boxes must be finite; found {found}" in message
    # switched off, the check is gone (and the value is what the formula gives)
    lossdsl.compile(f"{kind}()", check_values=False)(pred, target)


# -- 19 and 20. hints -------------------------------------------------------------------------------


@pytest.mark.parametrize("expr", ["ce()", "dice()", "lovasz()", "focal(head=softmax)", "asl(head=softmax)",
                                  "poly(ce())", "tversky()"])
def test_label_c_on_a_loss_without_background_suggests_no_background(expr):
    x, t = batch()
    t[0, 0, 0] = 3
    message = message_of(lambda: lossdsl.compile(expr)(x, t))
    assert "class index 3 is out of range for 3 classes (valid: 0..2, or ignore_index=-100)" in message
    assert "background=true" not in message
    assert "check_values" not in message
    assert "indices run from 0 to 2 for 3 classes: if yours start at 1, subtract 1; if 3 is a class of its " \
           "own, the logits need 4 classes (dimension 1)" in message


@pytest.mark.parametrize("expr, owner", [
    ("bce()", "bce"), ("focal()", "focal"), ("ghm()", "ghm"), ("asl()", "asl"),
    ("poly(focal(), eps=1)", "focal"), ("balance(modulate(bce()))", "bce"),
])
def test_label_c_on_a_sigmoid_loss_names_the_loss_that_takes_background(expr, owner):
    x, t = torch.randn(5, 3), torch.tensor([0, 3, 1, 2, 3])
    message = message_of(lambda: lossdsl.compile(expr)(x, t))
    assert f"to read it as an all-negative row give background=true to {owner}()" in message
    followed = expr.replace(f"{owner}()", f"{owner}(background=true)")
    assert torch.isfinite(lossdsl.compile(followed)(x, t))


@pytest.mark.parametrize("expr, owner", [
    ("ce()", "ce"), ("poly(ce(), eps=2)", "ce"), ("bce()", "bce"), ("focal(head=softmax)", "focal"),
    ("dice()", "dice"), ("lovasz()", "lovasz"), ("ghm()", "ghm"),
])
@pytest.mark.parametrize("void", [255, -1])
def test_a_void_value_suggests_ignore_index_on_the_loss_that_has_it(expr, owner, void):
    x, t = batch(void=void)
    message = message_of(lambda: lossdsl.compile(expr)(x, t))
    assert f"class index {void} is out of range for 3 classes" in message
    assert f"if {void} marks positions to leave out (void), give ignore_index={void} to {owner}()" in message
    assert "check_values" not in message
    followed = expr.replace(f"{owner}(", f"{owner}(ignore_index={void}, ").replace(", )", ")")
    assert torch.isfinite(lossdsl.compile(followed)(x, t))


def test_a_loss_without_ignore_index_suggests_none():
    x, t = torch.randn(4, 3), torch.tensor([0, 255, 1, 2])
    message = message_of(lambda: lossdsl.compile("qfocal()")(x, t))
    assert "class index 255 is out of range" in message
    assert "ignore_index=255" not in message and "check_values" not in message


def test_a_large_class_index_suggests_more_classes():
    x, t = batch()
    t[1, 1, 1] = 7
    message = message_of(lambda: lossdsl.compile("ce()")(x, t))
    assert "if 7 is a class, the logits need at least 8 classes (dimension 1)" in message


@pytest.mark.parametrize("expr, target, what", [
    ("bce()", torch.full((2, 3), float("nan")), "bce(): targets must lie in [0, 1]; found NaN"),
    ("dice(head=sigmoid)", torch.full((2, 3, 4), float("nan")),
     "dice(head=sigmoid): masks must lie in [0, 1]; found NaN"),
    ("ce()", torch.full((2, 3), float("nan")), "ce(): probability targets must lie in [0, 1]; found NaN"),
])
def test_nan_targets_read_nan(expr, target, what):
    x = torch.randn(target.shape)
    message = message_of(lambda: lossdsl.compile(expr)(x, target))
    assert what in message
    assert "nan to nan" not in message
    assert "a NaN target makes the loss NaN" in message


def test_nan_distances_read_nan():
    distances = torch.tensor([1.0, float("nan"), 2.0])
    message = message_of(lambda: lossdsl.compile("dfl()")(torch.randn(3, 5), distances))
    assert re.search(r"dfl targets must lie in \[0, 4\] \(the distances the 5 logits cover\); found NaN$",
                     message.splitlines()[0])


def test_eight_bit_masks_are_told_to_scale():
    x, mask = torch.randn(2, 3), torch.tensor([[0.0, 255.0, 0.0], [255.0, 0.0, 0.0]])
    message = message_of(lambda: lossdsl.compile("bce()")(x, mask))
    assert "targets must lie in [0, 1]; found values from 0 to 255" in message
    assert "masks stored as 0..255 images need target / 255" in message


def test_a_target_just_beyond_1_reads_as_itself_and_is_not_taken_for_an_8_bit_mask():
    """1.0000001 (a soft target that drifted, or a finite-difference step) printed in six digits
    would read "found values from 0 to 1", contradicting the message; nor is it a 0..255 mask."""
    x, y = torch.randn(2, 3), torch.tensor([[0.0, 1.0000001, 0.5], [1.0, 0.0, 0.0]])
    message = message_of(lambda: lossdsl.compile("asl()", check_values=True)(x, y))
    assert "targets must lie in [0, 1]; found values from 0 to 1.00000012" in message
    assert "255" not in message
