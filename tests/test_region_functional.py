"""The region losses of ``lossdsl.functional.region`` (SPEC "Region losses (segmentation)").

Values and gradients (w.r.t. logits through softmax/sigmoid, and w.r.t. soft targets) against MONAI
1.6.1 and segmentation_models_pytorch 0.6.0, against the formulas written out here, and the numerics
SPEC asks of every loss. The references map onto SPEC's parameters as follows; every mapping is a test.

MONAI ``DiceLoss``, ``TverskyLoss``, ``GeneralizedDiceLoss``:
- ``smooth_nr = smooth_dr = smooth`` (SPEC has one smoothing constant; MONAI's cases with different
  ones have no SPEC equivalent); ``reduction="none"`` is our ``[N, C]`` (``[C]`` with ``batch=True``,
  ``[N]``/scalar for generalized dice); ``include_background=False`` is ``stats.select(slice(1,
  None))``; ``weight`` multiplies the per-class value;
- ``DiceLoss(jaccard=True)`` with smoothing ``2s`` is ``jaccard(smooth=s)`` (SPEC's claim, verified);
- soft targets: SPEC's ``TP = sum p y`` is MONAI's ``soft_label=False``. ``soft_label=True`` takes
  ``TP = (sum p + sum y - sum |p - y|) / 2 = sum min(p, y)``: the same for hard targets, another loss
  for soft ones.

smp ``DiceLoss``, ``JaccardLoss``, ``TverskyLoss``, ``LovaszLoss``:
- smp always sums over the batch (``batch=True``) and zeroes the classes absent from the batch's target
  while still dividing by the number of classes: smp's value is ``mean_c(present_c * ours_c)``
  (``sum_c w_c present_c ours_c / sum_c w_c`` with ``class_weights``);
- ``DiceLoss(smooth=s)`` is ``dice(smooth=2s)`` (smp adds ``s`` to ``TP`` and to ``TP + (FP + FN)/2``);
  ``JaccardLoss(smooth=s)`` and ``TverskyLoss(smooth=s)`` are ``jaccard``/``tversky(smooth=s)``; its
  ``eps`` (a floor on the denominator) never binds with ``smooth > 0``; ``log_loss`` is ``log=True``;
- ``TverskyLoss(gamma=g)`` raises the class mean to ``g``, SPEC each class: equal for one class;
- soft targets: smp's ``TP`` is ``sum min(p, y)``, as MONAI's ``soft_label=True`` (not SPEC's);
- ``LovaszLoss("multiclass")`` is ``mean_over_counted(*lovasz_softmax(classes="present"))``;
  ``"binary"`` is ``lovasz_hinge(classes="all")`` on one class; ``"multilabel"`` flattens every class
  into one binary problem, SPEC takes the hinge per class and averages (not compared).

Berman et al.'s per-image mean leaves an image whose every position is ignored out of the mean (smp
adds 0 for it, or fails); ``mean_over_counted`` does the former.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch

from lossdsl.functional import region
from lossdsl.functional.targets import index_to_one_hot, zero_ignored

IGNORE = 255
SHAPES = {"2d": (2, 4, 6, 5), "3d": (2, 3, 4, 3, 5)}
F64 = {"rtol": 1e-9, "atol": 1e-11}
F32 = {"rtol": 2e-5, "atol": 2e-6}


# --------------------------------------------------------------------------------------------------
# references and inputs


@pytest.fixture(scope="module")
def monai():
    return pytest.importorskip("monai.losses")


def load_smp_loss(name):
    """One file of smp's ``losses`` package: the package itself imports torchvision (absent here), so
    its files are loaded under a stand-in package that only resolves their relative imports."""
    found = importlib.util.find_spec("segmentation_models_pytorch")
    if found is None or not found.submodule_search_locations:
        pytest.skip("segmentation_models_pytorch is not installed")
    folder = os.path.join(list(found.submodule_search_locations)[0], "losses")
    if "smp_losses" not in sys.modules:
        package = types.ModuleType("smp_losses")
        package.__path__ = [folder]
        sys.modules["smp_losses"] = package
    spec = importlib.util.spec_from_file_location(f"smp_losses.{name}", os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smp():
    return types.SimpleNamespace(
        **{name: load_smp_loss(name) for name in ("dice", "jaccard", "tversky", "lovasz")}
    )


def labels(shape, ignore_every=None, absent=None):
    """Class indices for logits of ``shape``: every ``ignore_every``-th position ignored, class
    ``absent`` nowhere in the target."""
    n, c, *spatial = shape
    target = torch.randint(0, c, (n, *spatial))
    if absent is not None:
        target[target == absent] = (absent + 1) % c
    if ignore_every:
        target.view(-1)[::ignore_every] = IGNORE
    return target


def softmax_of(x, valid=None):
    """What a softmax-head term hands the region functions: ignored positions' logits zeroed first."""
    return torch.softmax(x if valid is None else zero_ignored(x, valid), dim=1)


def assert_same(ours, reference, inputs, tolerance=F64):
    """``ours(*inputs)`` and ``reference(*inputs)`` agree in value, shape, and in the gradient of a
    random projection of the value w.r.t. every input that requires grad."""
    mine = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    theirs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    got, want = ours(*mine), reference(*theirs)
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got, want.to(got.dtype), **tolerance)
    leaves = [i for i, t in enumerate(inputs) if t.requires_grad]
    if not leaves:
        return
    cotangent = torch.randn(got.shape, dtype=got.dtype)
    got_grads = torch.autograd.grad(got, [mine[i] for i in leaves], cotangent)
    want_grads = torch.autograd.grad(want, [theirs[i] for i in leaves], cotangent.to(want.dtype))
    for i, g, w in zip(leaves, got_grads, want_grads):
        torch.testing.assert_close(g, w.to(g.dtype), **tolerance, msg=lambda m, i=i: f"gradient {i}: {m}")


def per_sample_class(monai_output, like):
    """MONAI's ``reduction="none"`` keeps singleton spatial dimensions: drop them."""
    return monai_output.reshape(like.shape)


# --------------------------------------------------------------------------------------------------
# MONAI: DiceLoss, TverskyLoss, DiceLoss(jaccard=True), GeneralizedDiceLoss


def softmax_case(dims, ignore=True, absent=None):
    shape = SHAPES[dims]
    x = (torch.randn(shape, dtype=torch.float64) * 3).requires_grad_()
    target = labels(shape, ignore_every=3 if ignore else None, absent=absent)
    one_hot, valid = index_to_one_hot(target, shape[1], IGNORE, torch.float64)
    return x, target, one_hot, valid


def sigmoid_case(dims, soft=False):
    shape = SHAPES[dims]
    x = (torch.randn(shape, dtype=torch.float64) * 3).requires_grad_()
    y = torch.rand(shape, dtype=torch.float64) if soft else (torch.rand(shape) < 0.4).double()
    return x, y.requires_grad_(soft)


def ours_region(loss, *, head, batch, include_background, powers=(1,), target_kind="index"):
    """logits (and targets) -> per-(sample, class) loss through the functional layer."""

    def run(x, target, valid=None):
        p = softmax_of(x, valid) if head == "softmax" else torch.sigmoid(x)
        stats = region.region_stats(p, target, valid, batch=batch, powers=powers)
        if not include_background:
            stats = stats.select(slice(1, None))
        return loss(stats)

    return run


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
@pytest.mark.parametrize("squared", [False, True], ids=["linear", "squared"])
@pytest.mark.parametrize("include_background", [True, False], ids=["bg", "no-bg"])
@pytest.mark.parametrize("batch", [False, True], ids=["per-sample", "batch"])
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_dice_matches_monai(monai, dims, batch, include_background, squared, head):
    smooth = 0.25
    reference = monai.DiceLoss(
        include_background=include_background,
        softmax=head == "softmax",
        sigmoid=head == "sigmoid",
        squared_pred=squared,
        batch=batch,
        smooth_nr=smooth,
        smooth_dr=smooth,
        reduction="none",
        ignore_index=IGNORE if head == "softmax" else None,
    )
    ours = ours_region(
        lambda s: region.dice(s, smooth=smooth, squared=squared),
        head=head,
        batch=batch,
        include_background=include_background,
        powers=(2,) if squared else (1,),
    )
    if head == "softmax":  # class indices to ours, MONAI's float64 one-hot (and its ignore mask) to MONAI
        x, target, one_hot, valid = softmax_case(dims)
        assert_same(
            lambda x: ours(x, target, valid),
            lambda x: per_sample_class(reference(x, one_hot), ours(x, target, valid)),
            [x],
        )
    else:
        x, y = sigmoid_case(dims)
        assert_same(lambda x: ours(x, y), lambda x: per_sample_class(reference(x, y), ours(x, y)), [x])


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
@pytest.mark.parametrize("alpha, beta", [(0.3, 0.7), (0.7, 0.3), (0.5, 0.5)])
@pytest.mark.parametrize("batch", [False, True], ids=["per-sample", "batch"])
def test_tversky_matches_monai(monai, alpha, beta, batch, head):
    smooth = 1e-3
    reference = monai.TverskyLoss(
        softmax=head == "softmax",
        sigmoid=head == "sigmoid",
        alpha=alpha,
        beta=beta,
        batch=batch,
        smooth_nr=smooth,
        smooth_dr=smooth,
        reduction="none",
        include_background=alpha != 0.5,
        ignore_index=IGNORE if head == "softmax" else None,
    )
    ours = ours_region(
        lambda s: region.tversky(s, alpha=alpha, beta=beta, smooth=smooth),
        head=head,
        batch=batch,
        include_background=alpha != 0.5,
    )
    if head == "softmax":
        x, target, one_hot, valid = softmax_case("2d")
        assert_same(
            lambda x: ours(x, target, valid),
            lambda x: per_sample_class(reference(x, one_hot), ours(x, target, valid)),
            [x],
        )
    else:
        x, y = sigmoid_case("3d")
        assert_same(lambda x: ours(x, y), lambda x: per_sample_class(reference(x, y), ours(x, y)), [x])


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
@pytest.mark.parametrize("batch", [False, True], ids=["per-sample", "batch"])
def test_jaccard_is_monai_jaccard_dice_with_twice_the_smoothing(monai, batch, head):
    smooth = 0.1
    reference = monai.DiceLoss(
        jaccard=True,
        softmax=head == "softmax",
        sigmoid=head == "sigmoid",
        batch=batch,
        smooth_nr=2 * smooth,
        smooth_dr=2 * smooth,
        reduction="none",
    )
    ours = ours_region(
        lambda s: region.jaccard(s, smooth=smooth), head=head, batch=batch, include_background=True
    )
    if head == "softmax":
        x, target, one_hot, valid = softmax_case("3d", ignore=False)
        assert_same(
            lambda x: ours(x, target), lambda x: per_sample_class(reference(x, one_hot), ours(x, target)), [x]
        )
    else:
        x, y = sigmoid_case("2d")
        assert_same(lambda x: ours(x, y), lambda x: per_sample_class(reference(x, y), ours(x, y)), [x])


@pytest.mark.parametrize("weighting", region.WEIGHTINGS)
@pytest.mark.parametrize("include_background", [True, False], ids=["bg", "no-bg"])
@pytest.mark.parametrize("batch", [False, True], ids=["per-sample", "batch"])
def test_generalized_dice_matches_monai(monai, weighting, include_background, batch):
    """Class 2 is absent from the target: its infinite weight becomes the largest finite one."""
    smooth = 1e-4
    x, target, one_hot, _ = softmax_case("2d", ignore=False, absent=2)
    reference = monai.GeneralizedDiceLoss(
        softmax=True,
        w_type=weighting,
        include_background=include_background,
        batch=batch,
        smooth_nr=smooth,
        smooth_dr=smooth,
        reduction="none",
    )
    ours = ours_region(
        lambda s: region.generalized_dice(s, weighting=weighting, smooth=smooth),
        head="softmax",
        batch=batch,
        include_background=include_background,
    )
    # MONAI computes the weights in float32 whatever the input dtype.
    assert_same(
        lambda x: ours(x, target),
        lambda x: reference(x, one_hot).reshape(ours(x, target).shape),
        [x],
        {"rtol": 1e-6, "atol": 1e-8},
    )


@pytest.mark.parametrize(
    "name, ours_loss, monai_loss",
    [
        (
            "dice",
            lambda s: region.dice(s, smooth=0.1),
            lambda m: m.DiceLoss(sigmoid=True, smooth_nr=0.1, smooth_dr=0.1, reduction="none"),
        ),
        (
            "tversky",
            lambda s: region.tversky(s, alpha=0.2, beta=0.8, smooth=0.1),
            lambda m: m.TverskyLoss(
                sigmoid=True, alpha=0.2, beta=0.8, smooth_nr=0.1, smooth_dr=0.1, reduction="none"
            ),
        ),
        (
            "gdice",
            lambda s: region.generalized_dice(s, smooth=0.1),
            lambda m: m.GeneralizedDiceLoss(sigmoid=True, smooth_nr=0.1, smooth_dr=0.1, reduction="none"),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_soft_targets_match_monai_soft_label_false(monai, name, ours_loss, monai_loss):
    """Gradients w.r.t. the targets too, except for generalized dice: MONAI zeroes its infinite weights
    in place (``w[infs] = 0.0``), which breaks its own backward pass to the targets (a RuntimeError);
    the formula test below checks ours."""
    x, y = sigmoid_case("2d", soft=True)
    y.requires_grad_(name != "gdice")
    reference = monai_loss(monai)
    ours = ours_region(ours_loss, head="sigmoid", batch=False, include_background=True)
    assert_same(
        ours, lambda x, y: reference(x, y).reshape(ours(x, y).shape), [x, y], {"rtol": 1e-6, "atol": 1e-9}
    )


def test_monai_soft_label_modes_agree_on_hard_targets_only(monai):
    """``soft_label=True`` is another loss for soft targets (``TP = sum min(p, y)``): SPEC follows
    ``soft_label=False``; on hard targets the two are one."""
    x, y = sigmoid_case("2d")
    hard = [monai.DiceLoss(sigmoid=True, soft_label=s, reduction="none")(x, y) for s in (False, True)]
    torch.testing.assert_close(hard[0], hard[1], **F64)
    soft = torch.rand_like(y)
    values = [monai.DiceLoss(sigmoid=True, soft_label=s, reduction="none")(x, soft) for s in (False, True)]
    assert not torch.allclose(values[0], values[1])
    ours = region.dice(region.region_stats(torch.sigmoid(x), soft))
    torch.testing.assert_close(ours, values[0].reshape(ours.shape), **F64)


def test_class_weights_multiply_the_per_class_value_as_monai_weight(monai):
    weight = torch.tensor([0.5, 2.0, 1.0, 0.0], dtype=torch.float64)
    x, target, one_hot, valid = softmax_case("2d")
    reference = monai.DiceLoss(softmax=True, weight=weight, ignore_index=IGNORE)
    ours = ours_region(
        lambda s: (region.dice(s) * weight).mean(), head="softmax", batch=False, include_background=True
    )
    assert_same(lambda x: ours(x, target, valid), lambda x: reference(x, one_hot), [x])


def test_index_targets_with_to_onehot_y_and_ignore_index_match_monai_in_float32(monai):
    """The usual MONAI call: index targets ``[N, 1, ...]``, ``to_onehot_y``, a sentinel ignore_index."""
    shape = SHAPES["3d"]
    x = (torch.randn(shape) * 3).requires_grad_()
    target = labels(shape, ignore_every=4)
    reference = monai.DiceLoss(softmax=True, to_onehot_y=True, ignore_index=IGNORE, include_background=False)
    valid = (target != IGNORE).unsqueeze(1)
    ours = ours_region(lambda s: region.dice(s).mean(), head="softmax", batch=False, include_background=False)
    assert_same(lambda x: ours(x, target, valid), lambda x: reference(x, target.unsqueeze(1)), [x], F32)


# MONAI's own test cases (tests/losses/test_dice_loss.py, test_tversky_loss.py,
# test_generalized_dice_loss.py), through the functional layer. Cases with smooth_nr != smooth_dr or
# other_act have no SPEC equivalent and are left out.

_X1 = [[[[1.0, -1.0], [-1.0, 1.0]]]]
_Y1 = [[[[1.0, 0.0], [1.0, 1.0]]]]
_X2 = [[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]]
_Y2 = [[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]]
_P3 = [[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]]
_P4 = [[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]
_T4 = [[0, 0, 1], [0, 1, 0]]
_X5 = [[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
_T5 = [[1, 0, 0], [1, 1, 0]]

_PROB = "probabilities"
# fmt: off
MONAI_CASES = [
    # (loss, activation, input, target (dense, or class indices), include_background, batch, reduce, expected)
    ("dice", dict(smooth=1e-6), "sigmoid", _X1, _Y1, True, False, "mean", 0.307576),
    ("dice", dict(smooth=1e-4), "sigmoid", _X2, _Y2, True, False, "mean", 0.416657),
    ("dice", dict(smooth=1e-4), _PROB, _P3, _P3, True, False, "mean", 0.307773),
    ("dice", dict(smooth=0.0), _PROB, _P4, _T4, False, False, "mean", 0.0),
    ("dice", dict(smooth=1e-4), "sigmoid", _X5, _T5, True, False, "mean", 0.435050),
    ("dice", dict(smooth=1e-4), "sigmoid", _X5, _T5, True, False, "none",
     [[0.296529, 0.415136], [0.599976, 0.428559]]),
    ("dice", dict(smooth=1e-4), "softmax", _X5, _T5, True, False, "mean", 0.383713),
    ("dice", dict(smooth=1e-4), "softmax", _X5, _T5, True, False, "sum", 1.534853),
    ("dice", dict(smooth=1e-5, squared=True), "sigmoid", _X1, _Y1, True, False, "mean", 0.178337),
    ("jaccard", dict(smooth=0.5e-5), "sigmoid", _X1, _Y1, True, False, "mean", 0.470451),
    ("tversky", dict(smooth=1e-6), "sigmoid", _X1, _Y1, True, False, "mean", 0.307576),
    ("tversky", dict(smooth=1e-4), "sigmoid", _X2, _Y2, True, False, "mean", 0.416657),
    ("tversky", dict(smooth=1e-4), _PROB, _P3, _P3, True, False, "mean", 0.307773),
    ("tversky", dict(smooth=0.0), _PROB, _P4, _T4, False, False, "mean", 0.0),
    ("tversky", dict(smooth=1e-4), "sigmoid", _X5, _T5, True, False, "mean", 0.435050),
    ("tversky", dict(smooth=1e-5), "sigmoid", _X5, _T5, True, True, "mean", 0.422979),
    ("tversky", dict(smooth=1e-4), "sigmoid", _X5, _T5, True, False, "sum", 1.74013),
    ("tversky", dict(smooth=1e-4), "softmax", _X5, _T5, True, False, "mean", 0.383713),
    ("tversky", dict(smooth=1e-4), "softmax", _X5, _T5, True, False, "none",
     [[0.210961, 0.295339], [0.599952, 0.428547]]),
    ("tversky", dict(smooth=1e-6, alpha=0.3, beta=0.7), "sigmoid", _X1, _Y1, True, False, "mean", 0.3589),
    ("tversky", dict(smooth=1e-6, alpha=0.7, beta=0.3), "sigmoid", _X1, _Y1, True, False, "mean", 0.247366),
    ("gdice", dict(smooth=1e-6), "sigmoid", _X1, _Y1, True, False, "mean", 0.307576),
    ("gdice", dict(smooth=1e-4), "sigmoid", _X2, _Y2, True, False, "mean", 0.416597),
    ("gdice", dict(smooth=1e-4), _PROB, _P3, _P3, True, False, "mean", 0.307748),
    ("gdice", dict(smooth=0.0), _PROB, _P4, _T4, False, False, "mean", 0.0),
    ("gdice", dict(smooth=1e-4), "sigmoid", _X5, _T5, True, False, "mean", 0.469964),
    ("gdice", dict(smooth=1e-4), "softmax", _X5, _T5, True, False, "mean", 0.414507),
    ("gdice", dict(smooth=1e-4), "softmax", _X5, _T5, True, False, "sum", 0.829015),
    ("gdice", dict(smooth=1e-4), "softmax", _X5, _T5, True, False, "none", [0.273476, 0.555539]),
    ("gdice", dict(smooth=1e-8), _PROB, _P4, [[0, 0, 0], [0, 0, 0]], False, False, "mean", 0.0),
    ("gdice", dict(smooth=0.0, weighting="simple"), "softmax",
     [[[0.0, 10.0, 10.0, 10.0], [10.0, 0.0, 0.0, 0.0]]], [[1, 1, 0, 0]], True, False, "mean", 0.250023),
]
# fmt: on
LOSSES = {
    "dice": region.dice,
    "jaccard": region.jaccard,
    "tversky": region.tversky,
    "gdice": region.generalized_dice,
}


@pytest.mark.parametrize("case", MONAI_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(MONAI_CASES)])
def test_monai_test_cases(case):
    name, params, activation, x, target, include_background, batch, reduce, expected = case
    x = torch.tensor(x, dtype=torch.float64)
    target = torch.tensor(target)
    p = {"sigmoid": torch.sigmoid, "softmax": lambda t: torch.softmax(t, 1), _PROB: lambda t: t}[activation](
        x
    )
    if target.is_floating_point():
        target = target.to(torch.float64)
    elif activation == "sigmoid":  # MONAI's to_onehot_y on a sigmoid head
        target = index_to_one_hot(target, x.shape[1], -100, torch.float64)[0]
    stats = region.region_stats(p, target, batch=batch, powers=(2,) if params.get("squared") else (1,))
    if not include_background:
        stats = stats.select(slice(1, None))
    value = LOSSES[name](stats, **params)
    value = {"mean": value.mean(), "sum": value.sum(), "none": value}[reduce]
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)


def test_ignored_positions_are_as_if_cropped_away():
    """MONAI's test_ignore_index_index_target: ignoring the bottom row equals cropping it."""
    p = torch.tensor([[[[0.8, 0.1], [0.1, 0.1]], [[0.1, 0.8], [0.1, 0.1]], [[0.1, 0.1], [0.8, 0.8]]]])
    target = torch.tensor([[[0, 1], [IGNORE, IGNORE]]])
    valid = (target != IGNORE).unsqueeze(1)
    for loss in (region.dice, region.jaccard, region.generalized_dice):
        ignored = loss(region.region_stats(p, target, valid))
        cropped = loss(region.region_stats(p[:, :, :1], target[:, :1]))
        torch.testing.assert_close(ignored, cropped)
    lovasz = region.lovasz_softmax(p, index_to_one_hot(target, 3, IGNORE)[0], valid)
    torch.testing.assert_close(
        lovasz, region.lovasz_softmax(p[:, :, :1], index_to_one_hot(target[:, :1], 3, IGNORE)[0])
    )


# --------------------------------------------------------------------------------------------------
# smp: DiceLoss, JaccardLoss, TverskyLoss (always over the batch, absent classes zeroed)


def smp_mapping(per_class, stats, class_weights=None):
    """smp's reduction of our per-class values (``batch=True``): absent classes count as 0."""
    present = stats.y_sum > 0
    value = torch.where(present, per_class, torch.zeros_like(per_class))
    if class_weights is None:
        return value.mean()
    weights = torch.tensor(class_weights, dtype=value.dtype)
    return (value * weights).sum() / weights.sum()


def smp_case(mode, dims="2d"):
    """Logits, smp's target, and ours (targets, valid) for one smp mode; class 1 absent from the batch."""
    shape = SHAPES[dims]
    if mode == "binary":
        shape = (shape[0], 1, *shape[2:])
    x = (torch.randn(shape, dtype=torch.float64) * 3).requires_grad_()
    if mode == "multiclass":
        target = labels(shape, ignore_every=4, absent=1)
        return x, target, target, (target != IGNORE).unsqueeze(1)
    y = (torch.rand(shape) < 0.4).double()
    if mode == "multilabel":
        y[:, 1] = 0
    y.view(-1)[::5] = IGNORE
    return x, y, y, y != IGNORE


@pytest.mark.parametrize("log", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize(  # smp has no class weights in binary mode
    "mode, weighted",
    [
        ("multiclass", False),
        ("multiclass", True),
        ("multilabel", False),
        ("multilabel", True),
        ("binary", False),
    ],
)
def test_dice_matches_smp(smp, mode, log, weighted):
    smooth = 0.3
    x, smp_target, target, valid = smp_case(mode, dims="3d" if log else "2d")
    weights = [0.5, 1.0, 2.0, 0.25][: x.shape[1]] if weighted else None
    reference = smp.dice.DiceLoss(
        mode, log_loss=log, smooth=smooth, ignore_index=IGNORE, class_weights=weights
    )
    head = "softmax" if mode == "multiclass" else "sigmoid"

    def ours(x):
        p = softmax_of(x, valid) if head == "softmax" else torch.sigmoid(x)
        stats = region.region_stats(p, target, valid, batch=True)
        return smp_mapping(region.dice(stats, smooth=2 * smooth, log=log), stats, weights)

    assert_same(ours, lambda x: reference(x, smp_target), [x])


@pytest.mark.parametrize("mode", ["multiclass", "multilabel", "binary"])
def test_jaccard_matches_smp_with_the_same_smoothing(smp, mode):
    smooth = 0.3
    x, smp_target, target, valid = smp_case(mode)
    reference = smp.jaccard.JaccardLoss(mode, smooth=smooth, ignore_index=IGNORE)
    head = "softmax" if mode == "multiclass" else "sigmoid"

    def ours(x):
        p = softmax_of(x, valid) if head == "softmax" else torch.sigmoid(x)
        stats = region.region_stats(p, target, valid, batch=True)
        return smp_mapping(region.jaccard(stats, smooth=smooth), stats)

    assert_same(ours, lambda x: reference(x, smp_target), [x])


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_tversky_matches_smp_per_class(smp, mode):
    x, smp_target, target, valid = smp_case(mode)
    reference = smp.tversky.TverskyLoss(mode, alpha=0.3, beta=0.7, smooth=0.2, ignore_index=IGNORE)
    head = "softmax" if mode == "multiclass" else "sigmoid"

    def ours(x):
        p = softmax_of(x, valid) if head == "softmax" else torch.sigmoid(x)
        stats = region.region_stats(p, target, valid, batch=True)
        return smp_mapping(region.tversky(stats, alpha=0.3, beta=0.7, smooth=0.2), stats)

    assert_same(ours, lambda x: reference(x, smp_target), [x])


@pytest.mark.parametrize("gamma", [0.75, 2.0])
def test_focal_tversky_matches_smp_for_one_class(smp, gamma):
    """smp raises the class mean to gamma, SPEC each class: the same for one class."""
    x, smp_target, target, valid = smp_case("binary")
    reference = smp.tversky.TverskyLoss(
        "binary", alpha=0.6, beta=0.4, gamma=gamma, smooth=0.1, ignore_index=IGNORE
    )

    def ours(x):
        stats = region.region_stats(torch.sigmoid(x), target, valid, batch=True)
        return smp_mapping(region.tversky(stats, alpha=0.6, beta=0.4, gamma=gamma, smooth=0.1), stats)

    assert_same(ours, lambda x: reference(x, smp_target), [x])


# smp's own test cases (tests/test_losses.py), through the functional layer with smooth = 0.

SMP_SCORE_CASES = [
    # (y_true, y_pred, expected jaccard score, expected dice score), one row
    ([1, 1, 1, 1], [1, 1, 1, 1], 1.0, 1.0),
    ([0, 1, 1, 0], [0, 1, 1, 0], 1.0, 1.0),
    ([1, 1, 1, 1], [1, 1, 0, 0], 0.5, 2.0 / 3.0),
]


@pytest.mark.parametrize("y_true, y_pred, jaccard_score, dice_score", SMP_SCORE_CASES)
def test_smp_score_cases(y_true, y_pred, jaccard_score, dice_score):
    stats = region.region_stats(
        torch.tensor([[y_pred]], dtype=torch.float32), torch.tensor([[y_true]], dtype=torch.float32)
    )
    torch.testing.assert_close(1 - region.jaccard(stats, smooth=0.0), torch.tensor([[jaccard_score]]))
    torch.testing.assert_close(1 - region.dice(stats, smooth=0.0), torch.tensor([[dice_score]]))
    tversky = region.tversky(stats, alpha=0.5, beta=0.5, smooth=0.0)
    torch.testing.assert_close(1 - tversky, torch.tensor([[dice_score]]))


@pytest.mark.parametrize(
    "y_true, y_pred, expected",
    [
        ([[1, 1, 0, 0], [0, 0, 1, 1]], [[1, 1, 0, 0], [0, 0, 1, 1]], 1.0),
        ([[1, 1, 0, 0], [0, 0, 1, 1]], [[0, 0, 1, 0], [0, 1, 0, 0]], 0.0),
        ([[1, 1, 0, 0], [0, 0, 0, 1]], [[1, 1, 0, 0], [0, 0, 0, 0]], 0.5),
    ],
)
def test_smp_jaccard_score_per_row_cases(y_true, y_pred, expected):
    """smp's test_soft_jaccard_score_2: one score per row (``dims=[1]``), averaged."""
    stats = region.region_stats(
        torch.tensor(y_pred, dtype=torch.float32).unsqueeze(1),
        torch.tensor(y_true, dtype=torch.float32).unsqueeze(1),
    )
    assert float((1 - region.jaccard(stats, smooth=0.0)).mean()) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "y_pred, y_true, expected",
    [
        ([1.0, 1.0, 1.0], [1, 1, 1], 0.0),
        ([1.0, 0.0, 1.0], [1, 0, 1], 0.0),
        ([0.0, 0.0, 0.0], [0, 0, 0], 0.0),
        ([1.0, 1.0, 1.0], [0, 0, 0], 0.0),  # smp zeroes a class absent from the target
        ([1.0, 0.0, 1.0], [0, 1, 0], 1.0),
        ([0.0, 0.0, 0.0], [1, 1, 1], 1.0),
    ],
)
def test_smp_binary_dice_and_jaccard_cases(y_pred, y_true, expected):
    """smp's test_dice_loss_binary and test_binary_jaccard_loss (probabilities, smooth = 0)."""
    stats = region.region_stats(
        torch.tensor([[y_pred]]), torch.tensor([[y_true]], dtype=torch.float32), batch=True
    )
    for loss in (region.dice, region.jaccard):
        assert float(smp_mapping(loss(stats, smooth=0.0), stats)) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "y_pred, y_true, expected",
    [
        ([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], [[0, 0, 1, 1]], 0.0),
        ([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], [[1, 1, 0, 0]], 1.0),
        ([[[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]], [[1, 1, 0, 0]], 1.0 - 1.0 / 3.0),
    ],
)
def test_smp_multiclass_jaccard_cases(y_pred, y_true, expected):
    stats = region.region_stats(torch.tensor(y_pred), torch.tensor(y_true), batch=True)
    assert float(smp_mapping(region.jaccard(stats, smooth=0.0), stats)) == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# the formulas of SPEC, written out


def formulas(p, y, smooth):
    """SPEC's region formulas, sums over the last dimension (float64)."""
    tp, sp, sy = (p * y).sum(-1), p.sum(-1), y.sum(-1)
    fp, fn = (p * (1 - y)).sum(-1), ((1 - p) * y).sum(-1)
    weights = 1 / sy**2
    return {
        "dice": 1 - (2 * tp + smooth) / (sp + sy + smooth),
        "dice_squared": 1 - (2 * tp + smooth) / ((p * p).sum(-1) + (y * y).sum(-1) + smooth),
        "dice_log": -torch.log((2 * tp + smooth) / (sp + sy + smooth)),
        "jaccard": 1 - (tp + smooth) / (tp + fp + fn + smooth),
        "tversky_half": 1 - (tp + smooth / 2) / (tp + 0.5 * fp + 0.5 * fn + smooth / 2),
        "focal_tversky": (1 - (tp + smooth) / (tp + 0.3 * fp + 0.7 * fn + smooth)) ** 0.6,
        "gdice": 1 - (2 * (weights * tp).sum(-1) + smooth) / ((weights * (sp + sy)).sum(-1) + smooth),
    }


OURS = {
    "dice": lambda s, smooth: region.dice(s, smooth=smooth),
    "dice_squared": lambda s, smooth: region.dice(s, smooth=smooth, squared=True),
    "dice_log": lambda s, smooth: region.dice(s, smooth=smooth, log=True),
    "jaccard": lambda s, smooth: region.jaccard(s, smooth=smooth),
    "tversky_half": lambda s, smooth: region.tversky(s, smooth=smooth / 2),
    "focal_tversky": lambda s, smooth: region.tversky(s, alpha=0.3, beta=0.7, gamma=0.6, smooth=smooth),
    "gdice": lambda s, smooth: region.generalized_dice(s, smooth=smooth),
}


@pytest.mark.parametrize("name", OURS)
def test_region_losses_are_spec_formulas(name):
    """Soft probabilities and soft targets, float64: value and gradients w.r.t. both."""
    p = torch.rand(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.rand(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    smooth = 0.7
    assert_same(
        lambda p, y: OURS[name](region.region_stats(p, y, powers=(1, 2)), smooth),
        lambda p, y: formulas(p.flatten(2), y.flatten(2), smooth)[name],
        [p, y],
    )


def test_dice_is_tversky_with_half_the_smoothing():
    """SPEC: ``dice(smooth=s) = tversky(alpha=0.5, beta=0.5, smooth=s/2)``, from the formulas alone."""
    p, y = torch.rand(3, 4, 50, dtype=torch.float64), torch.rand(3, 4, 50, dtype=torch.float64)
    want = formulas(p, y, 0.7)
    torch.testing.assert_close(want["dice"], want["tversky_half"], **F64)


def test_region_stats_compute_only_what_is_asked():
    p, y = torch.rand(2, 3, 8), torch.rand(2, 3, 8)
    linear = region.region_stats(p, y)
    assert linear.p_sq is None and linear.y_sq is None and linear.p_sum is not None
    squared = region.region_stats(p, y, powers=(2,))
    assert squared.p_sum is None and squared.p_sq is not None
    with pytest.raises(ValueError, match="p_sum"):
        region.tversky(squared)
    with pytest.raises(ValueError, match="p_sq"):
        region.dice(linear, squared=True)


@pytest.mark.parametrize("batch", [False, True], ids=["per-sample", "batch"])
@pytest.mark.parametrize("powers", [(1,), (2,), (1, 2)])
def test_index_targets_give_the_one_hot_statistics(batch, powers):
    """Class indices against a one-hot stored channels-last (a strided view, as F.one_hot gives)."""
    x, target, one_hot, valid = softmax_case("3d")
    one_hot = one_hot.movedim(1, -1).contiguous().movedim(-1, 1)

    def stats(x, targets):
        fields = region.region_stats(softmax_of(x, valid), targets, valid, batch=batch, powers=powers)
        return torch.stack([f for f in fields if f is not None])

    assert_same(lambda x: stats(x, target), lambda x: stats(x, one_hot), [x])


# --------------------------------------------------------------------------------------------------
# Lovász


def lovasz_reference(errors, fg):
    """Berman et al. 2018, Algorithm 1, for one row (float64): sort the errors in decreasing order,
    weight them by the increments of the Jaccard loss along that order."""
    order = torch.argsort(errors, descending=True)
    e, g = errors[order], fg[order]
    total = g.sum()
    jaccard = 1 - (total - g.cumsum(0)) / (total + (1 - g).cumsum(0))
    increments = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return (e * increments).sum()


def rows_of(t, per_image):
    n, c = t.shape[:2]
    t = t.reshape(n, c, -1)
    return t if per_image else t.transpose(0, 1).reshape(c, -1)


@pytest.mark.parametrize("soft_grad", [False, True], ids=["targets", "soft-targets-with-grad"])
@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per-image"])
def test_lovasz_softmax_is_berman_algorithm_per_row(per_image, soft_grad):
    shape = SHAPES["3d"]
    x = (torch.randn(shape, dtype=torch.float64) * 2).requires_grad_()
    y = torch.softmax(torch.randn(shape, dtype=torch.float64) * 2, 1).requires_grad_(soft_grad)
    valid = torch.rand(shape[0], 1, *shape[2:]) > 0.25

    def ours(x, y):
        return region.lovasz_softmax(softmax_of(x, valid), y, valid, per_image=per_image, classes="all")[0]

    def reference(x, y):
        p = softmax_of(x, valid)
        keep = valid.expand(p.shape)
        errors, fg = (
            rows_of(torch.where(keep, (y - p).abs(), 0), per_image),
            rows_of(torch.where(keep, y, 0), per_image),
        )
        flat = [
            lovasz_reference(e, g)
            for e, g in zip(errors.reshape(-1, errors.shape[-1]), fg.reshape(-1, fg.shape[-1]))
        ]
        return torch.stack(flat).reshape(errors.shape[:-1])

    assert_same(ours, reference, [x, y])


@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per-image"])
def test_lovasz_of_long_rows_and_strided_inputs(per_image):
    """Rows long enough to be sorted in several chunks (some holding several rows), targets that are
    a permuted (non-contiguous) one-hot: the same values and gradients as Berman's algorithm."""
    shape = (2, 3, 150, 200)
    x = (torch.randn(shape) * 2).requires_grad_()
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 150, 200)), 3).permute(0, 3, 1, 2).float()
    assert not y.is_contiguous()

    def ours(x):
        return region.lovasz_softmax(torch.softmax(x, 1), y, per_image=per_image, classes="all")[0]

    def reference(x):
        errors = rows_of((y - torch.softmax(x, 1)).abs(), per_image).double()
        fg = rows_of(y, per_image).double()
        values = [lovasz_reference(e, g) for e, g in zip(errors.flatten(0, -2), fg.flatten(0, -2))]
        return torch.stack(values).reshape(errors.shape[:-1]).float()

    assert_same(ours, reference, [x], F32)


def test_lovasz_softmax_of_hard_predictions_is_one_minus_iou():
    """The Lovász extension agrees with the Jaccard loss on the vertices: for one-hot predictions each
    counted class's value is ``1 - |pred & true| / |pred | true|``."""
    n, c = 3, 5
    truth = torch.randint(0, c, (n, 7, 6))
    predicted = torch.where(torch.rand(truth.shape) < 0.7, truth, torch.randint(0, c, truth.shape))
    p = index_to_one_hot(predicted, c, -100)[0]
    y = index_to_one_hot(truth, c, -100)[0]
    loss, counted = region.lovasz_softmax(p, y, per_image=True)
    inter = (p * y).sum((2, 3))
    union = ((p + y) > 0).sum((2, 3))
    torch.testing.assert_close(loss, torch.where(counted, 1 - inter / union, 0.0))
    assert torch.equal(counted, y.sum((2, 3)) > 0)


@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per-image"])
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_lovasz_softmax_matches_smp_multiclass(smp, dims, per_image):
    shape = SHAPES[dims]
    x = (torch.randn(shape) * 3).requires_grad_()
    target = labels(shape, ignore_every=5, absent=1)
    reference = smp.lovasz.LovaszLoss("multiclass", per_image=per_image, ignore_index=IGNORE)

    def ours(x):
        one_hot, valid = index_to_one_hot(target, shape[1], IGNORE, x.dtype)
        return region.mean_over_counted(
            *region.lovasz_softmax(softmax_of(x, valid), one_hot, valid, per_image=per_image)
        )

    assert_same(ours, lambda x: reference(x, target), [x], F32)


@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per-image"])
def test_lovasz_hinge_matches_smp_binary(smp, per_image):
    shape = (3, 1, 7, 5)
    x = (torch.randn(shape) * 3).requires_grad_()
    y = (torch.rand(shape) < 0.4).float()
    y[2] = 0  # an empty mask still counts (classes=all): its false positives are penalised
    y.view(-1)[::6] = IGNORE
    valid = y != IGNORE
    reference = smp.lovasz.LovaszLoss("binary", per_image=per_image, ignore_index=IGNORE)

    def ours(x):
        return region.mean_over_counted(*region.lovasz_hinge(x, y, valid, per_image=per_image, classes="all"))

    assert_same(ours, lambda x: reference(x, y), [x], F32)


def test_lovasz_hinge_is_the_binary_hinge_of_each_class(smp):
    shape = SHAPES["2d"]
    x = (torch.randn(shape) * 3).requires_grad_()
    y = (torch.rand(shape) < 0.4).float()
    reference = smp.lovasz.LovaszLoss("binary")

    def per_class(x):
        return torch.stack([reference(x[:, c : c + 1], y[:, c : c + 1]) for c in range(shape[1])])

    assert_same(lambda x: region.lovasz_hinge(x, y)[0], per_class, [x], F32)


def test_lovasz_counts_present_classes_or_all():
    p = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # class 2 absent everywhere, class 1 absent from image 1
    y = index_to_one_hot(target, 3, IGNORE)[0]
    _, present = region.lovasz_softmax(p, y, per_image=True)
    assert present.tolist() == [[True, True, False], [True, False, False]]
    _, present = region.lovasz_softmax(p, y)
    assert present.tolist() == [True, True, False]
    loss, every = region.lovasz_softmax(p, y, per_image=True, classes="all")
    assert every.all() and (loss[:, 2] > 0).all()  # an absent class costs its false positives


def test_mean_over_counted_is_berman_two_level_mean():
    loss = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    counted = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    assert float(region.mean_over_counted(loss, counted)) == pytest.approx((1.5 + 4.0) / 2)
    assert float(region.mean_over_counted(loss[0], counted[0])) == pytest.approx(1.5)


# --------------------------------------------------------------------------------------------------
# numerics: ignored positions, empty masks, extreme logits, gradcheck, half precision, compile


def all_losses(stats):
    """Every loss computed from statistics with both powers, summed into one number per case."""
    return {
        "dice": region.dice(stats),
        "dice_squared": region.dice(stats, squared=True),
        "dice_log": region.dice(stats, log=True),
        "jaccard": region.jaccard(stats),
        "tversky": region.tversky(stats, alpha=0.3, beta=0.7),
        "focal_tversky": region.tversky(stats, alpha=0.3, beta=0.7, gamma=0.5),
        "focal_tversky_2": region.tversky(stats, gamma=2.0),
        "gdice": region.generalized_dice(stats),
        "gdice_simple": region.generalized_dice(stats, weighting="simple"),
    }


@pytest.mark.parametrize("poison", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("target_kind", ["index", "one-hot"])
def test_ignored_positions_contribute_nothing_whatever_the_probabilities(poison, target_kind):
    shape = SHAPES["2d"]
    p = torch.softmax(torch.randn(shape), 1)
    target = labels(shape, ignore_every=3)
    one_hot, valid = index_to_one_hot(target, shape[1], IGNORE)
    targets = (
        target if target_kind == "index" else one_hot.masked_fill(~valid, poison)
    )  # poisoned targets too
    poisoned = p.masked_fill(~valid, poison).requires_grad_()
    clean = p.masked_fill(~valid, 0.0).requires_grad_()
    for name in all_losses(region.region_stats(clean, target, valid, powers=(1, 2))):
        value = all_losses(region.region_stats(poisoned, targets, valid, powers=(1, 2)))[name].sum()
        expected = all_losses(region.region_stats(clean, target, valid, powers=(1, 2)))[name].sum()
        torch.testing.assert_close(value, expected)
        (got,) = torch.autograd.grad(value, poisoned)
        (want,) = torch.autograd.grad(expected, clean)
        assert torch.isfinite(got).all() and (got.masked_select(~valid.expand(shape)) == 0).all(), name
        torch.testing.assert_close(got, want)
    for per_image in (False, True):
        value = region.mean_over_counted(
            *region.lovasz_softmax(poisoned, one_hot, valid, per_image=per_image)
        )
        expected = region.mean_over_counted(
            *region.lovasz_softmax(clean, one_hot, valid, per_image=per_image)
        )
        torch.testing.assert_close(value, expected)
        (got,) = torch.autograd.grad(value, poisoned)
        assert torch.isfinite(got).all() and (got.masked_select(~valid.expand(shape)) == 0).all()


@pytest.mark.parametrize("poison", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_lovasz_hinge_ignores_positions_whatever_their_logits(poison):
    x = torch.randn(2, 3, 4, 5)
    y = (torch.rand(x.shape) < 0.5).float()
    valid = torch.rand(2, 1, 4, 5) > 0.3
    poisoned = x.masked_fill(~valid, poison).requires_grad_()
    clean = x.masked_fill(~valid, 0.0).requires_grad_()
    value = region.mean_over_counted(*region.lovasz_hinge(poisoned, y, valid, per_image=True))
    expected = region.mean_over_counted(*region.lovasz_hinge(clean, y, valid, per_image=True))
    torch.testing.assert_close(value, expected)
    (got,) = torch.autograd.grad(value, poisoned)
    (want,) = torch.autograd.grad(expected, clean)
    assert torch.isfinite(got).all() and (got.masked_select(~valid.expand(x.shape)) == 0).all()
    torch.testing.assert_close(got, want)


def test_an_all_ignored_batch_is_zero_with_zero_gradient():
    x = torch.tensor([[1e4, -1e4, 0.0], [3.0, -2.0, 1.0]]).reshape(2, 3, 1, 1).expand(2, 3, 2, 2).clone()
    x.requires_grad_()
    target = torch.full((2, 2, 2), IGNORE)
    one_hot, valid = index_to_one_hot(target, 3, IGNORE)
    for batch in (False, True):
        p = softmax_of(x, valid)
        for name, value in all_losses(
            region.region_stats(p, target, valid, batch=batch, powers=(1, 2))
        ).items():
            (grad,) = torch.autograd.grad(value.sum(), x, retain_graph=True)
            assert (value == 0).all() and (grad == 0).all(), name
    for per_image in (False, True):
        value = region.mean_over_counted(
            *region.lovasz_softmax(softmax_of(x, valid), one_hot, valid, per_image=per_image)
        )
        (grad,) = torch.autograd.grad(value, x)
        assert value.item() == 0 and (grad == 0).all()
        value = region.mean_over_counted(
            *region.lovasz_hinge(x, one_hot, valid, per_image=per_image, classes="all")
        )
        (grad,) = torch.autograd.grad(value, x)
        assert value.item() == 0 and (grad == 0).all()


def test_empty_masks_give_finite_losses_and_gradients():
    """A class absent everywhere, predicted absent exactly (saturated logits) or not, with and without
    smoothing: the loss and its gradient stay finite; both empty with ``smooth = 0`` is a perfect 0."""
    x = torch.full((2, 2, 3, 3), -1e4)
    x[:, 1] = torch.randn(2, 3, 3)  # class 1 predicted a little, class 0 exactly not
    x.requires_grad_()
    y = torch.zeros(2, 2, 3, 3)
    stats = region.region_stats(torch.sigmoid(x), y, powers=(1, 2))
    for smooth in (0.0, 1e-5):
        for name, value in {
            "dice": region.dice(stats, smooth=smooth),
            "dice_log": region.dice(stats, smooth=smooth, log=True),
            "dice_squared": region.dice(stats, smooth=smooth, squared=True),
            "focal_tversky": region.tversky(stats, gamma=0.5, smooth=smooth),
            "jaccard": region.jaccard(stats, smooth=smooth),
            "gdice": region.generalized_dice(stats, smooth=smooth),
        }.items():
            (grad,) = torch.autograd.grad(value.sum(), x, retain_graph=True)
            assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (name, smooth)
            if smooth == 0 and name not in ("gdice",):
                assert (value[:, 0] == 0).all(), name
    loss, counted = region.lovasz_softmax(torch.softmax(x, 1), y)
    assert not counted.any() and region.mean_over_counted(loss, counted) == 0


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_confident_logits_give_finite_values_and_gradients(scale):
    shape = SHAPES["3d"]
    target = labels(shape, ignore_every=7)
    one_hot, valid = index_to_one_hot(target, shape[1], IGNORE)
    # Right and wrong predictions at +-1e4, so that p is exactly 0 or 1 everywhere.
    x = (torch.where(torch.rand(shape) < 0.5, one_hot, 1 - one_hot) * 2 - 1) * scale
    x.requires_grad_()
    for head in ("softmax", "sigmoid"):
        p = softmax_of(x, valid) if head == "softmax" else torch.sigmoid(x)
        values = all_losses(region.region_stats(p, one_hot, valid, powers=(1, 2)))
        values["lovasz"] = region.mean_over_counted(*region.lovasz_softmax(p, one_hot, valid))
        values["hinge"] = region.mean_over_counted(*region.lovasz_hinge(x, one_hot, valid))
        for name, value in values.items():
            (grad,) = torch.autograd.grad(value.sum(), x, retain_graph=True)
            assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (head, name)


def test_focal_tversky_has_a_finite_gradient_at_a_perfect_ratio():
    """``gamma < 1`` at ``FP = FN = 0``: the loss is 0 and its gradient finite (0)."""
    y = (torch.rand(2, 3, 4, 4) < 0.5).float()
    p = y.clone().requires_grad_()  # a perfect prediction
    value = region.tversky(region.region_stats(p, y), gamma=0.5, smooth=0.0)
    (grad,) = torch.autograd.grad(value.sum(), p)
    assert (value == 0).all() and torch.isfinite(grad).all()


def gradcheck(function, inputs):
    return torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("batch", [False, True], ids=["per-sample", "batch"])
def test_gradcheck_region_losses_in_float64(batch):
    """w.r.t. logits (index and dense targets) and soft targets; a class absent from the index targets
    (infinite generalized-dice weights) stays absent: the weights jump where a target mass appears."""
    shape = (2, 3, 2, 3)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    target = labels(shape, ignore_every=5, absent=2)
    valid = (target != IGNORE).unsqueeze(1)
    soft = torch.rand(shape, dtype=torch.float64, requires_grad=True)

    def total(stats):  # a fixed random projection of every loss value
        values = all_losses(stats).values()
        return sum(
            (v * torch.randn(v.shape, dtype=v.dtype, generator=torch.Generator().manual_seed(i))).sum()
            for i, v in enumerate(values)
        )

    assert gradcheck(
        lambda x: total(region.region_stats(softmax_of(x, valid), target, valid, batch=batch, powers=(1, 2))),
        (x,),
    )
    assert gradcheck(
        lambda x, y: total(region.region_stats(torch.sigmoid(x), y, valid, batch=batch, powers=(1, 2))),
        (x, soft),
    )


@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per-image"])
def test_gradcheck_lovasz_in_float64(per_image):
    shape = (2, 3, 2, 3)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    soft = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).requires_grad_()
    hard = index_to_one_hot(labels(shape), 3, IGNORE, torch.float64)[0]
    valid = torch.rand(2, 1, 2, 3) > 0.2

    def softmax_loss(x, y):
        return region.mean_over_counted(
            *region.lovasz_softmax(softmax_of(x, valid), y, valid, per_image=per_image)
        )

    assert gradcheck(softmax_loss, (x, soft))
    assert gradcheck(lambda x: softmax_loss(x, hard), (x,))
    assert gradcheck(
        lambda x: region.mean_over_counted(*region.lovasz_hinge(x, hard, valid, per_image=per_image)), (x,)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    shape = SHAPES["2d"]
    x = (torch.randn(shape) * 2).to(dtype)
    target = labels(shape, ignore_every=4)
    one_hot, valid = index_to_one_hot(target, shape[1], IGNORE, dtype)
    p = torch.softmax(x.float(), 1).to(dtype)
    for targets in (target, one_hot):
        half = all_losses(region.region_stats(p, targets, valid, powers=(1, 2)))
        full = all_losses(
            region.region_stats(
                p.float(), targets if targets is target else one_hot.float(), valid, powers=(1, 2)
            )
        )
        for name in half:
            assert half[name].dtype == torch.float32, name
            torch.testing.assert_close(half[name], full[name], **F32)
    for function, inputs in ((region.lovasz_softmax, (p, one_hot)), (region.lovasz_hinge, (x, one_hot))):
        loss, _ = function(*inputs, valid)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, function(*(t.float() for t in inputs), valid)[0], **F32)


@pytest.fixture(scope="module")
def compiler():
    if not hasattr(torch, "compile"):
        pytest.skip("this torch has no torch.compile")
    try:
        torch._dynamo.reset()
        torch.compile(lambda t: torch.sigmoid(t) * 2, fullgraph=True)(
            torch.randn(3, requires_grad=True)
        ).sum().backward()
    except Exception as exc:  # noqa: BLE001 - the environment's failure, not lossdsl's
        pytest.skip(f"torch.compile does not work here: {type(exc).__name__}: {exc}")
    yield
    torch._dynamo.reset()


def compiled_matches_eager(function, inputs):
    eager_inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    compiled_inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    want = function(*eager_inputs)
    got = torch.compile(function, fullgraph=True)(*compiled_inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    leaves = [i for i, t in enumerate(inputs) if t.requires_grad]
    want_grads = torch.autograd.grad(want, [eager_inputs[i] for i in leaves])
    got_grads = torch.autograd.grad(got, [compiled_inputs[i] for i in leaves])
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_region_losses_compile_with_fullgraph(compiler):
    """Index and dense statistics, and every loss made of them, in one graph."""
    shape = SHAPES["2d"]
    target = labels(shape, ignore_every=3)
    valid = (target != IGNORE).unsqueeze(1)

    def losses(x, soft):
        index_stats = region.region_stats(softmax_of(x, valid), target, valid, powers=(1, 2))
        dense_stats = region.region_stats(torch.sigmoid(x), soft, batch=True).select(slice(1, None))
        return (
            sum(value.mean() for value in all_losses(index_stats).values())
            + region.dice(dense_stats, log=True).sum()
            + region.tversky(dense_stats, gamma=0.5).sum()
        )

    compiled_matches_eager(
        losses, [torch.randn(shape, requires_grad=True), torch.rand(shape, requires_grad=True)]
    )


def test_lovasz_compiles_with_fullgraph(compiler):
    shape = SHAPES["2d"]
    target = labels(shape, ignore_every=3)
    one_hot, valid = index_to_one_hot(target, shape[1], IGNORE)

    def losses(x):
        softmax = region.lovasz_softmax(softmax_of(x, valid), one_hot, valid, per_image=True)
        hinge = region.lovasz_hinge(x, one_hot, valid)
        return region.mean_over_counted(*softmax) + region.mean_over_counted(*hinge)

    compiled_matches_eager(losses, [torch.randn(shape, requires_grad=True)])
