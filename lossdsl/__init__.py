"""lossdsl: declare imbalance-aware PyTorch losses as short expressions or YAML.

    >>> import lossdsl, torch
    >>> loss = lossdsl.compile("0.7 * ce(smoothing=0.1) + 0.3 * bce()")
    >>> loss
    lossdsl.compile('0.7 * ce(smoothing=0.1) + 0.3 * bce()')
"""

from .api import compile, json_schema, load, parse
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
from .module import CompiledLoss
from .spec import LossSpec, Term

__version__ = "0.1.0"

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
    "compile",
    "json_schema",
    "load",
    "parse",
    "register",
]
