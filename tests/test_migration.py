"""docs/migration.md, row by row: every table row is a claim, and every claim is checked here.

The tables are the one source of truth. Each row names an id (first column), the call a user wrote with
the other library ("you wrote") and the lossdsl expression that replaces it ("write this in lossdsl").
This file parses the tables and, for each row id, runs a check that

- evaluates the first code span of "you wrote" against the real library where it imports (timm, kornia,
  MONAI, segmentation_models_pytorch) or against mmdetection's and torchvision's formulas written out
  below from their source (neither imports here);
- compiles the first code span of the lossdsl column (later spans of that column, such as a target
  transform or ``avg_factor=...``, are evaluated too where the row uses them);
- compares value and gradient (float64 where the reference allows), or checks the stated difference.

``test_every_row_has_a_check_and_every_check_a_row`` fails if the doc and this file drift apart; each
row is also its own parametrized case, so a row without a check (or the reverse) fails by name.

Tolerances: ``F64`` (relative 1e-7) where both sides compute in float64; ``F32`` (relative 2e-5) where
the reference computes in float32 whatever its input (timm's ASL/Poly/ZLPR, MONAI's focal part, smp's
Lovász); the box rows against mmdetection carry its ``eps`` convention (absolute 1e-5, see the doc).

References written out here, from:
- mmdetection 3.3.0 (github.com/open-mmlab/mmdetection), mmdet/models/losses/: focal_loss.py
  (FocalLoss.forward), ghm_loss.py (GHMC), gfocal_loss.py (QualityFocalLoss, DistributionFocalLoss),
  varifocal_loss.py (VarifocalLoss), iou_loss.py (IoULoss, GIoULoss, DIoULoss, CIoULoss), utils.py
  (weight_reduce_loss); the per-element formulas are those of tests/test_call_options.py,
  tests/test_detection.py and tests/test_box_functional.py;
- torchvision (github.com/pytorch/vision): torchvision/ops/focal_loss.py (sigmoid_focal_loss),
  torchvision/ops/giou_loss.py, diou_loss.py, ciou_loss.py (the per-box formulas of
  tests/test_box_functional.py) and torchvision/ops/_utils.py (_reduce_loss).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import reference_longtail as lt
import torch
import torch.nn.functional as F
from test_box_functional import (
    mm_ciou_loss,
    mm_diou_loss,
    mm_distribution_focal_loss,
    mm_giou_loss,
    mm_iou_loss_linear,
    mm_overlaps,
    near,
    random_boxes,
    tv_ciou_loss,
    tv_diou_loss,
    tv_giou_loss,
    tv_iou_loss,
)
from test_call_options import mmdet_py_sigmoid_focal_loss
from test_detection import (
    dense_quality_targets,
    mmdet_quality_focal_loss,
    mmdet_varifocal_loss,
    weight_reduce_loss,
)

import lossdsl
from lossdsl.state_updates import StateUpdates

DOC = Path(__file__).resolve().parents[1] / "docs" / "migration.md"
HEADER = ["row", "you wrote", "write this in lossdsl", "differences"]
F64 = {"rtol": 1e-7, "atol": 1e-9}
F32 = {"rtol": 2e-5, "atol": 2e-6}


# --------------------------------------------------------------------------------------------------
# the doc's tables


@dataclass(frozen=True)
class Row:
    id: str
    section: str
    theirs: tuple[str, ...]  # code spans of "you wrote"
    ours: tuple[str, ...]  # code spans of "write this in lossdsl"
    differences: str

    @property
    def differences_spans(self) -> tuple[str, ...]:
        return code_spans(self.differences)


def split_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def code_spans(cell: str) -> tuple[str, ...]:
    return tuple(re.findall(r"`([^`]+)`", cell))


def parse_rows(text: str) -> dict[str, Row]:
    """Rows of every table whose header is ``HEADER``, by id; a repeated id is an error."""
    rows: dict[str, Row] = {}
    section, in_table = "", False
    for line in text.splitlines():
        if line.startswith("## "):
            section, in_table = line[3:].strip(), False
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        cells = split_cells(line)
        if cells == HEADER:
            in_table = True
            continue
        if not in_table or set(line.replace("|", "").strip()) <= {"-", " "}:
            continue
        assert len(cells) == 4, f"a row of {len(cells)} cells (a '|' inside a cell?): {line}"
        ids = code_spans(cells[0])
        assert len(ids) == 1 and re.fullmatch(r"[a-z0-9-]+", ids[0]), f"row without an id: {line}"
        assert ids[0] not in rows, f"row id {ids[0]} appears twice"
        theirs, ours = code_spans(cells[1]), code_spans(cells[2])
        assert theirs and ours, f"row {ids[0]} has no code in 'you wrote' or in the lossdsl column"
        rows[ids[0]] = Row(ids[0], section, theirs, ours, cells[3])
    return rows


ROWS = parse_rows(DOC.read_text(encoding="utf-8"))
CHECKS: dict[str, Callable[[Row], None]] = {}


def check(row_id: str):
    def register(function):
        assert row_id not in CHECKS, row_id
        CHECKS[row_id] = function
        return function

    return register


def evaluate(code: str, **names):
    """A code span of the doc, evaluated with only ``names`` in scope (no builtins)."""
    return eval(code, {"__builtins__": {}}, {"dict": dict, "torch": torch, "F": F, **names})  # noqa: S307


def keywords(code: str, **names) -> dict:
    """A span such as ``avg_factor=4 * t.numel()`` as the keyword arguments it spells."""
    return evaluate(f"dict({code})", **names)


def compiled(row: Row, index: int = 0):
    return lossdsl.compile(row.ours[index])


def not_exact(row: Row) -> None:
    """A row that claims a difference must not call itself exact."""
    assert not row.differences.startswith("Exact"), f"{row.id}: the doc calls a difference exact"


def exact(row: Row) -> None:
    assert row.differences.startswith("Exact"), f"{row.id}: the check shows an exact equivalence"


# --------------------------------------------------------------------------------------------------
# comparisons


def assert_same(ours, theirs, inputs, tolerance, seed=7):
    """``ours(*inputs)`` and ``theirs(*inputs)`` agree in shape, value and in the gradient of a random
    projection with respect to every input that requires grad (each side gets its own copies)."""
    mine = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    other = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    got, want = ours(*mine), theirs(*other)
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got, want.to(got.dtype), **tolerance, msg=lambda m: f"value: {m}")
    leaves = [i for i, t in enumerate(inputs) if t.requires_grad]
    cotangent = torch.rand(got.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got_grads = torch.autograd.grad(got, [mine[i] for i in leaves], cotangent.to(got.dtype))
    want_grads = torch.autograd.grad(want, [other[i] for i in leaves], cotangent.to(want.dtype))
    for i, g, w in zip(leaves, got_grads, want_grads):
        torch.testing.assert_close(g, w.to(g.dtype), **tolerance, msg=lambda m, i=i: f"gradient {i}: {m}")


def assert_differ(a, b, relative=1e-3):
    a, b = float(a.detach()), float(b.detach())
    assert abs(a - b) > relative * abs(b), f"{a} and {b} should differ"


def logits(*shape, scale=2.0, dtype=torch.float64):
    return (torch.randn(*shape, dtype=dtype) * scale).requires_grad_(True)


def multi_hot(*shape, rate=0.3, dtype=torch.float64):
    return (torch.rand(*shape) < rate).to(dtype)


def all_classes(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices with every class present: the first positions set to 0..C-1."""
    target = target.clone()
    target.view(-1)[:num_classes] = torch.arange(num_classes)
    return target


# --------------------------------------------------------------------------------------------------
# the libraries


def load_files(package: str, top: str, folder: str, names: list[str]) -> dict:
    """Files of a package loaded under a stand-in parent (the real packages import torchvision, absent
    here): their relative imports resolve, nothing else of the package runs. Public names, merged."""
    found = importlib.util.find_spec(top)
    if found is None or not found.submodule_search_locations:
        pytest.skip(f"{top} is not installed")
    path = os.path.join(list(found.submodule_search_locations)[0], folder)
    if package not in sys.modules:
        standin = types.ModuleType(package)
        standin.__path__ = [path]
        sys.modules[package] = standin
    namespace = {}
    for name in names:
        spec = importlib.util.spec_from_file_location(f"{package}.{name}", os.path.join(path, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        namespace.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    return namespace


@functools.cache
def timm() -> dict:
    names = ["cross_entropy", "binary_cross_entropy", "asymmetric_loss", "jsd", "poly_loss", "zlpr_loss"]
    return load_files("timm_loss_standin", "timm", "loss", names)


@functools.cache
def smp() -> dict:
    names = ["dice", "jaccard", "tversky", "lovasz", "focal", "soft_bce", "soft_ce"]
    return load_files("smp_losses", "segmentation_models_pytorch", "losses", names)


@functools.cache
def kornia() -> dict:
    losses = pytest.importorskip("kornia.losses")
    names = ("focal_loss", "FocalLoss", "binary_focal_loss_with_logits")
    return {name: getattr(losses, name) for name in names}


@functools.cache
def monai() -> dict:
    losses = pytest.importorskip("monai.losses")
    names = ("DiceLoss", "TverskyLoss", "GeneralizedDiceLoss", "DiceCELoss", "DiceFocalLoss")
    return {name: getattr(losses, name) for name in names}


@functools.cache
def mmengine_models():
    pytest.importorskip("mmengine")
    import lossdsl.integrations.mmengine as registered

    return registered.MODELS


def their(row: Row, namespace: dict, **names):
    return evaluate(row.theirs[0], **namespace, **names)


# --------------------------------------------------------------------------------------------------
# mmdetection 3.3.0, written out (module level: the classes a config's ``type`` names)


def weighted_per_box(loss_fn, pred, target, weight, reduction, avg_factor, loss_weight):
    """iou_loss.py IoULoss/GIoULoss/... .forward: an all-zero weight returns 0, a [n, 4] weight is
    averaged per box, then weight_reduce_loss, times loss_weight."""
    if weight is not None and not torch.any(weight > 0) and reduction != "none":
        if pred.dim() == weight.dim() + 1:
            weight = weight.unsqueeze(1)
        return (pred * weight).sum()
    if weight is not None and weight.dim() > 1:
        weight = weight.mean(-1)
    return loss_weight * weight_reduce_loss(loss_fn(pred, target), weight, reduction, avg_factor)


class MMDetLossBase:
    reduction = "mean"

    def reduce_with(self, override):
        assert override in (None, "none", "mean", "sum")
        return override or self.reduction


class FocalLoss(MMDetLossBase):
    """focal_loss.py FocalLoss, use_sigmoid=True, the CPU (py_sigmoid_focal_loss) path."""

    def __init__(self, use_sigmoid=True, gamma=2.0, alpha=0.25, reduction="mean", loss_weight=1.0,
                 activated=False):
        assert use_sigmoid and not activated
        self.gamma, self.alpha, self.reduction, self.loss_weight = gamma, alpha, reduction, loss_weight

    def __call__(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        if pred.dim() != target.dim():
            num_classes = pred.size(1)
            target = F.one_hot(target, num_classes=num_classes + 1)[:, :num_classes]
        return self.loss_weight * mmdet_py_sigmoid_focal_loss(
            pred, target, weight, gamma=self.gamma, alpha=self.alpha,
            reduction=self.reduce_with(reduction_override), avg_factor=avg_factor)


class GHMC(MMDetLossBase):
    """ghm_loss.py GHMC: label_weight > 0 marks the valid elements; acc_sum a float32 buffer updated
    on every call (training or not); weight_reduce_loss with avg_factor = tot."""

    def __init__(self, bins=10, momentum=0, use_sigmoid=True, loss_weight=1.0, reduction="mean"):
        assert use_sigmoid
        self.bins, self.momentum, self.loss_weight, self.reduction = bins, momentum, loss_weight, reduction
        self.edges = torch.arange(bins + 1).float() / bins
        self.edges[-1] += 1e-6
        self.acc_sum = torch.zeros(bins)

    def __call__(self, pred, target, label_weight, reduction_override=None, **kwargs):
        reduction = self.reduce_with(reduction_override)
        if pred.dim() != target.dim():  # _expand_onehot_labels
            bin_labels = target.new_full((target.size(0), pred.size(-1)), 0)
            inds = torch.nonzero((target >= 0) & (target < pred.size(-1)), as_tuple=False).squeeze()
            if inds.numel() > 0:
                bin_labels[inds, target[inds]] = 1
            target = bin_labels
            label_weight = label_weight.view(-1, 1).expand(label_weight.size(0), pred.size(-1))
        target, label_weight = target.to(pred.dtype), label_weight.float()
        weights = torch.zeros_like(pred)
        g = torch.abs(pred.sigmoid().detach() - target)
        valid = label_weight > 0
        tot = max(valid.float().sum().item(), 1.0)
        n = 0
        for i in range(self.bins):
            inds = (g >= self.edges[i]) & (g < self.edges[i + 1]) & valid
            num_in_bin = inds.sum().item()
            if num_in_bin > 0:
                if self.momentum > 0:
                    self.acc_sum[i] = self.momentum * self.acc_sum[i] + (1 - self.momentum) * num_in_bin
                    weights[inds] = tot / self.acc_sum[i]
                else:
                    weights[inds] = tot / num_in_bin
                n += 1
        if n > 0:
            weights = weights / n
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        return weight_reduce_loss(loss, weights, reduction=reduction, avg_factor=tot) * self.loss_weight


class QualityFocalLoss(MMDetLossBase):
    """gfocal_loss.py QualityFocalLoss with a (label, score) target: the per-anchor sum, then
    weight_reduce_loss."""

    def __init__(self, use_sigmoid=True, beta=2.0, reduction="mean", loss_weight=1.0, activated=False):
        assert use_sigmoid and not activated
        self.beta, self.reduction, self.loss_weight = beta, reduction, loss_weight

    def __call__(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        label, score = target
        per_anchor = mmdet_quality_focal_loss(pred, label, score, self.beta)
        return self.loss_weight * weight_reduce_loss(
            per_anchor, weight, self.reduce_with(reduction_override), avg_factor)


class VarifocalLoss(MMDetLossBase):
    """varifocal_loss.py VarifocalLoss: the [N, C] loss into weight_reduce_loss (mean over N C)."""

    def __init__(self, use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="mean",
                 loss_weight=1.0):
        assert use_sigmoid
        self.alpha, self.gamma, self.iou_weighted = alpha, gamma, iou_weighted
        self.reduction, self.loss_weight = reduction, loss_weight

    def __call__(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        return self.loss_weight * mmdet_varifocal_loss(
            pred, target, weight, self.alpha, self.gamma, self.iou_weighted,
            self.reduce_with(reduction_override), avg_factor)


class DistributionFocalLoss(MMDetLossBase):
    """gfocal_loss.py DistributionFocalLoss: pred [N, n+1], label [N]."""

    def __init__(self, reduction="mean", loss_weight=1.0):
        self.reduction, self.loss_weight = reduction, loss_weight

    def __call__(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        per_edge = mm_distribution_focal_loss(pred, target)
        return self.loss_weight * weight_reduce_loss(
            per_edge, weight, self.reduce_with(reduction_override), avg_factor)


class BoxLoss(MMDetLossBase):
    def __init__(self, eps=1e-6, reduction="mean", loss_weight=1.0):
        self.eps, self.reduction, self.loss_weight = eps, reduction, loss_weight

    def __call__(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        return weighted_per_box(lambda p, t: self.per_box(p, t), pred, target, weight,
                                self.reduce_with(reduction_override), avg_factor, self.loss_weight)


class IoULoss(BoxLoss):
    """iou_loss.py IoULoss / iou_loss: IoU from bbox_overlaps, clamped below at eps."""

    def __init__(self, linear=False, eps=1e-6, reduction="mean", loss_weight=1.0, mode="log"):
        super().__init__(eps, reduction, loss_weight)
        self.mode = "linear" if linear else mode

    def per_box(self, pred, target):
        if self.mode == "linear":
            return mm_iou_loss_linear(pred, target, self.eps)
        ious = mm_overlaps(pred, target, "iou", self.eps).clamp(min=self.eps)
        return 1 - ious**2 if self.mode == "square" else -ious.log()


class GIoULoss(BoxLoss):
    def per_box(self, pred, target):
        return mm_giou_loss(pred, target, self.eps)


class DIoULoss(BoxLoss):
    def per_box(self, pred, target):
        return mm_diou_loss(pred, target, self.eps)


class CIoULoss(BoxLoss):
    def per_box(self, pred, target):
        return mm_ciou_loss(pred, target, self.eps)


MMDET = {cls.__name__: cls for cls in (FocalLoss, GHMC, QualityFocalLoss, VarifocalLoss,
                                        DistributionFocalLoss, IoULoss, GIoULoss, DIoULoss, CIoULoss)}


def build_mmdet(config: dict):
    config = dict(config)
    return MMDET[config.pop("type")](**config)


# torchvision, written out


def torchvision_reduce(loss, reduction):
    """torchvision/ops/_utils.py _reduce_loss (and sigmoid_focal_loss's own reduction)."""
    mean = loss.mean() if loss.numel() else 0.0 * loss.sum()
    return {"none": loss, "mean": mean, "sum": loss.sum()}[reduction]


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """torchvision/ops/focal_loss.py."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return torchvision_reduce(loss, reduction)


def generalized_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    return torchvision_reduce(tv_giou_loss(boxes1, boxes2, eps), reduction)


def distance_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    return torchvision_reduce(tv_diou_loss(boxes1, boxes2, eps), reduction)


def complete_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    return torchvision_reduce(tv_ciou_loss(boxes1, boxes2, eps), reduction)


TORCHVISION = {
    "sigmoid_focal_loss": sigmoid_focal_loss,
    "generalized_box_iou_loss": generalized_box_iou_loss,
    "distance_box_iou_loss": distance_box_iou_loss,
    "complete_box_iou_loss": complete_box_iou_loss,
}


def boxes(n=48, seed=0, min_size=0.5, scale=0.6):
    """Predicted boxes near their targets (overlapping), float64; the prediction requires grad."""
    generator = torch.Generator().manual_seed(seed)
    target = random_boxes(n, generator, min_size=min_size)
    return near(target, scale, generator).requires_grad_(True), target


# --------------------------------------------------------------------------------------------------
# timm


@check("timm-label-smoothing")
def _(row):
    exact(row)
    x, t = logits(32, 10), torch.randint(0, 10, (32,))
    assert_same(lambda x: compiled(row)(x, t), lambda x: their(row, timm())(x, t), [x], F64)


@check("timm-soft-target")
def _(row):
    exact(row)
    x = logits(32, 10)
    y = torch.softmax(torch.randn(32, 10, dtype=torch.float64) * 2, 1).requires_grad_(True)
    assert_same(compiled(row), their(row, timm()), [x, y], F64)


@check("timm-bce-mixup")
def _(row):
    exact(row)
    x = logits(32, 10)
    t1, t2 = torch.randint(0, 10, (2, 32))
    mixed = 0.7 * F.one_hot(t1, 10) + 0.3 * F.one_hot(t2, 10)  # mixup's target, smoothing 0.1
    y = (mixed * 0.9 + 0.01).double().requires_grad_(True)
    assert_same(compiled(row), their(row, timm()), [x, y], F64)


@check("timm-bce-threshold")
def _(row):
    exact(row)
    x, y = logits(32, 10), torch.rand(32, 10, dtype=torch.float64)
    binary = evaluate(row.ours[1], y=y)
    assert binary.dtype == torch.float32 and set(binary.unique().tolist()) == {0.0, 1.0}
    assert_same(lambda x: compiled(row)(x, binary), lambda x: their(row, timm())(x, y), [x], F64)


@check("timm-bce-smoothing-threshold")
def _(row):
    exact(row)
    x, t = logits(32, 10), torch.randint(0, 10, (32,))
    assert_same(lambda x: compiled(row)(x, t), lambda x: their(row, timm())(x, t), [x], F64)


@check("timm-bce-smoothing")
def _(row):
    exact(row)
    x, t = logits(32, 10), torch.randint(0, 10, (32,))
    target = evaluate(row.ours[1], t=t)
    assert_same(lambda x: compiled(row)(x, target), lambda x: their(row, timm())(x, t), [x], F64)
    # and the symmetric smoothing is not it
    assert_differ(lossdsl.compile("bce(smoothing=0.1)")(x, t), their(row, timm())(x, t), 1e-3)


@check("timm-bce-smoothing-approx")
def _(row):
    not_exact(row)
    s, C, N = 0.1, 10, 32
    x, t = logits(N, C), torch.randint(0, C, (N,))

    def stated(x):  # lossdsl's value plus s (C - 2) / C * sum_n x[n, t_n] / (N C)
        return compiled(row)(x, t) + s * (C - 2) / C * x.gather(1, t[:, None]).sum() / (N * C)

    assert_same(stated, lambda x: their(row, timm())(x, t), [x], F64)
    assert_differ(compiled(row)(x, t), their(row, timm())(x, t), 1e-4)


@check("timm-bce-multilabel")
def _(row):
    exact(row)
    x, y = logits(32, 10), multi_hot(32, 10)
    assert_same(compiled(row), their(row, timm()), [x, y], F64)


@check("timm-bce-weights")
def _(row):
    exact(row)
    x, y = logits(32, 4), multi_hot(32, 4, rate=0.4)
    assert_same(compiled(row), their(row, timm()), [x, y], F64)


def asl_batch():
    """float32 logits in [-5, 5] (timm computes in float32; beyond, see timm-asl-eps)."""
    x = (torch.randn(64, 10) * 2).clamp(-5, 5).requires_grad_(True)
    return x, multi_hot(64, 10, dtype=torch.float32)


@check("timm-asl")
def _(row):
    exact(row)
    x, y = asl_batch()
    assert_same(compiled(row), their(row, timm()), [x, y], F32)


@check("timm-asl-options")
def _(row):
    exact(row)
    x = (torch.randn(64, 4) * 2).clamp(-5, 5).requires_grad_(True)
    y = multi_hot(64, 4, rate=0.4, dtype=torch.float32)
    assert_same(compiled(row), their(row, timm()), [x, y], F32)


@check("timm-asl-eps")
def _(row):
    not_exact(row)
    ours, theirs = compiled(row), their(row, timm())
    # positives below -18.42 and negatives beyond 16.6: timm's constant -log(1e-8) with no gradient
    x = torch.tensor([[-20.0, -25.0, 25.0, 30.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mine, other = ours(x, y), theirs(x, y)
    torch.testing.assert_close(other, torch.tensor(4 * -math.log(1e-8)))
    torch.testing.assert_close(mine, torch.tensor(20.0 + 25 + 25 + 30), rtol=1e-6, atol=0)
    assert torch.equal(torch.autograd.grad(other, x)[0], torch.zeros(1, 4))
    torch.testing.assert_close(torch.autograd.grad(mine, x)[0], torch.tensor([[-1.0, -1.0, 1.0, 1.0]]))
    # at x = -25 for a positive: 25.0 against 18.42
    one = torch.tensor([[-25.0]])
    torch.testing.assert_close(ours(one, torch.ones(1, 1)), torch.tensor(25.0))
    torch.testing.assert_close(theirs(one, torch.ones(1, 1)), torch.tensor(18.42068))
    # negatives without clip: timm's float32 1 - sigmoid(x), against the exact softplus
    for value, low, high in [(9.0, 5e-5, 2e-4), (12.0, 5e-3, 1.5e-2), (15.0, 0.1, 0.25)]:
        z = torch.tensor([[value]])
        exact_value = F.softplus(torch.tensor(value, dtype=torch.float64))
        error = abs(float(theirs(z, torch.zeros(1, 1))) - exact_value)
        assert low < error < high, (value, error)
        torch.testing.assert_close(ours(z, torch.zeros(1, 1)), F.softplus(z).sum(), rtol=1e-6, atol=0)
    assert float(theirs(torch.tensor([[16.5]]), torch.zeros(1, 1))) < 17
    torch.testing.assert_close(theirs(torch.tensor([[16.7]]), torch.zeros(1, 1)), torch.tensor(18.42068))
    # within [-5, 5] the two agree to float32 rounding (timm-asl); here they differ
    assert_differ(mine, other)


@check("timm-asl-single-label")
def _(row):
    exact(row)
    x, t = logits(64, 10), torch.randint(0, 10, (64,))
    assert_same(lambda x: compiled(row)(x, t), lambda x: their(row, timm())(x, t), [x], F64)


@check("timm-jsd")
def _(row):
    not_exact(row)
    splits, N, alpha = 3, 24, 12
    x, t = logits(N, 10), torch.randint(0, 10, (N,))

    def js(x):  # the term lossdsl does not cover, as the doc states it
        probs = [torch.softmax(part, 1) for part in x.split(N // splits)]
        log_m = torch.stack(probs).mean(0).clamp(1e-7, 1).log()
        return sum((p * (p.log() - log_m)).sum() / p.shape[0] for p in probs) / splits

    def stated(x):
        clean_x, clean_t = evaluate(row.ours[1], x=x, N=N), evaluate(row.ours[2], t=t, N=N)
        return compiled(row)(clean_x, clean_t) + alpha * js(x)

    assert_same(stated, lambda x: their(row, timm())(x, t), [x], F64)


@check("timm-poly-ce")
def _(row):
    exact(row)
    x, t = logits(64, 10, dtype=torch.float32), torch.randint(0, 10, (64,))
    assert_same(lambda x: compiled(row)(x, t), lambda x: their(row, timm())(x, t), [x], F32)


@check("timm-poly-bce")
def _(row):
    exact(row)
    x, y = asl_batch()
    assert_same(compiled(row), their(row, timm()), [x, y], F32)


@check("timm-zlpr")
def _(row):
    exact(row)
    x, y = logits(32, 10, dtype=torch.float32), multi_hot(32, 10, dtype=torch.float32)
    y[0], y[1] = 0, 1  # a sample without positives, one without negatives
    assert_same(lambda x: compiled(row)(x, y), lambda x: their(row, timm())(x, y), [x], F32)


# --------------------------------------------------------------------------------------------------
# mmdetection


def detection_labels(n=40, c=5, seed=3):
    generator = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, c, generator=generator, dtype=torch.float64) * 2).requires_grad_(True)
    labels = torch.randint(0, c + 1, (n,), generator=generator)  # c is the background
    return pred, labels, torch.rand(n, generator=generator, dtype=torch.float64)


@check("mmdet-focal")
def _(row):
    exact(row)
    pred, labels, weight = detection_labels()
    assert (labels == pred.shape[1]).any()
    assert_same(lambda x: compiled(row)(x, labels, weight=weight, avg_factor=7.0),
                lambda x: their(row, MMDET)(x, labels, weight, avg_factor=7.0), [pred], F64)
    with pytest.raises(lossdsl.LossInputError, match="background=true"):
        lossdsl.compile(row.ours[0].replace(", background=true", ""))(pred, labels)


@check("mmdet-focal-config")
def _(row):
    exact(row)
    ours = mmengine_models().build(evaluate(row.ours[0]))
    theirs = build_mmdet(evaluate(row.theirs[0]))
    pred, labels, weight = detection_labels()
    calls = ({}, {"weight": weight, "avg_factor": 7.0}, {"weight": weight, "reduction_override": "sum"},
             {"reduction_override": "none"})
    for options in calls:
        assert_same(lambda x, o=options: ours(x, labels, **o), lambda x, o=options: theirs(x, labels, **o),
                    [pred], F64)


@check("mmdet-avg-factor")
def _(row):
    not_exact(row)
    cls_score, labels, _ = detection_labels(n=60)
    c = cls_score.shape[1]
    label_weights = torch.ones(60, dtype=torch.float64)
    ignored = torch.arange(60) % 7 == 0
    labels[ignored], label_weights[ignored] = c, 0.0  # ignored anchors: background label, weight 0
    num_pos = float((labels < c).sum())
    assert num_pos > 0
    names = {"FocalLoss": FocalLoss, "labels": labels, "label_weights": label_weights, "num_pos": num_pos}
    options = keywords(row.ours[1], label_weights=label_weights)
    tolerance = {"rtol": 1.2e-7 / num_pos + 1e-9, "atol": 1e-12}  # mmdetection's + float32 eps
    assert_same(lambda x: compiled(row)(x, labels, **options),
                lambda x: evaluate(row.theirs[0], cls_score=x, **names), [cls_score], tolerance)
    # keeping mean and passing avg_factor: the same
    assert_same(lambda x: lossdsl.compile("focal(background=true)")(x, labels, **options, avg_factor=num_pos),
                lambda x: evaluate(row.theirs[0], cls_score=x, **names), [cls_score], F64)


def ghm_steps(steps=3, n=40, c=5):
    generator = torch.Generator().manual_seed(11)
    for step in range(steps):
        pred = torch.randn(n, c, generator=generator, dtype=torch.float64) * (1.0 + step)
        labels = torch.randint(0, c + 1, (n,), generator=generator)
        label_weights = (torch.rand(n, generator=generator) > 0.25).double()
        yield pred.requires_grad_(True), labels, label_weights


@check("mmdet-ghmc")
def _(row):
    exact(row)
    ours, theirs = compiled(row), their(row, MMDET)
    for pred, labels, label_weights in ghm_steps():
        marked = labels.clone()
        marked[label_weights == 0] = -100  # as the doc says
        assert_same(lambda x, m=marked: ours(x, m), lambda x, t=labels, w=label_weights: theirs(x, t, w),
                    [pred], F64)
        torch.testing.assert_close(ours.state_dict()["terms.0.ghm_accumulator"], theirs.acc_sum,
                                   rtol=1e-6, atol=1e-6)
    # eval(): lossdsl keeps its running counts, GHMC updates them anyway
    ours.eval()
    before = ours.state_dict()["terms.0.ghm_accumulator"].clone()
    counts = theirs.acc_sum.clone()
    ours(pred, marked)
    theirs(pred, labels, label_weights)
    assert torch.equal(ours.state_dict()["terms.0.ghm_accumulator"], before)
    assert not torch.equal(theirs.acc_sum, counts)


@check("mmdet-ghmc-config")
def _(row):
    exact(row)
    ours, theirs = mmengine_models().build(evaluate(row.ours[0])), build_mmdet(evaluate(row.theirs[0]))
    for pred, labels, label_weights in ghm_steps(3):  # as a head calls it, momentum over steps
        num_pos = float((labels < pred.shape[1]).sum())
        assert_same(lambda x: ours(x, labels, label_weights, avg_factor=num_pos),
                    lambda x: theirs(x, labels, label_weights, avg_factor=num_pos), [pred], F64)


@check("mmdet-qfl")
def _(row):
    exact(row)
    pred, labels, weight = detection_labels(c=6)
    score = torch.rand(pred.shape[0], dtype=torch.float64)
    dense = dense_quality_targets(labels, score, pred.shape[1])
    theirs = their(row, MMDET)
    assert_same(lambda x: compiled(row)(x, dense, weight=weight),
                lambda x: theirs(x, (labels, score), weight), [pred], F64)
    # with avg_factor: plain qfocal(beta=2); through type='LossDSL' the (labels, scores) pair is converted
    assert_same(lambda x: lossdsl.compile("qfocal(beta=2)")(x, dense, weight=weight, avg_factor=9.0),
                lambda x: theirs(x, (labels, score), weight, avg_factor=9.0), [pred], F64)
    adapter = mmengine_models().build(dict(type="LossDSL", expr=row.ours[0]))
    assert_same(lambda x: adapter(x, (labels, score), weight),
                lambda x: theirs(x, (labels, score), weight), [pred], F64)
    assert_same(lambda x: adapter(x, (labels, score), weight, avg_factor=9.0),
                lambda x: theirs(x, (labels, score), weight, avg_factor=9.0), [pred], F64)


@check("mmdet-vfl")
def _(row):
    exact(row)
    pred, labels, _ = detection_labels(c=6)
    score = torch.rand(pred.shape[0], dtype=torch.float64)
    target = dense_quality_targets(labels, score, pred.shape[1]).requires_grad_(True)
    assert_same(compiled(row), their(row, MMDET), [pred, target], F64)
    # not batchmean: that is C times more
    batchmean = lossdsl.compile(row.ours[0][:-1] + ", reduction=batchmean)")(pred, target)
    torch.testing.assert_close(batchmean, compiled(row)(pred, target) * pred.shape[1])


@check("mmdet-dfl")
def _(row):
    exact(row)
    generator = torch.Generator().manual_seed(5)
    pred = torch.randn(40, 9, generator=generator, dtype=torch.float64).requires_grad_(True)
    target = torch.rand(40, generator=generator, dtype=torch.float64) * 7.99
    weight = torch.rand(40, generator=generator, dtype=torch.float64)
    theirs = their(row, MMDET)
    assert_same(lambda x: compiled(row)(x, target, weight=weight, avg_factor=4.0),
                lambda x: theirs(x, target, weight, avg_factor=4.0), [pred], F64)
    # a target at n = 8, the last bin: mmdetection indexes past the logits; lossdsl puts it all on n
    at_n = torch.full((40,), 8.0, dtype=torch.float64)
    with pytest.raises((IndexError, RuntimeError)):
        theirs(pred, at_n)
    per_edge = lossdsl.compile("dfl(reduction=none)")(pred, at_n)
    torch.testing.assert_close(per_edge, F.cross_entropy(pred, at_n.long(), reduction="none"))


def unreduced(loss, input, target):
    """The per-element values of a compiled loss of stateless terms: every term reduced with none
    for this one call (the same modules, not a recompiled copy)."""
    prepared = loss.prepare(input, target, updates=StateUpdates(), reductions=["none"] * len(loss.terms))
    return loss.combine(prepared)


def mmdet_boxes_agree(ours_loss, theirs_loss, pred, target, value_atol=1e-5):
    """Per box within ``value_atol`` (mmdetection floors where lossdsl adds eps), and the gradients of
    the mean to a relative 1e-4."""
    mine = unreduced(ours_loss, pred, target)
    other = theirs_loss(pred, target, reduction_override="none")
    torch.testing.assert_close(mine, other, rtol=0, atol=value_atol)
    assert_same(lambda p: ours_loss(p, target), lambda p: theirs_loss(p, target), [pred],
                {"rtol": 1e-4, "atol": 1e-8})


@check("mmdet-iou-linear")
def _(row):
    not_exact(row)
    pred, target = boxes()
    mmdet_boxes_agree(compiled(row), their(row, MMDET), pred, target)


@check("mmdet-iou-log")
def _(row):
    not_exact(row)
    pred, target = boxes()
    ours, theirs = compiled(row), their(row, MMDET)
    x = pred.detach().clone().requires_grad_(True)
    linear = unreduced(ours, x, target)
    log = theirs(pred, target, reduction_override="none")
    iou = 1 - linear
    torch.testing.assert_close(-torch.log(1 - linear), log, rtol=1e-4, atol=1e-6)
    assert bool((log > linear).all())
    # per box, the gradient of -log(IoU) is that of 1 - IoU divided by IoU
    (g_linear,) = torch.autograd.grad(linear.sum(), x)
    (g_log,) = torch.autograd.grad(log.sum(), pred)
    torch.testing.assert_close(g_log, g_linear / iou.detach()[:, None], rtol=1e-4, atol=1e-7)


@check("mmdet-giou")
def _(row):
    not_exact(row)
    pred, target = boxes()
    weight = torch.rand(pred.shape, dtype=torch.float64)
    ours, theirs = compiled(row), their(row, MMDET)
    assert_same(lambda p: ours(p, target, weight=weight, avg_factor=10.0),
                lambda p: theirs(p, target, weight, avg_factor=10.0), [pred], {"rtol": 1e-4, "atol": 1e-5})
    mmdet_boxes_agree(ours, theirs, pred, target, 2e-5)  # both carry the factor 2


@check("mmdet-diou")
def _(row):
    exact(row)
    pred, target = boxes()
    assert_same(lambda p: compiled(row)(p, target), lambda p: their(row, MMDET)(p, target), [pred], F64)


@check("mmdet-ciou")
def _(row):
    not_exact(row)
    generator = torch.Generator().manual_seed(2)
    target = random_boxes(256, generator, min_size=0.5)
    pred = torch.cat((near(target[:128], 0.3, generator), near(target[128:], 1.5, generator)))
    ours, theirs = compiled(row), their(row, MMDET)
    mine = unreduced(ours, pred, target)
    other = theirs(pred, target, reduction_override="none")
    eps = 1e-6
    iou = 1 - tv_iou_loss(pred, target, eps)
    aspect = tv_ciou_loss(pred, target, eps) - tv_diou_loss(pred, target, eps)  # alpha v
    low = iou <= 0.5
    assert 20 < int(low.sum()) < 236 and bool((aspect[low] > 1e-4).any())
    stated = other + torch.where(low, aspect, torch.zeros_like(aspect))
    torch.testing.assert_close(mine, stated, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# kornia


def kornia_batch(ignore=None):
    pred = logits(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 5, 5))
    if ignore is not None:
        target.view(-1)[::3] = ignore
    return pred, target


@check("kornia-focal")
def _(row):
    exact(row)
    pred, target = kornia_batch()
    assert_same(lambda x: compiled(row)(x, target), lambda x: their(row, kornia(), pred=x, target=target),
                [pred], F64)


@check("kornia-focal-ignore")
def _(row):
    exact(row)
    pred, target = kornia_batch(ignore=255)
    options = keywords(row.ours[1], t=target)
    assert_same(lambda x: compiled(row)(x, target, **options),
                lambda x: their(row, kornia(), pred=x, target=target), [pred], F64)
    # without the avg_factor: kornia's value times C * (all positions) / (valid positions)
    valid, total = float((target != 255).sum()), float(target.numel())
    torch.testing.assert_close(compiled(row)(pred, target),
                               their(row, kornia(), pred=pred, target=target) * 4 * total / valid, **F64)


@check("kornia-focal-none")
def _(row):
    exact(row)
    pred, target = kornia_batch()
    assert_same(lambda x: compiled(row)(x, target), lambda x: their(row, kornia())(x, target).sum(1), [pred],
                F64)
    assert their(row, kornia())(pred, target).shape == pred.shape


@check("kornia-binary-focal")
def _(row):
    exact(row)
    pred, target = logits(3, 4, 5, 5), multi_hot(3, 4, 5, 5)
    assert_same(lambda x: compiled(row)(x, target),
                lambda x: their(row, kornia(), pred=x, target=target), [pred], F64)
    # without pos_weight: focal(gamma=2, alpha=0.25)
    plain = next(span for span in row.differences_spans if span.startswith("focal("))
    assert_same(lambda x: lossdsl.compile(plain)(x, target),
                lambda x: kornia()["binary_focal_loss_with_logits"](x, target, alpha=0.25, gamma=2.0,
                                                                    reduction="mean"), [pred], F64)


@check("kornia-binary-focal-soft")
def _(row):
    not_exact(row)
    pred, target = logits(3, 4, 5, 5), torch.rand(3, 4, 5, 5, dtype=torch.float64)
    kornia_value = their(row, kornia(), pred=pred, target=target)
    assert_differ(compiled(row)(pred, target), kornia_value, 1e-3)
    # equal at 0 and 1
    hard = multi_hot(3, 4, 5, 5)
    torch.testing.assert_close(compiled(row)(pred, hard), their(row, kornia(), pred=pred, target=hard), **F64)
    # kornia's value, as the doc writes it with lossdsl
    summed = compiled(row, 1)
    on_ones, on_zeros = keywords(row.ours[2], t=target), keywords(row.ours[3], t=target)

    def stated(x):
        return (summed(x, torch.ones_like(target), **on_ones)
                + summed(x, torch.zeros_like(target), **on_zeros)) / target.numel()

    assert_same(stated, lambda x: their(row, kornia(), pred=x, target=target), [pred], F64)


# --------------------------------------------------------------------------------------------------
# torchvision


@check("torchvision-focal")
def _(row):
    exact(row)
    x = logits(16, 5)
    y = torch.rand(16, 5, dtype=torch.float64).requires_grad_(True)  # soft targets, with their gradient
    assert_same(compiled(row), lambda x, y: their(row, TORCHVISION, inputs=x, targets=y), [x, y], F64)
    # torchvision's default reduction is none: focal(reduction=none)
    assert "focal(reduction=none)" in row.differences_spans
    assert_same(lambda x, y: lossdsl.compile(row.ours[0][:-1] + ", reduction=none)")(x, y),
                lambda x, y: sigmoid_focal_loss(x, y), [x, y], F64)


@check("torchvision-focal-no-alpha")
def _(row):
    exact(row)
    x, y = logits(16, 5), multi_hot(16, 5)
    assert_same(compiled(row), lambda x, y: their(row, TORCHVISION, inputs=x, targets=y), [x, y], F64)


def torchvision_boxes(row):
    pred, target = boxes()
    target.requires_grad_(True)
    assert_same(compiled(row), lambda a, b: their(row, TORCHVISION, boxes1=a, boxes2=b), [pred, target], F64)


@check("torchvision-giou")
def _(row):
    exact(row)
    torchvision_boxes(row)


@check("torchvision-diou")
def _(row):
    exact(row)
    torchvision_boxes(row)


@check("torchvision-ciou")
def _(row):
    exact(row)
    torchvision_boxes(row)
    # a box of zero width and height: torchvision NaN, lossdsl finite in value and gradient
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    other = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    assert torch.isnan(their(row, TORCHVISION, boxes1=point, boxes2=other))
    value = compiled(row)(point, other)
    assert torch.isfinite(value) and torch.isfinite(torch.autograd.grad(value, point)[0]).all()


# --------------------------------------------------------------------------------------------------
# MONAI


def segmentation(c=3, n=2, h=5, w=4):
    return logits(n, c, h, w), torch.randint(0, c, (n, h, w))


def monai_same(row, x, t, tolerance=F64):
    assert_same(lambda x: compiled(row)(x, t), lambda x: their(row, monai())(x, t[:, None]), [x], tolerance)


@check("monai-dice")
def _(row):
    exact(row)
    monai_same(row, *segmentation())


@check("monai-dice-options")
def _(row):
    exact(row)
    monai_same(row, *segmentation(c=4))


@check("monai-dice-smooth")
def _(row):
    not_exact(row)
    x, t = segmentation()

    def stated(x):  # MONAI's value minus mean(1e-5 / (sum p + sum y + 1e-5))
        p, y = torch.softmax(x, 1), F.one_hot(t, 3).movedim(-1, 1).double()
        return compiled(row)(x, t) + (1e-5 / (p.sum((2, 3)) + y.sum((2, 3)) + 1e-5)).mean()

    assert_same(stated, lambda x: their(row, monai())(x, t[:, None]), [x], F64)
    gap = float(their(row, monai())(x, t[:, None]) - compiled(row)(x, t))
    assert 5e-7 < gap < 1e-6, gap  # "7.7e-7 for 3 classes on 4 x 5 images"


@check("monai-jaccard")
def _(row):
    exact(row)
    x, y = logits(2, 3, 5, 4), multi_hot(2, 3, 5, 4, rate=0.4)
    assert_same(lambda x: compiled(row)(x, y), lambda x: their(row, monai())(x, y), [x], F64)


@check("monai-tversky")
def _(row):
    exact(row)
    monai_same(row, *segmentation())


@check("monai-gdice")
def _(row):
    exact(row)
    x, t = segmentation()
    t[0][t[0] == 2] = 1  # class 2 absent from the first sample: an infinite weight, replaced
    monai_same(row, x, t)


@check("monai-dice-ce")
def _(row):
    exact(row)
    x, t = segmentation()
    monai_same(row, x, t)
    # MONAI's weight=w goes to both terms: dice(weight=w) + ce(weight=w)
    spans = [span for span in row.differences_spans if "weight=w" in span]
    assert spans == ["weight=w", "dice(weight=w) + ce(weight=w)"], spans
    w = [0.5, 2.0, 1.0]
    class_weight = torch.tensor(w, dtype=torch.float64)
    theirs = monai()["DiceCELoss"](to_onehot_y=True, softmax=True, weight=class_weight)
    ours = lossdsl.compile(spans[1].replace("w)", f"{w})"))
    assert_same(lambda x: ours(x, t), lambda x: theirs(x, t[:, None]), [x], F64)


@check("monai-dice-focal")
def _(row):
    exact(row)
    monai_same(row, *segmentation(), tolerance=F32)


# --------------------------------------------------------------------------------------------------
# segmentation_models_pytorch


def smp_same(row, x, y, tolerance=F64, ours_input=None):
    assert_same(lambda x: compiled(row)(x if ours_input is None else ours_input(x), y),
                lambda x: their(row, smp())(x, y), [x], tolerance)


@check("smp-dice")
def _(row):
    exact(row)
    x = logits(2, 4, 5, 4)
    t = torch.randint(0, 4, (2, 5, 4))
    t.view(-1)[4::5] = 255
    smp_same(row, x, all_classes(t, 4))


@check("smp-dice-absent-class")
def _(row):
    not_exact(row)
    x, t = logits(2, 4, 5, 4), torch.randint(0, 4, (2, 5, 4))
    t = all_classes(t, 4)
    t[t == 1] = 2
    absent = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)

    def stated(x):
        loss = compiled(row)
        per_class = unreduced(loss, x, t)
        return loss(x, t) - (absent * per_class).sum() / 4

    assert_same(stated, lambda x: their(row, smp())(x, t), [x], F64)
    assert_differ(compiled(row)(x, t), their(row, smp())(x, t), 1e-2)


@check("smp-dice-binary-log")
def _(row):
    exact(row)
    smp_same(row, logits(2, 1, 5, 4), multi_hot(2, 1, 5, 4, rate=0.4))
    # a batch without foreground: smp 0, lossdsl's log dice with smooth=0 large but finite (SPEC 6)
    x, empty = logits(2, 1, 5, 4), torch.zeros(2, 1, 5, 4, dtype=torch.float64)
    assert float(their(row, smp())(x, empty)) == 0.0
    assert torch.isfinite(compiled(row)(x, empty)) and compiled(row)(x, empty) > 10


@check("smp-dice-multilabel-probabilities")
def _(row):
    exact(row)
    probs = torch.sigmoid(torch.randn(2, 3, 5, 4, dtype=torch.float64) * 2).requires_grad_(True)
    y = multi_hot(2, 3, 5, 4, rate=0.4)
    smp_same(row, probs, y, ours_input=lambda p: evaluate(row.ours[1], probs=p))
    # softmax probabilities: torch.log(p) as the logits (the doc's "torch.log(p) on a softmax head")
    log_span = next(span for span in row.differences_spans if span.startswith("torch.log("))
    # (the gradients agree for the model's outputs z, p = softmax(z); not off the simplex in p itself)
    z, t = logits(2, 4, 5, 4), all_classes(torch.randint(0, 4, (2, 5, 4)), 4)
    theirs = smp()["DiceLoss"](mode="multiclass", from_logits=False)
    ours = lossdsl.compile("dice(batch=true, smooth=0)")
    assert_same(lambda z: ours(evaluate(log_span, p=torch.softmax(z, 1)), t),
                lambda z: theirs(torch.softmax(z, 1), t), [z], F64)


@check("smp-dice-class-weights")
def _(row):
    exact(row)
    x = logits(2, 4, 5, 4)
    smp_same(row, x, all_classes(torch.randint(0, 4, (2, 5, 4)), 4))


@check("smp-jaccard")
def _(row):
    exact(row)
    x = logits(2, 4, 5, 4)
    smp_same(row, x, all_classes(torch.randint(0, 4, (2, 5, 4)), 4))


@check("smp-tversky-binary")
def _(row):
    exact(row)
    smp_same(row, logits(2, 1, 5, 4), multi_hot(2, 1, 5, 4, rate=0.4))


@check("smp-tversky-gamma")
def _(row):
    not_exact(row)
    x, t = logits(2, 4, 5, 4), all_classes(torch.randint(0, 4, (2, 5, 4)), 4)
    assert_same(lambda x: evaluate(row.ours[1], v=compiled(row, 3)(x, t)),
                lambda x: their(row, smp())(x, t), [x], F64)
    ours, theirs = compiled(row)(x, t), their(row, smp())(x, t)
    assert float(ours) > float(theirs)
    assert_differ(ours, theirs, 1e-3)


@check("smp-lovasz")
def _(row):
    exact(row)
    x = logits(2, 4, 5, 4, scale=3.0, dtype=torch.float32)
    smp_same(row, x, torch.randint(0, 4, (2, 5, 4)), F32)


@check("smp-lovasz-binary")
def _(row):
    exact(row)
    x = logits(3, 1, 7, 5, scale=3.0, dtype=torch.float32)
    y = multi_hot(3, 1, 7, 5, rate=0.4, dtype=torch.float32)
    y[2] = 0  # an image without foreground
    smp_same(row, x, y, F32)


@check("smp-lovasz-multilabel")
def _(row):
    not_exact(row)
    x = logits(2, 3, 5, 4, scale=3.0, dtype=torch.float32)
    y = multi_hot(2, 3, 5, 4, rate=0.4, dtype=torch.float32)
    assert_same(lambda x: compiled(row)(evaluate(row.ours[1], x=x), evaluate(row.ours[2], y=y)),
                lambda x: their(row, smp())(x, y), [x], F32)
    assert_differ(compiled(row)(x, y), their(row, smp())(x, y), 1e-4)


@check("smp-focal")
def _(row):
    exact(row)
    x, t = logits(2, 4, 5, 4), torch.randint(0, 4, (2, 5, 4))
    t.view(-1)[::4] = 255
    smp_same(row, x, t)
    assert_differ(lossdsl.compile("focal(head=softmax, ignore_index=255)")(x, t), their(row, smp())(x, t))


@check("smp-soft-bce")
def _(row):
    exact(row)
    x, y = logits(8, 5), multi_hot(8, 5, rate=0.4)
    smp_same(row, x, y)
    # smp's ignore_index=-100 entries: zeroed targets and weight 0 there give smp's numbers
    marked = y.clone()
    marked[::3, 1] = -100
    kept = (marked != -100).double()
    assert_same(lambda x: compiled(row)(x, marked.clamp(min=0), weight=kept),
                lambda x: their(row, smp())(x, marked), [x], F64)
    with pytest.raises(lossdsl.LossInputError, match=r"\[0, 1\]"):
        compiled(row)(x, marked)


@check("smp-soft-ce")
def _(row):
    exact(row)
    x, t = logits(2, 4, 5, 4), torch.randint(0, 4, (2, 5, 4))
    smp_same(row, x, t)  # no ignored position: plain ce(smoothing=0.1)
    t.view(-1)[::3] = -100
    options = keywords(row.ours[1], t=t)
    assert_same(lambda x: compiled(row)(x, t, **options), lambda x: their(row, smp())(x, t), [x], F64)


# --------------------------------------------------------------------------------------------------
# long-tail losses: the papers' code and mmdetection's, written out in tests/reference_longtail.py


def longtail_batch(n=32, c=5, seed=11, scale=2.0):
    """Logits and long-tailed labels (every class present)."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=generator, dtype=torch.float64) * scale).requires_grad_(True)
    t = torch.multinomial(torch.tensor([8.0, 4, 2, 1, 1][:c]), n, replacement=True, generator=generator)
    return x, all_classes(t, c)


def build_loss_fn(use_la_loss, base_probs, tau=1.0):
    """google-research logit_adjustment/utils.py build_loss_fn, its TensorFlow written in torch."""
    def loss_fn(labels, logits):
        if use_la_loss:
            logits = logits + torch.log((base_probs**tau + 1e-12).to(logits.dtype))
        return F.cross_entropy(logits, labels, reduction="none").mean(dim=0)
    return loss_fn


LONGTAIL = {"build_loss_fn": build_loss_fn, "balanced_softmax_loss": lt.balanced_softmax_loss,
            "LDAMLoss": lambda **options: (lambda x, t: lt.ldam_loss(x, t, reduction="mean", **options))}


@check("longtail-logit-adjustment")
def _(row):
    exact(row)
    x, t = longtail_batch()
    loss_fn = their(row, LONGTAIL)
    assert_same(lambda z: compiled(row)(z, t), lambda z: loss_fn(t, z), [x], F64)


@check("longtail-logit-adjustment-posthoc")
def _(row):
    exact(row)
    x, t = longtail_batch()
    loss = compiled(row)
    base_probs = torch.tensor([0.74, 0.18, 0.06, 0.015, 0.005], dtype=torch.float64)
    adjusted = evaluate(row.theirs[0], logits=x.detach(), log=torch.log, base_probs=base_probs, tau=1.0)
    torch.testing.assert_close(evaluate(row.ours[1], loss=loss, logits=x.detach()),
                               torch.softmax(adjusted, dim=1), **F64)
    assert_same(lambda z: loss(z, t), lambda z: F.cross_entropy(z, t), [x], F64)  # trains plain ce


@check("longtail-balanced-softmax")
def _(row):
    exact(row)
    x, t = longtail_batch()
    assert_same(lambda z: compiled(row)(z, t), lambda z: their(row, LONGTAIL, labels=t, logits=z), [x],
                {"rtol": 1e-9, "atol": 1e-10})


@check("longtail-ldam")
def _(row):
    exact(row)
    x, t = longtail_batch(scale=0.2)
    assert_same(lambda z: compiled(row)(z, t), lambda z: their(row, LONGTAIL)(z, t), [x], F64)


@check("longtail-ldam-drw")
def _(row):
    not_exact(row)
    x, t = longtail_batch(scale=0.2)
    counts = [500, 120, 40, 9, 2]
    weights = lt.class_balanced_weights(counts, 0.9999)
    theirs = lambda z: lt.ldam_loss(z, t, counts, 0.5, 30.0, weight=weights, reduction="mean")  # noqa: E731
    assert_same(lambda z: compiled(row)(z, t) / evaluate(row.ours[1], w=weights, t=t), theirs, [x], F64)
    mean = lossdsl.compile(row.ours[0].replace(", reduction=sum", ""))
    assert_differ(mean(x, t), theirs(x))


CUI = {"softmax": lambda x, t, w, gamma: lt.cui_softmax_loss(x, t, w),
       "sigmoid": lambda x, t, w, gamma: lt.cui_sigmoid_loss(x, t, w),
       "focal": lambda x, t, w, gamma: lt.cui_focal_loss(x, t, w, gamma)}


@check("longtail-cui-softmax")
@check("longtail-cui-sigmoid")
@check("longtail-cui-focal")
def _(row):
    exact(row)
    options = keywords(row.theirs[0])
    x, t = longtail_batch()
    weights = lt.class_balanced_weights([500, 120, 40, 9, 2], options["beta"])
    reference = CUI[options["loss_type"]]
    assert_same(lambda z: compiled(row)(z, t), lambda z: reference(z, t, weights, options.get("gamma")),
                [x], F64)


@check("longtail-seesaw")
def _(row):
    exact(row)
    loss, reference = compiled(row), lt.SeesawLoss(5, 0.8, 2.0, 1e-2)
    for step in range(3):
        x, t = longtail_batch(seed=step)
        counts = reference.cum_samples.clone()
        assert_same(lambda z: loss(z, t), lambda z: reference(z, t).mean(), [x], F64)
        reference.cum_samples = counts
        reference(x.detach(), t)  # count this batch once
        torch.testing.assert_close(loss.terms[0].frequency.class_counts, reference.cum_samples)


def eqlv2_steps(row, reference):
    loss = compiled(row)
    for step in range(3):
        x, t = longtail_batch(seed=step)  # 5 channels: 4 classes and the background (label 4)
        assert_same(lambda z: loss(z, t), lambda z: reference(z, t, collect=False), [x], F64)
        reference(x.detach(), t)
        torch.testing.assert_close(loss.terms[0].pos_grad, reference.pos_grad, **F64)
        torch.testing.assert_close(loss.terms[0].neg_grad, reference.neg_grad, **F64)


@check("mmdet-eqlv2")
def _(row):
    exact(row)
    eqlv2_steps(row, lt.EQLV2Loss(4, 12.0, 0.8, 4.0))


@check("longtail-eqlv2-original")
def _(row):
    exact(row)
    eqlv2_steps(row, lt.EQLV2Loss(4, 12.0, 0.8, 4.0, original=True))


@check("mmdet-seesaw")
def _(row):
    exact(row)
    adapter = mmengine_models().build(evaluate(row.ours[0]))
    reference = lt.MMDetSeesawLoss(4, 0.8, 2.0, 1e-2)
    for step in range(3):
        scores, labels = longtail_batch(seed=step, c=6)  # 4 classes, then 2 objectness channels
        labels = labels.clamp(max=4)  # 4: the background
        weights = torch.rand(len(labels), dtype=torch.float64)
        for key in ("loss_cls_objectness", "loss_cls_classes"):
            counts = reference.cum_samples.clone()
            assert_same(lambda z: adapter(z, labels, weights, avg_factor=20.0)[key],
                        lambda z: reference(z, labels, weights, 20.0)[key], [scores], F64)
            reference.cum_samples = counts
            adapter.loss.terms[0].frequency.load_state_dict({"class_counts": counts[:4]})
        reference(scores.detach(), labels, weights, 20.0)
        adapter(scores.detach(), labels, weights, avg_factor=20.0)
    assert adapter.get_cls_channels(4) == 6
    scores = longtail_batch(c=6)[0].detach()
    torch.testing.assert_close(adapter.get_activation(scores), reference.get_activation(scores))


# --------------------------------------------------------------------------------------------------
# the doc and this file cover each other


def test_every_row_has_a_check_and_every_check_a_row():
    assert ROWS, f"no table rows found in {DOC}"
    assert sorted(set(ROWS) - set(CHECKS)) == [], "rows of docs/migration.md without a check here"
    assert sorted(set(CHECKS) - set(ROWS)) == [], "checks here without a row in docs/migration.md"


def test_every_section_is_a_library_and_row_ids_name_it():
    prefixes = {"timm": "timm-", "mmdetection": "mmdet-", "kornia": "kornia-", "torchvision": "torchvision-",
                "MONAI": "monai-", "segmentation_models_pytorch (smp)": "smp-",
                "Long-tail recognition code": "longtail-"}
    for row in ROWS.values():
        assert row.id.startswith(prefixes[row.section]), (row.id, row.section)


@pytest.mark.parametrize("row_id", sorted(set(ROWS) | set(CHECKS)))
def test_row(row_id):
    assert row_id in ROWS, f"check {row_id} has no row in docs/migration.md"
    assert row_id in CHECKS, f"row {row_id} of docs/migration.md has no check in this file"
    CHECKS[row_id](ROWS[row_id])
