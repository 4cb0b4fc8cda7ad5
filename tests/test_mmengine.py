"""The mmengine / mmdetection adapter (issue 10): ``dict(type='LossDSL', expr=..., loss_weight=...)``.

mmdetection itself does not import here (compiled mmcv); its registries are children of mmengine's
``MODELS``, which a child registry with scope 'mmdet' stands in for. The calling convention and label
conventions follow mmdet/models/losses/focal_loss.py (FocalLoss.forward) and gfocal_loss.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lossdsl

mmengine = pytest.importorskip("mmengine")
from mmengine.registry import MODELS, Registry  # noqa: E402
from test_call_options import mmdet_py_sigmoid_focal_loss  # noqa: E402
from test_detection import mmdet_quality_focal_loss, weight_reduce_loss  # noqa: E402

import lossdsl.integrations.mmengine  # noqa: E402,F401  (registers LossDSL)
from lossdsl.integrations.mmdet import MMDetLoss  # noqa: E402

MMDET_MODELS = Registry("model", parent=MODELS, scope="mmdet_standin")


def build(**config):
    return MMDET_MODELS.build(dict(type="LossDSL", **config))


def mmdet_focal_loss_forward(pred, labels, weight=None, avg_factor=None, reduction="mean", loss_weight=1.0):
    """FocalLoss.forward (use_sigmoid=True, the py_ path on the CPU): labels with background
    num_classes one-hot encoded with num_classes + 1 columns, the last dropped."""
    num_classes = pred.size(1)
    target = F.one_hot(labels, num_classes=num_classes + 1)[:, :num_classes]
    return loss_weight * mmdet_py_sigmoid_focal_loss(pred, target, weight, reduction=reduction,
                                                     avg_factor=avg_factor)


def batch(n=30, c=5):
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(n, c, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, c + 1, (n,), generator=generator)
    return pred, labels


def test_the_registry_builds_lossdsl_from_an_mmdetection_style_config():
    loss = build(expr="poly(focal(), eps=1)", loss_weight=1.0)
    assert isinstance(loss, MMDetLoss)
    assert loss.use_sigmoid is True
    assert "bce(background=true)" in repr(loss)


@pytest.mark.parametrize("reduction_override", [None, "mean", "sum", "none"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_focal_through_the_adapter_equals_mmdetection_focal_loss(reduction_override, with_weight):
    pred, labels = batch()
    weight = torch.rand(pred.shape[0], dtype=pred.dtype) if with_weight else None
    avg_factor = 7.0 if reduction_override in (None, "mean", "none") else None
    loss = build(expr="focal(gamma=2, alpha=0.25)", loss_weight=0.5)
    ours = loss(pred, labels, weight=weight, avg_factor=avg_factor, reduction_override=reduction_override)
    expected = mmdet_focal_loss_forward(pred, labels, weight, avg_factor, reduction_override or "mean", 0.5)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(*(torch.autograd.grad(v.sum(), pred)[0] for v in (ours, expected)))


def test_reduction_override_is_for_one_call_and_shares_running_state():
    loss = build(expr="ghm(bins=5, momentum=0.5)")
    pred, labels = batch()
    loss(pred.detach(), labels, reduction_override="none")
    counts = loss.state_dict()["loss.terms.0.ghm_accumulator"].clone()
    assert counts.sum() > 0  # the override's call updated the one accumulator
    assert loss(pred.detach(), labels).dim() == 0  # and the next call is reduced again


def test_qfl_takes_mmdetections_label_score_pair():
    pred, labels = batch()
    score = torch.rand(pred.shape[0], dtype=pred.dtype)
    loss = build(expr="qfocal(beta=2, reduction=batchmean)")
    torch.testing.assert_close(loss(pred, (labels, score)),
                               weight_reduce_loss(mmdet_quality_focal_loss(pred, labels, score)), rtol=1e-10,
                               atol=1e-12)


def test_use_sigmoid_must_agree_with_the_expression():
    with pytest.raises(lossdsl.LossConfigError, match="use_sigmoid=False contradicts the expression, whose head "
                                                      "is sigmoid"):
        build(expr="focal()", use_sigmoid=False)
    assert build(expr="ce()").use_sigmoid is False


def test_a_task_dictionary_is_refused_with_what_to_write_instead():
    with pytest.raises(lossdsl.LossConfigError, match="give one loss per config entry"):
        build(expr="{cls: focal(), box: l1()}")


def test_a_bad_expression_in_a_config_is_a_lossdsl_error_with_a_caret():
    with pytest.raises(lossdsl.LossDSLError) as error:
        build(expr="focal(gama=2)")
    assert "did you mean 'gamma'?" in str(error.value)


def test_a_bad_reduction_override_is_an_input_error():
    pred, labels = batch()
    with pytest.raises(lossdsl.LossInputError, match="reduction_override must be one of none, mean, sum"):
        build(expr="focal()")(pred, labels, reduction_override="batchmean")


# -- the example configs build through the registry and train a step ------------------------------

from pathlib import Path  # noqa: E402

from mmengine.config import Config  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "mmdet"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_mmdet_example_builds_each_loss_through_the_registry(path):
    config = Config.fromfile(str(path))
    import_modules_from_strings(**config.custom_imports)
    head = config.model.bbox_head
    built = {key: MMDET_MODELS.build(value) for key, value in head.items() if key.startswith("loss_")}
    assert built and all(isinstance(loss, MMDetLoss) for loss in built.values())


def test_the_gfl_example_computes_what_gfl_head_calls():
    """The calls of mmdet/models/dense_heads/gfl_head.py loss_by_feat_single, on made-up tensors."""
    config = Config.fromfile(str(EXAMPLES / "gfl_lossdsl.py"))
    head = config.model.bbox_head
    loss_cls, loss_dfl, loss_bbox = (MMDET_MODELS.build(head[k]) for k in ("loss_cls", "loss_dfl", "loss_bbox"))
    generator = torch.Generator().manual_seed(0)
    anchors, positives, classes, reg_max = 50, 6, head.num_classes, head.reg_max
    cls_score = torch.randn(anchors, classes, generator=generator, requires_grad=True)
    labels = torch.full((anchors,), classes)
    labels[:positives] = torch.randint(0, classes, (positives,), generator=generator)
    score = torch.zeros(anchors)
    score[:positives] = torch.rand(positives, generator=generator)
    weight_targets = torch.rand(positives, generator=generator)
    corner = torch.rand(positives, 2, generator=generator) * 10
    boxes = torch.cat([corner, corner + 1 + torch.rand(positives, 2, generator=generator)], 1)
    pred_corners = torch.randn(positives * 4, reg_max + 1, generator=generator, requires_grad=True)
    target_corners = torch.rand(positives * 4, generator=generator) * (reg_max - 0.01)
    total = (loss_cls(cls_score, (labels, score), weight=torch.ones(anchors), avg_factor=float(positives))
             + loss_bbox(boxes + 0.3, boxes, weight=weight_targets, avg_factor=1.0)
             + loss_dfl(pred_corners, target_corners, weight=weight_targets[:, None].expand(-1, 4).reshape(-1),
                        avg_factor=4.0))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(cls_score.grad).all() and torch.isfinite(pred_corners.grad).all()


def test_ghm_through_the_adapter_reads_label_weights_as_mmdetections_ghmc_does():
    """mmdet/models/losses/ghm_loss.py GHMC.forward: label_weight > 0 marks the anchors that count
    (the others stay out of the bins), avg_factor is not used; the loss is sum(w * bce) / tot."""
    import reference

    pred, labels = batch()
    label_weight = (torch.rand(pred.shape[0]) > 0.3).double()
    loss = build(expr="ghm(bins=10)")
    ours = loss(pred, labels, weight=label_weight, avg_factor=1234.0)
    target = F.one_hot(labels, pred.shape[1] + 1)[:, :-1].double()
    valid = (label_weight > 0).unsqueeze(1).expand_as(target)
    weights = reference.ghm_weights(pred.detach(), target, 10, valid)
    expected = (weights * F.binary_cross_entropy_with_logits(pred, target, reduction="none")).sum() \
        / valid.sum()
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
