"""Located plain data -> validated ``LossSpec``, with errors that point at the offending text.

One walker serves every source: expressions (via ``syntax.parse_text``), YAML files, and mappings
built in Python or by Hydra. It accepts these loss forms wherever a loss is expected:

- a string: an expression;
- ``{expr: "...", define: {name: "..."}, reduction: ...}``: an expression with named sub-expressions,
  substituted where they are referenced (the spec is the same as with the expression written out);
- ``{terms: [{loss: ..., weight: ..., reduction: ...}, ...]}``: a weighted sum;
- ``{kind: name, param: value, ...}``: one catalogue node (``reduction`` allowed on the outermost);
- ``{ref: name}`` (from expressions): a ``define:`` name, or a catalogue name with its defaults.

Pydantic checks each node's parameters; this module turns its errors into messages that name the
loss, the parameter, the allowed range or type, and the closest valid spelling.
"""

from __future__ import annotations

import math
import os
from typing import Any

from pydantic import ValidationError

from .catalogue import base as catalogue_base
from .catalogue.base import CATALOGUE, REDUCTIONS, LossNode, NodeArgumentsError, lookup
from .catalogue.counts import files_read_from
from .catalogue.multitask import nesting_problem
from .catalogue.schedules import (
    SCHEDULES,
    ScheduleBase,
    ScheduleOutOfRange,
    ScheduleProblem,
    accepts_schedule,
    is_schedule,
    schedulable_parameters,
)
from .catalogue.spellings import unknown_loss_hint
from .errors import Location, LossConfigError, LossDSLError, LossSpecError, unknown_name_hint
from .located import MAX_DEPTH, POSITIONAL, Located, wrap
from .printer import format_value
from .spec import LossSpec, Term, composition_problem, term_name_problem
from .typetext import bounds_text, describe_type, literal_values

# Bounds on what define: substitution may build. Each definition that uses the previous one twice
# doubles the loss, so 19 lines of YAML reach 65,536 terms (28 s before these bounds). Measured: a
# 4,000-term expression (the most MAX_CHARS allows) validates in about 1 s and a YAML list of
# 10,000 written-out terms in about 2.5 s, so these leave every loss someone writes out alone while
# a loss past them is refused in milliseconds: both are counted from the definitions before any
# term is built. MAX_TERMS is also counted while building, on every path (whatever the count
# before could not see, such as a define: inside a define:).
MAX_TERMS = 10_000
MAX_EXPANDED_NODES = 50_000  # catalogue calls, blocks included: poly(focal()) is two
_TERM_KEYS = ("loss", "weight", "reduction", "name")
_EXPR_KEYS = ("expr", "define", "reduction")
_FORM_HINT = (
    "a loss is an expression string, or a mapping with 'kind' (one node), 'terms' (a weighted sum) "
    "or 'expr' (an expression with optional 'define' and 'reduction')"
)


def build_spec(item: Located, *, path: str = "") -> LossSpec:
    """Validate any accepted loss form into a LossSpec."""
    return _Walker().spec(item, path)


def is_loss_mapping(value: dict[str, Any]) -> bool:
    """Whether a mapping is a loss in one of its forms, rather than a document that may hold one."""
    return _is_hydra_node(value) or any(key in value for key in ("expr", "terms", "kind", "tasks"))


def build_node_from_plain(data: dict[str, Any]) -> LossNode:
    """Validate one node given as a plain dict (used when Python code passes dicts for children)."""
    return _Walker().single_node(wrap(data), "", None)


catalogue_base.CHILD_BUILDER = build_node_from_plain  # the catalogue's models build dict children so


def find_problems(item: Located, *, path: str = "") -> list[LossDSLError]:
    """Every problem of a loss that can be found without one causing the next (``lossdsl check``).

    The walk goes on past a failed term of a sum, task of a multi-task loss, or parameter of a
    node; whatever contains a failed part is not built (so its own rules, which would only repeat
    the failure, are not checked). The first problem is the error ``build_spec`` raises.
    """
    walker = _Walker(collect=True)
    try:
        walker.spec(item, path)
    except _Skipped:
        pass
    except LossDSLError as error:
        walker.problems.append(error)
    unique: dict[tuple[Any, ...], LossDSLError] = {}
    for error in walker.problems:  # a define: used twice reports its problem once
        unique.setdefault((error.filename, error.line, error.column, error.reason), error)
    return list(unique.values())


class _Skipped(Exception):
    """A part of the loss had problems, already recorded: what contains it cannot be built."""


class _Walker:
    def __init__(self, collect: bool = False) -> None:
        # Collecting (find_problems): the problems found so far; None: the first one is raised.
        self.problems: list[LossDSLError] | None = [] if collect else None
        self.defines: list[dict[str, Located]] = []
        # Where each define: block sits, so errors inside a definition name its full path.
        self.define_paths: list[str] = []
        self.resolving: list[str] = []
        # Expression strings parsed once each, however often a define: name repeats them.
        self.parsed: dict[int, tuple[Located, Located]] = {}
        self.term_count = 0
        # The name: entry of a named term, by the id of the item its loss came from.
        self.name_items: dict[int, Located] = {}

    # -- errors
    def _recover(self, step: Any, *args: Any) -> tuple[bool, Any]:
        """``(True, step(*args))``; when collecting, ``(False, None)`` after recording the problem
        of a step that failed, so the walk goes on with the next independent part."""
        if self.problems is None:
            return True, step(*args)
        try:
            return True, step(*args)
        except _Skipped:
            return False, None
        except LossDSLError as error:
            self.problems.append(error)
            return False, None

    @staticmethod
    def _fail(
        reason: str, location: Location | None, path: str, hint: str | None = None,
        cls: type[LossDSLError] = LossSpecError,
    ) -> LossDSLError:
        return cls(reason, hint=hint).located(location, path=path or None)

    # -- whole losses
    def spec(self, item: Located, path: str, depth: int = 0) -> LossSpec:
        terms = self.terms(item, path, 1.0, None, depth)
        self._check_sum(terms, item, path)
        return LossSpec(terms=tuple(term for term, _ in terms))

    def terms(
        self, item: Located, path: str, weight: float, reduction: str | None, depth: int
    ) -> list[tuple[Term, Located]]:
        """Flatten any loss form into weighted terms (with the item each came from, for messages)."""
        if depth > MAX_DEPTH:
            raise self._fail(f"loss nested deeper than {MAX_DEPTH} levels", item.location, path,
                             cls=LossConfigError)
        value = item.value
        if isinstance(value, str):
            return self.terms(self._parse(item), path, weight, reduction, depth + 1)
        if not isinstance(value, dict):
            raise self._fail(
                f"expected a loss, got {_describe_value(value)}", item.location, path,
                hint=_FORM_HINT, cls=LossConfigError,
            )
        if _is_hydra_node(value):  # {_target_: lossdsl.compile, source: ...}: the loss is its source
            return self.terms(value["source"], _join(path, "source"), weight, reduction, depth + 1)
        if "expr" in value:
            return self._expr_form(item, path, weight, reduction, depth)
        if "terms" in value:
            return self._terms_form(item, path, weight, reduction, depth)
        if "ref" in value and "kind" not in value:
            return self._ref(item, path, weight, reduction, depth)
        if "kind" in value:
            return [self._node_term(item, path, weight, reduction, depth)]
        if "tasks" in value:  # {seg: ce(), depth: l1()}: named tasks added with weight 1
            node = Located({"kind": Located("tasks", item.location), **value}, item.location,
                           dict(item.key_locations))
            return [self._node_term(node, path, weight, reduction, depth)]
        keys = ", ".join(repr(k) for k in value) or "none"
        raise self._fail(
            f"this mapping is not a loss (its keys: {keys})", item.location, path,
            hint=_FORM_HINT, cls=LossConfigError,
        )

    def _parse(self, item: Located) -> Located:
        from .syntax import parse_text

        known = self.parsed.get(id(item))
        if known is not None and known[0] is item:
            return known[1]
        if item.locate is not None:
            parsed = parse_text(item.value, item.locate)
        elif item.location is not None:  # no finer map into the file: point at the string itself
            location = item.location
            parsed = parse_text(item.value, lambda offset: location)
        else:
            parsed = parse_text(item.value)
        self.parsed[id(item)] = (item, parsed)  # the item kept alive, so its id is not reused
        return parsed

    def _expr_form(self, item, path, weight, reduction, depth):
        value = item.value
        self._check_keys(item, _EXPR_KEYS, path, "an expression mapping")
        own = self._reduction_of(item, path, None)
        if own is not None:  # the mapping's reduction is the default for terms that set none
            reduction = _DefaultReduction(own)
        defines = {}
        if "define" in value:
            block = value["define"]
            if not block.is_mapping():
                raise self._fail(
                    "define: expects a mapping of names to expressions", block.location,
                    _join(path, "define"), cls=LossConfigError,
                )
            for name, definition in block.value.items():
                where = block.key_location(name)
                if not name.isidentifier():
                    raise self._fail(f"define name {name!r} is not an identifier", where,
                                     _join(path, f"define.{name}"), cls=LossConfigError)
                if name in CATALOGUE:
                    raise self._fail(
                        f"define name '{name}' would hide the catalogue loss '{name}'", where,
                        _join(path, f"define.{name}"), hint="choose another name",
                        cls=LossConfigError,
                    )
                defines[name] = definition
        expr = value["expr"]
        self.defines.append(defines)
        self.define_paths.append(_join(path, "define"))
        try:
            if defines:
                self._check_expansion(expr, _join(path, "expr"))
            return self.terms(expr, _join(path, "expr"), weight, reduction, depth + 1)
        finally:
            self.defines.pop()
            self.define_paths.pop()

    def _check_expansion(self, expr: Located, path: str) -> None:
        """Refuse, before building anything, an expression whose define: names multiply its size."""
        terms, nodes = self._expanded_size(expr, {}, set(), 0)
        if terms > MAX_TERMS or nodes > MAX_EXPANDED_NODES:
            size = (f"more than {MAX_TERMS} terms" if terms > MAX_TERMS
                    else f"more than {MAX_EXPANDED_NODES} loss nodes")
            raise self._fail(
                f"the define: names expand this loss to {size}, the limit", expr.location, path,
                hint="a definition that uses another one twice doubles the loss at each level; "
                "give a weight instead (2 * a, not a + a)", cls=LossConfigError,
            )

    def _expanded_size(
        self, item: Located, sizes: dict[int, tuple[int, int]], active: set[int], depth: int
    ) -> tuple[int, int]:
        """How many terms and catalogue nodes ``item`` has once every define: name is substituted,
        counted without building them (each definition is sized once; the count stops just past
        the limits). Errors are left to the walk, which reports them where they are."""
        value = item.value
        if depth > 8 * MAX_DEPTH:  # one level of a loss is several levels of data here
            return 0, 0  # the walk reports the depth; MAX_TERMS still bounds what it builds
        if isinstance(value, str):
            try:
                return self._expanded_size(self._parse(item), sizes, active, depth + 1)
            except LossDSLError:
                return 0, 0
        if not isinstance(value, dict):
            return 0, 0
        if "ref" in value and "kind" not in value:
            definition = self._definition(value["ref"].value)
            if definition is None or id(definition) in active:
                return 1, 1  # a catalogue name, an unknown one or a cycle: the walk says which
            if id(definition) not in sizes:
                active.add(id(definition))
                sizes[id(definition)] = self._expanded_size(definition, sizes, active, depth + 1)
                active.discard(id(definition))
            return sizes[id(definition)]
        terms = nodes = 0
        for part in _loss_parts(value):
            part_terms, part_nodes = self._expanded_size(part, sizes, active, depth + 1)
            terms, nodes = terms + part_terms, nodes + part_nodes
            if terms > MAX_TERMS or nodes > MAX_EXPANDED_NODES:
                break
        if "kind" in value:
            # One term; more only when it wraps a sum, which the walk builds before refusing it.
            return max(terms, 1), nodes + 1
        return terms, nodes

    def _definition(self, name: Any) -> Located | None:
        """The define: body a name refers to here (the innermost scope wins), if any."""
        if isinstance(name, str):
            for scope in reversed(self.defines):
                if name in scope:
                    return scope[name]
        return None

    def _terms_form(self, item, path, weight, reduction, depth):
        self._check_keys(item, ("terms",), path, "a sum")
        listed = item.value["terms"]
        if not listed.is_list() or not listed.value:
            raise self._fail("terms: expects a non-empty list of terms", listed.location,
                             _join(path, "terms"), cls=LossConfigError)
        out = []
        failed = False
        for index, term in enumerate(listed.value):
            where = f"{_join(path, 'terms')}[{index}]"
            ok, built = self._recover(self._listed_term, term, where, weight, reduction, depth)
            out += built if ok else []
            failed = failed or not ok
        if failed:
            raise _Skipped()
        return out

    def _listed_term(self, term: Located, where: str, weight: float, reduction: str | None,
                     depth: int) -> list[tuple[Term, Located]]:
        if not term.is_mapping() or "loss" not in term.value:
            if term.is_mapping() and "kind" not in term.value and "terms" not in term.value:
                raise self._fail("a term needs a 'loss'", term.location, where,
                                 hint="for example {loss: ce(), weight: 0.5}", cls=LossConfigError)
            # A bare loss in the list is a term of weight 1.
            return self.terms(term, where, weight, reduction, depth + 1)
        self._check_keys(term, _TERM_KEYS, where, "a term")
        factor = self._weight_of(term, where)
        term_reduction = self._reduction_of(term, where, reduction)
        product = self._product(weight, factor, term, where)
        built = self.terms(term.value["loss"], _join(where, "loss"), product, term_reduction, depth + 1)
        if "name" in term.value:
            built = self._named(built, term, _join(where, "name"))
        return built

    def _named(
        self, built: list[tuple[Term, Located]], term: Located, path: str
    ) -> list[tuple[Term, Located]]:
        """The one term a ``{loss: ..., name: ...}`` entry built, with its name."""
        item = term.value["name"]
        problem = term_name_problem(item.value)
        if problem:
            raise self._fail(problem, item.location, path)
        if len(built) != 1:
            raise self._fail(
                f"name: labels one term, but this loss is a sum of {len(built)} terms", item.location, path,
                hint="give each term of the sum its own entry and name",
            )
        (built_term, source), = built
        if built_term.name is not None and built_term.name != item.value:
            raise self._fail(f"this term is already named '{built_term.name}'", item.location, path)
        # The walker points later errors about the name at this entry's name key.
        self.name_items[id(source)] = item
        return [(built_term.model_copy(update={"name": item.value}), source)]

    def _ref(self, item, path, weight, reduction, depth):
        name_item = item.value["ref"]
        name = name_item.value
        if not isinstance(name, str):  # {ref: ...} can also come from a mapping, holding anything
            raise self._fail(f"ref must be a name, got {_describe_value(name)}", name_item.location,
                             _join(path, "ref"), cls=LossConfigError)
        for scope, scope_path in zip(reversed(self.defines), reversed(self.define_paths)):
            if name in scope:
                if name in self.resolving:
                    cycle = " -> ".join(self.resolving[self.resolving.index(name):] + [name])
                    raise self._fail(f"define '{name}' refers to itself ({cycle})",
                                     name_item.location, path, cls=LossConfigError)
                self.resolving.append(name)
                try:
                    return self.terms(scope[name], _join(scope_path, name), weight, reduction, depth + 1)
                finally:
                    self.resolving.pop()
        if name in CATALOGUE:  # a bare catalogue name is the call with its defaults: focal == focal()
            node = Located({"kind": name_item}, name_item.location)
            return [self._node_term(node, path, weight, reduction, depth)]
        defined = sorted({n for scope in self.defines for n in scope})
        raise self._fail(
            f"unknown name '{name}'", name_item.location, path,
            hint=unknown_loss_hint(name, defined + sorted(CATALOGUE), "names"),
        )

    def _node_term(self, item, path, weight, reduction, depth) -> tuple[Term, Located]:
        own = item.value.get("reduction")
        if own is not None:
            # Compare the normalised name (the bare word none reads as the null value), and let a
            # term's own reduction override the default an `expr:` mapping gives (README: "default
            # for terms that do not set one"); only two explicit, different reductions conflict.
            value = self._reduction_value(own, _join(path, "reduction"))
            explicit = reduction is not None and not isinstance(reduction, _DefaultReduction)
            if explicit and value != reduction:
                raise self._fail(
                    "reduction is given twice for this term", own.location, _join(path, "reduction")
                )
            reduction = value
        self.term_count += 1
        if self.term_count > MAX_TERMS:
            raise self._fail(
                f"the loss has more than {MAX_TERMS} terms, the limit", item.location, path,
                hint="is a define: name used many times over?", cls=LossConfigError,
            )
        node = self.node(item, path, depth, allow_reduction=True)
        try:
            term = Term(loss=node, weight=weight, reduction=str(reduction or node.default_reduction))
        except ValidationError:
            raise self._fail("term weight must be a finite number", item.location, path) from None
        return term, item

    # -- nodes
    def single_node(self, item: Located, path: str, owner: str | None, depth: int = 0) -> LossNode:
        """A child loss: exactly one node, weight 1, no reduction of its own."""
        terms = self.terms(item, path, 1.0, None, depth + 1)
        if len(terms) != 1 or terms[0][0].weight != 1:
            raise self._fail(
                f"{owner}() wraps one loss, not a weighted sum" if owner else "expected one loss",
                item.location, path,
                hint="apply the modifier to each term: poly(a) + 0.5 * poly(b)",
            )
        term, source = terms[0]
        if term.reduction != term.loss.default_reduction or "reduction" in (source.value or {}):
            where = source.key_location("reduction")
            raise self._fail(
                "reduction= belongs on the outermost call of a term", where, _join(path, "reduction"),
                hint=f"move it to {owner}(...)" if owner else None,
            )
        return term.loss

    def node(self, item: Located, path: str, depth: int, allow_reduction: bool = False) -> LossNode:
        value = item.value
        kind_item = value["kind"]
        if not isinstance(kind_item.value, str):
            raise self._fail(f"kind must be a name, got {_describe_value(kind_item.value)}",
                             kind_item.location, _join(path, "kind"))
        try:
            cls = lookup(kind_item.value)
        except LossDSLError as exc:
            raise exc.located(kind_item.location, path=_join(path, "kind")) from None
        params: dict[str, Any] = {}
        failed = children_failed = False
        for key, child in value.items():
            if key == "kind" or (key == "reduction" and allow_reduction):
                continue
            ok, parameter = self._recover(self._parameter, cls, item, key, child, path, depth)
            if ok:
                params[parameter[0]] = parameter[1]
            else:
                failed = True
                is_child = (key == POSITIONAL or key in cls.loss_fields or key in cls.task_fields
                            or key in cls.spec_fields)
                children_failed = children_failed or is_child
        if children_failed:
            # Without its child the node cannot be checked as a whole ("requires the parameter
            # 'loss'" would only repeat the child's problem).
            raise _Skipped()
        try:
            with files_read_from(_folder_of(item)):
                node = cls.model_validate(params)
        except ValidationError as exc:
            if self.problems is None:
                raise self._translate(cls, _field_errors(exc), item, path) from None
            errors = _field_errors(exc)
            if failed:  # a parameter is misspelt or bad: its absence is no second problem
                errors = [e for e in errors if e["loc"] and e["type"] != "missing"]
            self.problems += self._translate_each(cls, errors, item, path)
            raise _Skipped() from None
        except LossDSLError as exc:
            raise exc.located(item.location, path=path or None) from None
        if failed:
            raise _Skipped()
        return node

    def _parameter(self, cls: type[LossNode], item: Located, key: str, child: Located, path: str,
                   depth: int) -> tuple[str, Any]:
        """One parameter of a node, validated as far as it can be alone: ``(field, value)``."""
        name = cls.kind_name()
        value = item.value
        where = _join(path, key)
        if key == POSITIONAL:
            if cls.positional is None:
                raise self._fail(f"{name}() takes no positional argument", child.location, path,
                                 hint=f"{name} has no loss to wrap; parameters are given by name")
            key = cls.positional
            where = _join(path, key)
            if key in value:
                raise self._fail(f"{name}() got its {key} both by position and by name",
                                 item.key_location(key), where)
        if key == "reduction":
            raise self._fail(
                "reduction= belongs on the outermost call of a term", item.key_location(key), where,
                hint="a term is reduced once, after every modifier has acted",
            )
        if key not in cls.model_fields or key == "kind":
            valid = [f for f in cls.model_fields if f != "kind"] + ["reduction"]
            raise self._fail(
                f"{name}() has no parameter '{key}'", item.key_location(key), where,
                hint=unknown_name_hint(key, valid, f"parameters of {name}"),
            )
        if key in cls.loss_fields:
            return key, self.single_node(child, where, name, depth + 1)
        if key in getattr(cls, "task_fields", ()):
            return key, self.task_specs(child, where, name, depth + 1)
        if key in cls.spec_fields:  # a whole loss, a sum included (deep supervision's)
            return key, self.spec(child, where, depth + 1)
        if child.is_mapping() and "schedule" in child.value:
            return key, self.schedule(child, where, depth + 1)
        return key, self.plain_value(child, where, depth + 1)

    def schedule(self, item: Located, path: str, depth: int = 0) -> ScheduleBase:
        """``{schedule: steps|ramp, values: [...], ...}`` (what ``ramp(0, 1, end=10)`` parses to)
        -> a validated schedule, its own rules' errors pointing at the argument they are about."""
        name_item = item.value["schedule"]
        name = name_item.value
        cls = SCHEDULES.get(name) if isinstance(name, str) else None
        if cls is None:
            shown = f"'{name}'" if isinstance(name, str) else _shown(name)
            raise self._fail(f"unknown schedule {shown}", name_item.location, _join(path, "schedule"),
                             hint=unknown_name_hint(str(name), SCHEDULES, "schedules"))
        plain = self.plain_value(item, path, depth)
        try:
            return cls.model_validate(plain)
        except ValidationError as exc:
            error = _field_errors(exc)[0]
            original = error.get("ctx", {}).get("error")
            loc = list(error["loc"])
            if isinstance(original, ScheduleProblem):
                loc = [original.key] + ([original.index] if original.index is not None else [])
                reason = str(original)
            elif error["type"] == "missing":
                reason = f"{name}() requires {loc[0]}=, e.g. " + (
                    "steps([0, 0.9999], at=[160])" if name == "steps" else "ramp(0, 1, end=10)")
                loc = []
            elif error["type"] == "extra_forbidden":
                valid = [f for f in cls.model_fields if f not in ("schedule", "values")]
                hint = unknown_name_hint(str(loc[0]), valid, f"parameters of {name}")
                raise self._fail(f"{name}() has no parameter '{loc[0]}'", item.key_location(str(loc[0])),
                                 _join(path, str(loc[0])), hint=hint) from None
            else:
                field = str(loc[0]) if loc else ""
                annotation = cls.model_fields[field].annotation if field in cls.model_fields else None
                allowed = literal_values(annotation) if annotation is not None else []
                bounds = bounds_text(annotation, cls.model_fields[field].metadata) if annotation else None
                given = _shown(error.get("input"))
                if allowed:
                    reason = f"{name}(): {field}={given} is not one of {', '.join(allowed)}"
                elif error["type"] in _RANGE_ERRORS and bounds:
                    reason = f"{name}(): {field}={given} is out of range; {field} must be {bounds}"
                else:
                    reason = f"{name}(): {field} expects {describe_type(annotation)}, got {given}"
            target, where = _navigate(item, loc, path)
            location = target.location if target is not None and loc else item.location
            raise self._fail(reason, location, where) from None

    def _product(self, weight: Any, factor: Any, item: Located, path: str) -> Any:
        """A weight times a weight: numbers, and at most one schedule (whose values are scaled)."""
        if is_schedule(weight) and is_schedule(factor):
            raise self._fail("a term's weight can be one schedule; this one multiplies two",
                             item.location, path, hint="fold the numbers into one schedule's values")
        if is_schedule(weight) or is_schedule(factor):
            schedule, number = (weight, factor) if is_schedule(weight) else (factor, weight)
            return schedule if number == 1 else schedule.scaled(number)
        return weight * factor

    def task_specs(self, item: Located, path: str, owner: str, depth: int) -> dict[str, LossSpec]:
        """``{name: loss, ...}`` -> one LossSpec per task (each an ordinary sum of terms)."""
        if item.is_mapping() and set(item.value) == {"tasks"} and item.value["tasks"].is_mapping():
            item = item.value["tasks"]  # the {...} syntax of an expression
        is_loss = item.is_mapping() and bool({"kind", "terms", "expr", "ref"} & set(item.value))
        if not item.is_mapping() or not item.value or is_loss or isinstance(item.value, str):
            example = "{seg: ce(), depth: l1()}"
            reason = (f"a task dictionary needs named tasks, e.g. {example}" if owner == "tasks"
                      else f"{owner}() expects named tasks, e.g. {owner}({example})")
            raise self._fail(reason, item.location, path, cls=LossConfigError)
        specs = {}
        failed = False
        for name, task in item.value.items():
            before = len(self.problems or ())
            ok, spec = self._recover(self._task_spec, item, name, task, path, depth)
            if ok:
                specs[name] = spec
            else:
                failed = True
                for error in self.problems[before:]:
                    _in_task(error, name)
        if failed:
            raise _Skipped()
        return specs

    def _task_spec(self, item: Located, name: str, task: Located, path: str, depth: int) -> LossSpec:
        where = _join(path, name)
        if not name.isidentifier():
            raise self._fail(f"task name {name!r} is not an identifier", item.key_location(name),
                             where, cls=LossConfigError)
        try:
            spec = self.spec(task, where, depth=depth + 1)
        except LossDSLError as error:
            raise _in_task(error, name) from None
        problem = nesting_problem(name, spec)
        if problem:
            raise self._fail(problem, task.location, where)
        return spec

    def plain_value(self, item: Located, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self._fail(f"value nested deeper than {MAX_DEPTH} levels", item.location, path,
                             cls=LossConfigError)
        value = item.value
        if isinstance(value, list):
            return [self.plain_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.plain_value(v, _join(path, k), depth + 1) for k, v in value.items()}
        if isinstance(value, float) and not math.isfinite(value):
            raise self._fail(f"{path.rsplit('.', 1)[-1]} must be a finite number, got {value}",
                             item.location, path)
        return value

    # -- helpers
    def _check_keys(self, item: Located, allowed: tuple[str, ...], path: str, what: str) -> None:
        for key in item.value:
            if key not in allowed:
                raise self._fail(
                    f"unexpected key '{key}' in {what}", item.key_location(key), _join(path, key),
                    hint=unknown_name_hint(key, allowed, "keys"), cls=LossConfigError,
                )

    def _weight_of(self, term: Located, path: str) -> float | ScheduleBase:
        weight = term.value.get("weight")
        if weight is None:
            return 1.0
        if weight.is_mapping() and "schedule" in weight.value:
            return self.schedule(weight, _join(path, "weight"))
        number = given = weight.value
        if isinstance(number, int) and not isinstance(number, bool):
            try:  # an integer beyond float range (10**400) is not a finite weight; no OverflowError
                number = float(number)
            except OverflowError:
                number = math.inf
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise self._fail(f"weight must be a finite number, got {_describe_value(given)}",
                             weight.location, _join(path, "weight"), cls=LossConfigError)
        return float(number)

    def _reduction_of(self, item: Located, path: str, inherited: str | None) -> str | None:
        own = item.value.get("reduction")
        if own is None:
            return inherited
        return self._reduction_value(own, _join(path, "reduction"))

    def _reduction_value(self, item: Located, path: str) -> str:
        value = item.value
        if value is None:  # the bare word none reads as the null value; here it names a reduction
            value = "none"
        if value not in REDUCTIONS:
            shown = value if isinstance(value, str) else _describe_value(value)
            raise self._fail(
                f"unknown reduction '{shown}'", item.location, path,
                hint=unknown_name_hint(str(value), REDUCTIONS, "reductions"),
            )
        return value

    def _check_sum(self, terms: list[tuple[Term, Located]], item: Located, path: str) -> None:
        problem = composition_problem([term for term, _ in terms])
        if problem is None:
            return
        _, source = terms[problem.term]
        where = source.key_location("reduction") if problem.about_reduction else source.location
        if problem.about_name and id(source) in self.name_items:
            where = self.name_items[id(source)].location
        raise self._fail(problem.reason, where, path, hint=problem.hint)

    def _translate_each(self, cls: type[LossNode], errors: list[dict[str, Any]], item: Located,
                        path: str) -> list[LossDSLError]:
        """One message per parameter pydantic refused (the first is ``_translate``'s)."""
        fields: dict[Any, list[dict[str, Any]]] = {}
        for error in errors:
            fields.setdefault(error["loc"][0] if error["loc"] else None, []).append(error)
        return [self._translate(cls, group, item, path) for group in fields.values()]

    def _translate(self, cls: type[LossNode], errors: list[dict[str, Any]], item: Located, path: str):
        name = cls.kind_name()
        first = errors[0]
        loc = [part for part in first["loc"]]
        if not loc:  # a model-level rule (contradictory parameters), raised as ValueError
            reason = str(first.get("ctx", {}).get("error", first["msg"]))
            return self._fail(f"{name}(): {reason}", item.location, path)
        field = str(loc[0])
        field_errors = [e for e in errors if e["loc"] and e["loc"][0] == field]
        target, where = _navigate(item, loc, path)
        location = target.location if target is not None else item.key_location(field)
        annotation = cls.model_fields[field].annotation
        given = _shown(first.get("input"))
        if first["type"] == "missing":
            return self._fail(f"{name}() requires the parameter '{field}'", item.location, path)
        range_errors = [e for e in field_errors if e["type"] in _RANGE_ERRORS]
        if range_errors:
            error = range_errors[0]
            target, where = _navigate(item, list(error["loc"]), path)
            location = target.location if target is not None else location
            bounds = bounds_text(annotation, cls.model_fields[field].metadata)
            bounds = bounds or _RANGE_ERRORS[error["type"]].format(**error.get("ctx", {}))
            return self._fail(
                f"{name}(): {field}={_shown(error['input'])} is out of range; {field} must be {bounds}",
                location, where,
            )
        schedule_error = next((e.get("ctx", {}).get("error") for e in field_errors
                               if isinstance(e.get("ctx", {}).get("error"), ScheduleOutOfRange)), None)
        if schedule_error is not None:
            target, where = _navigate(item, [field, "values", schedule_error.index], path)
            location = target.location if target is not None else location
            bounds = bounds_text(annotation, cls.model_fields[field].metadata)
            return self._fail(
                f"{name}(): {field}={_shown(first.get('input'))} takes the value {schedule_error.value:g}, "
                f"out of range; {field} must be {bounds}", location, where,
            )
        if is_schedule(first.get("input")) and not accepts_schedule(annotation):
            schedulable = schedulable_parameters(cls)
            return self._fail(
                f"{name}(): {field} cannot follow a schedule", location, where,
                hint=(f"the parameters of {name} that can: {', '.join(schedulable)}" if schedulable
                      else f"no parameter of {name} can; schedules go inside each loss" if
                      cls.task_fields or cls.spec_fields
                      else f"no parameter of {name} can; a term's weight can "
                           f"(ramp(0, 1, end=10) * {name}())"),
            )
        allowed = literal_values(annotation)
        if allowed and isinstance(first.get("input"), str):
            return self._fail(
                f"{name}(): {field}={given} is not one of {', '.join(allowed)}", location, where,
                hint=unknown_name_hint(first["input"], allowed, f"values of {field}"),
            )
        value_errors = [e for e in field_errors if e["type"] == "value_error"]
        if value_errors:
            reason = str(value_errors[0].get("ctx", {}).get("error", value_errors[0]["msg"]))
            return self._fail(f"{name}(): {field}: {reason}", location, where)
        return self._fail(
            f"{name}(): {field} expects {describe_type(annotation)}, got {given}", location, where
        )


def _field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors for a node (unwrapping those LossNode.__init__ re-raised)."""
    inner = exc.errors(include_url=False)[0].get("ctx", {}).get("error")
    if isinstance(inner, NodeArgumentsError):  # raised by LossNode.__init__: pydantic's own report
        exc = inner.validation_error
    return exc.errors(include_url=False)


def _in_task(error: LossDSLError, name: str) -> LossDSLError:
    """The error, saying which task of a multi-task loss it is in (its location stays)."""
    prefix = f"task '{name}': "
    if not error.reason.startswith(prefix):
        error.reason = prefix + error.reason
        error.args = (error.reason,)
    return error


def _loss_parts(value: dict[str, Located]) -> list[Located]:
    """The parts of a loss mapping that are losses themselves, where the walk reads them (its
    parameters, reductions and weights are not: ``head: softmax`` is no expression)."""
    if _is_hydra_node(value):
        return [value["source"]]
    if "expr" in value:
        return [value["expr"]]
    if "terms" in value:
        listed = value["terms"].value if value["terms"].is_list() else []
        return [term.value["loss"] if term.is_mapping() and "loss" in term.value else term
                for term in listed]
    if "kind" not in value:
        return _task_parts(value["tasks"]) if "tasks" in value else []
    name = value["kind"].value
    cls = CATALOGUE.get(name) if isinstance(name, str) else None
    if cls is None:
        return []
    parts = []
    for key, child in value.items():
        field = cls.positional if key == POSITIONAL else key
        if field in cls.task_fields:
            parts += _task_parts(child)
        elif field in cls.loss_fields or field in cls.spec_fields:
            parts.append(child)
    return parts


def _task_parts(item: Located) -> list[Located]:
    """The losses of a task dictionary, as ``_Walker.task_specs`` reads it."""
    if item.is_mapping() and set(item.value) == {"tasks"}:
        item = item.value["tasks"]
    return list(item.value.values()) if item.is_mapping() else []


class _DefaultReduction(str):
    """A reduction inherited from an ``expr:`` mapping: a default that a term's own one overrides."""


_RANGE_ERRORS = {
    "greater_than_equal": ">= {ge}",
    "greater_than": "> {gt}",
    "less_than_equal": "<= {le}",
    "less_than": "< {lt}",
    "too_short": "at least {min_length} long",
    "too_long": "at most {max_length} long",
}


_HYDRA_TARGETS = ("lossdsl.compile", "lossdsl.load", "lossdsl.api.compile", "lossdsl.api.load")


def _is_hydra_node(value: dict[str, Located]) -> bool:
    """A Hydra/OmegaConf instantiation of lossdsl (``_target_: lossdsl.compile``, ``source: ...``)."""
    target = value.get("_target_")
    return target is not None and target.value in _HYDRA_TARGETS and "source" in value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _folder_of(item: Located) -> str | None:
    """The folder of the YAML file a node was written in (a counts file's relative path is read from
    there: catalogue.counts), or None (the working directory: an expression, stdin, a mapping)."""
    filename = item.location.filename if item.location is not None else None
    return os.path.dirname(filename) if filename and not filename.startswith("<") else None


def _navigate(item: Located, loc: list[Any], path: str) -> tuple[Located | None, str]:
    """The located value a pydantic error location points at (union-branch names are skipped)."""
    current: Located | None = item
    where = path
    for part in loc:
        if current is None:
            break
        if isinstance(part, int) and current.is_list():
            if 0 <= part < len(current.value):
                current = current.value[part]
                where = f"{where}[{part}]"
        elif isinstance(part, str) and current.is_mapping() and part in current.value:
            current = current.value[part]
            where = _join(where, part)
    return current, where


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple, dict, str, bool, int, float, ScheduleBase)) or value is None:
        try:
            return format_value(value)
        except TypeError:
            pass
    return repr(value)


def _describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _shown(value)
