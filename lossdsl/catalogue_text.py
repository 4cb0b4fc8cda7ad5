"""The catalogue describing itself: ``lossdsl list`` (``--params``), ``lossdsl explain NAME`` and the
README's catalogue table, all read from the one place each parameter is described, its pydantic field
(description, type, range, default), and from each name's class (summary, paper, formula docstring,
equivalents in other libraries).

Plain data first (``catalogue_entries``, ``explanation``), so the JSON formats of the CLI and the text
views show the same facts; no torch is needed for any of it.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

from .catalogue.base import CATALOGUE, REDUCTIONS, LossNode, lookup
from .catalogue.likelihoods import BCE, CE
from .printer import format_value, node_to_expr
from .typetext import bounds_text, describe_type

CATEGORIES = [
    ("likelihood", "base likelihoods"),
    ("regression", "regression losses"),
    ("modifier", "blocks (wrap a loss with a probability p_t)"),
    ("named", "named losses (each exactly its expansion)"),
    ("longtail", "long-tail losses (class frequency: per-class counts n_j, prior pi_j = n_j / sum n)"),
    ("region", "region losses (segmentation: whole masks per sample and class; no block wraps them)"),
    ("distillation", "distillation (reads the teacher's logits at call time: teacher=)"),
    ("deep", "deep supervision (a list of predictions at decreasing resolution)"),
    ("multitask", "multi-task weighting"),
    ("plugin", "registered plug-ins"),
]

# What each reduction does, for the reduction row of a name (those it accepts only).
_REDUCTION_WORDS = {"mean": "mean", "sum": "sum", "batchmean": "batchmean (sum / N)",
                    "pos_mean": "pos_mean (sum / number of positives)", "none": "none (per element)"}

# The targets each kind of name takes, in words (a class's own ``targets`` text wins).
_TARGETS = {
    "sigmoid": "the logits' shape, values in [0, 1] (multi-hot or soft), or integer class indices "
               "[N, d1, ...] (turned into one-hot; ignore_index masked)",
    "softmax": "integer class indices [N, d1, ...] (ignore_index masked), or probabilities shaped like "
               "the logits [N, C, d1, ...]",
    "regression": "the predictions' shape",
    "region": "class indices [N, d1, ...] or probabilities (softmax head), or masks (sigmoid head), for "
              "logits [N, C, d1, ...]",
    "modifier": "those of the loss it wraps",
    "multitask": "mappings by task name: loss({task: prediction}, {task: target}), each task's own",
}


# -- plain data -------------------------------------------------------------------------------------


def summary_of(cls: type[LossNode]) -> str:
    """The one line that describes a name: its ``summary``, else the first line of its docstring
    (a plug-in may have neither: then nothing)."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    return cls.summary or (lines[0].strip() if lines else "")


def parameter_rows(cls: type[LossNode]) -> list[dict[str, Any]]:
    """Every parameter of a name: type and range, default, meaning (the loss it wraps first)."""
    example = example_of(cls)
    rows = []
    if cls.positional:
        wraps = cls.positional in cls.loss_fields
        is_loss = wraps or cls.positional in cls.spec_fields
        rows.append({
            "name": f"<{cls.positional}>", "type": "a loss" if is_loss else "named tasks {name: loss, ...}",
            "default": None, "description": "the loss it wraps (positional)" if wraps else
            cls.model_fields[cls.positional].description or "",
        })
    for name, field in cls.model_fields.items():
        if name in ("kind", cls.positional):
            continue
        kind = describe_type(field.annotation)
        bounds = bounds_text(field.annotation, field.metadata)
        rows.append({
            "name": name, "type": kind + (f", {bounds}" if bounds else ""),
            "default": default_text(cls, example, name), "description": field.description or "",
        })
    if not (cls.task_fields or cls.spec_fields):  # those reduce inside
        reductions = [r for r in REDUCTIONS if r != "pos_mean" or _divides_by_positives(cls, example)]
        words = dict(_REDUCTION_WORDS)
        if cls.category == "region":
            words["none"] = "none (the values before reducing: per sample and class, as above)"
        rows.append({"name": "reduction", "type": "one of " + ", ".join(reductions),
                     "default": cls.default_reduction,
                     "description": "how the term becomes a number: "
                     + ", ".join(words[r] for r in reductions) + "; on the outermost call of a term"})
    return rows


def _divides_by_positives(cls: type[LossNode], example: LossNode | None) -> bool:
    """Whether ``reduction=pos_mean`` applies (region and regression losses have no positives)."""
    if example is not None:
        return example.without_positives() is None
    return getattr(cls, "positives_reason", None) is None


def catalogue_entries() -> list[dict[str, Any]]:
    """Every registered name with its category, summary, paper and parameters."""
    entries = []
    for category, title in CATEGORIES:
        for name in sorted(n for n, cls in CATALOGUE.items() if cls.category == category):
            cls = CATALOGUE[name]
            entries.append({"name": name, "category": category, "group": title, "summary": summary_of(cls),
                            "paper": cls.paper, "parameters": parameter_rows(cls)})
    return entries


def explanation(name: str) -> dict[str, Any]:
    """Everything ``lossdsl explain`` says about one name, as plain data."""
    cls = lookup(name)
    example = example_of(cls)
    expands = None
    if example is not None and cls.category in ("named", "region", "longtail"):
        expanded = example.expand()
        if expanded != example:  # (a block's expansion is itself)
            expands = node_to_expr(expanded, full=True)
    return {
        "name": name, "category": cls.category, "summary": summary_of(cls), "paper": cls.paper,
        "usage": usage(cls, example), "formula": plain_text(inspect.cleandoc(cls.__doc__ or "")),
        "parameters": parameter_rows(cls), "targets": targets_text(cls, example), "expands_to": expands,
        "equivalents": list(cls.equivalents),
    }


# -- text views -------------------------------------------------------------------------------------


def catalogue_listing(params: bool = False) -> str:
    """``lossdsl list``: each name and its summary by group; with ``params``, each parameter too."""
    lines = []
    for category, title in CATEGORIES:
        entries = [e for e in catalogue_entries() if e["category"] == category]
        if not entries:
            continue
        lines.append(f"{title}:")
        width = max(len(e["name"]) for e in entries)
        for entry in entries:
            lines.append(f"  {entry['name'].ljust(width)}  {entry['summary']}".rstrip())
            if params:
                lines += [f"  {'':{width}}    {row['name']}={row['default']}  {row['description']}"
                          for row in entry["parameters"] if row["default"] is not None]
    return "\n".join(lines)


def explain(name: str) -> str:
    """``lossdsl explain NAME``: usage, formula, parameters, targets, expansion, equivalents."""
    info = explanation(name)
    lines = [f"{name}: {info['summary']}" if info["summary"] else name, f"usage: {info['usage']}"]
    if info["paper"]:
        lines.append(f"paper: {info['paper']}")
    lines += ["", info["formula"], "", "parameters:"]
    width = max(len(row["name"]) for row in info["parameters"])
    for row in info["parameters"]:
        default = f"; default {row['default']}" if row["default"] is not None else ""
        lines.append(f"  {row['name'].ljust(width)}  {row['type']}{default}")
        if row["description"]:
            lines += textwrap.wrap(row["description"], 100, initial_indent=" " * (width + 4),
                                   subsequent_indent=" " * (width + 4))
    lines += ["", f"targets: {info['targets']}"]
    if info["expands_to"]:
        lines += ["", f"expands to: {info['expands_to']}"]
    if info["equivalents"]:
        lines += ["", "same as:"] + [f"  {call}" for call in info["equivalents"]]
    return "\n".join(lines)


def catalogue_markdown() -> str:
    """The README's catalogue table, generated (tests/test_readme.py checks the README holds it)."""
    lines = ["| name | parameters (defaults) | what it computes | paper / same as |", "|---|---|---|---|"]
    for entry in catalogue_entries():
        if entry["category"] == "plugin":
            continue
        cls = CATALOGUE[entry["name"]]
        parameters = ", ".join(
            f"`{row['name']}={row['default']}`" if row["default"] is not None else f"`{row['name']}`"
            for row in entry["parameters"] if row["name"] != "reduction"
        )
        same = "; ".join([entry["paper"], *cls.equivalents[:1]]) if entry["paper"] else ""
        lines.append(f"| `{entry['name']}` | {parameters} | {_cell(entry['summary'])} | {_cell(same)} |")
    return "\n".join(lines)


# -- helpers ----------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def plain_text(text: str) -> str:
    """A docstring for a terminal: reST's ``code`` marks dropped."""
    return text.replace("``", "")


def usage(cls: type[LossNode], example: LossNode | None) -> str:
    arguments = []
    if cls.positional:
        arguments.append(f"<{cls.positional}>")
    for row in parameter_rows(cls):
        if row["default"] is None or row["name"].startswith("<"):
            continue
        value = row["default"]
        if example is not None and row["name"] in cls.model_fields:  # a head-dependent default: its own
            value = format_value(example.default_for(row["name"]))
        arguments.append(f"{row['name']}={value}")
    text = f"{cls.kind_name()}({', '.join(arguments)})"
    if cls.positional == "tasks":
        text = text.replace("<tasks>", "{task: loss, ...}")
    return text


def targets_text(cls: type[LossNode], example: LossNode | None) -> str:
    if cls.targets:
        return cls.targets
    if cls.category in _TARGETS:
        return _TARGETS[cls.category]
    head = getattr(example, "head", None) if example is not None else None
    if cls.kind_name() == "zlpr":
        return "multi-hot targets shaped like the logits [N, C, ...] (> 0.5 is positive)"
    if isinstance(head, str):
        return _TARGETS[head] + ("; head=softmax: " + _TARGETS["softmax"]
                                 if "head" in cls.model_fields and head == "sigmoid" else "")
    return "see the formula above"


def example_of(cls: type[LossNode]) -> LossNode | None:
    """An instance with default parameters (wrapping bce/ce, or one task, where one is needed)."""
    from .spec import LossSpec, Term

    one_task = {"task": LossSpec(terms=(Term(loss=CE()),))}
    for extra in ({}, {"loss": BCE()}, {"loss": CE()}, {"tasks": one_task}, {"loss": one_task["task"]}):
        try:
            return cls.model_validate(extra)
        except Exception:  # noqa: BLE001 - trying the next shape of example
            continue
    return None


def default_text(cls: type[LossNode], example: LossNode | None, field_name: str) -> str:
    if field_name in cls.loss_fields or field_name in cls.task_fields or field_name in cls.spec_fields:
        return None
    if "head" in cls.model_fields and field_name in cls.head_defaults and example is not None:
        sigmoid = example.model_copy(update={"head": "sigmoid"}).default_for(field_name)
        softmax = example.model_copy(update={"head": "softmax"}).default_for(field_name)
        if sigmoid != softmax:  # the default follows the head
            return f"{format_value(sigmoid)} (sigmoid), {format_value(softmax)} (softmax)"
    value = example.default_for(field_name) if example is not None else cls.model_fields[field_name].default
    if field_name == "gamma" and cls.kind_name() == "modulate":
        return "2 (or gamma_pos and gamma_neg instead)"
    return format_value(value)


# -- the README's table ----------------------------------------------------------------------------

README_START = "<!-- catalogue table: generated by `python -m lossdsl.catalogue_text --update README.md` -->"
README_END = "<!-- end of the catalogue table -->"


def update_readme(text: str) -> str:
    """``text`` (a README) with the catalogue table between its markers regenerated."""
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    return text[:start] + "\n" + catalogue_markdown() + "\n" + text[end:]


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Print (or write into a README) the catalogue table.")
    parser.add_argument("--update", metavar="README", help="rewrite the table between the README's markers")
    args = parser.parse_args()
    if args.update:
        path = Path(args.update)
        path.write_text(update_readme(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(catalogue_markdown())
