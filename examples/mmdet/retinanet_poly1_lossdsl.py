# An mmdetection config fragment: RetinaNet's head with Poly-1 focal loss (Leng et al. 2022), which
# mmdetection does not ship. alpha weights the focal part only, as in the PolyLoss paper's code; the
# head's labels use mmdetection's background label num_classes (an all-negative row).
custom_imports = dict(imports=["lossdsl.integrations.mmengine"], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type="RetinaHead",
        num_classes=80,
        loss_cls=dict(type="LossDSL", expr="poly(focal(gamma=2, alpha=0.25), eps=1)", use_sigmoid=True,
                      loss_weight=1.0),
        loss_bbox=dict(type="LossDSL", expr="l1()", loss_weight=1.0),
    )
)
