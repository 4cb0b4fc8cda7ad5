"""Telling every lossdsl loss in a model which epoch it is: what the framework callbacks call.

A loss with epoch schedules follows ``loss.set_epoch(e)``; the Lightning callback
(``lossdsl.integrations.lightning``) and the mmengine hook (``lossdsl.integrations.mmengine_hook``)
call it at the start of each training epoch for every lossdsl loss registered in the model, so the
training loop need not remember. A loss that is not a submodule of the model (kept in a plain list
or dict) is not found: make it an attribute of the model.
"""

from __future__ import annotations

from torch import nn

from ..module import LossModule


def set_loss_epochs(model: nn.Module, epoch: int) -> int:
    """``set_epoch(epoch)`` on every lossdsl loss in ``model`` (itself included); how many."""
    losses = [module for module in model.modules() if isinstance(module, LossModule)]
    for loss in losses:
        loss.set_epoch(epoch)
    return len(losses)
