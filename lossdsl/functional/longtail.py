"""The arithmetic of the long-tail losses (SPEC "Long-tail losses"), as pure functions of tensors.

Counts ``n`` are float64 vectors ``[C]`` (exact integers to 2^53, where float32 stops counting at
2^24 samples); what they give (log priors, margins, weights) is computed in float64 and cast to the
logits' dtype by the caller. Nothing here carries a gradient through the counts or the weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .targets import per_class

# google-research's logit_adjustment adds it to pi^tau before the log (utils.build_loss_fn).
PRIOR_EPSILON = 1e-12
# mmdetection's EQLV2Loss: G- + 1e-10 in the ratio of gradient statistics.
EQLV2_EPSILON = 1e-10


def counted(counts: Tensor) -> Tensor:
    """Running counts as the losses read them: ``max(n, 1)`` (a class not seen yet counts once)."""
    return counts.clamp(min=1)


def log_prior(counts: Tensor, tau: float | Tensor) -> Tensor:
    """``log(pi^tau + 1e-12)``, ``pi = n / sum n``: logit adjustment's shift (Menon et al. 2021);
    ``tau`` a number or a 0-d tensor (a schedule's value)."""
    prior = counts / counts.sum()
    return torch.log(prior.pow(tau) + PRIOR_EPSILON)


def ldam_margins(counts: Tensor, max_m: float) -> Tensor:
    """``Delta_j = max_m n_j^(-1/4) / max_k n_k^(-1/4)`` (Cao et al. 2019): the rarest class gets
    ``max_m``."""
    inverse_root = counts.pow(-0.25)
    return inverse_root * (max_m / inverse_root.max())


def effective_number_weights(counts: Tensor, beta: float | Tensor) -> Tensor:
    """Cui et al.'s class weights ``(1 - beta) / (1 - beta^n_j)``, normalised to sum to C.

    The factor ``1 - beta`` cancels in the normalisation; ``1 - beta^n`` is ``-expm1(n log beta)``,
    exact where ``beta^n`` is close to 1 (``beta = 0.9999``, a rare class). ``beta = 0`` gives 1 for
    every class. ``beta`` may be a 0-d tensor (a schedule's value, DRW's 0 then 0.9999: read on the
    device, never on the host); at 0 the formula gives 1 itself (``log 0 = -inf``, counts >= 1).
    """
    if isinstance(beta, Tensor):
        log_beta = torch.log(beta.to(device=counts.device, dtype=counts.dtype))
    elif beta == 0:
        return torch.ones_like(counts)
    else:
        log_beta = torch.log(counts.new_tensor(beta))
    inverse = 1 / -torch.expm1(counts * log_beta)
    return inverse * (counts.numel() / inverse.sum())


def sample_weights(weights: Tensor, target: Tensor, valid: Tensor | None, is_index: bool) -> Tensor:
    """Each position's weight from its class's: ``w[target]`` for class indices ``[N, d1, ...]``;
    for dense targets ``[N, C, d1, ...]`` the target-weighted mean ``sum_j y_j w_j / sum_j y_j``.
    A position with no class gets 1, the mean weight: a row with no positive, mmdetection's
    background index ``C``, and ignored positions (which count for nothing anyway). ``valid`` None
    says that every index is a class (the value check proved it)."""
    if is_index and valid is None:
        return weights[target]
    if is_index:
        is_class = (target >= 0) & (target < weights.numel())
        if valid is not None:
            is_class = is_class & valid
        weight = weights[torch.where(is_class, target, torch.zeros_like(target))]
        return torch.where(is_class, weight, torch.ones_like(weight))
    target = target.detach().to(weights.dtype)
    mass = target.sum(dim=1)
    weighted = (target * per_class(weights, target.dim())).sum(dim=1)
    return torch.where(mass > 0, weighted / mass.clamp(min=torch.finfo(mass.dtype).tiny), 1.0)


def batch_counts(
    target: Tensor, num_classes: int, valid: Tensor | None, is_index: bool
) -> Tensor:
    """How many positions of each class this batch's targets hold (float64 ``[C]``): one per class
    index, or the sum of dense targets over every position (a probability target adds its
    probabilities, a multi-hot row one per positive class). ``valid``: the index positions that
    count (not ignored, not the background index ``C``); None when every index is a class. No host
    synchronisation (a scatter-add, not a bincount, whose size would depend on the data)."""
    if not is_index:
        dims = [0] + list(range(2, target.dim()))
        return target.detach().to(torch.float64).sum(dim=dims)
    index = target.reshape(-1)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=index.device)
    if valid is None:
        return counts.index_add_(0, index, counts.new_ones(()).expand(index.shape))
    keep = valid.reshape(-1) & (index >= 0) & (index < num_classes)
    return counts.index_add_(0, torch.where(keep, index, torch.zeros_like(index)), keep.to(torch.float64))


def seesaw_shift(
    x: Tensor, target: Tensor, log_counts: Tensor, p: float, q: float, eps: float
) -> Tensor:
    """``log(M_ij C_ij)`` added to the logits ``x`` ``[N, C, d1, ...]`` of positions with class ``i``
    (Wang et al. 2021), without gradient:

    ``log M_ij = p min(log N_j - log N_i, 0)`` (mitigation: ``(N_j / N_i)^p`` where ``N_j < N_i``);
    ``log C_ij = q max(log s_j - log max(s_i, eps), 0)`` (compensation: ``(s_j / s_i)^q`` where
    ``s_j > s_i``), ``s = softmax(x)``. Both are 0 at ``j = i`` itself, so the target's logit is
    untouched without a mask. ``target`` must be a valid class everywhere (ignored positions clamped).
    """
    with torch.no_grad():
        view = x.dim()
        shift = torch.zeros((), dtype=x.dtype, device=x.device)
        if p > 0:
            log_n = per_class(log_counts.to(x.dtype), view)
            own = log_counts.to(x.dtype)[target].unsqueeze(1)
            shift = (log_n - own).clamp_(max=0).mul_(p)
        if q > 0:
            log_s = torch.log_softmax(x, dim=1)
            own = log_s.gather(1, target.unsqueeze(1)).clamp_(min=math.log(eps))
            shift = shift + (log_s - own).clamp_(min=0).mul_(q)
        return shift


def eqlv2_weights(
    pos_grad: Tensor, neg_grad: Tensor, gamma: float, mu: float, alpha: float, started: bool
) -> tuple[Tensor, Tensor]:
    """EQLv2's per-channel weights ``(pos_w, neg_w)`` ``[C + 1]`` (Tan et al. 2021): for the C
    classes ``neg_w = q = sigmoid(gamma (g - mu))``, ``g = G+ / (G- + 1e-10)``, ``pos_w = 1 +
    alpha (1 - q)``; the background channel weighs 1 both ways. Before any statistics exist
    (``started`` False) every weight is 1, as the references' initial ratio of 100 gives."""
    classes = pos_grad.numel()
    if not started:
        ones = torch.ones(classes + 1, dtype=pos_grad.dtype, device=pos_grad.device)
        return ones, ones
    ratio = pos_grad / (neg_grad + EQLV2_EPSILON)
    q = torch.sigmoid(gamma * (ratio - mu))
    one = q.new_ones(1)
    neg_w = torch.cat([q, one])
    pos_w = torch.cat([1 + alpha * (1 - q), one])
    return pos_w, neg_w


def eqlv2_loss(
    x: Tensor, target: Tensor, pos_w: Tensor, neg_w: Tensor
) -> Tensor:
    """Per sample ``sum_j w_ij bce_ij`` over the ``C + 1`` channels of ``x`` ``[N, C + 1]``, ``target``
    the class index ``[N]`` (a valid channel everywhere), ``w`` ``pos_w`` on the target's channel and
    ``neg_w`` elsewhere.

    Written as every channel a negative, ``sum_j neg_w_j softplus(x_ij)`` (one matrix product), with
    the target's channel corrected: ``+ pos_w_t softplus(-x_it) - neg_w_t softplus(x_it)``. Each
    softplus is the exact bce of its side, so the loss is exact to rounding at every logit.
    """
    negatives = torch.nn.functional.softplus(x) @ neg_w
    on_target = x.gather(1, target.unsqueeze(1)).squeeze(1)
    correction = pos_w[target] * torch.nn.functional.softplus(-on_target) - neg_w[target] * (
        torch.nn.functional.softplus(on_target)
    )
    return negatives + correction


def eqlv2_statistics(
    x: Tensor, target: Tensor, valid: Tensor | None, pos_w: Tensor, neg_w: Tensor
) -> Tensor:
    """This batch's gradient statistics ``[2, C]`` (float64), ``G+_j = sum_i |p_ij - 1| y_ij w_ij``
    and ``G-_j = sum_i p_ij (1 - y_ij) w_ij`` over the class channels (not the background's), as
    mmdetection's ``collect_grad``; rows not ``valid`` count for nothing.

    Two passes over ``x``: ``p``, and its column sums (a product with the row mask); the target's
    entries are then taken out of the sums (``1 - p`` of the target as ``sigmoid(-x)``, exact).
    """
    with torch.no_grad():
        keep = torch.ones(target.shape, dtype=x.dtype, device=x.device)
        if valid is not None:
            keep = keep * valid
        column_sums = (keep @ torch.sigmoid(x)).to(torch.float64)
        on_target = x.gather(1, target.unsqueeze(1)).squeeze(1)
        zeros = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        target_p = zeros.index_add(0, target, (torch.sigmoid(on_target) * keep).to(torch.float64))
        target_miss = zeros.index_add(0, target, (torch.sigmoid(-on_target) * keep).to(torch.float64))
        pos = pos_w.to(torch.float64) * target_miss
        neg = neg_w.to(torch.float64) * (column_sums - target_p).clamp_(min=0)
        return torch.stack([pos[:-1], neg[:-1]])
