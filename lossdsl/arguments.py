"""A loss as a command-line argument: ``parser.add_argument("--loss", type=lossdsl.argtype)``.

argparse prints the message of an ``argparse.ArgumentTypeError`` as it is, so a mistyped loss shows
lossdsl's own message (position, source line with a caret, suggestion) instead of argparse's
"invalid argtype value".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import LossDSLError
from .spec import LossSpec


def argtype(text: str) -> LossSpec:
    """The validated spec of an expression (``"focal(gamma=2)"``) or of a loss file (a path as
    ``lossdsl.compile`` reads one). Compile it with ``lossdsl.compile(args.loss)``.

        >>> parser = argparse.ArgumentParser(prog="train")
        >>> _ = parser.add_argument("--loss", type=argtype, default="focal()")
        >>> parser.parse_args(["--loss", "focal(gamma=3)"]).loss.to_expr()
        'focal(gamma=3)'

    Raises ``argparse.ArgumentTypeError`` with lossdsl's message (argparse turns it into
    ``train: error: argument --loss: 1:7: focal() has no parameter 'gama'`` and the caret lines).
    """
    from .api import is_path_string, load, parse

    try:
        return load(Path(text.strip())) if is_path_string(text) else parse(text)
    except LossDSLError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# argparse names the type in its messages by __name__: "invalid argtype value" would be the fallback.
argtype.__name__ = "loss"

__all__ = ["argtype"]
