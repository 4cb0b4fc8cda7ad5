"""The compiled loss: an nn.Module that adds its weighted terms.

``LossModule`` is what every compiled loss shares (single- and multi-task): logging-safe names for
``last_terms``, the notebook view, and the canonical expression recorded in ``state_dict`` so that a
checkpoint of another loss is refused by name rather than by a key error (or, worse, accepted).
"""

from __future__ import annotations

import contextlib
import numbers
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .call_inputs import check_names, readers
from .catalogue.schedules import is_schedule
from .clock import Clock
from .errors import LossConfigError, LossInputError
from .functional.schedules import value_at_clock
from .prediction import class_scores
from .running import check_loaded_statistics
from .spec import LossSpec
from .state_updates import StateUpdates
from .terms.base import TermModule, is_compiling, shape_of
from .terms.shared import SharedComputations
from .value_checks import DEFAULT_MODE, CheckMode, ValueCheckLog

# torch's key for get_extra_state() in a state_dict (torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX).
EXTRA_STATE_KEY = "_extra_state"
# What metric stores accept in a name: MLflow allows only letters, digits, _ / . - and space.
_UNSAFE_IN_NAME = re.compile(r"[^\w.\-/]+")
_SAFE_PREFIX = re.compile(r"[\w.\- /]*")


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast disabled on ``device_type`` (nothing to disable on devices autocast
    does not know, such as meta)."""
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None and not available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def metric_name(label: str) -> str:
    """A logging-safe version of a term's label: ``poly(focal(gamma=3), eps=1)`` ->
    ``poly_focal_gamma_3_eps_1`` (runs of other characters become one ``_``)."""
    return _UNSAFE_IN_NAME.sub("_", label).strip("_") or "term"


def logging_names(keys: Sequence[str], prefix: str = "") -> list[str]:
    """``metric_name`` of each key with ``prefix`` in front, made unique with ``_2``, ``_3``..."""
    if not isinstance(prefix, str) or not _SAFE_PREFIX.fullmatch(prefix):
        raise LossConfigError(
            f"prefix {prefix!r} has characters metric stores refuse; use letters, digits, _ / . - "
            "and spaces"
        )
    names: list[str] = []
    for key in keys:
        base = prefix + metric_name(key)
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}_{count}"
        names.append(name)
    return names


def _encode(expression: str) -> Tensor:
    # A tensor, not a str: checkpoint tools that move every entry (mmengine's weights_to_cpu) or
    # store only tensors (safetensors) keep working with a loss inside the model.
    return torch.tensor(list(expression.encode("utf-8")), dtype=torch.uint8)


def _decode(saved: Any) -> str | None:
    if isinstance(saved, Tensor) and saved.dtype == torch.uint8 and saved.dim() == 1:
        return bytes(saved.tolist()).decode("utf-8", errors="replace")
    if isinstance(saved, str):
        return saved
    return None


def _clock_loaded(module: LossModule, incompatible_keys: Any) -> None:
    """After ``load_state_dict``: the terms a zero weight switches off follow the loaded epoch."""
    module._epoch_changed(module.clock.host_epoch)


class LossModule(nn.Module):
    """Shared by ``CompiledLoss`` and ``MultiTaskLoss``: ``spec``, ``last_terms``, ``logged_terms``,
    the loss's canonical expression in its ``state_dict`` (key ``_extra_state``, UTF-8 bytes), and
    the clock of its schedules (``set_epoch``)."""

    spec: LossSpec
    last_terms: dict[str, Tensor]
    # False for the tasks of a multi-task loss: the multi-task loss records the whole expression.
    records_expression = True
    # When value checks are read (lossdsl.value_checks); the compiler sets it from check_values.
    check_values: CheckMode = DEFAULT_MODE

    def __init__(self) -> None:
        super().__init__()
        self.value_checks = ValueCheckLog()  # the calls this module owns, and their pending checks

    def read_checks(self) -> None:
        """Read the value checks of earlier calls still on their way from the device (with
        ``check_values="deferred"``) and raise the first error they found, naming its call. Call it
        where a bad target must not go unnoticed: at the end of training or validation."""
        self.value_checks.raise_found()

    # -- schedules
    @property
    def clock(self) -> Clock | None:
        """The schedules' clock, on the loss that owns the calls (its tasks and inner loss read their
        owner's); None when the loss has no schedule."""
        return self._modules.get("clock")

    def attach_clock(self) -> None:
        """Give this loss (the one that owns the calls) the clock its schedules follow."""
        self._modules["clock"] = Clock()  # (add_module refuses a name the class has: the property)
        self.register_load_state_dict_post_hook(_clock_loaded)

    def set_epoch(self, epoch: int) -> None:
        """Move the clock of the schedules that follow the epoch (``over=epoch``) to ``epoch``: call
        it at the start of every epoch (the Lightning callback and mmengine hook in
        ``lossdsl.integrations`` do). A loss without schedules accepts it and does nothing."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise LossInputError(
                f"set_epoch() takes the epoch as an integer >= 0, got {epoch!r} (the loss "
                f"{self.spec.to_expr()!r})",
                hint="count epochs from 0, as Lightning's trainer.current_epoch and mmengine's "
                "runner.epoch do",
            )
        if self.clock is not None:
            self.clock.set_epoch(int(epoch))
            self._epoch_changed(int(epoch))

    def _epoch_changed(self, epoch: int) -> None:
        """Decisions taken on the host from the epoch (which terms a zero weight switches off)."""

    def _advance_step(self) -> None:
        """A training-mode call that succeeded counts one step (called after its commit)."""
        if self.clock is not None and self.training:
            self.clock.advance()

    def logged_terms(self, prefix: str = "", *, floats: bool = True) -> dict[str, Any]:
        """``last_terms`` under names every metric store accepts (MLflow: ``[/\\w.\\- ]``), with
        ``prefix`` in front: ``loss.logged_terms(prefix="loss/")`` ->
        ``{"loss/focal": 0.21, "loss/ghm_bins_30": 0.05, "loss/total": 0.23}``.

        Term names given with ``name:`` in YAML are used as they are. ``floats=True`` reads each
        0-d value with ``.item()`` (one host synchronisation each: call it when you log, not every
        step); per-element values (``reduction=none``) stay tensors.
        """
        keys = list(self.last_terms)
        values = list(self.last_terms.values())
        if floats:  # reading values synchronises anyway: the pending checks are read too
            self.read_checks()
            values = [value.item() if value.dim() == 0 else value for value in values]
        return dict(zip(logging_names(keys, prefix), values))

    # -- the expression in state_dict
    def get_extra_state(self) -> Tensor:
        return _encode(self.spec.to_expr())

    def set_extra_state(self, state: Any) -> None:
        """Nothing to restore: the expression was compared in ``_load_from_state_dict``."""

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.records_expression:
            destination.pop(prefix + EXTRA_STATE_KEY, None)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        # torch loads a module's own entries before its children's: a mismatch is reported before
        # any running buffer or learnable weight of this loss is overwritten. torch passes
        # strict=True here whatever the caller asked, so a mismatch is refused even under
        # load_state_dict(strict=False); removing the entry is the way to load it anyway.
        key = prefix + EXTRA_STATE_KEY
        if not self.records_expression or key not in state_dict:
            # A task of a multi-task loss (its owner checked), or a checkpoint saved before the
            # expression was recorded: accepted as it is.
            state_dict[key] = self.get_extra_state()
        else:
            problem = self._saved_loss_problem(state_dict[key], key)
            if problem is not None:
                raise problem
        if self.records_expression:
            # Every running statistic of the loss (its terms', its tasks', dtp's) is checked here,
            # before torch loads this module's entries and then its children's: a damaged entry is
            # refused with nothing loaded (lossdsl.running).
            check_loaded_statistics(self, state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _saved_loss_problem(self, saved: Any, key: str) -> LossInputError | None:
        expression = _decode(saved)
        ours = self.spec.to_expr()
        if expression is None:
            return LossInputError(
                f"the state_dict entry {key!r} is not a lossdsl expression; this loss is {ours!r}"
            )
        if expression == ours:
            return None
        from .syntax import parse_text  # the text layers sit below this one; api sits above
        from .validate import build_spec

        try:
            saved = build_spec(parse_text(expression))
            same = saved.without_names().expand() == self.spec.without_names().expand()
        except Exception as error:  # noqa: BLE001 - e.g. a plug-in name not registered here
            same, unreadable = False, error
        else:
            unreadable = None
        if same:  # the same loss written another way (tasks in another order, a name expanded)
            return None
        why = f" (it does not parse here: {getattr(unreadable, 'reason', unreadable)})" if unreadable else ""
        return LossInputError(
            f"this state_dict was saved from the loss {expression!r}{why}, not from this loss {ours!r}",
            hint=f"compile the loss the checkpoint was saved with; to load its entries anyway, delete "
            f"state_dict[{key!r}] first",
        )

    def _repr_html_(self) -> str:
        """The term tree with parameters and module state, for notebooks."""
        from .describe import spec_html

        return spec_html(self.spec, module=self)

    def __repr__(self) -> str:
        return f"lossdsl.compile({self.spec.to_expr()!r})"


class CompiledLoss(LossModule):
    """``loss(input, target)`` = sum over terms of ``weight * term(input, target)``.

    Attributes:
        spec: the validated ``LossSpec`` this module was built from.
        terms: one module per term (they hold constants, learnable parameters, running buffers).
        last_terms: after each call, every term's reduced value before its weight, detached, under
            the term's name (``name:`` in YAML) or else its canonical expression, and ``total``, the
            loss (for logging; ``logged_terms()`` gives them logging-safe names and floats).
    """

    def __init__(self, spec: LossSpec, terms: Sequence[TermModule]) -> None:
        super().__init__()
        self.spec = spec
        self.terms = nn.ModuleList(terms)
        self.keys = [spec_term.name or term.label for spec_term, term in zip(spec.terms, terms)]
        self.weights = [term.weight for term in spec.terms]
        self.last_terms: dict[str, Tensor] = {}
        # Terms that need the softmax of the logits (ce, softmax blocks, softmax region losses) share
        # one log_softmax per call when there are several of them (terms.shared).
        softmax_users = [term for term in self.terms if getattr(term, "head", None) == "softmax"
                         and hasattr(term, "shared_log_softmax")]
        self.shares = len(softmax_users) > 1
        for term in softmax_users:
            term.shared_log_softmax = self.shares
        # The named call-time inputs the terms read (kd's teacher=), with the terms that read each.
        self.reads = readers(self.terms)
        # Terms whose weight follows the epoch and is 0 now: not computed (set on the host by
        # set_epoch, so reading it costs nothing and torch.compile recompiles only when it changes).
        self.silent = (False,) * len(self.terms)
        self._epoch_changed(0)

    def forward(
        self, input: Tensor, target: Tensor | None = None, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None, **inputs: Any,
    ) -> Tensor:
        """``weight`` multiplies every element term's per-element loss (broadcast from ``[N]``,
        ``[N, C]`` or the full shape); ``avg_factor`` replaces the denominator of ``mean`` and
        ``pos_mean`` (mmdetection's convention: ``sum / (avg_factor + eps)``); ``inputs`` are the
        named tensors terms read (``teacher=`` for kd). ``target`` may be left out when no term
        reads it (a loss of kd terms only)."""
        updates = StateUpdates()
        with self.value_checks.call(self.check_values):
            prepared = self.prepare(input, target, weight, avg_factor, updates=updates, inputs=inputs)
        total = self.combine(prepared)
        updates.commit()  # only now that every term has computed (lossdsl.state_updates)
        self._advance_step()
        return total

    def _epoch_changed(self, epoch: int) -> None:
        silent = tuple(is_schedule(w) and w.over == "epoch" and w.value_at(epoch) == 0 for w in self.weights)
        self.silent = (False,) * len(silent) if all(silent) else silent  # a loss never vanishes whole

    def prepare(
        self, input: Tensor, target: Tensor | None, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None, *, updates: StateUpdates | None = None,
        reductions: Sequence[str | None] | None = None,
        inputs: dict[str, Any] | None = None, clock: Clock | None = None,
    ) -> list[Any]:
        """Check and convert the inputs for every term. Nothing runs, nothing is updated: all the
        checks of a call happen before any term touches a running buffer. The terms stage their
        running-state updates in ``updates``, which the caller commits once the call has succeeded
        (a multi-task loss passes one for all its tasks, and its ``clock``). ``reductions``, one per
        term (None: the term's own), replace the terms' reductions for this call only. A term
        switched off by a zero weight is neither checked nor computed: its entry is None."""
        inputs = inputs or {}
        check_names(inputs, self.reads)
        clock = clock if clock is not None else self.clock
        reductions = [None] * len(self.terms) if reductions is None else list(reductions)
        prepared = [
            None if silent
            else term.prepare_call(input, target, weight, avg_factor, inputs, reduction=reduction)
            for term, silent, reduction in zip(self.terms, self.silent, reductions, strict=True)
        ]
        active = [item for item in prepared if item is not None]
        for item in active:
            item.updates = updates
            item.clock = clock
        if self.shares:
            shared = SharedComputations()
            for item in active:
                item.shared = shared
        unreduced = all(term.reduction_of(item) == "none"
                        for term, item in zip(self.terms, prepared) if item is not None)
        if unreduced and len(active) > 1:
            self._check_same_shapes(prepared)
        return prepared

    def combine(self, prepared: list[Any], record: dict[str, Tensor] | None = None) -> Tensor:
        """Compute every term from its prepared inputs and add them with their weights. ``record``,
        when given, receives this call's term values at once (``last_terms`` itself changes only
        when the whole call commits).

        Autocast is switched off around the arithmetic: the inputs are already in the computation
        dtype (float32 for half precision), and an op that autocast lists (a matmul, a dot product)
        must not drop back to bfloat16 halfway through a loss.
        """
        active = [(key, weight, term, inputs) for key, weight, term, inputs
                  in zip(self.keys, self.weights, self.terms, prepared) if inputs is not None]
        clock = active[0][3].clock
        with autocast_off(active[0][3].x.device.type):
            values = [term.compute(inputs) for _, _, term, inputs in active]
        total = None
        for (_, weight, _, _), value in zip(active, values):
            if is_schedule(weight):  # a 0-d tensor from the clock: no recompilation, no host sync
                weight = value_at_clock(weight, clock, value)
                weighted = weight * value
            else:
                weighted = value if weight == 1 else weight * value
            total = weighted if total is None else total + weighted
        if not is_compiling():
            logged = {key: value.detach() for (key, _, _, _), value in zip(active, values)}
            logged["total"] = total.detach()
            if record is not None:
                record.update(logged)
            # Replaced with the running state, when the whole call (every task) has succeeded.
            updates = active[0][3].updates
            if updates is None:
                self.last_terms = logged
            else:
                updates.defer(lambda: setattr(self, "last_terms", logged))
        return total

    def predict(self, logits: Tensor) -> Tensor:
        """Class scores at test time, as the loss's references define them (lossdsl.prediction):
        the head's softmax or sigmoid, or a term's own (post-hoc logit adjustment, EQLv2's)."""
        return class_scores(self.terms, logits, self.clock)

    def _check_same_shapes(self, prepared: list[Any]) -> None:
        pairs = [(term, term.unreduced_shape(inputs)) for term, inputs in zip(self.terms, prepared)
                 if inputs is not None]
        first, expected = pairs[0]
        for term, shape in pairs:
            if shape != expected:
                raise LossInputError(
                    f"reduction=none terms must have equal shapes to be added: "
                    f"{first.label} gives {shape_of(expected)}, {term.label} gives {shape_of(shape)}"
                )
