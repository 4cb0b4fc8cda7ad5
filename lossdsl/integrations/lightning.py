"""A Lightning callback that moves the epoch of every lossdsl loss in the LightningModule.

    import lightning.pytorch as pl
    from lossdsl.integrations.lightning import SetLossEpoch

    trainer = pl.Trainer(max_epochs=200, callbacks=[SetLossEpoch()])

At the start of each training epoch it calls ``loss.set_epoch(trainer.current_epoch)`` for every
lossdsl loss that is a submodule of the LightningModule; the losses' clocks are in its
``state_dict``, so a run resumed from a checkpoint continues where it stopped
(``pip install 'lossdsl[lightning]'``; ``pytorch_lightning`` works too).
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as error:  # an optional extra: say how to get it
        raise ImportError(
            "lossdsl.integrations.lightning needs Lightning: pip install 'lossdsl[lightning]'"
        ) from error

from .epochs import set_loss_epochs


class SetLossEpoch(Callback):
    """``set_epoch(trainer.current_epoch)`` on every lossdsl loss of the module, each epoch."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        set_loss_epochs(pl_module, trainer.current_epoch)


__all__ = ["SetLossEpoch"]
