"""What every compiled term shares: input checks with readable messages, then a computation.

A term works in two steps so that a sum can check every term's inputs before any term updates a
running buffer (nothing is half-updated when the third term rejects its targets):
``prepare`` validates and converts the tensors, ``compute`` does the arithmetic and the reduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..catalogue.base import LossNode, node_taking
from ..catalogue.schedules import is_schedule
from ..errors import LossInputError
from ..functional.distributed import collectives_allowed, mean_over_processes
from ..functional.plan import compute_dtype
from ..functional.reduce import reduce_loss, reduce_total
from ..functional.schedules import value_at_clock
from ..functional.tracing import holds_no_data, is_compiling
from ..running import RunningStatistics
from ..spec import Term
from ..state_updates import StateUpdates
from ..value_checks import CallChecks, CheckMode, ValueCheckLog, current_checks
from .check_messages import index_hint, range_hint, range_text
from .shared import SharedComputations


@dataclass(kw_only=True)
class TermInputs:
    """What every term's prepared inputs carry besides its tensors: the call-time options."""

    weight: Tensor | None = None  # call-time weight, already shaped to broadcast to the loss
    avg_factor: Tensor | float | None = None  # call-time denominator of mean and pos_mean
    shared: SharedComputations | None = None  # what the terms of this call compute once
    # Running-state updates of this call, committed by the module that owns the call once every
    # term (and task) has computed: a failure anywhere leaves every buffer as it was.
    # (None: a term called on its own, which commits at the end of its own call.)
    updates: StateUpdates | None = None
    # This call's reduction where it replaces the term's own (mmdetection's reduction_override):
    # carried by the call, so concurrent and nested calls of one module never see each other's.
    reduction: str | None = None
    # The clock the schedules of the call follow (None: a loss without one, or a term on its own).
    clock: Any = None


def extremes(tensor: Tensor) -> Tensor:
    """``[min, max]`` of ``tensor`` on its device, in one pass (aminmax is also the cheapest way to
    see inf and NaN: on a CPU about 20x faster than ``isfinite(x).all()``)."""
    return torch.stack(torch.aminmax(tensor.detach()))


def host_range(tensor: Tensor) -> tuple[float, float]:
    """The smallest and largest value of ``tensor``, read in one host synchronisation."""
    return tuple(extremes(tensor).tolist())


def shape_text(tensor: Tensor) -> str:
    return "[" + ", ".join(str(d) for d in tensor.shape) + "]"


def shape_of(dims: Any) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


class TermModule(RunningStatistics):
    """One term of a loss: ``prepare(input, target)`` then ``compute(prepared)``.

    Its buffers are constants (non-persistent) and running statistics, which keep their dtype and
    are range-checked when loaded (``lossdsl.running``; counts >= 0 unless ``statistic_bounds`` says
    otherwise)."""

    # Whether the term takes a call-time weight (region losses compare whole masks: they do not).
    accepts_weight = True
    # The named tensors the term reads at call time besides weight and avg_factor (kd's teacher=),
    # each with what it must be (for the message when it is missing); ``prepare`` takes them by name.
    reads: dict[str, str] = {}
    # Whether class index C may mean background (the sigmoid head's opt-in, SPEC 4).
    reads_background = False
    # The loss as the user wrote it, before expansion (set by the compiler): hints name the options
    # it takes (focal(background=true), not bce's), and none that it does not.
    written: LossNode | None = None

    def __init__(self, term: Term, label: str, check_values: CheckMode, distributed: bool = True) -> None:
        super().__init__()
        self.term = term
        self.label = label
        self.reduction = term.reduction
        self.check_values = check_values  # True, False or "deferred" (lossdsl.value_checks)
        self.value_checks = ValueCheckLog()  # of calls to this term on its own
        # pos_mean divides by the positive count averaged over the process group (SPEC 4b).
        self.distributed = distributed
        # What the kernels' constants hold, slot by slot (see functional.plan.Slot): the name of a
        # constant buffer (a balance block's alpha), or a schedule, evaluated per call.
        self.slots: list[Any] = []

    # -- to implement
    def prepare(self, input: Tensor, target: Tensor) -> TermInputs:
        raise NotImplementedError

    def unreduced_shape(self, prepared: Any) -> torch.Size:
        """The shape of the per-element loss, known before anything is computed (a sum of
        reduction=none terms checks that the shapes agree before any term updates a buffer)."""
        raise NotImplementedError

    def compute(self, prepared: Any) -> Tensor:
        raise NotImplementedError

    # -- shared
    def forward(
        self, input: Tensor, target: Tensor, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None, **inputs: Any,
    ) -> Tensor:
        with self.value_checks.call(self.check_values):
            prepared = self.prepare_call(input, target, weight, avg_factor, inputs)
        prepared.updates = StateUpdates()
        value = self.compute(prepared)
        prepared.updates.commit()
        return value

    def read_checks(self) -> None:
        """Read the value checks of earlier calls still on their way from the device and raise the
        first error they found (lossdsl.value_checks)."""
        self.value_checks.raise_found()

    def prepare_call(
        self, input: Tensor, target: Tensor, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None, inputs: dict[str, Any] | None = None, *,
        reduction: str | None = None,
    ) -> TermInputs:
        """``prepare`` plus the call-time options (mmdetection's ``weight`` and ``avg_factor``, and
        a ``reduction`` that replaces the term's own for this call) and the named inputs the term
        reads (``inputs``: every name of the call; the loss that owns the call has already refused
        names no term reads)."""
        inputs = inputs or {}
        for name, meaning in self.reads.items():
            if inputs.get(name) is None:
                raise self.fail(f"needs the call-time input {name}= ({meaning})",
                                hint=f"call the loss as loss(input, target, {name}=...)")
        prepared = self.prepare(input, target, **{name: inputs[name] for name in self.reads})
        prepared.reduction = reduction
        if weight is not None:
            prepared.weight = self._call_weight(weight, self.unreduced_shape(prepared), input)
        if avg_factor is not None:
            prepared.avg_factor = self._avg_factor(avg_factor, input, self.reduction_of(prepared))
        return prepared

    def reduction_of(self, inputs: TermInputs) -> str:
        """The reduction of this call: the one the call brings, else the term's own."""
        return inputs.reduction or self.reduction

    def _call_weight(self, weight: Any, shape: torch.Size, input: Tensor) -> Tensor:
        """The call's weight shaped to broadcast to the per-element loss: the full shape, a leading
        part of it (``[N]``, ``[N, C]``: trailing dimensions are added), or, as mmdetection accepts,
        the full shape flattened."""
        if not self.accepts_weight:
            raise self.fail(
                "a region loss compares whole masks and takes no per-element weight",
                hint="weigh the term in the expression instead, e.g. 0.5 * dice()",
            )
        if not isinstance(weight, Tensor) or not weight.is_floating_point():
            got = type(weight).__name__ if not isinstance(weight, Tensor) else str(weight.dtype)
            raise self.fail(f"weight must be a floating-point tensor, got {got}")
        if weight.device != input.device:
            raise self.fail(f"weight is on {weight.device} but the input is on {input.device}")
        dims = tuple(weight.shape)
        if dims == tuple(shape[: len(dims)]):
            view = dims + (1,) * (len(shape) - len(dims))
        elif weight.dim() == 1 and weight.numel() == math.prod(shape) and len(shape) > 1:
            view = tuple(shape)
        else:
            raise self.fail(
                f"weight of shape {shape_text(weight)} does not fit the per-element loss of shape "
                f"{shape_of(shape)}",
                hint=f"give the full shape {shape_of(shape)} or a leading part of it, such as "
                f"{shape_of(shape[:1])}",
            )
        return weight.reshape(view)

    def _avg_factor(self, avg_factor: Any, input: Tensor, reduction: str | None = None) -> Tensor | float:
        reduction = reduction or self.reduction
        if reduction in ("sum", "batchmean"):
            raise self.fail(
                f"avg_factor replaces the denominator of mean and pos_mean; this term's reduction is "
                f"{reduction}",
            )
        if isinstance(avg_factor, Tensor):
            return self._avg_factor_tensor(avg_factor, input)
        if isinstance(avg_factor, bool) or not isinstance(avg_factor, (int, float)):
            raise self.fail(f"avg_factor must be a number or a 0-d tensor, got {type(avg_factor).__name__}")
        if not math.isfinite(avg_factor) or avg_factor < 0:
            raise self.fail(f"avg_factor must be a finite number >= 0, got {avg_factor}")
        return float(avg_factor)

    def _avg_factor_tensor(self, avg_factor: Tensor, input: Tensor) -> Tensor:
        """A tensor avg_factor (mmdetection passes ``reduce_mean(num_pos)``) checked like a number,
        in the loss's computation dtype: a float64 count must not turn a float32 loss into float64
        (two 0-d tensors promote to the wider dtype), and integer or half-precision counts work."""
        if avg_factor.numel() != 1:
            raise self.fail(f"avg_factor must be one number, got shape {shape_text(avg_factor)}")
        if avg_factor.dtype == torch.bool or avg_factor.is_complex():
            raise self.fail(f"avg_factor must be a real number, got a {avg_factor.dtype} tensor")
        value = avg_factor.reshape(()).to(device=input.device, dtype=compute_dtype(input))
        # A host read, as for every value check: skipped when they are off or while tracing. The
        # value read is the one used (a float64 count too large for float32 is inf there).
        if self.values_checked(avg_factor):
            number = float(value.detach())
            if not math.isfinite(number) or number < 0:
                raise self.fail(f"avg_factor must be a finite number >= 0, got {number:g} (a tensor)")
        return value

    def reduce(
        self, loss: Tensor, inputs: TermInputs, *, count: Tensor | float | None = None,
        positives: Tensor | int | None = None,
    ) -> Tensor:
        """The term's reduction of its per-element loss (already multiplied by the call weight). A
        0-d loss (one box ``[4]``, one distribution) is a batch of one."""
        return reduce_loss(
            loss, self.reduction_of(inputs), count=count, positives=positives,
            batch_size=loss.shape[0] if loss.dim() else 1,
            avg_factor=inputs.avg_factor, average_count=mean_over_processes if self.synchronises() else None,
        )

    def reduce_sum(
        self, total: Tensor, inputs: TermInputs, *, batch_size: int, count: Tensor | float,
        positives: Tensor | int | None = None,
    ) -> Tensor:
        """The same reduction from an already summed loss (a fused kernel summed for us)."""
        return reduce_total(
            total, self.reduction_of(inputs), count=count, positives=positives, batch_size=batch_size,
            avg_factor=inputs.avg_factor, average_count=mean_over_processes if self.synchronises() else None,
        )

    def synchronises(self) -> bool:
        """Whether this call sums its statistics over the process group (pos_mean's positive count,
        GHM-C's bin counts): in training mode only (SPEC 4b)."""
        return collectives_allowed(self.distributed, self.training)

    def stage_update(self, inputs: TermInputs, buffer: Tensor, value: Tensor) -> None:
        """Running state is never written while computing: the new value waits in the call's
        ``StateUpdates`` until the whole call has succeeded (see lossdsl.state_updates)."""
        if inputs.updates is None:
            raise RuntimeError(f"{self.label}: running state staged outside a call")  # a bug of ours
        inputs.updates.stage(buffer, value)

    def plugin_output(self, value: Any, function: str, shape: torch.Size, per: str, like: Tensor) -> Tensor:
        """What a plug-in's ``function`` returned, checked before anything uses it: a floating-point
        tensor of ``shape`` (one value per ``per``) on ``like``'s device; returned in ``like``'s
        dtype, the computation's. Anything else is an error naming the plug-in's function."""
        expected = f"a floating-point tensor of shape {shape_of(shape)} (one value per {per})"
        if not isinstance(value, Tensor):
            found = f"{type(value).__name__} {value!r}"[:80]
        elif not value.is_floating_point():
            found = f"a {value.dtype} tensor"
        elif value.shape != shape:
            found = f"shape {shape_text(value)}"
        elif value.device != like.device:
            found = f"a tensor on {value.device} (the input is on {like.device})"
        else:
            return value.to(like.dtype)
        raise self.fail(
            f"{function} must return {expected}; it returned {found}",
            hint="build it with torch operations from the p and y it is given, which gives it their "
            "dtype and device",
        )

    def fail(self, reason: str, hint: str | None = None) -> LossInputError:
        return LossInputError(f"{self.label}: {reason}", hint=hint)

    # -- value checks (SPEC 6): one helper per kind of check. Each states what it needs from the
    # data (a few statistics) and hands it to the call's CallChecks, which reads it now or, with
    # check_values="deferred", at a later call (lossdsl.value_checks).
    def values_checked(self, tensor: Tensor | None = None) -> bool:
        """Whether to look at the data: on unless switched off, skipped while torch.compile traces
        and on tensors that hold no data (meta or fake tensors, as shape inference passes)."""
        if not self.check_values or is_compiling():
            return False
        return tensor is None or not holds_no_data(tensor)

    @staticmethod
    def call_checks() -> CallChecks:
        """The checks of the call being prepared; outside a loss call (``prepare`` called directly)
        they are read at once."""
        return current_checks() or CallChecks(0, deferred=False)

    def check_finite(self, tensor: Tensor, what: str, valid: Tensor | None = None) -> None:
        """Value check: every element that counts (``valid``, broadcastable, when some are ignored)
        is finite. inf and NaN show in the extremes: one pass (aminmax; skippable)."""
        if not self.values_checked(tensor) or tensor.numel() == 0:
            return
        if valid is not None:
            tensor = torch.where(valid, tensor, torch.zeros((), dtype=tensor.dtype, device=tensor.device))

        def verdict(found: list) -> LossInputError | None:
            low, high = found
            if math.isfinite(low) and math.isfinite(high):
                return None
            return self.fail(
                f"{what} must be finite; found {'NaN' if math.isnan(low) or math.isnan(high) else 'inf'}",
                hint="find the non-finite entries with (~torch.isfinite(tensor)).nonzero()",
            )

        self.call_checks().expect(extremes(tensor), verdict)

    def check_tensors(self, input: Any, target: Any) -> None:
        for name, value in (("input", input), ("target", target)):
            if not isinstance(value, Tensor):
                raise self.fail(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not input.is_floating_point():
            raise self.fail(f"input must be floating point (logits or predictions), got {input.dtype}")
        if input.device != target.device:
            raise self.fail(f"input is on {input.device} but target is on {target.device}")
        for buffer in self.buffers(recurse=False):
            # Constants are cast to the input's device when used; running state cannot be.
            if buffer.device != input.device and self._is_running(buffer):
                raise self.fail(
                    f"the loss's running buffers are on {buffer.device} but the input is on {input.device}",
                    hint="move the loss with the model: loss.to(device)",
                )
        if input.dim() == 0:
            raise self.fail("input is a scalar; expected a batch of shape [N, ...]")

    def check_probabilities(self, target: Tensor, what: str = "targets") -> None:
        """Value check: soft or multi-hot targets lie in [0, 1] (skippable)."""
        if target.is_floating_point():
            self.check_range(target, 0, 1, what)

    def check_range(self, tensor: Tensor, low: float, high: float, what: str, why: str = "") -> None:
        """Value check: every element lies in [low, high] (one pass, aminmax; skippable). NaN fails
        (every comparison with it is False) and is named as such."""
        if not self.values_checked(tensor) or tensor.numel() == 0:
            return

        def verdict(found: list) -> LossInputError | None:
            found_low, found_high = found
            if found_low >= low and found_high <= high:
                return None
            return self.fail(
                f"{what} must lie in [{low:g}, {high:g}]{why}; {range_text(found_low, found_high)}",
                hint=range_hint(found_low, found_high, high),
            )

        self.call_checks().expect(extremes(tensor), verdict)

    def class_indices(
        self, target: Tensor, num_classes: int, ignore_index: int, background: bool = False
    ) -> tuple[Tensor, bool]:
        """Class-index targets of any integer dtype as int64, value-checked: they lie in [0, C) (or
        [0, C] with the background opt-in, C being the all-negative background label) or equal
        ``ignore_index``.

        The conversion comes first: ``ignore_index`` and the class range are compared as integers,
        never in the target's dtype (a uint8 mask compared with ``ignore_index=-1`` would wrap it to
        255). Returns the indices and whether no position is ignored, known when the values were
        looked at (then the caller skips its mask): during a synchronous check, and for data on the
        host, where looking costs no wait, even with checks off. A check deferred to a later call
        replaces the bad indices by ``ignore_index``, so that the call computes without them rather
        than failing on the device.
        """
        index = target.long()
        limit = num_classes + 1 if background else num_classes
        if index.numel() == 0 or is_compiling() or holds_no_data(index):
            return index, False
        checks = self.call_checks() if self.check_values else None
        if checks is not None and not checks.reads_now(index):
            bad = ((index < 0) | (index >= limit)) & (index != ignore_index)
            first = index.reshape(-1)[bad.reshape(-1).to(torch.uint8).argmax()]
            checks.expect(
                torch.stack((bad.sum(), first)),
                lambda found: self.index_error(found[1], num_classes, ignore_index, background)
                if found[0] else None,
            )
            return torch.where(bad, ignore_index, index), False
        if checks is None and index.device.type != "cpu":
            return index, False  # unchecked device data: no look at it
        low, high = (int(v) for v in host_range(index))
        if low >= 0 and high < limit:
            return index, not 0 <= ignore_index < limit
        if checks is None:
            return index, False  # unchecked: the kernels see the indices as they are
        bad = ((index < 0) | (index >= limit)) & (index != ignore_index)
        if bool(bad.any()):
            checks.report(self.index_error(int(index[bad][0]), num_classes, ignore_index, background))
            index = torch.where(bad, ignore_index, index)  # deferred: this call goes on without them
        return index, False

    def index_error(
        self, value: int, num_classes: int, ignore_index: int, background: bool
    ) -> LossInputError:
        """The error for a class index out of range, with hints that name only what this loss takes."""
        limit = num_classes + 1 if background else num_classes
        valid = f"0..{limit - 1}" + (f" ({num_classes} is the background)" if background else "")
        takes_background = self.reads_background and not background
        hint = index_hint(value, num_classes, background,
                          self.option_owner("background") if takes_background else None,
                          self.option_owner("ignore_index"))
        return self.fail(
            f"class index {value} is out of range for {num_classes} classes "
            f"(valid: {valid}, or ignore_index={ignore_index})", hint=hint,
        )

    def option_owner(self, option: str) -> str | None:
        """``name()`` of the node of the loss as written that takes ``option``, or None (a term built
        without the compiler names its base)."""
        node = node_taking(self.written_loss, option)
        return None if node is None else f"{node.kind_name()}()"

    @property
    def written_loss(self) -> LossNode:
        return self.written if self.written is not None else self.term.loss

    def check_softmax_classes(self, input: Tensor) -> None:
        """A softmax head needs at least 2 classes: over one, p = 1 everywhere and nothing trains."""
        if input.dim() >= 2 and input.shape[1] >= 2:
            return
        head_owner = node_taking(self.written_loss, "head")
        sigmoid = f"{head_owner.kind_name()}(head=sigmoid)" if head_owner is not None else "bce()"
        if input.dim() < 2:
            raise self.fail(f"softmax needs logits of shape [N, C, ...]; got {shape_text(input)}",
                            hint=f"for one logit per sample use the sigmoid head: {sigmoid}")
        if input.shape[1] == 0:
            raise self.fail(f"softmax needs at least one class (two to train anything); got logits of "
                            f"shape {shape_text(input)}")
        raise self.fail(
            f"softmax over 1 class (dimension 1 of {shape_text(input)}) gives p = 1 everywhere: the "
            "loss is constant and trains nothing",
            hint=f"for a binary mask use the sigmoid head with one logit per position: {sigmoid}",
        )

    def class_values(self, name: str, values: tuple[float, ...] | float | None) -> None:
        """Register a per-class (or scalar) constant as a buffer that follows .to(device). Kept in
        float64 (cast to the computation's dtype when used) so float64 losses see exact constants."""
        tensor = None if values is None else torch.tensor(values, dtype=torch.float64)
        # Constants come from the spec, so they stay out of state_dict (only running state goes there).
        self.register_buffer(name, tensor, persistent=False)

    def register_running_buffer(self, name: str, tensor: Tensor) -> None:
        """Running state (saved in state_dict). Like every buffer of a term it keeps its dtype."""
        self.register_buffer(name, tensor.to(torch.float32))

    def _is_running(self, buffer: Tensor) -> bool:
        return any(buffer is running for running in self.running_statistics().values())

    def lower_block(self, block: Any) -> Any:
        """The kernel step for a focusing, polynomial or balancing block (shared by both heads);
        None for a block the head handles itself. Balance weights become constant buffers, and
        scheduled parameters slots (``parameter``)."""
        from ..catalogue.modifiers import Balance, Modulate, Poly
        from ..functional.plan import BalanceStep, ModulateStep, PolyStep

        if isinstance(block, Modulate):
            gamma_pos, gamma_neg = block.exponents
            return ModulateStep(self.parameter(gamma_pos), self.parameter(gamma_neg), block.detach)
        if isinstance(block, Poly):
            return PolyStep(tuple(self.parameter(eps) for eps in block.coefficients))
        if isinstance(block, Balance):
            if is_schedule(block.alpha):
                return BalanceStep(self._slot(block.alpha))
            name = f"alpha{len(self.alpha_names)}"
            self.class_values(name, block.alpha)
            return BalanceStep(self._slot(name))
        return None

    @property
    def alpha_names(self) -> list[str]:
        """The constant buffers of the balance blocks, in step order (the slots that name a buffer)."""
        return [source for source in self.slots if isinstance(source, str)]

    def parameter(self, value: Any) -> Any:
        """A block parameter as a plan step holds it: the number itself, or, for a schedule, the
        ``Slot`` of the constant that holds its current value (a 0-d tensor per call: see
        ``slot_values``). The one way a term reads a scheduled parameter."""
        from ..functional.plan import Slot

        return Slot(self._slot(value)) if is_schedule(value) else value

    def _slot(self, source: Any) -> int:
        """The slot of a constant buffer's name or a schedule (an equal schedule shares its slot,
        so focal(gamma=ramp(...)) stays a symmetric focusing)."""
        for index, existing in enumerate(self.slots):
            if type(existing) is type(source) and existing == source:
                return index
        self.slots.append(source)
        return len(self.slots) - 1

    def slot_values(self, inputs: TermInputs, like: Tensor, shaped: Any = None) -> tuple[Tensor, ...]:
        """The constants of this call, slot by slot, in ``like``'s dtype and device: each constant
        buffer (passed through ``shaped``, when given), and each schedule's value at the call's
        clock."""
        values = []
        for source in self.slots:
            if isinstance(source, str):
                value = self.constant(source, like)
                values.append(value if shaped is None else shaped(value))
            else:
                values.append(value_at_clock(source, inputs.clock, like))
        return tuple(values)

    def constant(self, name: str, like: Tensor) -> Tensor | None:
        """A constant buffer on the computation's device and dtype."""
        value = getattr(self, name)
        return None if value is None else value.to(device=like.device, dtype=like.dtype)

    def check_class_count(self, name: str, values: Tensor | None, input: Tensor) -> None:
        if values is None or values.dim() == 0:
            return
        if input.dim() < 2:
            if values.numel() != 1:
                raise self.fail(
                    f"{name} has {values.numel()} values, but input of shape {shape_text(input)} "
                    "has no class dimension"
                )
            return
        if values.numel() != input.shape[1]:
            raise self.fail(
                f"{name} has {values.numel()} values but the input has {input.shape[1]} classes "
                f"(dimension 1 of {shape_text(input)})"
            )

    def extra_repr(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"
