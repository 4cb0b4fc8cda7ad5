"""Registers lossdsl in mmengine's ``MODELS`` registry as ``type='LossDSL'``.

mmdetection's registries are children of mmengine's, so an mmdetection config can build it::

    custom_imports = dict(imports=["lossdsl.integrations.mmengine"], allow_failed_imports=False)
    model = dict(bbox_head=dict(loss_cls=dict(type="LossDSL", expr="poly(focal(), eps=1)", loss_weight=1.0)))

The module is ``lossdsl.integrations.mmdet.MMDetLoss`` (mmdetection's calling convention and labels).
Importing it also registers ``SetLossEpochHook`` (``custom_hooks = [dict(type="SetLossEpochHook")]``),
which calls ``set_epoch`` on every lossdsl loss of the model before each training epoch.
"""

from __future__ import annotations

try:
    from mmengine.registry import MODELS
except ImportError as error:  # an optional extra: say how to get it
    raise ImportError(
        "lossdsl.integrations.mmengine needs mmengine: pip install 'lossdsl[mmengine]'"
    ) from error

from .mmdet import MMDetLoss
from .mmengine_hook import SetLossEpochHook  # registers custom_hooks = [dict(type="SetLossEpochHook")]

MODELS.register_module(name="LossDSL", module=MMDetLoss, force=True)

LossDSL = MMDetLoss

__all__ = ["LossDSL", "MODELS", "SetLossEpochHook"]
