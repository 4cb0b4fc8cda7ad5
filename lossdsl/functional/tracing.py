"""Whether torch.compile is tracing: host-side work (value checks, dynamic shapes) steps aside."""

from __future__ import annotations

import torch


def is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())  # torch < 2.3
