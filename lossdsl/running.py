"""Running statistics keep their dtype when the module's changes (``.half()``, ``.double()``).

A loss's buffers are running statistics (GHM-C's bin counts, dtp's task indicators) and constants.
``.half()`` would round an average to 3 digits, or overflow a count past 65504 and silently zero the
loss; a checkpoint should not depend on the dtype a model trains in. The buffers still follow the
module to its device.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def apply_keeping_dtype(buffers: dict[str, Tensor | None], fn: Callable[[Tensor], Tensor]) -> None:
    """``nn.Module._apply``'s work on ``buffers``, in place, keeping each buffer's dtype: where ``fn``
    changes the dtype, the original values are moved to the new device instead (converting there
    and back would round them)."""
    for name, buffer in buffers.items():
        if buffer is None:
            continue
        applied = fn(buffer)
        buffers[name] = applied if applied.dtype == buffer.dtype else buffer.to(applied.device)
