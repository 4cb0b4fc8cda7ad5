"""Region losses through the language (issue 9): compiled terms against MONAI 1.6.1 and smp 0.6.0,
every option and reduction, composition with element terms (one shared softmax), and the errors.

The arithmetic is tested in depth in tests/test_region_functional.py; here the expressions, the
options and the reductions are checked end to end, against the references' own classes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_region_functional import load_smp_loss

import lossdsl

F64 = {"rtol": 1e-9, "atol": 1e-11}


@pytest.fixture(scope="module")
def monai():
    return pytest.importorskip("monai.losses")


def segmentation_batch(shape=(2, 4, 6, 5), seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=dtype) * 2
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    return x.requires_grad_(True), t


def both_grads(a, b, x):
    return torch.autograd.grad(a, x, retain_graph=True)[0], torch.autograd.grad(b, x)[0]


@pytest.mark.parametrize("dims", ["2d", "3d"])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_with_index_targets_equals_monai(monai, dims, include_background, batch):
    x, t = segmentation_batch((2, 4, 6, 5) if dims == "2d" else (2, 3, 4, 3, 5))
    expr = f"dice(include_background={str(include_background).lower()}, batch={str(batch).lower()})"
    ours = lossdsl.compile(expr)(x, t)
    reference = monai.DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                               batch=batch)(x, t.unsqueeze(1))
    torch.testing.assert_close(ours, reference, **F64)
    torch.testing.assert_close(*both_grads(ours, reference, x), **F64)


@pytest.mark.parametrize("expr, reference", [
    ("tversky(alpha=0.3, beta=0.7)", lambda m: m.TverskyLoss(alpha=0.3, beta=0.7, to_onehot_y=True, softmax=True)),
    ("jaccard(smooth=0.01)", lambda m: m.DiceLoss(jaccard=True, smooth_nr=0.02, smooth_dr=0.02, to_onehot_y=True,
                                                  softmax=True)),
    ("dice(squared=true, smooth=0.5)", lambda m: m.DiceLoss(squared_pred=True, smooth_nr=0.5, smooth_dr=0.5,
                                                            to_onehot_y=True, softmax=True)),
    ("gdice()", lambda m: m.GeneralizedDiceLoss(to_onehot_y=True, softmax=True)),
    ("gdice(weighting=simple)", lambda m: m.GeneralizedDiceLoss(w_type="simple", to_onehot_y=True, softmax=True)),
    ("dice(weight=[1, 2, 0.5, 3])", lambda m: m.DiceLoss(weight=[1, 2, 0.5, 3], to_onehot_y=True, softmax=True)),
])
def test_region_names_equal_monai(monai, expr, reference):
    x, t = segmentation_batch()
    ours = lossdsl.compile(expr)(x, t)
    expected = reference(monai)(x, t.unsqueeze(1))
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(*both_grads(ours, expected, x), rtol=1e-6, atol=1e-8)


def test_sigmoid_masks_equal_monai(monai):
    x, _ = segmentation_batch()
    masks = (torch.rand(x.shape, dtype=x.dtype) > 0.6).to(x.dtype)
    ours = lossdsl.compile("dice(head=sigmoid)")(x, masks)
    torch.testing.assert_close(ours, monai.DiceLoss(sigmoid=True)(x, masks), **F64)


def test_ce_plus_dice_equals_monai_dice_ce_and_shares_one_softmax(monai):
    x, t = segmentation_batch()
    loss = lossdsl.compile("ce() + dice()")
    assert loss.shares
    ours = loss(x, t)
    expected = monai.DiceCELoss(to_onehot_y=True, softmax=True)(x, t.unsqueeze(1))
    torch.testing.assert_close(ours, expected, **F64)
    torch.testing.assert_close(*both_grads(ours, expected, x), **F64)
    separate = lossdsl.compile("ce()")(x, t) + lossdsl.compile("dice()")(x, t)
    torch.testing.assert_close(ours, separate, **F64)


@pytest.mark.parametrize("expr", ["ce(ignore_index=255, smoothing=0.1) + tversky(ignore_index=255)",
                                  "focal(head=softmax, ignore_index=255) + lovasz(ignore_index=255)",
                                  "dice(ignore_index=255) + jaccard(ignore_index=255)"])
def test_shared_log_softmax_gives_the_same_numbers_as_separate_terms(expr):
    x, t = segmentation_batch()
    t[0, :2] = 255
    loss = lossdsl.compile(expr)
    assert loss.shares
    value = loss(x, t)
    separate = sum(lossdsl.compile(lossdsl.LossSpec(terms=(term,)))(x, t) for term in loss.spec.terms)
    torch.testing.assert_close(value, separate, **F64)
    torch.testing.assert_close(*both_grads(value, separate, x), **F64)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_equals_smp(per_image):
    smp = load_smp_loss("lovasz")
    x, t = segmentation_batch(dtype=torch.float32)
    ours = lossdsl.compile(f"lovasz(per_image={str(per_image).lower()})")(x, t)
    expected = smp.LovaszLoss("multiclass", per_image=per_image)(x, t)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_dice_with_ignored_positions_equals_dice_on_the_rest():
    x, t = segmentation_batch((2, 3, 4, 6))
    t[:, :, :2] = 255
    poisoned = x.detach().clone()
    poisoned[:, :, :, :2] = float("nan")
    value = lossdsl.compile("dice(ignore_index=255, reduction=none)")(poisoned, t)
    expected = lossdsl.compile("dice(reduction=none)")(x[:, :, :, 2:], t[:, :, 2:])
    torch.testing.assert_close(value, expected, **F64)


@pytest.mark.parametrize("expr", ["dice(ignore_index=255)", "tversky(ignore_index=255, gamma=0.5)",
                                  "gdice(ignore_index=255)", "lovasz(ignore_index=255)",
                                  "ce(ignore_index=255) + dice(ignore_index=255)"])
def test_an_all_ignored_batch_is_zero_with_zero_gradient(expr):
    x = torch.tensor([1e4, -1e4, float("inf"), float("nan")]).reshape(1, 4, 1, 1).repeat(2, 1, 2, 2)
    x.requires_grad_(True)
    value = lossdsl.compile(expr)(x, torch.full((2, 2, 2), 255))
    value.backward()
    assert value.item() == 0 and (x.grad == 0).all()


@pytest.mark.parametrize("expr", ["dice()", "tversky(gamma=0.75)", "gdice()", "lovasz()", "jaccard(head=sigmoid)"])
def test_confident_logits_and_empty_classes_stay_finite(expr):
    x, t = segmentation_batch()
    t[:] = 0  # every class but 0 is absent
    x = (x.detach().sign() * 1e4).requires_grad_(True)
    target = t if "sigmoid" not in expr else F.one_hot(t, 4).movedim(-1, 1).double()
    value = lossdsl.compile(expr)(x, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_is_computed_in_float32(dtype):
    x, t = segmentation_batch(dtype=torch.float32)
    half = x.detach().to(dtype)
    value = lossdsl.compile("ce() + dice()")(half, t)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, lossdsl.compile("ce() + dice()")(half.float(), t))


@pytest.mark.parametrize("reduction, shape", [("none", (2, 4)), ("mean", ()), ("sum", ()), ("batchmean", ())])
def test_reductions_of_a_region_term(reduction, shape):
    x, t = segmentation_batch()
    per = lossdsl.compile("dice(reduction=none)")(x, t)
    value = lossdsl.compile(f"dice(reduction={reduction})")(x, t)
    assert value.shape == shape
    expected = {"none": per, "mean": per.mean(), "sum": per.sum(), "batchmean": per.sum() / 2}[reduction]
    torch.testing.assert_close(value, expected, **F64)


def test_unreduced_shapes_per_name():
    x, t = segmentation_batch()
    shapes = {expr: tuple(lossdsl.compile(expr)(x, t).shape) for expr in (
        "dice(reduction=none)", "dice(batch=true, reduction=none)", "gdice(reduction=none)",
        "lovasz(reduction=none)", "lovasz(per_image=true, reduction=none)",
        "tversky(include_background=false, reduction=none)")}
    assert shapes == {"dice(reduction=none)": (2, 4), "dice(batch=true, reduction=none)": (4,),
                      "gdice(reduction=none)": (2,), "lovasz(reduction=none)": (4,),
                      "lovasz(per_image=true, reduction=none)": (2, 4),
                      "tversky(include_background=false, reduction=none)": (2, 3)}


def test_dice_and_jaccard_are_tversky_special_cases():
    assert lossdsl.parse("dice(smooth=0.2)").expand().to_expr() == "tversky(smooth=0.1)"
    assert lossdsl.parse("jaccard(smooth=0.2)").expand().to_expr() == "tversky(alpha=1, beta=1, smooth=0.2)"
    assert lossdsl.parse("dice(squared=true)").expand().to_expr() == "dice(squared=true)"


def test_compiled_region_loss_matches_eager():
    x, t = segmentation_batch(dtype=torch.float32)
    loss = lossdsl.compile("ce(ignore_index=255) + tversky(alpha=0.3, beta=0.7, gamma=0.75, ignore_index=255)")
    t[0, 0] = 255
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, t), loss(x, t), rtol=1e-5, atol=1e-6)


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, message", [
    ("poly(dice())", "a region loss compares whole masks per sample and class, while blocks act element by "
                     "element \\(the focal form of Tversky is its gamma"),
    ("modulate(tversky(), gamma=2)", "the focal form of Tversky is its gamma: tversky\\(gamma=0.75\\)"),
    ("dice(reduction=pos_mean)", "a region loss gives one value per sample and class"),
    ("gdice(weight=[1, 2])", "gdice weighs its classes itself"),
    ("tversky(gamma=0)", "gamma=0 is out of range; gamma must be > 0"),
])
def test_region_spec_errors_say_why(expr, message):
    with pytest.raises(lossdsl.LossSpecError, match=message):
        lossdsl.parse(expr)


@pytest.mark.parametrize("expr, x, t, message", [
    ("dice()", torch.randn(2, 3, 4), torch.randint(0, 3, (2, 5)), r"target shape \[2, 5\] does not fit"),
    ("dice(weight=[1, 2])", torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4)),
     "weight has 2 values but the input has 3 classes"),
    ("dice(include_background=false)", torch.randn(2, 1, 4), torch.zeros(2, 4, dtype=torch.long),
     "include_background=false leaves no class"),
    ("dice()", torch.randn(2, 3, 4), torch.randint(0, 4, (2, 4)) + 3, "class index .* is out of range"),
])
def test_region_input_errors(expr, x, t, message):
    with pytest.raises(lossdsl.LossInputError, match=message):
        lossdsl.compile(expr)(x, t)


def test_a_region_term_rejects_a_call_time_weight():
    x, t = segmentation_batch()
    with pytest.raises(lossdsl.LossInputError, match="a region loss compares whole masks and takes no per-element "
                                                     "weight"):
        lossdsl.compile("ce() + dice()")(x, t, weight=torch.rand(2))
