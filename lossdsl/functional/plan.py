"""The steps a term's blocks lower to, shared by the sigmoid and the softmax kernels.

A term such as ``poly(balance(modulate(bce())))`` is compiled into a plan: its base likelihood, then
one step per block from the innermost outwards. Steps hold only hyper-parameters (constant tensors such
as ``alpha``, and the current values of scheduled parameters, live in the term module and are
addressed by a slot), so a plan is hashable and can be passed through ``torch.autograd.Function`` and
``torch.compile`` as a constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class Slot:
    """A parameter that follows a schedule: its current value is the 0-d tensor at ``index`` among
    the constants the kernel is given (evaluated per call from the loss's clock), so the plan stays
    a hashable constant while the value changes."""

    index: int


def resolve(value: float | Slot, constants: tuple[Tensor, ...]) -> float | Tensor:
    """A step's parameter now: the number itself, or its schedule's value (a 0-d tensor)."""
    return constants[value.index] if isinstance(value, Slot) else value


@dataclass(frozen=True)
class ModulateStep:
    gamma_pos: float | Slot
    gamma_neg: float | Slot
    detach: bool


@dataclass(frozen=True)
class PolyStep:
    eps: tuple[float | Slot, ...]


@dataclass(frozen=True)
class BalanceStep:
    slot: int  # index of the alpha tensor among the constants


@dataclass(frozen=True)
class DensityStep:
    bins: int
    momentum: float
    # Sum the bin counts over the process group (when torch.distributed is initialised).
    synchronise: bool = True


@dataclass(frozen=True)
class VarifocalStep:
    """VarifocalNet's weight: ``y`` (or 1) on positives, ``alpha p^gamma`` on negatives."""

    alpha: float
    gamma: float
    iou_weighted: bool


@dataclass(frozen=True)
class SampleWeightStep:
    """A weight per sample computed at call time without gradient (class_balanced's effective-number
    weight of the sample's class), broadcast over its classes. The weights are the last of the
    kernel's constants: a term holds one class_balanced block."""


Step = Union[ModulateStep, PolyStep, BalanceStep, DensityStep, VarifocalStep, SampleWeightStep]


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype a loss is computed in, as torch does: float32 and float64 in their own dtype,
    half precision (float16, bfloat16) in float32."""
    return tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32


def tiny(dtype: torch.dtype) -> float:
    """The smallest normal number of ``dtype``: a probability below it is 0 for every purpose, and
    its logarithm stays finite."""
    return torch.finfo(dtype).tiny
