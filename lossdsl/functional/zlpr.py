"""ZLPR (Su et al. 2022): the multi-label extension of softmax cross-entropy, per sample."""

from __future__ import annotations

import torch
from torch import Tensor


def zlpr_elementwise(x: Tensor, positive: Tensor) -> Tensor:
    """``log(1 + sum_neg exp(x)) + log(1 + sum_pos exp(-x))`` over dimension 1 -> ``[N, d1, ...]``.

    A zero logit is appended to each log-sum-exp: it is the "1 +", and it keeps every log-sum-exp
    finite (and its gradient defined) when a sample has no positives or no negatives.
    """
    zero = x.new_zeros((x.shape[0], 1, *x.shape[2:]))
    negatives = torch.cat([x.masked_fill(positive, float("-inf")), zero], dim=1)
    positives = torch.cat([(-x).masked_fill(~positive, float("-inf")), zero], dim=1)
    return torch.logsumexp(negatives, dim=1) + torch.logsumexp(positives, dim=1)
