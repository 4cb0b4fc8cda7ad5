"""The compiled loss: an nn.Module that adds its weighted terms.

``LossModule`` is what every compiled loss shares (single- and multi-task): logging-safe names for
``last_terms``, the notebook view, and the canonical expression recorded in ``state_dict`` so that a
checkpoint of another loss is refused by name rather than by a key error (or, worse, accepted).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import LossConfigError, LossInputError
from .prediction import class_scores
from .spec import LossSpec
from .state_updates import StateUpdates
from .terms.base import TermModule, is_compiling, shape_of
from .terms.shared import SharedComputations

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


class LossModule(nn.Module):
    """Shared by ``CompiledLoss`` and ``MultiTaskLoss``: ``spec``, ``last_terms``, ``logged_terms``,
    and the loss's canonical expression in its ``state_dict`` (key ``_extra_state``, UTF-8 bytes)."""

    spec: LossSpec
    last_terms: dict[str, Tensor]
    # False for the tasks of a multi-task loss: the multi-task loss records the whole expression.
    records_expression = True

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
        if floats:
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
        self.unreduced = all(term.reduction == "none" for term in spec.terms)
        self.last_terms: dict[str, Tensor] = {}
        # Terms that need the softmax of the logits (ce, softmax blocks, softmax region losses) share
        # one log_softmax per call when there are several of them (terms.shared).
        softmax_users = [term for term in self.terms if getattr(term, "head", None) == "softmax"
                         and hasattr(term, "shared_log_softmax")]
        self.shares = len(softmax_users) > 1
        for term in softmax_users:
            term.shared_log_softmax = self.shares

    def forward(
        self, input: Tensor, target: Tensor, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None,
    ) -> Tensor:
        """``weight`` multiplies every element term's per-element loss (broadcast from ``[N]``,
        ``[N, C]`` or the full shape); ``avg_factor`` replaces the denominator of ``mean`` and
        ``pos_mean`` (mmdetection's convention: ``sum / (avg_factor + eps)``)."""
        updates = StateUpdates()
        total = self.combine(self.prepare(input, target, weight, avg_factor, updates=updates))
        updates.commit()  # only now that every term has computed (lossdsl.state_updates)
        return total

    def prepare(
        self, input: Tensor, target: Tensor, weight: Tensor | None = None,
        avg_factor: Tensor | float | None = None, *, updates: StateUpdates | None = None,
    ) -> list[Any]:
        """Check and convert the inputs for every term. Nothing runs, nothing is updated: all the
        checks of a call happen before any term touches a running buffer. The terms stage their
        running-state updates in ``updates``, which the caller commits once the call has succeeded
        (a multi-task loss passes one for all its tasks)."""
        prepared = [term.prepare_call(input, target, weight, avg_factor) for term in self.terms]
        for inputs in prepared:
            inputs.updates = updates
        if self.shares:
            shared = SharedComputations()
            for inputs in prepared:
                inputs.shared = shared
        if self.unreduced and len(prepared) > 1:
            self._check_same_shapes(prepared)
        return prepared

    def combine(self, prepared: list[Any]) -> Tensor:
        """Compute every term from its prepared inputs and add them with their weights.

        Autocast is switched off around the arithmetic: the inputs are already in the computation
        dtype (float32 for half precision), and an op that autocast lists (a matmul, a dot product)
        must not drop back to bfloat16 halfway through a loss.
        """
        with autocast_off(prepared[0].x.device.type):
            values = [term.compute(inputs) for term, inputs in zip(self.terms, prepared)]
        total = None
        for weight, value in zip(self.weights, values):
            weighted = value if weight == 1 else weight * value
            total = weighted if total is None else total + weighted
        if not is_compiling():
            self.last_terms = {key: value.detach() for key, value in zip(self.keys, values)}
            self.last_terms["total"] = total.detach()
        return total

    def predict(self, logits: Tensor) -> Tensor:
        """Class scores at test time, as the loss's references define them (lossdsl.prediction):
        the head's softmax or sigmoid, or a term's own (post-hoc logit adjustment, EQLv2's)."""
        return class_scores(self.terms, logits)

    def _check_same_shapes(self, prepared: list[Any]) -> None:
        shapes = [term.unreduced_shape(inputs) for term, inputs in zip(self.terms, prepared)]
        for term, shape in zip(self.terms, shapes):
            if shape != shapes[0]:
                raise LossInputError(
                    f"reduction=none terms must have equal shapes to be added: "
                    f"{self.terms[0].label} gives {shape_of(shapes[0])}, {term.label} gives {shape_of(shape)}"
                )
