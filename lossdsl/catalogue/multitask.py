"""Losses over named tasks: ``{seg: ce(), depth: 0.5 * l1()}`` and the two task-weighting schemes.

A multi-task loss takes a mapping of predictions and a mapping of targets with the same keys and
adds the tasks' losses, each with its weight:

- ``tasks`` (the ``{...}`` syntax): weight 1 (each task's own expression carries its weights);
- ``uncertainty``: learnable homoscedastic-uncertainty weights (Kendall, Gal and Cipolla 2018);
- ``dtp``: dynamic task prioritization from each task's performance (Guo et al. 2018).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn

from pydantic import AfterValidator, Field, Strict, WithJsonSchema, field_validator

from .base import LOSS_SCHEMA_MARKER, LossNode, NonNegative, described, register
from .spec import LossSpec


class FrozenDict(dict):
    """A dict that cannot change after it is built, and can be hashed.

    Specs are cached by text (``lossdsl.parse``) and shared, so a task popped by one user must not
    vanish from the next parse of the same text. A dict subclass rather than a Mapping, so pydantic
    serialises it, ``==`` compares it with plain dicts, and it prints like one.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a spec's tasks cannot be changed; build a new spec instead")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self) -> int:  # order-blind, as == between dicts is
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy would otherwise fill an empty instance item by item, through __setitem__.
        return (type(self), (dict(self),))


# In YAML each task is any loss form (an expression string, a node, a sum); the schema says so.
TaskLosses = Annotated[
    dict[str, LossSpec],
    AfterValidator(FrozenDict),
    WithJsonSchema({"type": "object", "minProperties": 1,
                    "additionalProperties": {LOSS_SCHEMA_MARKER: True}}),
]


class MultiTask(LossNode):
    category = "multitask"
    positional = "tasks"
    task_fields = ("tasks",)

    tasks: described(TaskLosses, "named tasks, each a whole loss: {seg: ce(), depth: l1()}")

    @field_validator("tasks")
    @classmethod
    def _named_tasks(cls, tasks: dict[str, Any]) -> dict[str, Any]:
        if not tasks:
            raise ValueError("needs at least one task")
        for name, spec in tasks.items():
            if not name.isidentifier():
                raise ValueError(f"task names must be identifiers, got {name!r}")
            if name == "total":  # last_terms logs the sum under "total"
                raise ValueError("'total' names the sum of the tasks in last_terms; choose another task name")
            problem = nesting_problem(name, spec)
            if problem:
                raise ValueError(problem)
        return tasks

    @property
    def head(self) -> None:  # a multi-task loss has no single probability to modify
        return None

    def expand(self) -> LossNode:
        # model_copy does not validate: the rebuilt tasks must be frozen here.
        return self.model_copy(update={"tasks": FrozenDict((k, v.expand()) for k, v in self.tasks.items())})


def nesting_problem(name: str, spec: LossSpec) -> str | None:
    """Why task ``name`` cannot hold ``spec`` (None when it can): each task is one plain loss."""
    if any(term.loss.task_fields for term in spec.terms):
        return f"task '{name}' is itself a multi-task loss; tasks do not nest"
    return None


@register
class Tasks(MultiTask):
    """Named tasks added with weight 1: ``sum_t L_t(pred[t], target[t])``."""

    kind: Literal["tasks"] = "tasks"
    bare = True
    summary = "named tasks, each with its own loss, added: {seg: ce(), depth: 0.5 * l1()}"
    paper = "multi-task learning (plain sum)"


@register
class Uncertainty(MultiTask):
    """Uncertainty weighting (Kendall, Gal and Cipolla 2018), one learnable ``s_t`` per task.

    - ``form=kendall`` (default), ``s_t = log sigma_t^2`` starting at 0: classification tasks
      ``exp(-s) L + s/2``, regression tasks (``mse``, ``l1``, ``smooth_l1``) ``exp(-s) L / 2 + s/2``;
    - ``form=simple``: ``exp(-s) L + s`` for every task (the widespread variant);
    - ``form=positive`` (Liebel and Koerner 2018): a learnable ``c_t`` starting at 1,
      ``L / (2 c^2) + log(1 + c^2)``, which keeps the regulariser positive.

    The parameters live in the module: give ``loss.parameters()`` to the optimizer.
    """

    kind: Literal["uncertainty"] = "uncertainty"
    form: described(Literal["kendall", "simple", "positive"],
                    "kendall: exp(-s) L + s/2 (regression L/2); simple: exp(-s) L + s; positive: "
                    "L / (2 c^2) + log(1 + c^2)") = "kendall"
    summary = "learnable uncertainty weights per task: exp(-s) L + s/2 (Kendall et al.)"
    paper = "Kendall, Gal and Cipolla 2018, Multi-Task Learning Using Uncertainty to Weigh Losses"


@register
class DTP(MultiTask):
    """Dynamic task prioritization (Guo et al. 2018): harder tasks weigh more.

    Each task's key performance indicator ``kpi`` (accuracy for a softmax task, ``1 - hamming loss``
    at logit 0 for a sigmoid task, or a value given with ``loss.observe(task=value)``, required for
    regression tasks) is averaged: the first observation starts ``k``, then
    ``k <- alpha * kpi + (1 - alpha) * k``. The task's weight is ``-(1 - k)^gamma log(k)``, without
    gradient, with ``k`` clamped to [1e-6, 1 - 1e-6]. The averages are buffers (in ``state_dict``)
    updated in training mode only.
    """

    kind: Literal["dtp"] = "dtp"
    gamma: described(NonNegative, "focusing exponent of the task weight -(1 - k)^gamma log k") = 1.0
    alpha: Annotated[float, Strict(), Field(gt=0, le=1, description="weight of a new indicator in the "
                                            "running average k <- alpha kpi + (1 - alpha) k")] = 0.9
    summary = "dynamic task prioritization: weight -(1-k)^gamma log k from each task's running KPI"
    paper = "Guo et al. 2018, Dynamic Task Prioritization for Multitask Learning"
