"""When a loss looks at its targets' values: at once, one call later, or never (SPEC 6, issue 18).

A value check (class index out of range, targets outside [0, 1], non-finite boxes) needs the data on
the host. Reading a CUDA tensor there waits for everything queued on the stream before it, so a
check read at every call synchronises every training step. ``check_values`` chooses:

- ``True``: every call reads its checks before anything computes; a bad target raises at its call.
- ``"deferred"`` (the default): the first call is checked like ``True``, so a wrong setup fails at
  once; after it, the checks are computed on the device next to the loss, copied to the host without
  waiting, and read by a later call of the same loss: the next one when the copy has arrived (no
  wait), at the latest the one after (waiting for that copy only, never for the work queued since).
  ``loss.read_checks()`` (and ``logged_terms()``, which reads values anyway) reads everything still
  pending. The error names the call the bad target came from. That call has computed as if its bad
  class indices were ignored (so nothing fails on the device), and other bad values as with
  ``check_values=False``; the call that raises changes nothing. Data already on the host (CPU
  tensors) is looked at for free, so on a CPU the bad call is known at once and reported just the
  same, one call later: what a test shows on a CPU is what happens on a GPU.
- ``False``: no value checks (class indices on the host are still looked at, for free, to skip the
  mask of ignored positions when there is none: ``TermModule.class_indices``).

Each check states what it needs from the data as a small tensor of statistics (a min and max, a
count) and a ``verdict`` that turns their host values into an error or None; ``CallChecks`` reads
them now or later. The loss module that owns a call (``CompiledLoss``, ``MultiTaskLoss``, a term
called on its own) holds a ``ValueCheckLog`` and opens one ``CallChecks`` per call; terms reach it
through a context variable while they prepare their inputs (thread-safe: concurrent calls each see
their own).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor

from .errors import LossInputError
from .functional.tracing import is_compiling

CheckMode = bool | Literal["deferred"]
DEFAULT_MODE: CheckMode = "deferred"

Verdict = Callable[[list[Any]], "LossInputError | None"]

# How many calls a check may stay on its way from the device before a call waits for it.
_PATIENCE = 1


def check_mode(value: Any) -> CheckMode:
    """``check_values`` as given to ``lossdsl.compile``, validated."""
    if value is True or value is False or value == "deferred":
        return value
    raise LossInputError(
        f"check_values must be True, False or 'deferred', got {value!r}",
        hint="'deferred' (the default) checks on the device and reports a bad target at a later call; "
        "True stops at the bad call itself",
    )


class CallChecks:
    """The value checks of one call of a loss."""

    def __init__(self, call: int, deferred: bool) -> None:
        self.call = call
        self.deferred = deferred
        self.scope: str | None = None  # the task being prepared, named in what is found
        self._waiting: list[tuple[Tensor, Verdict, str | None]] = []  # statistics on their way
        self._found: list[LossInputError] = []  # errors already known (host data), to raise later
        self._events: list[Any] = []

    def reads_now(self, tensor: Tensor) -> bool:
        """Whether a check of ``tensor`` looks at its values during the call: always when not
        deferred, and for data already on the host (reading it costs no wait)."""
        return not self.deferred or tensor.device.type == "cpu"

    def report(self, error: LossInputError) -> None:
        """An error a check found during the call: raised at once, or (deferred) kept for later."""
        if not self.deferred:
            raise error
        self._found.append(_in_scope(error, self.scope))

    def expect(self, statistics: Tensor, verdict: Verdict) -> None:
        """A check whose ``verdict`` needs ``statistics`` (a small tensor) on the host: read now, or
        (deferred, on a device) copied without waiting and read by a later call."""
        statistics = statistics.detach()
        if self.reads_now(statistics):
            error = verdict(statistics.tolist())
            if error is not None:
                self.report(error)
            return
        cuda = statistics.device.type == "cuda"
        host = torch.empty(statistics.shape, dtype=statistics.dtype, pin_memory=cuda)
        host.copy_(statistics, non_blocking=cuda)  # elsewhere the copy waits: no device to overlap
        if cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(statistics.device))
            self._events.append(event)
        self._waiting.append((host, verdict, self.scope))

    @property
    def pending(self) -> bool:
        return bool(self._waiting or self._found)

    def arrived(self) -> bool:
        return all(event.query() for event in self._events)

    def first_error(self) -> LossInputError | None:
        """What the call's checks found (waiting for its copies if they have not arrived)."""
        for event in self._events:
            event.synchronize()  # this call's copies only, not the work queued after them
        errors = list(self._found)
        for host, verdict, scope in self._waiting:
            error = verdict(host.tolist())
            if error is not None:
                errors.append(_in_scope(error, scope))
        self._waiting, self._found, self._events = [], [], []
        return errors[0] if errors else None


def _in_scope(error: LossInputError, scope: str | None) -> LossInputError:
    if scope:
        error.reason = f"{scope}: {error.reason}"
        error.args = (error.reason,)
    return error


_CURRENT: contextvars.ContextVar[CallChecks | None] = contextvars.ContextVar("lossdsl_checks", default=None)


def current_checks() -> CallChecks | None:
    """The checks of the call being prepared (None outside a loss call: checks are then read at once)."""
    return _CURRENT.get()


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Errors that checks keep for later while ``name`` (a task) is prepared say so, as the errors
    they raise at once do."""
    checks = _CURRENT.get()
    if checks is None:
        yield
        return
    outer, checks.scope = checks.scope, name
    try:
        yield
    finally:
        checks.scope = outer


class ValueCheckLog:
    """What the loss module that owns calls keeps between them: a call counter and the checks of
    earlier calls that have not been read yet. Not state: nothing of it is saved, copied or pickled."""

    def __init__(self) -> None:
        self.calls = 0
        self._pending: list[CallChecks] = []

    @contextlib.contextmanager
    def call(self, mode: CheckMode) -> Iterator[CallChecks | None]:
        """One call of the owning loss: raises what earlier calls' checks found, then opens this
        call's checks for its terms (none when checks are off or while torch.compile traces)."""
        if is_compiling() or mode is False:
            yield None
            return
        self.raise_found(wait=False)
        self.calls += 1
        checks = CallChecks(self.calls, deferred=mode == "deferred" and self.calls > 1)
        token = _CURRENT.set(checks)
        try:
            yield checks
        finally:
            _CURRENT.reset(token)
        if checks.pending:
            self._pending.append(checks)

    def raise_found(self, wait: bool = True) -> None:
        """Raise the first error found by an earlier call's checks (those of later calls stay
        pending). ``wait=False`` reads only the checks whose copies have arrived, and those of calls
        at least ``_PATIENCE`` calls back (waiting for that copy only, not for work queued since)."""
        still: list[CallChecks] = []
        error = None
        for checks in self._pending:
            ready = wait or self.calls - checks.call >= _PATIENCE or checks.arrived()
            if error is not None or not ready:
                still.append(checks)
                continue
            found = checks.first_error()
            if found is not None:
                error = _from_call(found, checks.call)
        self._pending = still
        if error is not None:
            raise error

    def __deepcopy__(self, memo: dict) -> ValueCheckLog:
        return ValueCheckLog()

    def __getstate__(self) -> dict:
        return {"calls": 0, "_pending": []}


def _from_call(error: LossInputError, call: int) -> LossInputError:
    """``error`` as found in an earlier call: it says which one."""
    error.reason = f"{error.reason} (in call {call} of this loss)"
    error.args = (error.reason,)
    later = ("after a loss's first call its checks are read by a later call (check_values=True stops at "
             "the bad call itself)")
    error.hint = f"{error.hint}; {later}" if error.hint else later
    return error
