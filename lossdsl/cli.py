"""The ``lossdsl`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .errors import LossDSLError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lossdsl", description="Declare, inspect and check lossdsl loss expressions."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    compile_ = commands.add_parser(
        "compile", help="validate an expression or file and show what it means",
        description="Validate a loss and print its tree: terms, weights, reductions, parameters.",
    )
    compile_.add_argument("source", help="an expression such as 'focal(gamma=2)', or a YAML/JSON file")
    compile_.add_argument("--key", help="dotted key of the loss inside the file, e.g. model.loss")
    compile_.add_argument("--expand", action="store_true", help="rewrite named losses into primitive blocks")
    return parser


def _load_source(source: str, key: str | None):
    from pathlib import Path

    from .api import load, parse

    # A name ending in .yaml/.yml/.json is a file even when missing: the error says it cannot be read.
    if Path(source).is_file() or source.endswith((".yaml", ".yml", ".json")):
        return load(Path(source), key=key)
    if key:
        raise LossDSLError("--key applies to files; SOURCE is not a file")
    return parse(source)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "compile":
            from .describe import spec_tree

            spec = _load_source(args.source, args.key)
            print(spec_tree(spec, expand=args.expand))
            return 0
    except LossDSLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
