"""Running-state updates of one call, committed together once the whole call has succeeded.

A loss call may update several running buffers (GHM-C's bin counts in two terms, a task's KPI
average, class counts): if the third term's computation fails (a plug-in raises, an input check that
needs a computed value), none of them may have moved (SPEC 6). Terms therefore *stage* their new
values here while they compute, and the outermost module that owns the call commits them at its
very end, in one place. Committing copies in place, so the buffers keep their identity (optimizers,
DDP and hooks that hold them see the update) and their dtype. State that is not a tensor (which
observed indicators a step has used) is changed by an action deferred to the same commit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class StateUpdates:
    """New values for running buffers, staged during a call and copied in by ``commit``."""

    def __init__(self) -> None:
        self._staged: list[tuple[Tensor, Tensor]] = []
        self._deferred: list[Callable[[], None]] = []
        self._sized: list[tuple[nn.Module, str, Tensor]] = []

    def stage(self, buffer: Tensor, value: Tensor) -> None:
        """Remember that ``buffer`` takes ``value`` (detached) when the call succeeds. A buffer
        staged twice in one call takes the later value."""
        self._staged.append((buffer, value.detach()))

    def stage_sized(self, module: nn.Module, name: str, value: Tensor) -> None:
        """Remember that ``module``'s buffer ``name`` takes ``value``, and its shape when the two
        differ: class statistics are empty until the first call tells how many classes there are.
        A buffer is only ever replaced while it is empty; after that it is copied into as any."""
        self._sized.append((module, name, value.detach()))

    def defer(self, action: Callable[[], None]) -> None:
        """Run ``action`` at the commit, after the buffers are copied (for state kept in Python
        objects)."""
        self._deferred.append(action)

    def commit(self) -> None:
        """Copy every staged value into its buffer (in staging order), run the deferred actions,
        then forget them."""
        with torch.no_grad():
            for buffer, value in self._staged:
                buffer.copy_(value)
            for module, name, value in self._sized:
                buffer = module._buffers[name]
                if buffer.shape == value.shape:
                    buffer.copy_(value)
                else:
                    module._buffers[name] = value.to(buffer.dtype).clone()
        for action in self._deferred:
            action()
        self.discard()

    def discard(self) -> None:
        self._staged.clear()
        self._sized.clear()
        self._deferred.clear()

    def __len__(self) -> int:
        return len(self._staged) + len(self._sized)
