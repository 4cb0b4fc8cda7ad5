"""Whether torch.compile is tracing, and whether a tensor holds values at all: host-side work (value
checks, dynamic shapes) steps aside for both."""

from __future__ import annotations

import torch
from torch import Tensor


def is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())  # torch < 2.3


def holds_no_data(tensor: Tensor) -> bool:
    """Meta and fake tensors (shape inference, torch.compile's tracing) carry shapes but no values."""
    if tensor.device.type == "meta":
        return True
    fake = getattr(getattr(torch, "_subclasses", None), "fake_tensor", None)
    return fake is not None and isinstance(tensor, fake.FakeTensor)
