"""A schedule's value at the loss's clock, as a 0-d tensor (``lossdsl.catalogue.schedules`` has the
definitions and their plain-Python form, ``value_at``, which this one equals).

Computed on the device from the clock's buffers with the schedule's numbers as constants: changing
values never recompile a ``torch.compile``'d loss, and nothing waits for the device. ``where``
chains pick a step's value exactly (no sums of differences that would round).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..catalogue.schedules import Ramp, ScheduleBase, Steps


def schedule_value(schedule: ScheduleBase, reading: Tensor | None, like: Tensor) -> Tensor:
    """The value of ``schedule`` at the clock ``reading`` (an int64 0-d tensor: the epoch or the
    step; None reads 0), as a 0-d tensor of ``like``'s dtype on its device."""
    if reading is None:
        return torch.full((), schedule.value_at(0), dtype=like.dtype, device=like.device)
    t = reading.to(device=like.device, dtype=like.dtype)
    if isinstance(schedule, Steps):
        value = torch.full((), schedule.values[-1], dtype=like.dtype, device=like.device)
        for point, before in zip(reversed(schedule.at), reversed(schedule.values[:-1])):
            value = torch.where(t < point, before, value)
        return value
    if isinstance(schedule, Ramp):
        first, last = schedule.values
        fraction = ((t - schedule.start) / (schedule.end - schedule.start)).clamp(0, 1)
        if schedule.shape == "cosine":
            fraction = (1 - torch.cos(math.pi * fraction)) / 2
        return first + (last - first) * fraction
    raise TypeError(f"no tensor form for {type(schedule).__name__}")  # a new schedule kind without one


def value_at_clock(schedule: ScheduleBase, clock: Any, like: Tensor) -> Tensor:
    """:func:`schedule_value` at ``clock``'s reading for the schedule's ``over`` (a ``lossdsl.clock.Clock``;
    None reads 0: a term called on its own, a loss without a clock)."""
    return schedule_value(schedule, None if clock is None else clock.reading(schedule.over), like)
