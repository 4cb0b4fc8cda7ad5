"""lossdsl: declare imbalance-aware PyTorch losses as short expressions or YAML.

    >>> import lossdsl, torch
    >>> loss = lossdsl.compile("0.7 * ce(smoothing=0.1) + 0.3 * bce()")
    >>> loss
    lossdsl.compile('0.7 * ce(smoothing=0.1) + 0.3 * bce()')
"""

from .api import compile, json_schema, load, parse
from .arguments import argtype
from .catalogue import CATALOGUE, LossNode, register
from .errors import (
    LossConfigError,
    LossDSLError,
    LossInputError,
    LossSpecError,
    LossSyntaxError,
)
from .module import CompiledLoss
from .spec import LossSpec, Term

__version__ = "0.1.0"


def __getattr__(name: str):
    # lossdsl.plot needs matplotlib (an optional extra): imported when first used.
    if name == "plot":
        from .plotting import plot

        return plot
    raise AttributeError(f"module 'lossdsl' has no attribute {name!r}")


__all__ = [
    "CATALOGUE",
    "CompiledLoss",
    "LossConfigError",
    "LossDSLError",
    "LossInputError",
    "LossNode",
    "LossSpec",
    "LossSpecError",
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
