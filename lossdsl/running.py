"""Running statistics (GHM-C's bin counts, dtp's task indicators): kept in their own dtype, and
checked when a checkpoint brings them.

A loss's buffers are running statistics and constants. ``.half()`` would round an average to 3 digits,
or overflow a count past 65504 and silently zero the loss; a checkpoint should not depend on the dtype
a model trains in. So the buffers keep their dtype when the module's changes (they still follow the
module to its device), and a loaded value is converted to the buffer's dtype: ``load_state_dict(...,
assign=True)`` would otherwise put a half-precision checkpoint's float16 tensors in their place.

A loaded value is also checked, before the loss loads anything: the buffer's shape, finite, inside
the statistic's range (counts >= 0, an average of indicators in [0, 1], flags 0 or 1). A damaged
checkpoint is refused by name instead of poisoning every later step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import LossInputError
from .functional.tracing import holds_no_data


@dataclass(frozen=True)
class Bounds:
    """The values a running statistic may hold: finite, ``low <= value <= high``."""

    what: str  # what the statistic is, for messages ("GHM-C's running bin counts")
    low: float = 0.0
    high: float = math.inf


# What a term's running buffers are unless the term says otherwise: counts, or sums of weights.
COUNTS = Bounds("running counts")


def apply_keeping_dtype(buffers: dict[str, Tensor | None], fn: Callable[[Tensor], Tensor]) -> None:
    """``nn.Module._apply``'s work on ``buffers``, in place, keeping each buffer's dtype: where ``fn``
    changes the dtype, the original values are moved to the new device instead (converting there
    and back would round them)."""
    for name, buffer in buffers.items():
        if buffer is None:
            continue
        applied = fn(buffer)
        buffers[name] = applied if applied.dtype == buffer.dtype else buffer.to(applied.device)


def loaded_value_problem(value: Any, buffer: Tensor, bounds: Bounds,
                         sized_by_first_call: bool = False) -> str | None:
    """What is wrong with ``value`` as the new content of ``buffer``, or None. A value that is no
    tensor is left to torch, which reports it; meta and fake tensors hold no values to look at.
    A statistic ``sized_by_first_call`` (one value per class, empty until the first training call)
    takes a vector of any length while either side is still empty."""
    if not isinstance(value, Tensor):
        return None
    # torch itself loads a [1] tensor into a 0-d one (checkpoints of torch 0.3).
    legacy_scalar = buffer.dim() == 0 and tuple(value.shape) == (1,)
    resized = (sized_by_first_call and value.dim() == buffer.dim() == 1
               and 0 in (value.numel(), buffer.numel()))
    if value.shape != buffer.shape and not (legacy_scalar or resized):
        return f"has shape {list(value.shape)}; this loss's has shape {list(buffer.shape)}"
    if value.is_complex():
        return f"is a {value.dtype} tensor; expected real numbers"
    if holds_no_data(value) or value.numel() == 0 or value.dtype == torch.bool:
        return None
    values = value.detach().to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        return "holds NaN or inf"
    if buffer.dtype == torch.bool:
        if not bool(((values == 0) | (values == 1)).all()):
            return "must hold 0 or 1 (a flag)"
        return None
    low, high = torch.stack(torch.aminmax(values)).tolist()  # one host read for both
    if low < bounds.low or high > bounds.high:
        found = f"{low:g}" if low == high else f"values from {low:g} to {high:g}"
        allowed = (f"be >= {bounds.low:g}" if math.isinf(bounds.high)
                   else f"lie in [{bounds.low:g}, {bounds.high:g}]")
        return f"must {allowed}; found {found}"
    return None


class RunningStatistics(nn.Module):
    """An ``nn.Module`` whose persistent buffers are running statistics: they keep their dtype
    (``.half()``, ``load_state_dict(..., assign=True)``) and a loaded value is refused by name when
    it has the wrong shape, is not finite or lies outside ``statistic_bounds(name)``.

    ``check_loaded`` is also what a compiled loss calls on every such module beneath it before it
    loads anything (``lossdsl.module.LossModule``), so a damaged entry leaves the loss as it was."""

    # Statistics with one value per class, empty until the first training call sizes them (class
    # counts): a checkpoint may bring them at any length, or empty.
    sized_by_first_call: tuple[str, ...] = ()

    def statistic_bounds(self, name: str) -> Bounds:
        return COUNTS

    def running_statistics(self) -> dict[str, Tensor]:
        """The buffers saved in ``state_dict`` (constants are registered non-persistent)."""
        return {name: buffer for name, buffer in self._buffers.items()
                if buffer is not None and name not in self._non_persistent_buffers_set}

    def check_loaded(self, state_dict: Mapping[str, Any], prefix: str) -> None:
        for name, buffer in self.running_statistics().items():
            key = prefix + name
            if key not in state_dict:
                continue  # a missing key is torch's to report (or to accept with strict=False)
            bounds = self.statistic_bounds(name)
            problem = loaded_value_problem(state_dict[key], buffer, bounds, name in self.sized_by_first_call)
            if problem is not None:
                raise LossInputError(
                    f"state_dict entry {key!r} ({bounds.what}) {problem}; nothing was loaded",
                    hint="the checkpoint is damaged or comes from another loss; to start this "
                    f"statistic afresh, delete state_dict[{key!r}] and load with strict=False",
                )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> RunningStatistics:
        # No parameters here, only constants and running statistics: they follow the device but
        # keep their dtype.
        apply_keeping_dtype(self._buffers, fn)
        if recurse:
            for child in self.children():
                child._apply(fn, recurse)
        return self

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        self.check_loaded(state_dict, prefix)  # again, for a module loaded on its own
        for name, buffer in self.running_statistics().items():
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.dtype != buffer.dtype:
                # torch copies state_dict before loading: this replaces the entry of its copy only.
                state_dict[prefix + name] = value.detach().to(buffer.dtype)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def check_loaded_statistics(root: nn.Module, state_dict: Mapping[str, Any], prefix: str) -> None:
    """``check_loaded`` of every module with running statistics beneath ``root`` (itself included),
    whose entries sit under ``prefix`` in ``state_dict``."""
    for path, module in root.named_modules():
        if isinstance(module, RunningStatistics):
            module.check_loaded(state_dict, prefix + (path + "." if path else ""))
