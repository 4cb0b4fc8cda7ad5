"""lossdsl: declare imbalance-aware PyTorch losses as short expressions or YAML.

    >>> import lossdsl, torch
    >>> loss = lossdsl.compile("0.7 * ce(smoothing=0.1) + 0.3 * bce()")
    >>> loss
    lossdsl.compile('0.7 * ce(smoothing=0.1) + 0.3 * bce()')
"""

from .api import compile, json_schema, load, parse
from .arguments import argtype
from .catalogue import CATALOGUE, LossNode, register
from .catalogue.plugins import ElementLoss
from .catalogue.region import RegionLoss
from .errors import (
    LossConfigError,
    LossDSLError,
    LossInputError,
    LossSpecError,
    LossSyntaxError,
)
from .spec import LossSpec, Term

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported when first used: torch only when a loss is compiled (CompiledLoss, compile()), so
    # parse, load and `lossdsl check` run without it; lossdsl.plot needs matplotlib (an optional
    # extra); lossdsl.diff (compare) and lossdsl.bench (bench) are tools rather than the loss itself.
    if name == "CompiledLoss":
        from .module import CompiledLoss

        return CompiledLoss
    if name == "plot":
        from .plotting import plot

        return plot
    if name in ("diff", "bench"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lossdsl' has no attribute {name!r}")


__all__ = [
    "CATALOGUE",
    "CompiledLoss",
    "ElementLoss",
    "LossConfigError",
    "LossDSLError",
    "LossInputError",
    "LossNode",
    "LossSpec",
    "LossSpecError",
    "RegionLoss",
    "LossSyntaxError",
    "Term",
    "argtype",
    "compile",
    "json_schema",
    "load",
    "parse",
    "plot",
    "register",
]
