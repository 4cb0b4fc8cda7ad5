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


# -- issue 15, items 10-13: mmdetection's target, reduction and call conventions --------------------
# References: mmdetection 3.3.0 written out in test_detection.py (quality_focal_loss), test_migration.py
# (GHMC, QualityFocalLoss) and below (cross_entropy_loss.py cross_entropy).

import threading  # noqa: E402

from test_migration import GHMC as MMDetGHMC  # noqa: E402
from test_migration import QualityFocalLoss as MMDetQFL  # noqa: E402


def assert_same_values_and_gradients(ours, theirs, inputs, rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=atol)
    for g_ours, g_theirs in zip(torch.autograd.grad(ours.sum(), inputs, retain_graph=True),
                                torch.autograd.grad(theirs.sum(), inputs, retain_graph=True)):
        torch.testing.assert_close(g_ours, g_theirs, rtol=rtol, atol=atol)


def quality_batch(n=24, c=5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, c, generator=generator, dtype=torch.float64, requires_grad=True)
    score = torch.rand(n, generator=generator, dtype=torch.float64).requires_grad_(True)
    labels = torch.randint(0, c, (n,), generator=generator)
    return pred, labels, score


def test_qfl_labels_outside_the_classes_are_negatives_as_in_mmdetection():
    """quality_focal_loss: positives are 0 <= label < C; the background C, negative labels and
    larger ones all get the zero quality target (before: -1 was clamped to class 0)."""
    pred, labels, score = quality_batch()
    labels[:3], labels[3:6], labels[6:8] = 5, -1, 9
    loss = build(expr="qfocal(beta=2)")
    ours = loss(pred, (labels, score), avg_factor=6.0)
    theirs = weight_reduce_loss(mmdet_quality_focal_loss(pred, labels, score), avg_factor=6.0)
    assert_same_values_and_gradients(ours, theirs, [pred, score])


def test_qfl_labels_of_any_integer_dtype_are_compared_as_integers():
    pred, labels, score = quality_batch()
    labels[:4] = 5  # the background
    loss = build(expr="qfocal(beta=2)")
    expected = loss(pred, (labels, score))
    for dtype in (torch.uint8, torch.int8, torch.int32):
        torch.testing.assert_close(loss(pred, (labels.to(dtype), score)), expected, rtol=0, atol=0)
    signed = labels.clone()
    signed[:4] = -1
    torch.testing.assert_close(loss(pred, (signed.to(torch.int8), score)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("override", [None, "mean", "sum"])
@pytest.mark.parametrize("with_avg_factor", [False, True])
def test_qfl_batchmean_through_the_adapter_is_mmdetections_qfl_over_calls(override, with_avg_factor):
    """mmdetection's mean of QFL averages per-anchor sums (batchmean); with avg_factor it is
    sum / avg_factor, as for every mmdetection loss: one expression serves both calls."""
    loss = build(expr="qfocal(beta=2, reduction=batchmean)", loss_weight=0.5)
    theirs = MMDetQFL(loss_weight=0.5)
    if override == "sum" and with_avg_factor:  # weight_reduce_loss refuses it; so does lossdsl
        pred, labels, score = quality_batch()
        with pytest.raises(AssertionError, match="mmdetection refuses avg_factor with reduction=sum"):
            theirs(pred, (labels, score), avg_factor=4.0, reduction_override="sum")
        with pytest.raises(lossdsl.LossInputError, match="avg_factor replaces the denominator of mean"):
            loss(pred, (labels, score), avg_factor=4.0, reduction_override="sum")
        return
    for seed in range(3):
        pred, labels, score = quality_batch(seed=seed)
        labels[seed::4] = 5
        weight = torch.rand(pred.shape[0], dtype=pred.dtype)
        avg_factor = 4.0 + seed if with_avg_factor else None
        ours = loss(pred, (labels, score), weight=weight, avg_factor=avg_factor, reduction_override=override)
        expected = theirs(pred, (labels, score), weight=weight, avg_factor=avg_factor,
                          reduction_override=override)
        assert_same_values_and_gradients(ours, expected, [pred, score])


def test_qfl_labels_longer_than_pred_are_an_input_error():
    pred, labels, score = quality_batch()
    with pytest.raises(lossdsl.LossInputError) as error:
        build(expr="qfocal()")(pred, (torch.cat([labels, labels]), torch.cat([score, score])))
    assert "labels of shape [48] do not fit pred of shape [24, 5]; expected [24], one per row of pred" \
        in str(error.value)


def test_qfl_labels_of_shape_n_by_1_are_refused_with_the_fix():
    """mmdetection's quality_focal_loss fails on [N, 1] labels too (an IndexError from its [P, 2]
    positive indices): the adapter says how to flatten them rather than guessing."""
    pred, labels, score = quality_batch()
    with pytest.raises(IndexError):
        mmdet_quality_focal_loss(pred, labels[:, None], score)
    loss = build(expr="qfocal()")
    with pytest.raises(lossdsl.LossInputError) as error:
        loss(pred, (labels[:, None], score))
    assert "labels of shape [24, 1] do not fit pred of shape [24, 5]" in str(error.value)
    assert "flatten them: labels.view(-1)" in str(error.value)
    with pytest.raises(lossdsl.LossInputError, match=r"scores of shape \[24, 1\]"):
        loss(pred, (labels, score[:, None]))
    torch.testing.assert_close(loss(pred, (labels[:, None].view(-1), score)), loss(pred, (labels, score)))


def test_qfl_scores_given_first_are_refused_with_the_order():
    pred, labels, score = quality_batch()
    with pytest.raises(lossdsl.LossInputError) as error:
        build(expr="qfocal()")(pred, (score, labels))
    assert "labels must be integer class indices, got torch.float64" in str(error.value)
    assert "the pair is (labels, scores), labels first" in str(error.value)


def dense_ghm_batch(seed, n=40, c=4, integer=False):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, c, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, c + 1, (n,), generator=generator)
    one_hot = F.one_hot(labels, c + 1)[:, :c]
    # label weights [N, C]: 0 leaves an element out, any positive value counts the same
    kept = (torch.rand(n, c, generator=generator) > 0.3).double()
    label_weight = kept * (0.5 + torch.rand(n, c, generator=generator, dtype=torch.float64))
    return pred, one_hot if integer else one_hot.double(), label_weight


@pytest.mark.parametrize("momentum", [0.0, 0.75])
@pytest.mark.parametrize("integer", [False, True], ids=["float-one-hot", "int64-one-hot"])
def test_ghm_with_dense_targets_reads_label_weights_as_mmdetections_ghmc(momentum, integer):
    """GHMC.forward with a target of pred's shape: label_weight > 0 marks the elements that count
    (binned, counted in tot), the weights' values scale nothing. Before: the float one-hot used the
    weights as multipliers and binned the masked elements; the int64 one-hot reported a -100."""
    ours, theirs = build(expr=f"ghm(bins=10, momentum={momentum})"), MMDetGHMC(bins=10, momentum=momentum)
    for seed in range(3):  # the momentum buffer carries over calls
        pred, target, label_weight = dense_ghm_batch(seed, integer=integer)
        value = ours(pred, target, weight=label_weight, avg_factor=123.0)
        expected = theirs(pred, target, label_weight, avg_factor=123.0)
        # mmdetection divides by tot + float32 eps (weight_reduce_loss), lossdsl by tot
        assert_same_values_and_gradients(value, expected, [pred], rtol=1e-6)
    if momentum:
        torch.testing.assert_close(ours.state_dict()["loss.terms.0.ghm_accumulator"], theirs.acc_sum)


def test_ghm_dense_targets_with_label_weights_in_the_issues_example_give_mmdetections_value():
    """Issue 15 item 11: 1.0020 (mmdetection) where the adapter gave 0.7014."""
    pred, target, label_weight = dense_ghm_batch(0)
    value = build(expr="ghm(bins=10)")(pred, target, weight=label_weight)
    expected = MMDetGHMC(bins=10)(pred, target, label_weight)
    plain_weights = build(expr="ghm(bins=10)").loss(pred, target, weight=label_weight)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)
    assert abs(float(plain_weights) - float(expected)) > 1e-3  # the weights as multipliers differ


def focal_reference(pred, labels, override):
    return mmdet_focal_loss_forward(pred, labels, reduction=override or "mean")


def test_a_call_in_another_thread_never_sees_this_calls_reduction_override(monkeypatch):
    """Issue 15 item 12, made deterministic: while a call with reduction_override='none' is inside
    its term, a call without override runs in another thread. Before, the override was set on the
    shared terms and the second call returned the unreduced [N, C] tensor."""
    loss = build(expr="focal()")
    term = loss.loss.terms[0]
    inside, release = threading.Event(), threading.Event()
    real_compute = term.compute

    def compute(inputs):  # the term's own computation, paused in the first thread only
        if threading.current_thread().name == "override-none":
            inside.set()
            release.wait(timeout=60)
        return real_compute(inputs)

    monkeypatch.setattr(term, "compute", compute)
    pred, labels = batch()
    results = {}
    first = threading.Thread(name="override-none", target=lambda: results.setdefault(
        "none", loss(pred, labels, reduction_override="none")))
    first.start()
    try:
        assert inside.wait(timeout=60)
        results["default"] = loss(pred, labels)
    finally:
        release.set()
        first.join(timeout=60)
    torch.testing.assert_close(results["default"], focal_reference(pred, labels, None))
    torch.testing.assert_close(results["none"], focal_reference(pred, labels, "none"))


def test_a_call_inside_a_call_keeps_its_own_reduction(monkeypatch):
    """Re-entrant use: a call without override made while a call with reduction_override='none'
    computes (a hook, a plug-in) is reduced; the outer call stays unreduced."""
    loss = build(expr="focal()")
    term = loss.loss.terms[0]
    real_compute = term.compute
    pred, labels = batch()
    inner = {}

    def compute(inputs):
        if "called" not in inner:
            inner["called"] = True
            inner["value"] = loss(pred, labels)
        return real_compute(inputs)

    monkeypatch.setattr(term, "compute", compute)
    outer = loss(pred, labels, reduction_override="none")
    torch.testing.assert_close(inner["value"], focal_reference(pred, labels, None))
    torch.testing.assert_close(outer, focal_reference(pred, labels, "none"))


def test_concurrent_calls_with_mixed_overrides_each_get_their_own():
    loss = build(expr="focal()")
    pred, labels = batch()
    overrides = [None, "none", "sum", "mean"]
    expected = {override: focal_reference(pred, labels, override).detach() for override in overrides}
    start, wrong = threading.Barrier(len(overrides)), []

    def run(override):
        start.wait(timeout=60)
        for _ in range(25):
            with torch.no_grad():
                value = loss(pred, labels, reduction_override=override)
            if value.shape != expected[override].shape or not torch.allclose(value, expected[override]):
                wrong.append(override)

    threads = [threading.Thread(target=run, args=(override,)) for override in overrides]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert wrong == []
    assert loss(pred, labels).dim() == 0


# -- constructor and call conventions (item 13)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reduction_in_the_config_is_mmdetections_default_reduction(reduction):
    """FocalLoss(reduction=...) in mmdetection: the default of calls without reduction_override."""
    loss = build(expr="focal(gamma=2, alpha=0.25)", reduction=reduction, loss_weight=2.0)
    pred, labels = batch()
    for override in (None, "mean", "sum", "none"):
        ours = loss(pred, labels, reduction_override=override)
        expected = mmdet_focal_loss_forward(pred, labels, reduction=override or reduction, loss_weight=2.0)
        assert_same_values_and_gradients(ours, expected, [pred])
    assert f"reduction={reduction!r}" in repr(loss)


def test_reduction_mean_in_the_config_keeps_the_expressions_own_mean():
    """Most mmdetection configs say reduction='mean'; QFL's mean there is batchmean here."""
    loss = build(expr="qfocal(reduction=batchmean)", reduction="mean")
    pred, labels, score = quality_batch()
    assert_same_values_and_gradients(loss(pred, (labels, score)), MMDetQFL()(pred, (labels, score)), [pred])


def test_a_config_reduction_that_contradicts_the_expressions_is_a_config_error():
    with pytest.raises(lossdsl.LossConfigError) as error:
        build(expr="focal(reduction=sum)", reduction="mean")
    assert "reduction='mean' contradicts the expression, whose reduction is sum: focal(reduction=sum)" \
        in str(error.value)
    assert "leave reduction out of the config" in str(error.value)
    with pytest.raises(lossdsl.LossConfigError, match="reduction='none' contradicts the expression, whose "
                                                      "reduction is batchmean"):
        build(expr="qfocal(reduction=batchmean)", reduction="none")
    with pytest.raises(lossdsl.LossConfigError, match="reduction must be one of none, mean, sum, got 'avg'"):
        build(expr="focal()", reduction="avg")


@pytest.mark.parametrize("loss_weight", ["x", None, True, float("nan"), [1.0]])
def test_a_loss_weight_that_is_not_a_number_is_a_config_error(loss_weight):
    with pytest.raises(lossdsl.LossConfigError) as error:
        MMDetLoss("focal()", loss_weight=loss_weight)
    assert f"loss_weight must be a finite number, got {loss_weight!r}" in str(error.value)


def mmdet_cross_entropy(pred, label, weight=None, reduction="mean", avg_factor=None, ignore_index=-100,
                        avg_non_ignore=False, loss_weight=1.0):
    """cross_entropy_loss.py cross_entropy (CrossEntropyLoss.forward passes its call-time
    ignore_index, or else the constructor's, to it)."""
    loss = F.cross_entropy(pred, label, reduction="none", ignore_index=ignore_index)
    if avg_factor is None and avg_non_ignore and reduction == "mean":
        avg_factor = label.numel() - (label == ignore_index).sum().item()
    if weight is not None:
        weight = weight.float()
    return loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


@pytest.mark.parametrize("avg_non_ignore, expr", [(True, "ce()"), (False, "ce(reduction=batchmean)")])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_a_call_time_ignore_index_is_honoured_as_cross_entropy_loss_does(avg_non_ignore, expr, dtype):
    """CrossEntropyLoss(avg_non_ignore=...) called with ignore_index=255: those positions count for
    nothing (with avg_non_ignore=False mmdetection's mean keeps them in the denominator: batchmean)."""
    generator = torch.Generator().manual_seed(3)
    pred = torch.randn(30, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (30,), generator=generator)
    labels[::4] = 255
    loss = build(expr=expr)
    for override in (None, "sum"):
        ours = loss(pred, labels.to(dtype), ignore_index=255, reduction_override=override)
        theirs = mmdet_cross_entropy(pred, labels, reduction=override or "mean", ignore_index=255,
                                     avg_non_ignore=avg_non_ignore)
        # mmdetection's avg_non_ignore divides by the count + float32 eps (weight_reduce_loss)
        assert_same_values_and_gradients(ours, theirs, [pred], rtol=1e-6)
    with pytest.raises(lossdsl.LossInputError, match="class index 255 is out of range"):
        loss(pred, labels)  # the call's value, for that call only


def test_a_call_time_ignore_index_that_cannot_apply_is_refused_with_why():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    with pytest.raises(lossdsl.LossInputError) as error:
        build(expr="giou()")(boxes, boxes.detach(), ignore_index=255)
    assert "ignore_index=255 was given, but giou() reads no class indices with an ignore value" \
        in str(error.value)
    pred, target, _ = dense_ghm_batch(0)
    with pytest.raises(lossdsl.LossInputError) as error:
        build(expr="focal()")(pred, target, ignore_index=-1)
    assert "ignore_index applies to integer class-index targets, but the target is torch.float64 of shape " \
        "[40, 4]" in str(error.value)
    with pytest.raises(lossdsl.LossInputError, match="ignore_index must be an integer, got 'x'"):
        build(expr="focal()")(*batch(), ignore_index="x")


def test_an_unknown_call_argument_is_refused_not_swallowed():
    with pytest.raises(lossdsl.LossInputError) as error:
        build(expr="focal()")(*batch(), avg_non_ignore=True)
    assert "avg_non_ignore: not an argument of this loss; it takes pred, target, weight, avg_factor, " \
        "reduction_override and ignore_index" in str(error.value)


def test_in_a_sum_only_the_ghm_term_reads_weights_as_a_mask():
    """ghm() + focal(): GHMC's label weights are a mask, FocalLoss's weights multiply (before, a
    gradient-density term dropped the weights and avg_factor of every term of the sum)."""
    pred, labels = batch()
    weight = torch.rand(pred.shape[0], dtype=pred.dtype) * (torch.rand(pred.shape[0]) > 0.3)
    ours = build(expr="ghm(bins=10) + focal()")(pred, labels, weight=weight, avg_factor=5.0)
    theirs = (MMDetGHMC(bins=10)(pred, labels, weight, avg_factor=5.0)
              + mmdet_focal_loss_forward(pred, labels, weight, avg_factor=5.0))
    assert_same_values_and_gradients(ours, theirs, [pred], rtol=1e-6)
