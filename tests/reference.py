"""SPEC's formulas coded plainly with torch autograd, as independent references for the tests.

Nothing here shares code with lossdsl: every loss is the textbook expression (log-sigmoids and
log-softmax from torch, powers with ``**``), differentiated by autograd w.r.t. logits and targets.
They are meant for float64 and moderate logits, where the plain formulas are accurate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mmdet_weight_reduce_loss(loss: Tensor, weight=None, reduction="mean", avg_factor=None) -> Tensor:
    """mmdetection 3.3.0, mmdet/models/losses/utils.py weight_reduce_loss: the loss times the weight,
    then its mean, or with avg_factor its sum over (avg_factor + float32 eps)."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    if reduction == "mean":
        return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
    assert reduction == "none", "mmdetection refuses avg_factor with reduction=sum"
    return loss


def smooth_binary(y: Tensor, s: float) -> Tensor:
    return y * (1 - s) + s / 2


def bce(x: Tensor, y: Tensor, pos_weight: float = 1.0, margin: float = 0.0) -> Tensor:
    """-(pw y log p + (1-y) log(1 - p_m)), p_m = max(p - margin, 0)."""
    negative = F.logsigmoid(-x) if margin == 0 else torch.log(1 - (torch.sigmoid(x) - margin).clamp(min=0))
    return -(pos_weight * y * F.logsigmoid(x) + (1 - y) * negative)


def one_minus_pt(x: Tensor, y: Tensor, margin: float = 0.0) -> Tensor:
    """q = 1 - p_t = y (1-p) + (1-y) p_m; 1 - p is sigmoid(-x), accurate where p rounds to 1."""
    p = torch.sigmoid(x)
    p_m = p if margin == 0 else (p - margin).clamp(min=0)
    return y * torch.sigmoid(-x) + (1 - y) * p_m


def focusing(x: Tensor, y: Tensor, gamma_pos: float, gamma_neg: float, margin: float = 0.0) -> Tensor:
    q = one_minus_pt(x, y, margin)
    return q ** (gamma_pos * y + gamma_neg * (1 - y))


def alpha_t(y: Tensor, alpha: float) -> Tensor:
    return alpha * y + (1 - alpha) * (1 - y)


def focal(x: Tensor, y: Tensor, gamma: float = 2.0, alpha: float | None = 0.25) -> Tensor:
    loss = bce(x, y) * one_minus_pt(x, y) ** gamma
    return loss if alpha is None else loss * alpha_t(y, alpha)


def asl(x: Tensor, y: Tensor, gamma_pos=1.0, gamma_neg=4.0, clip=0.05, smoothing=0.0) -> Tensor:
    y = smooth_binary(y, smoothing)
    return bce(x, y, margin=clip) * focusing(x, y, gamma_pos, gamma_neg, clip)


def poly(loss: Tensor, q: Tensor, eps: list[float], gamma: Tensor | float = 0.0) -> Tensor:
    return loss + sum(e * q ** (j + gamma) for j, e in enumerate(eps, start=1))


def distance(x: Tensor, y: Tensor) -> Tensor:
    """|y - p|, written y (1-p) - (1-y) p with 1 - p = sigmoid(-x) so that it stays accurate in
    float64 where p rounds to 1 (the references are compared with float32 at confident logits)."""
    return (y * torch.sigmoid(-x) - (1 - y) * torch.sigmoid(x)).abs()


def qfocal(x: Tensor, y: Tensor, beta: float = 2.0) -> Tensor:
    """GFL's quality focal loss (mmdetection gfocal_loss.py quality_focal_loss_tensor_target)."""
    return bce(x, y) * distance(x, y) ** beta


def varifocal(x: Tensor, y: Tensor, alpha=0.75, gamma=2.0, iou_weighted=True) -> Tensor:
    """mmdetection varifocal_loss.py: the weight is y (or 1) where y > 0, alpha |p - y|^gamma else."""
    positive = (y > 0).to(x.dtype)
    on_positives = y * positive if iou_weighted else positive
    weight = on_positives + alpha * distance(x, y) ** gamma * (1 - positive)
    return bce(x, y) * weight


def ghm_weights(x: Tensor, y: Tensor, bins: int, valid: Tensor | None = None) -> Tensor:
    """mmdetection's GHMC weights (no momentum): a loop over bins, as in its source."""
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6
    g = (torch.sigmoid(x).detach() - y).abs()
    valid = torch.ones_like(g, dtype=torch.bool) if valid is None else valid.expand_as(g)
    weights = torch.zeros_like(g)
    tot = max(float(valid.sum()), 1.0)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num = int(inds.sum())
        if num > 0:
            weights[inds] = tot / num
            n += 1
    return weights / max(n, 1)


def softmax_target(x: Tensor, target: Tensor, smoothing: float = 0.0) -> Tensor:
    """The (smoothed) target distribution q, from class indices or probabilities."""
    num_classes = x.shape[1]
    if target.dtype == torch.long:
        target = F.one_hot(target, num_classes).movedim(-1, 1).to(x.dtype)
    return target * (1 - smoothing) + smoothing / num_classes


def ce(x: Tensor, target: Tensor, smoothing: float = 0.0) -> Tensor:
    """-sum_c q_c log p_c per position."""
    return -(softmax_target(x, target, smoothing) * torch.log_softmax(x, 1)).sum(1)


def softmax_focal(x: Tensor, target: Tensor, gamma: float = 2.0, smoothing: float = 0.0) -> Tensor:
    """(1 - p_t)^gamma ce, p_t = sum_c q_c p_c (probability targets; one factor per position)."""
    q = softmax_target(x, target, smoothing)
    p_t = (q * torch.softmax(x, 1)).sum(1)
    return (1 - p_t) ** gamma * ce(x, target, smoothing)


def kd(z: Tensor, t: Tensor, T: float) -> Tensor:
    """Knowledge distillation per position: T^2 sum_c p_c (log p_c - log q_c), p = softmax(t/T),
    q = softmax(z/T) (Hinton et al. 2015)."""
    p = torch.softmax(t / T, 1)
    return T * T * (p * (torch.log(p) - torch.log_softmax(z / T, 1))).sum(1)


def zlpr(x: Tensor, y: Tensor) -> Tensor:
    positive = y > 0.5
    zero = torch.zeros_like(x[:, :1])
    negatives = torch.logsumexp(torch.cat([zero, x.masked_fill(positive, float("-inf"))], 1), 1)
    positives = torch.logsumexp(torch.cat([zero, (-x).masked_fill(~positive, float("-inf"))], 1), 1)
    return negatives + positives


# -- region losses (SPEC "Region losses"), softmax head, dense targets --------------------------------


def region_sums(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """TP, FP, FN per sample and class, summed over the spatial positions."""
    p = torch.softmax(x, 1)
    dims = tuple(range(2, x.dim()))
    return (p * y).sum(dims), (p * (1 - y)).sum(dims), ((1 - p) * y).sum(dims)


def tversky(x: Tensor, y: Tensor, alpha=0.5, beta=0.5, gamma=1.0, smooth=1e-5) -> Tensor:
    tp, fp, fn = region_sums(x, y)
    return (1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)) ** gamma


def dice(x: Tensor, y: Tensor, smooth=1e-5, squared=False) -> Tensor:
    p = torch.softmax(x, 1)
    dims = tuple(range(2, x.dim()))
    k = 2 if squared else 1
    return 1 - (2 * (p * y).sum(dims) + smooth) / ((p**k).sum(dims) + (y**k).sum(dims) + smooth)


def gdice(x: Tensor, y: Tensor, smooth=1e-5) -> Tensor:
    """Generalized dice with square weights (every class present in these tests)."""
    p = torch.softmax(x, 1)
    dims = tuple(range(2, x.dim()))
    w = 1 / y.sum(dims) ** 2
    return 1 - (2 * (w * (p * y).sum(dims)).sum(1) + smooth) / ((w * (p.sum(dims) + y.sum(dims))).sum(1) + smooth)


def lovasz_softmax(x: Tensor, y: Tensor) -> Tensor:
    """Berman et al. 2018, per class over the whole batch (Algorithm 1 and lovasz_grad), [C]."""
    p = torch.softmax(x, 1)
    losses = []
    for c in range(x.shape[1]):
        fg = y[:, c].reshape(-1)
        errors = (fg - p[:, c].reshape(-1)).abs()
        order = torch.argsort(errors, descending=True)
        errors, fg = errors[order], fg[order]
        gts = fg.sum()
        intersection = gts - fg.cumsum(0)
        union = gts + (1 - fg).cumsum(0)
        jaccard = 1 - intersection / union
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(errors @ grad)
    return torch.stack(losses)
