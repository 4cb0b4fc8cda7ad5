"""The ``lossdsl`` command line: compile, check, schema, list, explain, plot.

User errors print the message (with its caret) and exit 1, never a traceback. Colour is used only
when the stream is a terminal and NO_COLOR is not set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LossConfigError, LossDSLError

FORMATS = ("tree", "expr", "yaml", "json")
_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def _colour(text: str, code: str, stream: Any) -> str:
    if os.environ.get("NO_COLOR") or not getattr(stream, "isatty", lambda: False)():
        return text
    return f"\033[{code}m{text}\033[0m"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lossdsl",
        description="Declare, inspect and check imbalance-aware PyTorch losses.",
        epilog="Run 'lossdsl COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    compile_ = commands.add_parser(
        "compile", help="validate an expression or file and show what it means",
        description="Validate a loss and print it: as a tree (terms, weights, reductions, heads, every "
        "parameter, and the learnable parameters and running buffers of the module), or as an "
        "expression, YAML or JSON that loads back to the same spec.",
    )
    compile_.add_argument("source", help="an expression such as 'focal(gamma=2)', or a YAML/JSON file")
    compile_.add_argument("--key", help="dotted key of the loss inside the file, e.g. model.loss")
    compile_.add_argument("--expand", action="store_true", help="rewrite named losses into primitive blocks")
    compile_.add_argument("--format", choices=FORMATS, default="tree", help="output form (default: tree)")

    check = commands.add_parser(
        "check", help="validate experiment files (exit 1 on any problem)",
        description="Validate the loss in each file. Prints FILE:LINE:COLUMN: message per problem "
        "and exits 1 if there is any, 0 otherwise. Without --key the loss is the whole document, or "
        "the first key named 'loss' (searched breadth-first).",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--key", help="dotted key of the loss inside every file, e.g. model.loss")

    schema = commands.add_parser(
        "schema", help="print the JSON Schema of the YAML form (for editors)",
        description="Print the JSON Schema (draft 7) of a loss in YAML/JSON. With --key, of a "
        "document holding the loss under that key. Save it and point yaml-language-server at it.",
    )
    schema.add_argument("--key", help="dotted key of the loss in the documents, e.g. model.loss")

    commands.add_parser("list", help="every catalogue name with a one-line description",
                        description="List every loss and block the language knows.")

    explain = commands.add_parser(
        "explain", help="formula, parameters, expansion and paper of one name",
        description="Explain one catalogue name: its formula, parameters with defaults and ranges, "
        "what it expands to, and the paper it comes from.",
    )
    explain.add_argument("name")

    plot = commands.add_parser(
        "plot", help="plot loss and gradient against p_t (needs matplotlib)",
        description="Plot each loss and the magnitude of its gradient against p_t, for positive and "
        "negative targets: one curve per expression, or per swept parameter value.",
    )
    plot.add_argument("expressions", nargs="+", metavar="EXPR")
    plot.add_argument("--out", required=True, help="the PNG file to write")
    plot.add_argument("--sweep", metavar="PARAM=START:STOP:COUNT",
                      help="draw one curve per value of a parameter, e.g. gamma_neg=0:4:5")
    return parser


def _is_file_argument(source: str) -> bool:
    # A name ending in .yaml/.yml/.json is a file even when missing: the error says it cannot be read.
    # So is any other path that exists and is no directory (a device such as /dev/zero included: the
    # error then says why it is no config, rather than that '/' cannot start an expression).
    return source.endswith(_FILE_SUFFIXES) or _is_file(Path(source))


def _is_file(path: Path) -> bool:
    try:
        return path.exists() and not path.is_dir()
    except OSError:  # a long expression is no file name: stat() raised ENAMETOOLONG (a traceback)
        return False


def _find_loss_key(root, path: Path) -> str | None:
    """The key of the loss in an experiment file: None for a whole-file loss, else the first key
    named 'loss', searched breadth-first."""
    if not root.is_mapping() or {"kind", "terms", "expr", "tasks"} & set(root.value):
        return None
    queue = [("", root)]
    while queue:
        prefix, item = queue.pop(0)
        if not item.is_mapping():
            continue
        for key, child in item.value.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if key == "loss":
                return dotted
            queue.append((dotted, child))
    # The filename is rendered by the error itself (and by `check` as FILE:LINE:COLUMN); repeating it
    # in the reason printed it twice.
    raise LossConfigError("no key named 'loss' found; give --key", filename=str(path))


def _load_file(path: Path, key: str | None):
    """The loss in a YAML/JSON file, read once through lossdsl's loader (size and alias limits),
    then, for a Hydra file, with the interpolations of the loss resolved by OmegaConf."""
    from .api import load
    from .yaml_io import located_yaml, read_config_file

    text = read_config_file(path)
    root = located_yaml(text, str(path))
    if key is None:
        key = _find_loss_key(root, path)
    if "${" in text and _has_omegaconf():
        from .interpolation import resolve_interpolations

        root = resolve_interpolations(root, key)
    return load(root, key=key)


def _has_omegaconf() -> bool:
    # Without OmegaConf, "${" is plain text: the YAML is read as it is.
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True


def _load(source: str, key: str | None):
    from .api import parse

    if _is_file_argument(source):
        return _load_file(Path(source), key)
    if key:
        raise LossConfigError("--key applies to files; SOURCE is not a file")
    return parse(source)


def _print_spec(spec, fmt: str, expand: bool) -> None:
    from .describe import spec_tree

    if expand:
        spec = spec.expand()
    if fmt == "tree":
        print(spec_tree(spec))
    elif fmt == "expr":
        print(spec.to_expr())
    elif fmt == "yaml":
        print(spec.to_yaml(), end="")
    else:
        print(json.dumps(spec.to_dict(), indent=2))


def _check(files: list[str], key: str | None) -> int:
    problems = 0
    for name in files:
        try:
            _load_file(Path(name), key)
        except LossDSLError as error:
            problems += 1
            line, column = error.line or 1, error.column or 1
            reason = error.reason + (f" ({error.hint})" if error.hint else "")
            where = error.filename or name
            print(f"{where}:{line}:{column}: {reason}")
    if problems == 0:
        print(f"{len(files)} file{'s' if len(files) != 1 else ''} OK")
    return 1 if problems else 0


def _plot(expressions: list[str], out: str, sweep: str | None) -> int:
    from .api import parse
    from .plotting import draw, loss_curves, sweep_values, with_parameter

    curves = []
    for expression in expressions:
        spec = parse(expression)
        if sweep:
            name, values = sweep_values(sweep)
            for value in values:
                variant = with_parameter(spec, name, value)
                label = f"{variant.to_expr()}" if len(expressions) > 1 else f"{name}={value:g}"
                curves.append(loss_curves(variant, label))
        else:
            curves.append(loss_curves(spec, spec.to_expr()))
    title = expressions[0] + (f"  (sweep {sweep})" if sweep else "") if len(expressions) == 1 else None
    draw(curves, out, title)
    print(f"wrote {out} ({len(curves)} curve{'s' if len(curves) != 1 else ''})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "compile":
            _print_spec(_load(args.source, args.key), args.format, args.expand)
            return 0
        if args.command == "check":
            return _check(args.files, args.key)
        if args.command == "schema":
            from .schema import loss_json_schema

            print(json.dumps(loss_json_schema(args.key), indent=2))
            return 0
        if args.command == "list":
            from .describe import catalogue_listing

            print(catalogue_listing())
            return 0
        if args.command == "explain":
            from .describe import explain

            print(explain(args.name))
            return 0
        if args.command == "plot":
            return _plot(args.expressions, args.out, args.sweep)
    except LossDSLError as error:
        print(f"{_colour('error:', '31;1', sys.stderr)} {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `lossdsl schema | head`
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
