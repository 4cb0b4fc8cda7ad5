"""The clock a loss's schedules follow: the epoch (set by the training loop) and the step (counted).

A loss with a schedule anywhere in it owns one ``Clock`` (``loss.clock``; its tasks and inner losses
read their owner's). Both readings are int64 buffers, so ``state_dict`` carries them and a resumed
run continues where it stopped; the schedules are evaluated from them on the device
(``lossdsl.functional.schedules``). The epoch is also kept on the host, where the loss decides
which terms a zero weight switches off; it is written only by ``set_epoch`` and by loading a
checkpoint, never in a call, so reading it costs no synchronisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Clock(nn.Module):
    """``epoch``: set with ``loss.set_epoch(e)``; ``step``: the loss's training-mode calls so far."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("epoch", torch.zeros((), dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.host_epoch = 0

    # Both readings are replaced by new tensors rather than written in place: under torch.compile a
    # buffer written in place may be read back, already moved on, by the backward pass of the call
    # that moved it (torch saves the buffer rather than the schedule value it computed).

    def set_epoch(self, epoch: int) -> None:
        self.epoch = torch.full_like(self.epoch, epoch)
        self.host_epoch = epoch

    def advance(self) -> None:
        """One more training step (called once a training-mode call has succeeded)."""
        self.step = self.step + 1

    def reading(self, over: str) -> Tensor:
        return self.epoch if over == "epoch" else self.step

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.host_epoch = int(self.epoch)  # one read, when a checkpoint is loaded

    def extra_repr(self) -> str:
        return f"epoch={self.host_epoch}"
