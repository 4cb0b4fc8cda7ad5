"""The ``lossdsl`` command line: compile, check, schema, list, explain, plot, diff, bench.

User errors print the message (with its caret) and exit 1, never a traceback. Colour is used only
when the stream is a terminal and NO_COLOR is not set. The work is done by the library (describe,
validate, plotting, diff, bench); this module reads the arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LossConfigError, LossDSLError, offset_locator

FORMATS = ("tree", "expr", "yaml", "json")
REPORT_FORMATS = ("text", "json")
_FILE_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"
STDIN_NAME = "<stdin>"
CHECK_FORMAT = "lossdsl.check/1"


def _colour(text: str, code: str, stream: Any) -> str:
    if os.environ.get("NO_COLOR") or not getattr(stream, "isatty", lambda: False)():
        return text
    return f"\033[{code}m{text}\033[0m"


def _version() -> str:
    from . import __version__

    return f"lossdsl {__version__}"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lossdsl",
        description="Declare, inspect and check imbalance-aware PyTorch losses.",
        epilog="Run 'lossdsl COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    compile_ = commands.add_parser(
        "compile", help="validate an expression or file and show what it means",
        description="Validate a loss and print it: as a tree (terms, weights, reductions, heads, every "
        "parameter, and the learnable parameters and running buffers of the module), as an "
        "expression or YAML that loads back to the same spec, or as a JSON document of the tree "
        "(its 'loss' member loads back).",
    )
    compile_.add_argument("source", help="an expression such as 'focal(gamma=2)', a YAML/JSON file, "
                          "or - to read either from stdin")
    compile_.add_argument("--key", help="dotted key of the loss inside the file, e.g. model.loss")
    compile_.add_argument("--expand", action="store_true", help="rewrite named losses into primitive blocks")
    compile_.add_argument("--format", choices=FORMATS, default="tree", help="output form (default: tree)")

    check = commands.add_parser(
        "check", help="validate experiment files or expressions (exit 1 on any problem)",
        description="Validate the loss in each file (or expression) and report every problem found: "
        "one FILE:LINE:COLUMN: message line each, or a JSON document. Exits 1 if there is any "
        "problem, 0 otherwise. Without --key the loss is the whole document, or the first key named "
        "'loss' (searched breadth-first). FILE - reads stdin as a file. Interpolations that reach "
        "outside the file (${oc.env:...}, resolvers) are never resolved: a value holding one is "
        "reported as one that cannot be checked.",
    )
    check.add_argument("files", nargs="+", metavar="FILE",
                       help="a YAML/JSON file, an expression such as 'focal(gamma=2)', or - for stdin")
    check.add_argument("--key", help="dotted key of the loss inside every file, e.g. model.loss")
    check.add_argument("--format", choices=REPORT_FORMATS, default="text", help="output form (default: text)")

    schema = commands.add_parser(
        "schema", help="print the JSON Schema of the YAML form (for editors)",
        description="Print the JSON Schema (draft 7) of a loss in YAML/JSON. With --key, of a "
        "document holding the loss under that key. Save it and point yaml-language-server at it.",
    )
    schema.add_argument("--key", help="dotted key of the loss in the documents, e.g. model.loss")

    listing = commands.add_parser(
        "list", help="every catalogue name with a one-line description",
        description="List every loss and block the language knows; --params adds each parameter "
        "with its default and meaning.",
    )
    listing.add_argument("--params", action="store_true", help="each parameter, its default and meaning")
    listing.add_argument("--format", choices=("text", "json"), default="text",
                         help="text, or a JSON document (format lossdsl.list/1)")

    explain = commands.add_parser(
        "explain", help="formula, parameters, expansion and paper of one name",
        description="Explain one catalogue name: usage, formula, parameters with defaults, ranges and "
        "meaning, accepted targets, what it expands to, the paper, and the same loss elsewhere.",
    )
    explain.add_argument("name")
    explain.add_argument("--format", choices=("text", "json"), default="text",
                         help="text, or a JSON document (format lossdsl.explain/1)")

    plot = commands.add_parser(
        "plot", help="plot loss and gradient against p_t (needs matplotlib)",
        description="Plot each loss and its gradient against p_t, for positive and negative targets: "
        "one curve per expression, or per swept parameter value. Region losses (dice, tversky, ...) "
        "are drawn against the predicted foreground fraction of a fixed mask instead.",
    )
    plot.add_argument("expressions", nargs="+", metavar="EXPR")
    plot.add_argument("--out", required=True, help="the image file to write (PNG unless the suffix says)")
    plot.add_argument("--sweep", metavar="PARAM=START:STOP:COUNT",
                      help="draw one curve per value of a parameter, e.g. gamma_neg=0:4:5")
    plot.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    plot.add_argument("--signed", action="store_true",
                      help="draw d loss / d z_t with its sign (z_t the target's logit) instead of its size")
    plot.add_argument("--classes", type=int, metavar="C",
                      help="class count a softmax loss is drawn with (default: its per-class lists, else 10)")

    diff = commands.add_parser(
        "diff", help="whether two losses are the same, and what differs",
        description="Compare two losses (expressions or files): as written, after expanding named "
        "losses, and numerically (value and gradient on the same random inputs). Prints which "
        "term and parameter differ. Exits 0 when they are the same loss, 1 when they differ.",
    )
    diff.add_argument("first", metavar="A", help="an expression or a YAML/JSON file (- for stdin)")
    diff.add_argument("second", metavar="B", help="an expression or a YAML/JSON file (- for stdin)")
    diff.add_argument("--key", help="dotted key of the loss inside the file(s), e.g. model.loss")
    diff.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance (default 1e-6, float64)")
    diff.add_argument("--atol", type=float, default=1e-9, help="absolute tolerance (default 1e-9)")
    diff.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    diff.add_argument("--format", choices=REPORT_FORMATS, default="text", help="output form (default: text)")

    bench = commands.add_parser(
        "bench", help="time and peak memory of a loss against the fused torch floor",
        description="Time forward+backward of a loss and measure its peak memory, against the "
        "cheapest torch loss on the same input (F.binary_cross_entropy_with_logits for sigmoid "
        "losses, F.cross_entropy for softmax ones, ...), and print the ratios.",
    )
    bench.add_argument("expression", metavar="EXPR")
    bench.add_argument("--shape", metavar="N,C,...", help="logits shape (default depends on the loss, "
                       "e.g. 4096,80 for a sigmoid loss, 8,4,64,64 for a region loss)")
    bench.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    bench.add_argument("--compile", action="store_true",
                       help="time torch.compile(loss) (the floor stays eager)")
    bench.add_argument("--repeat", type=int, default=20, metavar="K", help="timed runs of each (default 20)")
    bench.add_argument("--format", choices=REPORT_FORMATS, default="text", help="output form (default: text)")
    return parser


# -- where a loss comes from ----------------------------------------------------------------------


def _is_file_argument(source: str) -> bool:
    # A name ending in .yaml/.yml/.json is a file even when missing: the error says it cannot be read.
    # So is a path with a folder and no call in it (no expression lacks a call), and any other path
    # that exists and is no directory (a device such as /dev/zero included: the error then says why
    # it is no config, rather than that '/' cannot start an expression).
    if source.endswith(_FILE_SUFFIXES) or ("/" in source or os.sep in source) and "(" not in source:
        return True
    return _is_file(Path(source))


def _is_file(path: Path) -> bool:
    try:
        return path.exists() and not path.is_dir()
    except OSError:  # a long expression is no file name: stat() raised ENAMETOOLONG (a traceback)
        return False


@dataclass
class _Source:
    """A loss to validate, located: ``item`` at ``path`` in the text of ``name``."""

    name: str | None  # the file, STDIN_NAME, or None for an expression argument
    item: Any = None
    path: str = ""
    key: str | None = None
    problems: list[LossDSLError] = field(default_factory=list)
    # Interpolations reaching outside the file, left as written (lossdsl.resolvers): one error each.
    unresolved: list[LossDSLError] = field(default_factory=list)


def _read_stdin() -> str:
    text = sys.stdin.read()
    if not text.strip():
        raise LossConfigError("nothing on stdin: expected a loss expression or a YAML/JSON document",
                              filename=STDIN_NAME)
    return text


def _locate(source: str, key: str | None) -> _Source:
    """The loss of a command-line SOURCE (expression, file, or - for stdin, read as a file is),
    located in its text and not yet validated. Errors before validation (unreadable file, invalid
    YAML, missing key) raise."""
    from .located import Located

    if source == STDIN:
        return _locate_document(_read_stdin(), STDIN_NAME, key)
    if _is_file_argument(source):
        from .yaml_io import read_config_file

        return _locate_document(read_config_file(Path(source)), source, key)
    if key:
        raise LossConfigError("--key applies to files; SOURCE is not a file")
    return _Source(None, Located(source, locate=offset_locator(source)))


def _locate_document(text: str, name: str, key: str | None) -> _Source:
    """The loss in a YAML/JSON document, found by the rule lossdsl.load follows; interpolations
    that reach outside the file are never resolved here (lossdsl.resolvers)."""
    from .document import loss_in_document

    found = loss_in_document(text, name, key, outside=False, cli=True)
    return _Source(name, found.item, found.path, found.key, unresolved=found.unresolved)


def _is_file_like(source: str) -> bool:
    return source == STDIN or _is_file_argument(source)


def _load(source: str, key: str | None):
    """The validated spec of a command-line SOURCE; the first problem raises."""
    if source != STDIN and not _is_file_argument(source):
        from .api import parse

        if key:
            raise LossConfigError("--key applies to files; SOURCE is not a file")
        return parse(source)  # cached
    from .validate import build_spec

    located = _locate(source, key)
    if located.unresolved:
        raise located.unresolved[0]
    return build_spec(located.item, path=located.path)


# -- compile --------------------------------------------------------------------------------------


def _print_spec(spec, fmt: str, expand: bool) -> None:
    if expand:
        spec = spec.expand()
    if fmt == "tree":
        from .describe import spec_tree

        print(spec_tree(spec))
    elif fmt == "expr":
        print(spec.to_expr())
    elif fmt == "yaml":
        print(spec.to_yaml(), end="")
    else:
        from .describe import spec_document

        print(json.dumps(spec_document(spec), indent=2))


# -- check ----------------------------------------------------------------------------------------


def _check_source(name: str, key: str | None) -> tuple[_Source, Any]:
    """Every problem of one file (or stdin), and its spec when there is none."""
    from .validate import build_spec, find_problems

    try:
        located = _locate(name, key)
    except LossDSLError as error:
        return _Source(name, problems=[error]), None
    problems = find_problems(located.item, path=located.path)
    if located.unresolved:
        # A value left as written fails validation where it stands: the line says why already.
        lines = {(error.filename, error.line) for error in located.unresolved}
        problems = located.unresolved + [e for e in problems if (e.filename, e.line) not in lines]
    located.problems = problems
    spec = None if problems else build_spec(located.item, path=located.path)
    return located, spec


def _problem_document(error: LossDSLError, name: str) -> dict[str, Any]:
    return {
        "file": error.filename or name,
        "line": error.line or 1,
        "column": error.column or 1,
        "reason": error.reason,
        "hint": error.hint,
        "path": error.path,
        "error": type(error).__name__,
    }


def _check(files: list[str], key: str | None, fmt: str) -> int:
    if files.count(STDIN) > 1:
        raise LossConfigError("stdin (-) can be read once; give it once")
    results = [(name, *_check_source(name, key)) for name in files]
    problems = sum(len(located.problems) for _, located, _ in results)
    if fmt == "json":
        document = {
            "format": CHECK_FORMAT,
            "ok": problems == 0,
            "files": [
                {
                    "file": STDIN_NAME if name == STDIN else name,
                    "key": located.key,
                    "ok": not located.problems,
                    "expr": spec.to_expr() if spec is not None else None,
                    "problems": [_problem_document(e, STDIN_NAME if name == STDIN else name)
                                 for e in located.problems],
                }
                for name, located, spec in results
            ],
        }
        print(json.dumps(document, indent=2))
        return 1 if problems else 0
    for name, located, _ in results:
        for error in located.problems:
            where = error.filename or (STDIN_NAME if name == STDIN else name)
            reason = error.reason + (f" ({error.hint})" if error.hint else "")
            print(f"{where}:{error.line or 1}:{error.column or 1}: {reason}")
    if problems == 0:
        print(f"{len(files)} file{'s' if len(files) != 1 else ''} OK")
    return 1 if problems else 0


# -- plot, diff, bench ----------------------------------------------------------------------------


def _plot(expressions: list[str], out: str, sweep: str | None, log_y: bool, signed: bool,
          classes: int | None) -> int:
    from .memory import out_of_memory_as_error
    from .plotting import build_figure, save

    # Files are read here, as every command reads them (lossdsl.plot's own loading would resolve
    # ${oc.env:...} and draw the value into the figure); expressions stay text, their titles as typed.
    losses = [_load(source, None) if _is_file_like(source) else source for source in expressions]
    with out_of_memory_as_error("plot", hint="draw with fewer classes (--classes)"):
        figure, curves = build_figure(losses, sweep, log_y=log_y, signed=signed, classes=classes)
    save(figure, out)
    print(f"wrote {out} ({curves} curve{'s' if curves != 1 else ''})")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from .diff import compare

    if args.first == STDIN and args.second == STDIN:
        raise LossConfigError("stdin (-) can be read once; give it for A or for B")
    # --key applies to whichever of A and B is a file: `lossdsl diff exp.yaml "focal()" --key model.loss`.
    first, second = (_load(source, args.key if _is_file_like(source) else None)
                     for source in (args.first, args.second))
    result = compare(first, second, rtol=args.rtol, atol=args.atol, seed=args.seed)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.report())
    return 0 if result.same else 1


def _bench(args: argparse.Namespace) -> int:
    from .bench import bench, check_workload, default_shape, parse_shape, terminal_progress
    from .memory import out_of_memory_as_error

    spec = _load(args.expression, None)
    shape = parse_shape(args.shape) if args.shape else default_shape(spec)
    check_workload(spec, shape, args.device)
    with out_of_memory_as_error(f"bench with --shape {','.join(map(str, shape))} on {args.device}",
                                hint="give a smaller --shape"):
        result = bench(
            spec, shape=shape, device=args.device,
            compile=args.compile, repeat=args.repeat, progress=terminal_progress(sys.stderr),
        )
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.report())
    return 0


# -- the command ----------------------------------------------------------------------------------


def _load_plugins() -> None:
    """The plug-ins installed packages announce (entry points): one warning per broken one."""
    from .catalogue.plugins import load_entry_point_plugins

    for failure in load_entry_point_plugins():
        print(f"{_colour('warning:', '33;1', sys.stderr)} {failure}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _load_plugins()
    try:
        if args.command == "compile":
            _print_spec(_load(args.source, args.key), args.format, args.expand)
            return 0
        if args.command == "check":
            return _check(args.files, args.key, args.format)
        if args.command == "schema":
            from .schema import loss_json_schema

            print(json.dumps(loss_json_schema(args.key), indent=2))
            return 0
        if args.command == "list":
            from .catalogue_text import catalogue_entries, catalogue_listing

            if args.format == "json":
                print(json.dumps({"format": "lossdsl.list/1", "names": catalogue_entries()}, indent=2))
            else:
                print(catalogue_listing(params=args.params))
            return 0
        if args.command == "explain":
            from .catalogue_text import explain, explanation

            if args.format == "json":
                print(json.dumps({"format": "lossdsl.explain/1", **explanation(args.name)}, indent=2))
            else:
                print(explain(args.name))
            return 0
        if args.command == "plot":
            return _plot(args.expressions, args.out, args.sweep, args.log_y, args.signed, args.classes)
        if args.command == "diff":
            return _diff(args)
        if args.command == "bench":
            return _bench(args)
    except LossDSLError as error:
        print(f"{_colour('error:', '31;1', sys.stderr)} {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `lossdsl schema | head`
        return 0
    except KeyboardInterrupt:  # a long bench stopped with Ctrl-C
        print("interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
