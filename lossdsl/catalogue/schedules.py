"""Schedules: a term's weight or a block's parameter that changes over training.

- ``steps([v0, v1, ...], at=[t1, ...])``: piecewise constant, ``v0`` before ``t1`` and ``v_i`` from
  ``t_i`` on (DRW re-weights from epoch 160: ``beta=steps([0, 0.9999], at=[160])``);
- ``ramp(a, b, end=T)`` (``start=0``, ``shape=linear|cosine``): ``a`` until ``start``, then linear
  (or half a cosine) to ``b`` at ``end``, ``b`` afterwards (a dice term ramped in:
  ``ramp(0, 1, end=10) * dice()``).

Both run over the epoch (``over=epoch``, the default: set by the training loop with
``loss.set_epoch(e)``) or the step (``over=step``: the loss's training-mode calls, counted by the
module). A parameter that accepts a schedule is annotated ``scheduled(...)``: its range holds for
every value the schedule takes, checked when the loss is parsed. The compiled loss evaluates a
schedule as a 0-d tensor from its clock buffers (``lossdsl.functional.schedules``), so changing
values never recompile a ``torch.compile``'d loss and never wait for the device.
"""

from __future__ import annotations

import bisect
import functools
import math
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .base import LossNode, NodeArgumentsError, described

Number = Annotated[float, Strict()]
# An epoch or a step number (a clock reading): a whole number >= 0.
Position = Annotated[int, Strict(), Field(ge=0, le=10**9)]
Over = described(Literal["epoch", "step"], "the clock the schedule follows: epoch (set by the training "
                                           "loop with loss.set_epoch(e)) or step (the loss's "
                                           "training-mode calls)")


class ScheduleProblem(ValueError):
    """A schedule's own rule broken, with the argument it is about (``key``, and ``index`` in it)."""

    def __init__(self, message: str, key: str, index: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.index = index


class ScheduleOutOfRange(ValueError):
    """A value a schedule takes lies outside the range of the parameter it drives."""

    def __init__(self, index: int, value: float) -> None:
        super().__init__(f"the schedule takes the value {value:g}, outside the parameter's range")
        self.index = index
        self.value = value


def _name_required(schema: dict[str, Any]) -> None:
    # The name tells the two apart in a mapping ({schedule: ramp, ...}): required there, though the
    # models give it a default for Python.
    schema["required"] = ["schedule", *schema.get("required", [])]


class ScheduleBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              json_schema_extra=_name_required)

    values: tuple[Number, ...]
    over: Over = "epoch"

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:  # built in Python: the same error family as from text
            first = exc.errors(include_url=False)[0]
            reason = first.get("ctx", {}).get("error") or first["msg"]
            where = ".".join(str(part) for part in first["loc"])
            name = type(self).model_fields["schedule"].default
            own = isinstance(reason, ScheduleProblem)  # its message names the schedule already
            prefix = "" if own else f"{name}(): {where + ': ' if where else ''}"
            # pydantic's report kept for the validator, which points at the argument in the text
            raise NodeArgumentsError(f"{prefix}{reason}", exc) from None

    def value_at(self, position: int) -> float:
        """The value at epoch or step ``position`` (what the compiled loss computes as a tensor)."""
        raise NotImplementedError

    def scaled(self, factor: float) -> ScheduleBase:
        """The same schedule with every value multiplied (a weight times a number)."""
        return self.model_copy(update={"values": tuple(v * factor for v in self.values)})

    @property
    def name(self) -> str:
        return type(self).model_fields["schedule"].default


class Steps(ScheduleBase):
    """Piecewise constant: ``values[0]`` before ``at[0]``, ``values[i]`` from ``at[i-1]`` on."""

    schedule: Literal["steps"] = "steps"
    values: described(tuple[Number, ...], "the values, in order: the first until at[0], the i-th "
                                         "from at[i-1] on")
    at: described(tuple[Position, ...], "the epochs (or steps) where the next value starts, "
                                        "increasing")

    @model_validator(mode="after")
    def _one_change_per_point(self) -> Steps:
        if len(self.values) < 2:
            raise ScheduleProblem("steps() needs at least two values: steps([0, 0.9999], at=[160])",
                                  "values")
        if len(self.at) != len(self.values) - 1:
            raise ScheduleProblem(
                f"steps() has {len(self.values)} values, so at= needs {len(self.values) - 1} "
                f"point{'s' if len(self.values) > 2 else ''} where the next one starts; got {len(self.at)}",
                "at",
            )
        for index in range(1, len(self.at)):
            if self.at[index] <= self.at[index - 1]:
                raise ScheduleProblem(
                    f"at= must increase: {self.at[index]} comes after {self.at[index - 1]}", "at", index
                )
        return self

    def value_at(self, position: int) -> float:
        return float(self.values[bisect.bisect_right(self.at, position)])


class Ramp(ScheduleBase):
    """From ``values[0]`` to ``values[1]``: the first until ``start``, the second from ``end`` on,
    and between them ``a + (b - a) f`` (``linear``) or ``a + (b - a) (1 - cos(pi f)) / 2``
    (``cosine``), ``f = (t - start) / (end - start)``."""

    schedule: Literal["ramp"] = "ramp"
    values: described(tuple[Number, Number], "the value before start and the value from end on")
    start: described(Position, "the epoch (or step) where the ramp leaves the first value") = 0
    end: described(Position, "the epoch (or step) where the ramp reaches the second value")
    shape: described(Literal["linear", "cosine"], "linear, or half a cosine (flat at both ends)") = "linear"

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> Ramp:
        if self.end <= self.start:
            raise ScheduleProblem(f"ramp() must end after it starts: end={self.end} <= start={self.start}",
                                  "end")
        return self

    def value_at(self, position: int) -> float:
        first, last = self.values
        fraction = min(max((position - self.start) / (self.end - self.start), 0.0), 1.0)
        if self.shape == "cosine":
            fraction = (1 - math.cos(math.pi * fraction)) / 2
        return first + (last - first) * fraction


SCHEDULES: dict[str, type[ScheduleBase]] = {"steps": Steps, "ramp": Ramp}
Schedule = Annotated[Union[Steps, Ramp], Field(discriminator="schedule")]


def is_schedule(value: Any) -> bool:
    return isinstance(value, ScheduleBase)


def highest(value: float | ScheduleBase) -> float:
    """The largest value a number or a schedule takes (every value of a schedule is a listed one:
    ramps stay between their two ends)."""
    return max(value.values) if is_schedule(value) else value


def lowest(value: float | ScheduleBase) -> float:
    return min(value.values) if is_schedule(value) else value


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def _within(annotation: Any):
    def check(schedule: ScheduleBase) -> ScheduleBase:
        adapter = _adapter(annotation)
        for index, value in enumerate(schedule.values):
            try:
                adapter.validate_python(value)
            except ValidationError:
                raise ScheduleOutOfRange(index, value) from None
        return schedule

    return check


def scheduled(annotation: Any) -> Any:
    """``annotation``, or a schedule every value of which is one (a parameter's range holds over the
    whole schedule). The parameters annotated so are the ones a schedule may drive."""
    return Union[annotation, Annotated[Schedule, AfterValidator(_within(annotation))]]


def accepts_schedule(annotation: Any) -> bool:
    """Whether a field's annotation takes a schedule (it was written ``scheduled(...)``)."""
    stack = [annotation]
    while stack:
        current = stack.pop()
        if isinstance(current, type) and issubclass(current, ScheduleBase):
            return True
        stack.extend(typing.get_args(current))
    return False


def schedulable_parameters(cls: type[LossNode]) -> tuple[str, ...]:
    """The parameters of a catalogue name that accept a schedule."""
    return tuple(name for name, field in cls.model_fields.items() if accepts_schedule(field.annotation))


def node_schedules(node: LossNode, path: str = "") -> Iterator[tuple[str, ScheduleBase]]:
    """``(where, schedule)`` for every scheduled parameter in a node and the nodes below it
    (``modulate.gamma``), tasks and inner losses excluded (their specs list their own)."""
    where = f"{path}{node.kind_name()}"
    for name in type(node).model_fields:
        value = getattr(node, name)
        if is_schedule(value):
            yield f"{where}.{name}", value
    for child in node.children():
        yield from node_schedules(child, f"{where}.")


def spec_schedules(spec: Any, prefix: str = "") -> list[tuple[str, ScheduleBase]]:
    """``(where, schedule)`` for every schedule of a loss: term weights (``term 2 weight``), block
    parameters (``term 1 modulate.gamma``), inside tasks and deep supervision's inner loss too."""
    out: list[tuple[str, ScheduleBase]] = []
    for index, term in enumerate(spec.terms, 1):
        where = f"{prefix}term {index}"
        if is_schedule(term.weight):
            out.append((f"{where} weight", term.weight))
        out += [(f"{where} {path}", schedule) for path, schedule in node_schedules(term.loss)]
        for name in term.loss.task_fields:
            for task, task_spec in getattr(term.loss, name).items():
                out += spec_schedules(task_spec, f"{prefix}task {task}: ")
        for name in term.loss.spec_fields:
            out += spec_schedules(getattr(term.loss, name), f"{prefix}every scale: ")
    return out
