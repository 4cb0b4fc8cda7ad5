"""An mmengine hook that moves the epoch of every lossdsl loss in the model, registered in
mmengine's ``HOOKS`` as ``SetLossEpochHook``:

    custom_imports = dict(imports=["lossdsl.integrations.mmengine"], allow_failed_imports=False)
    custom_hooks = [dict(type="SetLossEpochHook")]

Before each training epoch it calls ``loss.set_epoch(runner.epoch)`` for every lossdsl loss in
``runner.model`` (a DDP wrapper's module included), ``type='LossDSL'`` losses of an mmdetection head
too; the clocks are in the model's ``state_dict``, so a resumed run continues where it stopped.
"""

from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .epochs import set_loss_epochs


@HOOKS.register_module(force=True)
class SetLossEpochHook(Hook):
    """``set_epoch(runner.epoch)`` on every lossdsl loss of the model, before each training epoch."""

    priority = "NORMAL"

    def before_train_epoch(self, runner: Any) -> None:
        set_loss_epochs(runner.model, runner.epoch)


__all__ = ["SetLossEpochHook"]
