"""Long-tail terms: class statistics and what the long-tail names make of them (functional.longtail).

- ``ClassFrequency``, a part of a softmax or sigmoid term: the counts its long-tail nodes read (given
  lists and files as constants; ``online`` and seesaw's counts as one running buffer per term,
  updated from each training-mode call's targets and summed over the process group in one
  ``all_reduce``), the logit shift of ``logit_adjust``, ``ldam`` or ``seesaw``, and the sample
  weights of ``class_balanced``;
- ``ClassBalancedSigmoidTerm``: a sigmoid term whose kernel gets ``class_balanced``'s weights;
- ``EQLv2Term``: ``eqlv2`` with its gradient statistics.

Running statistics are float64 (exact counts beyond float32's 2^24) and empty until the first
training call tells how many classes there are; ``load_state_dict`` sizes them from the checkpoint.
Under DDP every rank holds the same statistics (they are summed over the group), so the buffer
broadcast of a DDP-wrapped model that holds the loss changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from ..catalogue.counts import given_counts
from ..catalogue.likelihoods import BCE
from ..catalogue.longtail import LDAM, ClassBalanced, EQLv2, LogitAdjust, Seesaw
from ..catalogue.schedules import is_schedule
from ..errors import LossInputError
from ..functional.distributed import sum_over_processes
from ..functional.longtail import (
    batch_counts,
    counted,
    effective_number_weights,
    eqlv2_loss,
    eqlv2_statistics,
    eqlv2_weights,
    ldam_margins,
    log_prior,
    sample_weights,
    seesaw_shift,
)
from ..functional.plan import SampleWeightStep, compute_dtype
from ..functional.schedules import value_at_clock
from ..functional.targets import per_class, zero_ignored
from ..running import RunningStatistics
from ..spec import Term
from .base import TermInputs, TermModule, shape_of, shape_text
from .sigmoid import SigmoidInputs, SigmoidTerm

ONLINE_BUFFER = "class_counts"


def size_from_checkpoint(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                         names: tuple[str, ...]) -> None:
    """Before torch copies a checkpoint in: a statistic still empty here (no call yet) takes the
    checkpoint's shape, and one the checkpoint holds empty is emptied, so that a loss saved at any
    point loads into a fresh one. Two different class counts are left to torch's size-mismatch
    error."""
    for name in names:
        saved = state_dict.get(prefix + name)
        ours = module._buffers.get(name)
        if not isinstance(saved, Tensor) or ours is None or saved.shape == ours.shape:
            continue
        if ours.numel() == 0 or saved.numel() == 0:
            module._buffers[name] = torch.zeros(saved.shape, dtype=ours.dtype, device=ours.device)


def stage(module: nn.Module, inputs: TermInputs, name: str, value: Tensor, label: str) -> None:
    """A statistic's new value, committed with the rest of the call's state (lossdsl.state_updates)."""
    if inputs.updates is None:
        raise RuntimeError(f"{label}: running state staged outside a call")  # a bug of ours
    inputs.updates.stage_sized(module, name, value)


class ClassFrequency(RunningStatistics):
    """The long-tail part of a softmax or sigmoid term.

    Args:
        nodes: the term's long-tail nodes (its ``logit_adjust`` and ``class_balanced`` blocks, its
            ``ldam`` or ``seesaw`` base).
        label: the term's label, for messages.
        distributed: sum the online counts over the process group (torch.distributed).
    """

    def __init__(self, nodes: tuple[Any, ...], label: str, distributed: bool) -> None:
        super().__init__()
        self.label = label
        self.distributed = distributed
        # Each node's counts: the name of a constant buffer, or of the one running buffer.
        self.sources: dict[int, str] = {}
        for index, node in enumerate(nodes):
            given = given_counts(getattr(node, "counts", None))
            if given is None:  # counts=online, and seesaw's own counts
                self.sources[index] = ONLINE_BUFFER
            else:
                name = f"given_counts{index}"
                self.register_buffer(name, torch.tensor(given, dtype=torch.float64), persistent=False)
                self.sources[index] = name
        if ONLINE_BUFFER in self.sources.values():
            self.register_buffer(ONLINE_BUFFER, torch.zeros(0, dtype=torch.float64))
        # Hyper-parameters are plain numbers, each read in one place below.
        self.shift: Any = None  # the node that shifts the logits, and the index of its counts
        self.shift_slot = self.balance_slot = -1
        self.balance: ClassBalanced | None = None
        for index, node in enumerate(nodes):
            if isinstance(node, (LogitAdjust, LDAM, Seesaw)):
                self.shift, self.shift_slot = node, index
            elif isinstance(node, ClassBalanced):
                self.balance, self.balance_slot = node, index

    # -- checks before anything is computed
    def check(self, input: Tensor) -> None:
        """The given counts and the running ones fit the logits' classes (dimension 1)."""
        classes = input.shape[1]
        for name in self._buffers:
            counts = self._buffers[name]
            if name == ONLINE_BUFFER:
                if counts.device != input.device:
                    raise LossInputError(
                        f"{self.label}: the loss's running class counts are on {counts.device} but "
                        f"the input is on {input.device}", hint="move the loss with the model: "
                        "loss.to(device)")
                if counts.numel() not in (0, classes):
                    raise LossInputError(
                        f"{self.label}: the running class counts hold {counts.numel()} classes but the "
                        f"input has {classes} (dimension 1 of {shape_text(input)})",
                        hint="a loss counts one set of classes; compile a new loss for another")
            elif counts.numel() != classes:
                raise LossInputError(
                    f"{self.label}: counts has {counts.numel()} values but the input has {classes} "
                    f"classes (dimension 1 of {shape_text(input)})")

    # -- the counts of a call
    def counts(self, target: Tensor, valid: Tensor | None, is_index: bool, classes: int,
               inputs: TermInputs) -> dict[str, Tensor]:
        """Every source's counts for this call (float64 ``[C]``, read as ``max(n, 1)``); in training
        mode the running counts first add this batch's targets (summed over the process group),
        and the new counts are staged."""
        out = {}
        for name in set(self.sources.values()):
            counts = self._buffers[name]
            if name == ONLINE_BUFFER:
                if counts.numel() == 0:
                    counts = torch.zeros(classes, dtype=torch.float64, device=target.device)
                if self.training:
                    batch = batch_counts(target, classes, valid, is_index)
                    counts = counts + (sum_over_processes(batch) if self.distributed else batch)
                    stage(self, inputs, ONLINE_BUFFER, counts, self.label)
                counts = counted(counts)
            out[name] = counts.to(target.device)
        return out

    def prior_counts(self, slot: int, classes: int, device: torch.device) -> Tensor:
        """The counts a node reads outside a call (prediction): the running ones as they stand."""
        name = self.sources[slot]
        counts = self._buffers[name]
        if name != ONLINE_BUFFER:
            return counts.to(device)
        if counts.numel() == 0:
            counts = torch.zeros(classes, dtype=torch.float64, device=device)
        return counted(counts).to(device)

    # -- what the nodes make of them
    def shifted_logits(self, x: Tensor, target: Tensor, valid: Tensor | None,
                       counts: dict[str, Tensor], clock: Any = None) -> Tensor:
        """The logits the term's loss sees: ``logit_adjust``'s, ``ldam``'s or ``seesaw``'s
        (``clock``: the call's, which a scheduled ``tau`` follows)."""
        node = self.shift
        if node is None or (isinstance(node, LogitAdjust) and node.posthoc):
            return x
        n = counts[self.sources[self.shift_slot]]
        if isinstance(node, LogitAdjust):
            return x + self.prior_shift(n, x, clock)
        safe = target if valid is None else torch.where(valid, target, torch.zeros_like(target))
        if isinstance(node, LDAM):
            margin = (ldam_margins(n, node.max_m) * node.s).to(x.dtype)
            scaled = x * node.s  # a new tensor: the margins go into it in place
            return scaled.scatter_add_(1, safe.unsqueeze(1), -margin[safe].unsqueeze(1))
        return x + seesaw_shift(x, safe, torch.log(n), node.p, node.q, node.eps)

    def class_weights(self, counts: dict[str, Tensor], dtype: torch.dtype,
                      clock: Any = None) -> Tensor | None:
        """``class_balanced``'s weight of each class ``[C]`` (``beta`` is read here only, at
        ``clock`` when it follows a schedule: DRW), or None."""
        if self.balance is None:
            return None
        n = counts[self.sources[self.balance_slot]]
        return effective_number_weights(n, parameter_value(self.balance.beta, clock, n)).to(dtype)

    def sample_weight(self, target: Tensor, valid: Tensor | None, is_index: bool,
                      counts: dict[str, Tensor], dtype: torch.dtype, clock: Any = None) -> Tensor | None:
        """``class_balanced``'s weight of every position (``[N, d1, ...]``), or None."""
        weights = self.class_weights(counts, dtype, clock)
        return None if weights is None else sample_weights(weights, target, valid, is_index)

    def posthoc_logits(self, x: Tensor, clock: Any = None) -> Tensor | None:
        """Post-hoc logit adjustment ``z - log(pi^tau + 1e-12)``, when the term is set for it."""
        node = self.shift
        if not (isinstance(node, LogitAdjust) and node.posthoc):
            return None
        n = self.prior_counts(self.shift_slot, x.shape[1], x.device)
        return x - self.prior_shift(n, x, clock)

    def prior_shift(self, n: Tensor, x: Tensor, clock: Any = None) -> Tensor:
        """``logit_adjust``'s ``log(pi^tau + 1e-12)`` per class, shaped to add to ``x`` (``tau`` is
        read here only, for training and prediction alike, at ``clock`` when it follows a schedule)."""
        tau = parameter_value(self.shift.tau, clock, n)
        return per_class(log_prior(n, tau).to(x.dtype), x.dim())

    # -- state (float64 whatever the module's dtype, range-checked on load: lossdsl.running)
    sized_by_first_call = (ONLINE_BUFFER,)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        size_from_checkpoint(self, state_dict, prefix, (ONLINE_BUFFER,))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def parameter_value(value: Any, clock: Any, like: Tensor) -> Any:
    """A long-tail parameter as the computation reads it: the number, or a schedule's value at
    ``clock`` (a 0-d tensor of ``like``'s dtype and device; None reads epoch and step 0)."""
    if not is_schedule(value):
        return value
    return value_at_clock(value, clock, like)


def long_tail_nodes(base: Any, blocks: tuple[Any, ...]) -> tuple[Any, ...]:
    """The nodes of a term's chain that ``ClassFrequency`` handles."""
    kinds = (LogitAdjust, LDAM, Seesaw, ClassBalanced)
    return tuple(node for node in (base, *blocks) if isinstance(node, kinds))


@dataclasses.dataclass
class ClassBalancedSigmoidInputs(SigmoidInputs):
    classes: Tensor | None = None  # the targets before smoothing: class indices or dense
    classes_are_indices: bool = False
    classes_valid: Tensor | None = None  # for class indices: the positions not ignored


class ClassBalancedSigmoidTerm(SigmoidTerm):
    """A sigmoid term with a ``class_balanced`` block: each sample's weight (``[N, 1, d1, ...]``,
    every class of the sample alike) goes into the kernel as the last constant."""

    def __init__(self, term: Term, label: str, check_values: bool, base: BCE,
                 blocks: tuple[Any, ...] = (), synchronise: bool = True) -> None:
        super().__init__(term, label, check_values, base, blocks, synchronise)
        self.frequency = ClassFrequency(long_tail_nodes(base, blocks), label, synchronise)

    def lower_block(self, block: Any) -> Any:
        if isinstance(block, ClassBalanced):
            return SampleWeightStep()
        return super().lower_block(block)

    def prepare(self, input: Tensor, target: Tensor) -> ClassBalancedSigmoidInputs:
        prepared = super().prepare(input, target)
        self.frequency.check(input)
        fields = {field.name: getattr(prepared, field.name) for field in dataclasses.fields(prepared)}
        if target.shape == input.shape:
            return ClassBalancedSigmoidInputs(**fields, classes=target.detach().to(prepared.x.dtype))
        index = target.long()
        return ClassBalancedSigmoidInputs(**fields, classes=index, classes_are_indices=True,
                                          classes_valid=index != self.ignore_index)

    def call_constants(self, inputs: ClassBalancedSigmoidInputs) -> tuple[Tensor, ...]:
        classes = inputs.x.shape[1]
        counts = self.frequency.counts(inputs.classes, inputs.classes_valid, inputs.classes_are_indices,
                                       classes, inputs)
        weight = self.frequency.sample_weight(inputs.classes, inputs.classes_valid,
                                              inputs.classes_are_indices, counts, inputs.x.dtype,
                                              inputs.clock)
        return (weight.unsqueeze(1),)


@dataclasses.dataclass
class EQLv2Inputs(TermInputs):
    x: Tensor  # logits [N, C + 1], ignored rows zeroed
    target: Tensor  # class indices [N], ignored rows 0
    valid: Tensor | None  # rows that count, None when all do
    positives: Tensor | None  # foreground rows (pos_mean only)


class EQLv2Term(TermModule):
    """``eqlv2``: weights from the running gradient statistics ``pos_grad`` and ``neg_grad``
    (float64 ``[C]``, mmdetection's names), updated after the loss in training mode."""

    predicts_itself = True
    head = "sigmoid"
    STATISTICS = ("pos_grad", "neg_grad")
    sized_by_first_call = STATISTICS

    def __init__(self, term: Term, label: str, check_values: bool, distributed: bool = True) -> None:
        super().__init__(term, label, check_values, distributed)
        node: EQLv2 = term.loss
        self.gamma, self.mu, self.alpha = node.gamma, node.mu, node.alpha
        self.ignore_index = node.ignore_index
        for name in self.STATISTICS:
            self.register_buffer(name, torch.zeros(0, dtype=torch.float64))

    def prepare(self, input: Tensor, target: Tensor) -> EQLv2Inputs:
        self.check_tensors(input, target)
        if input.dim() != 2 or input.shape[1] < 2:
            raise self.fail(
                f"eqlv2 needs logits [N, C + 1] (C classes, then the background); got {shape_text(input)}"
            )
        channels = input.shape[1]
        integer = not target.is_floating_point() and target.dtype != torch.bool
        if tuple(target.shape) != (input.shape[0],) or not integer:
            raise self.fail(
                f"eqlv2 needs integer class indices of shape {shape_of(input.shape[:1])} "
                f"in 0..{channels - 1} "
                f"({channels - 1} is the background); got {target.dtype} {shape_text(target)}"
            )
        classes = self._buffers["pos_grad"].numel()
        if classes not in (0, channels - 1):
            raise self.fail(
                f"the running gradient statistics hold {classes} classes but the input has "
                f"{channels - 1} (and the background: {shape_text(input)})",
                hint="a loss keeps one set of classes; compile a new loss for another")
        for name in self.STATISTICS:
            if self._buffers[name].device != input.device:
                raise self.fail(f"the loss's running statistics are on {self._buffers[name].device} "
                                f"but the input is on {input.device}",
                                hint="move the loss with the model: loss.to(device)")
        target, nothing_ignored = self.class_indices(target, channels, self.ignore_index)
        x = input.to(compute_dtype(input))
        valid = None
        if not nothing_ignored:
            valid = target != self.ignore_index
            x = zero_ignored(x, valid.unsqueeze(1))
            target = torch.where(valid, target, torch.zeros_like(target))
        positives = None
        if self.reduction == "pos_mean":
            foreground = target < channels - 1
            positives = (foreground if valid is None else foreground & valid).sum()
        return EQLv2Inputs(x=x, target=target, valid=valid, positives=positives)

    def unreduced_shape(self, inputs: EQLv2Inputs) -> torch.Size:
        return inputs.x.shape[:1]

    def weights(self, dtype: torch.dtype, device: torch.device, channels: int) -> tuple[Tensor, Tensor]:
        pos_grad, neg_grad = (self._buffers[name] for name in self.STATISTICS)
        started = pos_grad.numel() > 0
        if not started:
            pos_grad = neg_grad = torch.zeros(channels - 1, dtype=torch.float64, device=device)
        pos_w, neg_w = eqlv2_weights(pos_grad, neg_grad, self.gamma, self.mu, self.alpha, started)
        return pos_w.to(dtype), neg_w.to(dtype)

    def compute(self, inputs: EQLv2Inputs) -> Tensor:
        x, target, valid = inputs.x, inputs.target, inputs.valid
        pos_w, neg_w = self.weights(x.dtype, x.device, x.shape[1])
        loss = eqlv2_loss(x, target, pos_w, neg_w)
        if valid is not None:
            loss = zero_ignored(loss, valid)
        if self.training:
            statistics = eqlv2_statistics(x.detach(), target, valid, pos_w, neg_w)
            if self.distributed:
                statistics = sum_over_processes(statistics)
            for name, batch in zip(self.STATISTICS, statistics):
                old = self._buffers[name]
                stage(self, inputs, name, batch if old.numel() == 0 else old + batch, self.label)
        if inputs.weight is not None:
            loss = loss * inputs.weight
        count = loss.numel() if valid is None else valid.sum()
        return self.reduce(loss, inputs, count=count, positives=inputs.positives)

    def predict(self, logits: Tensor, clock: Any = None) -> Tensor:
        """The references' test-time scores: ``sigmoid(z)``, the classes' scaled by ``1 - sigmoid(z_bg)``
        (mmdetection ``EQLV2Loss.get_activation`` with ``test_with_obj=True``)."""
        scores = torch.sigmoid(logits.to(compute_dtype(logits)))
        background = scores[:, -1:]
        return torch.cat([scores[:, :-1] * (1 - background), background], dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        size_from_checkpoint(self, state_dict, prefix, self.STATISTICS)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
