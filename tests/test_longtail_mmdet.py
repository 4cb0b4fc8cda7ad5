"""seesaw() and eqlv2() through the mmdetection adapter, against mmdetection 3.3.0's SeesawLoss
(two objectness channels) and EQLV2Loss written from its source (tests/reference_longtail.py), and
the RoI head's questions: classifier width, test-time scores, logged accuracies (bbox_head.py)."""

from __future__ import annotations

import pytest
import reference_longtail as lt
import torch

mmengine = pytest.importorskip("mmengine")
from mmengine.registry import MODELS, Registry  # noqa: E402

import lossdsl.integrations.mmengine  # noqa: E402,F401  (registers LossDSL)
from lossdsl.errors import LossInputError  # noqa: E402
from lossdsl.integrations.mmdet import MMDetLoss  # noqa: E402

C = 4
MMDET_MODELS = Registry("model", parent=MODELS, scope="mmdet_longtail_standin")


def build(**config):
    return MMDET_MODELS.build(dict(type="LossDSL", **config))


def rois(step, n=24, extra=2, dtype=torch.float64):
    """Sampled RoIs: background (label C) most frequent, the classes long-tailed."""
    generator = torch.Generator().manual_seed(step)
    scores = torch.randn(n, C + extra, generator=generator, dtype=torch.float64).mul(2).to(dtype)
    labels = torch.multinomial(torch.tensor([6.0, 3, 1, 1, 12]), n, replacement=True, generator=generator)
    weights = torch.rand(n, generator=generator, dtype=torch.float64).to(dtype)
    return scores, labels, weights


def with_grad(function, scores):
    leaf = scores.detach().clone().requires_grad_(True)
    values = function(leaf)
    parts = values.values() if isinstance(values, dict) else [values]
    total = sum(part.sum() for part in parts)  # (reduction none: RoIs, foreground RoIs)
    (grad,) = torch.autograd.grad(total, leaf)
    detached = {k: v.detach() for k, v in values.items()} if isinstance(values, dict) else values.detach()
    return detached, grad


# -- seesaw ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("options", [
    {}, {"weight": True}, {"weight": True, "avg_factor": 17.0}, {"reduction_override": "sum"},
    {"reduction_override": "none", "weight": True},
])
def test_seesaw_speaks_mmdetections_seesaw_loss_with_its_objectness_channels(dtype, options):
    loss = build(expr="seesaw(p=0.8, q=2)", loss_weight=0.5)
    reference = lt.MMDetSeesawLoss(C, 0.8, 2.0, 1e-2, loss_weight=0.5)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for step in range(4):
        scores, labels, weights = rois(step, dtype=dtype)
        weight = weights if options.get("weight") else None
        avg_factor = options.get("avg_factor")
        reduction = options.get("reduction_override")
        ours, grad = with_grad(lambda s: loss(s, labels, weight, avg_factor=avg_factor,
                                              reduction_override=reduction), scores)
        theirs, expected_grad = with_grad(lambda s: reference(s, labels, weight, avg_factor,
                                                              reduction or "mean"), scores)
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], **tolerance, msg=lambda m: f"{key}: {m}")
        torch.testing.assert_close(grad, expected_grad, **tolerance)
    # lossdsl counts the foreground; mmdetection's extra column counts the background it never reads
    torch.testing.assert_close(loss.loss.terms[0].frequency.class_counts, reference.cum_samples[:C])


def test_seesaw_answers_the_roi_heads_questions_as_mmdetections_seesaw_loss():
    loss = build(expr="seesaw()")
    scores, labels, _ = rois(0)
    assert loss.custom_cls_channels and loss.custom_activation and loss.custom_accuracy
    assert loss.use_sigmoid is False
    assert loss.get_cls_channels(1203) == 1205
    torch.testing.assert_close(loss.get_activation(scores), lt.MMDetSeesawLoss(C).get_activation(scores))
    accuracy = loss.get_accuracy(scores, labels)
    foreground = labels < C
    assert accuracy.keys() == {"acc_objectness", "acc_classes"}
    expected = (scores[:, :C][foreground].argmax(1) == labels[foreground]).double().mean() * 100
    torch.testing.assert_close(accuracy["acc_classes"], expected)


def test_seesaw_with_no_foreground_roi_gives_a_zero_class_loss_with_zero_gradient():
    loss = build(expr="seesaw()")
    scores, _, _ = rois(0)
    labels = torch.full((scores.shape[0],), C)
    values, grad = with_grad(lambda s: loss(s, labels), scores)
    assert values["loss_cls_classes"] == 0
    assert (grad[:, :C] == 0).all()
    assert values["loss_cls_objectness"] > 0


def test_seesaw_return_dict_false_adds_the_two_losses():
    scores, labels, _ = rois(0)
    summed = build(expr="seesaw()", return_dict=False)(scores, labels)
    parts = build(expr="seesaw()")(scores, labels)
    torch.testing.assert_close(summed, parts["loss_cls_objectness"] + parts["loss_cls_classes"])


def test_seesaw_scores_must_have_the_two_objectness_channels():
    with pytest.raises(LossInputError, match=r"\[N, C \+ 2\] \(C classes, then 2 objectness channels\)"):
        build(expr="seesaw()")(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]))


# -- eqlv2 -------------------------------------------------------------------------------------------


def test_eqlv2_through_the_adapter_is_mmdetections_eqlv2_loss_with_the_roi_heads_arguments():
    """The RoI head passes all-ones label weights and avg_factor = N for sampled RoIs; EQLV2Loss
    ignores both, the adapter applies them: the same loss (up to avg_factor's float32 eps)."""
    loss = build(expr="eqlv2()", loss_weight=2.0)
    reference = lt.EQLV2Loss(C)
    for step in range(4):
        scores, labels, _ = rois(step, extra=1)
        ones = torch.ones(len(labels), dtype=scores.dtype)
        ours, grad = with_grad(lambda s: loss(s, labels, ones, avg_factor=float(len(labels))), scores)
        theirs, expected_grad = with_grad(lambda s: 2.0 * reference(s, labels, collect=False), scores)
        reference(scores, labels)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-9)


def test_eqlv2_answers_the_roi_heads_questions_with_its_own_activation():
    loss = build(expr="eqlv2()")
    scores, labels, _ = rois(0, extra=1)
    assert loss.use_sigmoid is True and loss.custom_cls_channels
    assert loss.get_cls_channels(1203) == 1204
    torch.testing.assert_close(loss.get_activation(scores), lt.EQLV2Loss.get_activation(scores.clone()))
    assert loss.get_accuracy(scores, labels).keys() == {"acc"}


def test_other_expressions_keep_mmdetections_default_classifier():
    assert not build(expr="focal()").custom_cls_channels
    assert not MMDetLoss("seesaw() + 0.5 * ce()").custom_cls_channels
