"""ZLPR (Su et al. 2022): the multi-label extension of softmax cross-entropy, per sample.

``log(1 + sum_neg exp(x)) + log(1 + sum_pos exp(-x))`` over dimension 1. Both log-sum-exps are
taken with their maximum (at least 0, the "1 +") factored out, so no exponential overflows for
logits up to 1e4. The derivative is closed-form: ``exp(x - lse_neg)`` on negatives and
``-exp(-x - lse_pos)`` on positives, which are the very exponentials of the forward pass, divided
by their sums; the autograd Function keeps only that one tensor for the backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tracing import is_compiling


def _log_one_plus_sum_exp(masked: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``log(1 + sum_c exp(masked_c))`` over dim 1 (entries at -inf count for nothing).

    Returns the result, the shifted exponentials ``exp(masked - m)`` and their total
    ``exp(-m) + sum_c exp(masked_c - m)``, with ``m = max(0, max_c masked_c)``. Overwrites ``masked``.
    """
    shift = masked.amax(dim=1, keepdim=True).clamp(min=0)
    exps = masked.sub_(shift).exp_() if not is_compiling() else torch.exp(masked - shift)
    total = exps.sum(dim=1, keepdim=True) + torch.exp(-shift)
    return (shift + torch.log(total)).squeeze(1), exps, total


def zlpr_loss_and_grad(x: Tensor, positive: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Per-sample loss ``[N, d1, ...]`` and its derivative w.r.t. ``x`` (if ``need_grad``)."""
    negatives, neg_exps, neg_total = _log_one_plus_sum_exp(x.masked_fill(positive, float("-inf")))
    positives, pos_exps, pos_total = _log_one_plus_sum_exp((-x).masked_fill(~positive, float("-inf")))
    loss = negatives + positives
    if not need_grad:
        return loss, None
    # exp(x - lse_neg) on negatives (0 on positives), minus exp(-x - lse_pos) on positives.
    if is_compiling():
        return loss, neg_exps / neg_total - pos_exps / pos_total
    return loss, neg_exps.div_(neg_total).sub_(pos_exps.div_(pos_total))


class ZLPRFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, positive):  # type: ignore[override]
        loss, grad = zlpr_loss_and_grad(x, positive, need_grad=True)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.unsqueeze(1), None


def zlpr_elementwise(x: Tensor, positive: Tensor) -> Tensor:
    """Per-sample ZLPR loss, differentiable w.r.t. ``x``."""
    if torch.is_grad_enabled() and x.requires_grad:
        return ZLPRFunction.apply(x, positive)
    return zlpr_loss_and_grad(x, positive, need_grad=False)[0]
