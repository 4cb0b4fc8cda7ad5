"""Test-time scores from the loss a model trains with (``loss.predict(logits)``), so that one config
serves training and evaluation.

Most losses predict with their head's activation: ``softmax(z)`` on the softmax head, ``sigmoid(z)``
on the sigmoid head. Some references define their own: post-hoc logit adjustment
(``logit_adjust(..., posthoc=true)``: ``softmax(z - log(pi^tau + 1e-12))``, Menon et al. 2021) and
EQLv2 (``sigmoid(z)``, the classes scaled by ``1 - sigmoid(z_bg)``, mmdetection's
``get_activation``). A term that defines its own prediction marks it with ``predicts_itself``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .catalogue.base import head_of
from .errors import LossInputError
from .functional.plan import compute_dtype


def class_scores(terms: Iterable[nn.Module], logits: Tensor, clock: Any = None) -> Tensor:
    """The scores a loss made of ``terms`` predicts for ``logits`` ``[N, C, ...]`` (``clock``: the
    loss's, which a scheduled parameter of a term's own prediction follows)."""
    terms = list(terms)
    own = [term for term in terms if getattr(term, "predicts_itself", False)]
    if len(own) > 1:
        raise LossInputError(
            f"{own[0].label} and {own[1].label} each define their own prediction; this loss cannot "
            "say which one to use", hint="call the term's own: loss.terms[i].predict(logits)")
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 2:
        shown = (f"{logits.dtype} {list(logits.shape)}" if isinstance(logits, Tensor)
                 else type(logits).__name__)
        raise LossInputError(f"predict() expects floating-point logits [N, C, ...]; got {shown}")
    if own:
        return own[0].predict(logits, clock)
    heads = {head_of(term.term.loss) for term in terms} & {"sigmoid", "softmax"}
    if not heads:
        raise LossInputError("this loss has no class scores to predict (no sigmoid or softmax term)")
    if len(heads) > 1:
        raise LossInputError(
            "this loss has terms on both heads, sigmoid and softmax; their scores differ",
            hint="take torch.sigmoid(logits) or torch.softmax(logits, 1) yourself")
    x = logits.to(compute_dtype(logits))
    return torch.softmax(x, dim=1) if heads == {"softmax"} else torch.sigmoid(x)
