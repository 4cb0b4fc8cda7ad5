"""The compiled multi-task loss: ``loss(preds, targets)`` over mappings with the tasks' names.

Each task is an ordinary compiled loss; this module adds them with weights that are constant
(``tasks``), learnable (``uncertainty``: parameters of this module) or driven by running task
performance (``dtp``: buffers of this module). Learnable weights and running statistics therefore
travel with ``loss.parameters()`` and ``loss.state_dict()``.
"""

from __future__ import annotations

import numbers
import reprlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .call_inputs import check_names
from .catalogue.multitask import DTP, MultiTask, Tasks, Uncertainty
from .errors import LossDSLError, LossInputError, unknown_name_hint
from .functional.distributed import collectives_allowed, sum_over_processes, with_gradients_averaged
from .functional.targets import index_to_one_hot
from .functional.tracing import holds_no_data, is_compiling
from .metrics import sigmoid_hits, softmax_hits
from .module import CompiledLoss, LossModule
from .running import Bounds, RunningStatistics
from .spec import LossSpec
from .state_updates import StateUpdates
from .value_checks import scope as checks_scope

# dtp's k is kept inside [eps, 1 - eps] so that -(1-k)^gamma log k stays finite.
DTP_EPS = 1e-6


def task_is_regression(spec: LossSpec) -> bool:
    """A task is a regression task when every term of its loss is (mse, l1, smooth_l1)."""
    return all(term.loss.is_regression for term in spec.terms)


def task_head(spec: LossSpec) -> str | None:
    """The head of the task's first classification term (what its KPI is measured on)."""
    for term in spec.expand().terms:
        if term.loss.spec_fields:  # deep supervision: its inner loss's head
            return task_head(term.loss.loss)
        head = getattr(term.loss, "head", None)
        if head is not None:
            return head
    return None


class ByTask(nn.Module):
    """Modules, parameters or buffers stored under the users' task names: ``container[name]``.

    ``nn.ModuleDict`` and ``nn.ParameterDict`` refuse keys that are attributes of ``nn.Module``
    (``type``, ``to``, ``training``, ``keys``...), yet a task may be named by any identifier. The
    entries go straight into ``_modules``, ``_parameters`` or ``_buffers``: those maps are all that
    ``state_dict``, ``load_state_dict``, ``.to()`` and ``parameters()`` walk, so the entries keep
    the task's name in their keys (``log_variance.type``). Read them as ``container[name]``, never
    as attributes: ``container.to`` is the method whatever the tasks are called.
    """

    store = "_modules"  # which of nn.Module's maps holds the entries

    def __init__(self, entries: Mapping[str, Any]) -> None:
        super().__init__()
        self._entries().update(entries)

    def _entries(self) -> dict[str, Any]:
        return self.__dict__[self.store]

    def __setattr__(self, name: str, value: Any) -> None:
        entries = self.__dict__.get(self.store)
        if entries is None or name not in entries:
            super().__setattr__(name, value)
        elif isinstance(value, (Tensor, nn.Module)):
            # torch assigning an entry (load_state_dict(assign=True)): nn.Module's route would
            # first drop the instance attribute of the same name (a task named ``training``).
            entries[name] = value
        else:
            # nn.Module's own attribute (``self.training = mode`` in train()), which its route
            # would refuse because an entry has that name.
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # copy and pickle look up protocol methods on the instance (``__deepcopy__``); nn.Module
        # would answer with the entry of a task named that way.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")
        return super().__getattr__(name)

    def __getitem__(self, name: str) -> Any:
        return self._entries()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def keys(self) -> Any:
        return self._entries().keys()

    def values(self) -> Any:
        return self._entries().values()

    def items(self) -> Any:
        return self._entries().items()

    def extra_repr(self) -> str:
        """Tensors by task, ``seg=0.25, depth=-0.1`` (read from the device: for printing only);
        modules print themselves as children."""
        if self.store == "_modules":
            return ""
        return ", ".join(f"{name}={value_text(value)}" for name, value in self.items())


def value_text(value: Tensor | None) -> str:
    """A 0-d value as a number (or a flag); anything else by its shape."""
    if value is None:
        return "None"
    if holds_no_data(value):
        return "<no data>"
    if value.dim() != 0:
        return f"<{value.dtype} tensor of shape {list(value.shape)}>"
    return f"{value.item():.6g}" if value.dtype != torch.bool else str(bool(value))


class TaskParameters(ByTask):
    """One learnable tensor per task; like any parameter it follows ``.to(dtype)``."""

    store = "_parameters"


class RunningState(RunningStatistics, ByTask):
    """One running statistic per task (a buffer, saved in ``state_dict``): float32 whatever the
    module's dtype, and range-checked when loaded (``bounds``, see lossdsl.running)."""

    store = "_buffers"

    def __init__(self, entries: Mapping[str, Tensor], bounds: Bounds) -> None:
        super().__init__(entries)
        self._bounds = bounds  # an attribute beside the entries (ByTask keeps them apart)

    def statistic_bounds(self, name: str) -> Bounds:
        return self._bounds


def in_task(name: str, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``step(*args, **kwargs)`` for task ``name``: an input error it raises says which task it comes
    from."""
    try:
        with checks_scope(f"task '{name}'"):  # what a deferred check finds names the task too
            return step(*args, **kwargs)
    except LossDSLError as error:
        error.reason = f"task '{name}': {error.reason}"
        error.args = (error.reason,)
        raise


def describe_value(value: Any) -> str:
    """What a user passed, in a few words, for error messages."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return f"{type(value).__name__} {reprlib.repr(value)}"


def out_of_range(name: str, shown: str) -> LossInputError:
    return LossInputError(f"the indicator of task '{name}' must lie in [0, 1], got {shown}")


class MultiTaskLoss(LossModule):
    """Weighted sum over named tasks. ``last_terms`` holds, per task ``t``, ``t`` (the raw loss),
    ``t.weight`` and ``t.weighted``, detached, plus ``total``."""

    def __init__(
        self, spec: LossSpec, node: MultiTask, tasks: dict[str, CompiledLoss], distributed: bool = True
    ) -> None:
        super().__init__()
        self.spec = spec
        self.node = node
        self.tasks = ByTask(tasks)
        for task in tasks.values():
            task.records_expression = False
        self.names = list(tasks)
        self.distributed = distributed
        self.last_terms: dict[str, Tensor] = {}
        self.regression = {name: task_is_regression(node.tasks[name]) for name in self.names}
        if isinstance(node, Uncertainty):
            start = 1.0 if node.form == "positive" else 0.0
            name = "scale" if node.form == "positive" else "log_variance"
            # Sorted by name, as nn.ParameterDict sorts a dict: an optimizer matches its saved state
            # to parameters by position, so their order must not depend on how tasks are listed.
            parameters = {t: nn.Parameter(torch.tensor(start)) for t in sorted(self.names)}
            setattr(self, name, TaskParameters(parameters))
        if isinstance(node, DTP):
            self.heads = {name: task_head(node.tasks[name]) for name in self.names}
            self.ignore_index = {
                name: next((t.ignore_index for t in tasks[name].terms if hasattr(t, "ignore_index")), -100)
                for name in self.names
            }
            # Index C is mmdetection's background label where the task's loss accepts it: the KPI
            # reads it as an all-negative row, as the loss does.
            self.background = {
                name: any(getattr(t, "background", False) for t in tasks[name].terms) for name in self.names
            }
            # By task name, not by position: the same tasks listed in another order are an equal
            # spec, and a state_dict saved from one must resume the other.
            self.kpi_average = RunningState({t: torch.zeros((), dtype=torch.float32) for t in self.names},
                                            Bounds("dtp's average of a task's indicator", 0.0, 1.0))
            self.kpi_seen = RunningState({t: torch.zeros((), dtype=torch.bool) for t in self.names},
                                         Bounds("dtp's flag of a task's first indicator", 0.0, 1.0))
            # Tasks given to observe() since the last training step: their value replaces the
            # measured indicator for that step (it was blended in twice before).
            self.observed: set[str] = set()
            # Tasks whose indicator is known to exist, so the check stops reading the buffer.
            self._known_seen: set[str] = set()

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if isinstance(self.node, DTP):
            # What was learnt about the replaced averages no longer holds: which tasks have an
            # indicator is read from the loaded flags, and observed values were blended into the
            # averages that the checkpoint replaces.
            self._known_seen.clear()
            self.observed.clear()

    # -- inputs
    def _check_keys(self, preds: Any, targets: Any) -> None:
        for what, mapping in (("predictions", preds), ("targets", targets)):
            if not isinstance(mapping, Mapping):
                raise LossInputError(
                    f"a multi-task loss takes mappings of {what} by task name "
                    f"({', '.join(self.names)}); got {type(mapping).__name__}"
                )
            missing = [name for name in self.names if name not in mapping]
            if missing:
                raise LossInputError(f"{what} have no entry for task '{missing[0]}'",
                                     hint=f"tasks: {', '.join(self.names)}")
            extra = [name for name in mapping if name not in self.tasks]
            if extra:
                raise LossInputError(
                    f"{what} have an entry '{extra[0]}' that is not a task of this loss",
                    hint=unknown_name_hint(str(extra[0]), self.names, "tasks"),
                )

    # -- the weighting schemes
    def forward(
        self, preds: Mapping[str, Tensor], targets: Mapping[str, Tensor],
        weight: Mapping[str, Tensor] | None = None, avg_factor: Mapping[str, Tensor | float] | None = None,
        **inputs: Mapping[str, Tensor],
    ) -> Tensor:
        """``weight``, ``avg_factor`` and the named inputs terms read (``teacher=``): call-time
        options per task (mappings by task name, any subset of the tasks), passed to that task's
        loss (SPEC section 4)."""
        self._check_keys(preds, targets)
        weights = self._per_task("weight", weight)
        avg_factors = self._per_task("avg_factor", avg_factor)
        named = self._named_inputs(inputs)
        # Every task checks its inputs before any of them computes; running state (the tasks' own
        # and dtp's indicators) is staged in one StateUpdates and committed once everything has
        # computed, so a failure in any task leaves every buffer as it was.
        updates = StateUpdates()
        with self.value_checks.call(self.check_values):
            prepared = {
                name: in_task(name, self.tasks[name].prepare, preds[name], targets[name], weights.get(name),
                              avg_factors.get(name), updates=updates, inputs=named[name], clock=self.clock)
                for name in self.names
            }
        if isinstance(self.node, DTP):
            # A missing indicator is an input error: raise it before any task updates a buffer.
            self._require_indicators()
        raw = {name: in_task(name, self.tasks[name].combine, prepared[name]) for name in self.names}
        k = self._update_dtp(preds, targets, updates) if isinstance(self.node, DTP) else {}
        learned = self._learned_weights()
        total = None
        logged: dict[str, Tensor] = {}
        for name in self.names:
            weighted, weight = self._weigh(name, raw[name], k, learned)
            total = weighted if total is None else total + weighted
            logged[name] = raw[name].detach()
            logged[f"{name}.weight"] = weight.detach() if isinstance(weight, Tensor) else torch.tensor(weight)
            logged[f"{name}.weighted"] = weighted.detach()
        updates.commit()
        self._advance_step()
        if not is_compiling():
            logged["total"] = total.detach()
            self.last_terms = logged
        return total

    def synchronises(self) -> bool:
        """Whether this call sums dtp's indicators and averages uncertainty's gradients over the
        process group: in training mode only (SPEC 4b)."""
        return collectives_allowed(self.distributed, self.training)

    def _per_task(self, what: str, options: Any) -> Mapping[str, Any]:
        if options is None:
            return {}
        if not isinstance(options, Mapping):
            example = f"{what}={{'{self.names[0]}': ...}}"
            raise LossInputError(
                f"a multi-task loss takes {what} as a mapping by task name, e.g. {example}; "
                f"got {type(options).__name__}"
            )
        extra = [name for name in options if name not in self.tasks]
        if extra:
            raise LossInputError(
                f"{what} has an entry '{extra[0]}' that is not a task of this loss",
                hint=unknown_name_hint(str(extra[0]), self.names, "tasks"),
            )
        return options

    def _epoch_changed(self, epoch: int) -> None:
        for name in self.names:
            self.tasks[name]._epoch_changed(epoch)

    def _named_inputs(self, inputs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The named inputs (``teacher={"cls": t}``) regrouped by task, each name checked: read by
        some task, and given only to tasks that read it."""
        read = {key: [f"task '{name}'" for name in self.names if key in self.tasks[name].reads]
                for key in dict.fromkeys(k for name in self.names for k in self.tasks[name].reads)}
        check_names(inputs, read)
        by_task: dict[str, dict[str, Any]] = {name: {} for name in self.names}
        for key, value in inputs.items():
            for name, tensor in self._per_task(key, value).items():
                if key not in self.tasks[name].reads:
                    raise LossInputError(
                        f"task '{name}' reads no input {key}=; {' and '.join(read[key])} "
                        f"{'reads' if len(read[key]) == 1 else 'read'} it",
                    )
                by_task[name][key] = tensor
        return by_task

    def _learned_weights(self) -> dict[str, Tensor]:
        """uncertainty's parameters by task, their gradients averaged over the process group when
        distributed (SPEC 4b), so every rank keeps identical weights with or without DDP."""
        if not isinstance(self.node, Uncertainty):
            return {}
        store = self.scale if self.node.form == "positive" else self.log_variance
        names = list(store.keys())
        values = [store[name] for name in names]
        if self.synchronises():
            values = with_gradients_averaged(*values)
        return dict(zip(names, values))

    def _weigh(
        self, name: str, loss: Tensor, k: Mapping[str, Tensor], learned: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor | float]:
        node = self.node
        if isinstance(node, Tasks):
            return loss, 1.0
        if isinstance(node, Uncertainty):
            if node.form == "positive":
                c = learned[name]
                weight = 1 / (2 * c * c)
                return weight * loss + torch.log1p(c * c), weight
            s = learned[name]
            weight = torch.exp(-s)
            if node.form == "simple":
                return weight * loss + s, weight
            if self.regression[name]:
                weight = weight / 2
            return weight * loss + s / 2, weight
        # dtp: the weight follows the running KPI and carries no gradient.
        k_task = k[name].clamp(DTP_EPS, 1 - DTP_EPS)
        weight = (-((1 - k_task) ** node.gamma) * torch.log(k_task)).detach()
        return weight * loss, weight

    # -- dtp's running indicators
    def observe(self, /, **kpis: float | Tensor) -> None:
        """Give dtp the key performance indicator of some tasks, e.g. ``loss.observe(depth=0.8)``.

        Values are numbers in [0, 1] (Python numbers or 0-d tensors of any dtype and device),
        higher is better. Required for regression tasks, optional for the others (it replaces
        their measured indicator at the next training-mode call that succeeds). Explicit calls
        update the running averages in any mode. All values are checked before any is stored.
        """
        if not isinstance(self.node, DTP):
            raise LossInputError("observe() belongs to dtp losses; this loss has no indicators")
        values = {name: self._indicator(name, value) for name, value in kpis.items()}
        for name, value in values.items():
            self._average(name, value)
            self.observed.add(name)

    def _indicator(self, name: str, value: Any) -> Tensor:
        """One task's observed indicator as a float32 0-d tensor beside its average, detached."""
        if name not in self.tasks:
            raise LossInputError(f"no task '{name}'", hint=unknown_name_hint(name, self.names, "tasks"))
        # bool is a Python int and a torch dtype, but True is no score: it is refused like a string.
        if isinstance(value, Tensor):
            is_number = value.dim() == 0 and value.dtype != torch.bool and not value.is_complex()
        else:
            is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not is_number:
            raise LossInputError(
                f"the indicator of task '{name}' must be one number in [0, 1] (a Python number or "
                f"a 0-d tensor), got {describe_value(value)}"
            )
        device = self.kpi_average[name].device
        if isinstance(value, Tensor):
            value = value.detach().to(device=device, dtype=torch.float32)
            if not is_compiling() and not bool((value >= 0) & (value <= 1)):  # NaN fails too
                raise out_of_range(name, f"{float(value):g}")
            return value
        if not 0 <= value <= 1:  # compared before float(), which overflows on a huge int
            raise out_of_range(name, reprlib.repr(value))
        return torch.tensor(float(value), dtype=torch.float32, device=device)

    def _average(self, name: str, kpi: Tensor, updates: StateUpdates | None = None) -> Tensor:
        """The task's new average after ``kpi``: stored at once (``observe``), or staged in
        ``updates`` to be committed when the whole call has succeeded."""
        alpha = self.node.alpha
        average, seen = self.kpi_average[name], self.kpi_seen[name]
        # Running state never joins an autograd graph: it would keep every step's graph alive.
        kpi = kpi.detach()
        # The first observation starts the average; later ones are blended in.
        new = torch.where(seen, alpha * kpi + (1 - alpha) * average, kpi)
        staged = StateUpdates() if updates is None else updates
        staged.stage(average, new)
        staged.stage(seen, torch.ones_like(seen))
        if updates is None:
            staged.commit()
        return new

    def _measured(self) -> list[str]:
        return [name for name in self.names if not self.regression[name] and self.heads[name]]

    def _require_indicators(self) -> None:
        measured = self._measured()
        for name in self.names:
            if name in measured or name in self._known_seen:
                continue
            # Looks at the buffer (a host sync) only until the task's first indicator has been seen.
            if not is_compiling() and not bool(self.kpi_seen[name]):
                raise LossInputError(
                    f"dtp needs an indicator for regression task '{name}' before its first step",
                    hint=f"call loss.observe({name}=value) with a score in [0, 1], higher is better",
                )
            self._known_seen.add(name)

    def _update_dtp(
        self, preds: Mapping[str, Tensor], targets: Mapping[str, Tensor], updates: StateUpdates
    ) -> dict[str, Tensor]:
        """Blend this batch's indicators into the averages (training mode) and return the ``k`` per
        task that weighs this step. In eval mode nothing is stored; a task never seen yet is
        weighed by this batch's indicator rather than by an empty average."""
        measured = self._measured()
        observed = set(self.observed)
        if self.training:
            # The observed values stand for this step's update: they are used up once the step
            # has succeeded, not before (a failure leaves them for the next step).
            updates.defer(lambda: self.observed.difference_update(observed))
        k = {name: self.kpi_average[name] for name in self.names}
        if not measured:
            return k
        counts = []
        for name in measured:
            counts += list(self._hits(name, preds[name], targets[name]))
        # One all_reduce for every task's (hits, total): all processes see the whole batch.
        stacked = torch.stack(counts)
        if self.synchronises():
            stacked = sum_over_processes(stacked)
        for i, name in enumerate(measured):
            # Observed tasks are still counted above, so every process reduces the same shape.
            if name in observed:
                continue
            hits, total = stacked[2 * i], stacked[2 * i + 1]
            kpi = (hits / total.clamp(min=1)).to(torch.float32)
            if self.training:
                k[name] = self._average(name, kpi, updates)  # committed with the rest of the call
            else:
                k[name] = torch.where(self.kpi_seen[name], self.kpi_average[name], kpi)
        return k

    def _hits(self, name: str, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(logits, (list, tuple)):  # deep supervision: measured at full resolution
            logits = logits[0]
        logits = logits.detach()
        ignore = self.ignore_index[name]
        if self.heads[name] == "softmax":
            if target.shape == logits.shape:  # probability targets: their argmax is the label
                target = target.argmax(dim=1)
            return softmax_hits(logits, target.long(), ignore)
        if target.shape != logits.shape:  # class indices on a sigmoid head
            classes = logits.shape[1]
            # (a bad index is the task's value check to report, maybe a call later: not counted here)
            one_hot, valid = index_to_one_hot(target, classes, ignore, background=self.background[name],
                                              out_of_range_ignored=True)
            agree = ((logits > 0) == (one_hot > 0.5)) & valid
            counted = valid.sum().to(torch.float64) * classes
            return agree.sum().to(torch.float64), counted
        return sigmoid_hits(logits, target)



__all__ = ["ByTask", "MultiTaskLoss", "RunningState", "TaskParameters", "task_head", "task_is_regression"]
