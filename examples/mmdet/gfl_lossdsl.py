# An mmdetection config fragment: GFL's head (Li et al. 2020) with its three losses declared by lossdsl.
# Merge it into a full config (for example with _base_ = 'gfl/gfl_r50_fpn_1x_coco.py' from mmdetection's
# configs); custom_imports registers type='LossDSL' in mmengine's MODELS, whose children mmdetection's
# registries are. The head calls each loss with mmdetection's convention: QFL with (labels, scores) and
# the background label num_classes, weights per anchor, avg_factor.
custom_imports = dict(imports=["lossdsl.integrations.mmengine"], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type="GFLHead",
        num_classes=80,
        reg_max=16,
        # mmdetection's QualityFocalLoss(use_sigmoid=True, beta=2.0, loss_weight=1.0)
        loss_cls=dict(type="LossDSL", expr="qfocal(beta=2)", use_sigmoid=True, loss_weight=1.0),
        # DistributionFocalLoss(loss_weight=0.25)
        loss_dfl=dict(type="LossDSL", expr="dfl()", loss_weight=0.25),
        # GIoULoss(loss_weight=2.0)
        loss_bbox=dict(type="LossDSL", expr="giou()", loss_weight=2.0),
    )
)
