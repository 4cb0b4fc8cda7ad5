"""What several terms of one call compute from the same logits, computed once per call.

In ``ce() + dice()`` (nnU-Net's loss) both terms need the softmax of the same logits: the cross-entropy
as ``log_softmax``, the dice as probabilities. The compiled loss hands every term of a call the same
``SharedComputations``; the first term that needs ``log_softmax`` computes it and the others reuse it
(the dice takes ``exp`` of it, one pass instead of a softmax's three). Gradients flow through the
shared tensor to the logits from both terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional.targets import zero_ignored


class SharedComputations:
    """Per-call cache. Keys name what the logits went through before (which label's positions were
    zeroed), so two terms that prepared them differently never share."""

    def __init__(self) -> None:
        self._sanitised: dict[int, Tensor] = {}
        self._log_softmax: dict[tuple[int, bool], Tensor] = {}
        self._softmax: dict[tuple[int, bool], Tensor] = {}

    def sanitised(self, x: Tensor, valid: Tensor, ignore_index: int) -> Tensor:
        """The logits with the positions labelled ``ignore_index`` zeroed (``valid`` ``[N, 1, ...]``,
        see functional.targets.zero_ignored), once per call: the terms of a call read the same
        targets, so the same label leaves out the same positions."""
        if ignore_index not in self._sanitised:
            self._sanitised[ignore_index] = zero_ignored(x, valid)
        return self._sanitised[ignore_index]

    def log_softmax(self, x: Tensor, ignore_index: int, zeroed: bool) -> Tensor:
        """``log_softmax(x, dim=1)`` of logits whose positions labelled ``ignore_index`` were zeroed
        (``zeroed``) or not."""
        key = (ignore_index, zeroed)
        if key not in self._log_softmax:
            self._log_softmax[key] = torch.log_softmax(x, dim=1)
        return self._log_softmax[key]

    def softmax(self, x: Tensor, ignore_index: int, zeroed: bool) -> Tensor:
        """The probabilities, as ``exp`` of the shared ``log_softmax`` (one pass, computed once)."""
        key = (ignore_index, zeroed)
        if key not in self._softmax:
            self._softmax[key] = self.log_softmax(x, ignore_index, zeroed).exp()
        return self._softmax[key]
