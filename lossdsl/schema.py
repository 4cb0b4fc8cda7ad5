"""JSON Schema (draft 7) of the YAML/mapping form, built from the catalogue registry.

Each node's schema comes from its pydantic model; child losses point at the union of every
registered name, so editors (yaml-language-server) complete ``gamma`` under ``kind: focal`` and
plug-ins show up too. ``reduction`` is accepted on nodes because the outermost node of a term may
carry it (the validator rejects it deeper down, with a message).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import TypeAdapter

from .catalogue.base import CATALOGUE, LOSS_SCHEMA_MARKER, NODE_SCHEMA_MARKER, REDUCTIONS
from .catalogue.schedules import Schedule
from .catalogue_text import parameter_rows, summary_of
from .errors import LossConfigError
from .located import MAX_DEPTH
from .spec import RESERVED_TERM_NAMES, TERM_NAME

DRAFT = "http://json-schema.org/draft-07/schema#"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}"}


def _swap_markers(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(NODE_SCHEMA_MARKER):
            return _ref("Node")
        if value.get(LOSS_SCHEMA_MARKER):
            return _ref("Loss")
        return {k: _swap_markers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap_markers(v) for v in value]
    return value


def node_schemas() -> dict[str, dict[str, Any]]:
    definitions: dict[str, dict[str, Any]] = {}
    for name, cls in sorted(CATALOGUE.items()):
        schema = copy.deepcopy(cls.model_json_schema(ref_template="#/definitions/{model}"))
        for nested_name, nested in schema.pop("$defs", {}).items():
            definitions[nested_name] = _swap_markers(nested)
        schema = _swap_markers(schema)
        schema["title"] = name
        schema["description"] = summary_of(cls) or f"{name} (a plug-in)"
        _describe_parameters(cls, schema.setdefault("properties", {}))
        schema["properties"]["reduction"] = _ref("Reduction")
        schema["required"] = sorted(set(schema.get("required", [])) | {"kind"})
        schema["additionalProperties"] = False
        definitions[f"node_{name}"] = schema
    return definitions


def _describe_parameters(cls: type, properties: dict[str, Any]) -> None:
    """Editors' hovers: each parameter's meaning, type, range and default (the same rows `lossdsl
    explain` prints, from the field), as markdownDescription, and its default as an example."""
    rows = {row["name"]: row for row in parameter_rows(cls)}
    for name, prop in properties.items():
        row = rows.get(name) or rows.get(f"<{name}>")  # the positional argument is listed as <name>
        if row is None or name == "kind":
            continue
        default = f" Default `{row['default']}`." if row["default"] is not None else ""
        prop["markdownDescription"] = f"{row['description']}\n\n*{row['type']}*.{default}"
        field = cls.model_fields.get(name)
        value = None if field is None or field.is_required() else field.default
        if isinstance(value, (bool, int, float, str)) and "examples" not in prop:
            prop["examples"] = [value]


def _key_parts(key: str) -> list[str]:
    """The parts of a dotted key, refused when no document could hold a loss there (YAML files
    nest at most MAX_DEPTH levels; the schema of a deeper one would overflow the JSON encoder)."""
    parts = key.split(".")
    shown = key if len(key) <= 60 else key[:57] + "..."
    if len(parts) > MAX_DEPTH:
        raise LossConfigError(f"the key {shown!r} has {len(parts)} parts; a config nests at most "
                              f"{MAX_DEPTH} levels", hint="give the dotted key of the loss, e.g. model.loss")
    if not all(parts):
        raise LossConfigError(f"the key {shown!r} has an empty part",
                              hint="give the dotted key of the loss, e.g. model.loss")
    return parts


def loss_json_schema(key: str | None = None) -> dict[str, Any]:
    """The schema of a loss; with ``key="model.loss"``, of a document holding it under that key."""
    definitions = node_schemas()
    node_names = sorted(n for n in definitions if n.startswith("node_"))
    definitions["Reduction"] = {"type": "string", "enum": list(REDUCTIONS)}
    schedule = TypeAdapter(Schedule).json_schema(ref_template="#/definitions/{model}")
    definitions.update(schedule.pop("$defs", {}))
    definitions["Schedule"] = {**schedule, "description": "a value that changes over training: "
                               "{schedule: steps, values: [...], at: [...]} or {schedule: ramp, "
                               "values: [a, b], end: T}"}
    definitions["Node"] = {
        "description": "one loss: a catalogue name under 'kind' and its parameters",
        "type": "object",
        "required": ["kind"],
        "oneOf": [_ref(n) for n in node_names],
    }
    definitions["Expression"] = {
        "type": "string",
        "description": "a loss expression, e.g. poly(focal(gamma=2), eps=1) + 0.5 * ghm(bins=30)",
    }
    definitions["Term"] = {
        "type": "object",
        "properties": {
            "loss": _ref("Loss"),
            "weight": {"anyOf": [{"type": "number"}, _ref("Schedule")]},
            "reduction": _ref("Reduction"),
            "name": {
                "type": "string",
                "pattern": "^" + TERM_NAME.pattern + "$",
                "not": {"enum": list(RESERVED_TERM_NAMES)},
                "description": "the term's key in loss.last_terms and logged metrics (an identifier, "
                "unique in the loss), instead of its expression",
            },
        },
        "required": ["loss"],
        "additionalProperties": False,
    }
    definitions["Sum"] = {
        "type": "object",
        "description": "a weighted sum of terms, each reduced on its own",
        "properties": {
            "terms": {
                "type": "array",
                "minItems": 1,
                "items": {"anyOf": [_ref("Term"), _ref("Node"), _ref("Expression")]},
            }
        },
        "required": ["terms"],
        "additionalProperties": False,
    }
    definitions["ExpressionForm"] = {
        "type": "object",
        "description": "an expression with named sub-expressions",
        "properties": {
            "expr": {"anyOf": [_ref("Expression"), _ref("Sum"), _ref("Node")]},
            "define": {"type": "object", "additionalProperties": _ref("Expression")},
            "reduction": _ref("Reduction"),
        },
        "required": ["expr"],
        "additionalProperties": False,
    }
    definitions["Loss"] = {
        "anyOf": [_ref("Expression"), _ref("ExpressionForm"), _ref("Sum"), _ref("Node")]
    }
    root: dict[str, Any] = _ref("Loss")
    for part in reversed(_key_parts(key) if key else []):
        root = {"type": "object", "properties": {part: root}, "required": [part]}
    return {
        "$schema": DRAFT,
        "title": "lossdsl loss" + (f" under {key}" if key else ""),
        "definitions": definitions,
        "allOf": [root],
    }
