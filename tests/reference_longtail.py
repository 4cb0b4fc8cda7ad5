"""The long-tail losses as their authors wrote them, coded plainly in torch for the tests.

Each function follows one reference implementation step by step (named in its docstring), with the
fixes their published code needs to run on a CPU (LDAM-DRW's ``torch.cuda.FloatTensor`` and uint8
masks) and nothing else: no code is shared with lossdsl. Counts are float64 where the reference
uses numpy (its default dtype); per-element losses come back unreduced unless the reference reduces.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def prior(counts) -> Tensor:
    counts = torch.as_tensor(counts, dtype=torch.float64)
    return counts / counts.sum()


def logit_adjusted_ce(x: Tensor, target: Tensor, base_probs, tau: float = 1.0) -> Tensor:
    """google-research logit_adjustment/utils.py build_loss_fn(use_la_loss=True): logits +
    log(base_probs**tau + 1e-12), then softmax cross-entropy (per sample)."""
    base_probs = torch.as_tensor(base_probs, dtype=torch.float64)
    shift = torch.log(base_probs**tau + 1e-12).to(x.dtype)
    return F.cross_entropy(x + shift, target, reduction="none")


def posthoc_logits(x: Tensor, base_probs, tau: float = 1.0) -> Tensor:
    """google-research logit_adjustment/main.py, mode posthoc: logits - log(base_probs**tau + 1e-12)."""
    base_probs = torch.as_tensor(base_probs, dtype=torch.float64)
    return x - torch.log(base_probs**tau + 1e-12).to(x.dtype)


def balanced_softmax_loss(labels: Tensor, logits: Tensor, sample_per_class, reduction="none") -> Tensor:
    """BalancedMetaSoftmax-Classification loss/BalancedSoftmaxLoss.py: logits + log(sample_per_class),
    then F.cross_entropy."""
    spc = torch.as_tensor(sample_per_class).type_as(logits)
    spc = spc.unsqueeze(0).expand(logits.shape[0], -1)
    return F.cross_entropy(logits + spc.log(), labels, reduction=reduction)


def ldam_loss(x: Tensor, target: Tensor, cls_num_list, max_m=0.5, s=30.0, weight=None,
              reduction="none") -> Tensor:
    """kaidic/LDAM-DRW losses.py LDAMLoss: m_list = 1/sqrt(sqrt(n)) scaled to max_m, the target
    column shifted by its margin, F.cross_entropy(s * output, target, weight=weight)."""
    m_list = 1.0 / torch.sqrt(torch.sqrt(torch.as_tensor(cls_num_list, dtype=torch.float64)))
    m_list = (m_list * (max_m / torch.max(m_list))).to(x.dtype)
    index = torch.zeros_like(x, dtype=torch.bool)
    index.scatter_(1, target.view(-1, 1), True)
    batch_m = torch.matmul(m_list[None, :], index.to(x.dtype).transpose(0, 1)).view(-1, 1)
    output = torch.where(index, x - batch_m, x)
    return F.cross_entropy(s * output, target, weight=weight, reduction=reduction)


def class_balanced_weights(img_num_per_cls, beta: float) -> Tensor:
    """richardaecn/class-balanced-loss src/cifar_main.py (also LDAM-DRW's per_cls_weights):
    (1 - beta) / (1 - beta**n), normalised to sum to the number of classes."""
    n = torch.as_tensor(img_num_per_cls, dtype=torch.float64)
    effective_num = 1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n)
    weights = (1.0 - beta) / effective_num
    return weights / weights.sum() * len(n)


def class_balanced_per_sample(weights: Tensor, one_hot_labels: Tensor) -> Tensor:
    """cifar_main.py _tower_fn: weights tiled over the batch, times the one-hot labels, summed over
    the classes: each sample's class weight."""
    tiled = weights.to(one_hot_labels.dtype).unsqueeze(0).repeat(one_hot_labels.shape[0], 1)
    return (tiled * one_hot_labels).sum(dim=1)


def cui_softmax_loss(x: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """cifar_main.py loss_type='softmax': tf.losses.softmax_cross_entropy(one_hot, logits,
    weights=w_i), whose reduction (SUM_BY_NONZERO_WEIGHTS) divides by the number of samples."""
    one_hot = F.one_hot(labels, x.shape[1]).to(x.dtype)
    w = class_balanced_per_sample(weights, one_hot)
    return (w * F.cross_entropy(x, labels, reduction="none")).sum() / (w != 0).sum()


def cui_sigmoid_loss(x: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """cifar_main.py loss_type='sigmoid': w_i * sigmoid cross-entropy, summed, over the number of
    positive labels."""
    one_hot = F.one_hot(labels, x.shape[1]).to(x.dtype)
    w = class_balanced_per_sample(weights, one_hot).unsqueeze(1)
    loss = w * F.binary_cross_entropy_with_logits(x, one_hot, reduction="none")
    return loss.sum() / one_hot.sum()


def cui_focal_loss(x: Tensor, labels: Tensor, weights: Tensor, gamma: float) -> Tensor:
    """cifar_main.py focal_loss with alpha = the per-sample class weights: modulator
    exp(-gamma y x - gamma log1p(exp(-x))) times the sigmoid cross-entropy, summed, over the number
    of positive labels."""
    one_hot = F.one_hot(labels, x.shape[1]).to(x.dtype)
    alpha = class_balanced_per_sample(weights, one_hot).unsqueeze(1)
    cross_entropy = F.binary_cross_entropy_with_logits(x, one_hot, reduction="none")
    modulator = torch.exp(-gamma * one_hot * x - gamma * torch.log1p(torch.exp(-1.0 * x)))
    return (alpha * modulator * cross_entropy).sum() / one_hot.sum()


def seesaw_ce_loss(cls_score: Tensor, labels: Tensor, cum_samples: Tensor, p: float, q: float,
                   eps: float) -> Tensor:
    """mmpretrain (and mmdetection 3.3.0) seesaw_loss.py seesaw_ce_loss, unreduced: the seesaw
    weights (mitigation from the cumulative samples, compensation from the detached scores) enter
    as log(weights) on the non-target logits, then F.cross_entropy."""
    num_classes = cls_score.shape[-1]
    onehot_labels = F.one_hot(labels, num_classes)
    seesaw_weights = cls_score.new_ones(onehot_labels.size())
    if p > 0:
        sample_ratio_matrix = cum_samples[None, :].clamp(min=1) / cum_samples[:, None].clamp(min=1)
        index = (sample_ratio_matrix < 1.0).to(cls_score.dtype)
        sample_weights = sample_ratio_matrix.to(cls_score.dtype).pow(p) * index + (1 - index)
        seesaw_weights = seesaw_weights * sample_weights[labels.long(), :]
    if q > 0:
        scores = F.softmax(cls_score.detach(), dim=1)
        self_scores = scores[torch.arange(0, len(scores)).long(), labels.long()]
        score_matrix = scores / self_scores[:, None].clamp(min=eps)
        index = (score_matrix > 1.0).to(cls_score.dtype)
        compensation_factor = score_matrix.pow(q) * index + (1 - index)
        seesaw_weights = seesaw_weights * compensation_factor
    cls_score = cls_score + (seesaw_weights.log() * (1 - onehot_labels))
    return F.cross_entropy(cls_score, labels, weight=None, reduction="none")


class SeesawLoss:
    """mmpretrain seesaw_loss.py SeesawLoss.forward: the cumulative samples count the labels first
    (one Python loop step per class present), then seesaw_ce_loss, mean over the samples."""

    def __init__(self, num_classes: int, p=0.8, q=2.0, eps=1e-2):
        self.p, self.q, self.eps = p, q, eps
        self.cum_samples = torch.zeros(num_classes, dtype=torch.float64)

    def __call__(self, cls_score: Tensor, labels: Tensor, count=True) -> Tensor:
        if count:
            for u_l in labels.unique():
                self.cum_samples[u_l] += (labels == u_l.item()).sum()
        return seesaw_ce_loss(cls_score, labels, self.cum_samples, self.p, self.q, self.eps)


class EQLV2Loss:
    """mmdetection 3.3.0 eqlv2_loss.py EQLV2Loss, use_distributed=False: the C + 1 channels' weights
    from pos_neg (initially 100), sum of weighted sigmoid cross-entropy over N, then collect_grad.

    ``original=True`` is tztztztztz/eqlv2 mmdet/models/losses/eqlv2.py EQLv2 instead: no pos_neg
    until the first statistics, weights of 1 until then (its unconditional all_reduce left out)."""

    def __init__(self, num_classes: int, gamma=12.0, mu=0.8, alpha=4.0, dtype=torch.float64, original=False):
        self.num_classes, self.gamma, self.mu, self.alpha = num_classes, gamma, mu, alpha
        self.pos_grad = torch.zeros(num_classes, dtype=dtype)
        self.neg_grad = torch.zeros(num_classes, dtype=dtype)
        self.pos_neg = None if original else torch.ones(num_classes, dtype=dtype) * 100

    def map_func(self, x: Tensor) -> Tensor:
        return 1 / (1 + torch.exp(-self.gamma * (x - self.mu)))

    def get_weight(self, cls_score: Tensor) -> tuple[Tensor, Tensor]:
        n_i, n_c = cls_score.shape
        if self.pos_neg is None:  # the original's first call: "no information about the gradients"
            ones = cls_score.new_ones((n_i, n_c))
            return ones, ones
        neg_w = torch.cat([self.map_func(self.pos_neg).to(cls_score.dtype), cls_score.new_ones(1)])
        pos_w = 1 + self.alpha * (1 - neg_w)
        return pos_w.view(1, -1).expand(n_i, n_c), neg_w.view(1, -1).expand(n_i, n_c)

    def __call__(self, cls_score: Tensor, label: Tensor, collect=True) -> Tensor:
        n_i, n_c = cls_score.shape
        target = cls_score.new_zeros(n_i, n_c)
        target[torch.arange(n_i), label] = 1
        pos_w, neg_w = self.get_weight(cls_score)
        weight = pos_w * target + neg_w * (1 - target)
        cls_loss = F.binary_cross_entropy_with_logits(cls_score, target, reduction="none")
        cls_loss = torch.sum(cls_loss * weight) / n_i
        if collect:
            self.collect_grad(cls_score.detach(), target.detach(), weight.detach())
        return cls_loss

    def collect_grad(self, pred: Tensor, target: Tensor, weight: Tensor) -> None:
        prob = torch.sigmoid(pred)
        grad = torch.abs(target * (prob - 1) + (1 - target) * prob)
        self.pos_grad += torch.sum(grad * target * weight, dim=0)[:-1].to(self.pos_grad.dtype)
        self.neg_grad += torch.sum(grad * (1 - target) * weight, dim=0)[:-1].to(self.neg_grad.dtype)
        self.pos_neg = self.pos_grad / (self.neg_grad + 1e-10)

    @staticmethod
    def get_activation(pred: Tensor) -> Tensor:
        pred = torch.sigmoid(pred)
        n_i, _ = pred.size()
        bg_score = pred[:, -1].view(n_i, 1)
        pred[:, :-1] *= 1 - bg_score
        return pred


def long_tailed_counts(num_classes: int, largest: int, imbalance: float) -> list[int]:
    """CIFAR-LT's exponential profile (Cui et al. 2019; LDAM-DRW's get_img_num_per_cls):
    n_j = largest * imbalance^(-j / (C - 1))."""
    return [int(largest * (1 / imbalance) ** (j / (num_classes - 1))) for j in range(num_classes)]


def log(value: float) -> float:
    return math.log(value)


class MMDetSeesawLoss:
    """mmdetection 3.3.0 seesaw_loss.py SeesawLoss.forward, return_dict=True: scores [N, C + 2],
    labels 0..C; cum_samples (C + 1 columns) count every label first; the classes' loss is
    seesaw_ce_loss over the foreground RoIs with their label weights, the objectness' a
    cross-entropy against label == C, both reduced by weight_reduce_loss."""

    def __init__(self, num_classes: int, p=0.8, q=2.0, eps=1e-2, loss_weight=1.0):
        self.num_classes, self.p, self.q, self.eps, self.loss_weight = num_classes, p, q, eps, loss_weight
        self.cum_samples = torch.zeros(num_classes + 1, dtype=torch.float64)

    def __call__(self, cls_score, labels, label_weights=None, avg_factor=None, reduction="mean"):
        from reference import mmdet_weight_reduce_loss

        pos_inds = labels < self.num_classes
        obj_labels = (labels == self.num_classes).long()
        for u_l in labels.unique():
            self.cum_samples[u_l] += (labels == u_l.item()).sum()
        if label_weights is None:
            label_weights = labels.new_ones(labels.size(), dtype=cls_score.dtype)
        cls_score_classes, cls_score_objectness = cls_score[..., :-2], cls_score[..., -2:]
        if pos_inds.sum() > 0:
            loss = seesaw_ce_loss(cls_score_classes[pos_inds], labels[pos_inds],
                                  self.cum_samples[: self.num_classes], self.p, self.q, self.eps)
            loss_cls_classes = self.loss_weight * mmdet_weight_reduce_loss(
                loss, label_weights[pos_inds], reduction, avg_factor)
        else:
            loss_cls_classes = cls_score_classes[pos_inds].sum()
        objectness = F.cross_entropy(cls_score_objectness, obj_labels, reduction="none")
        loss_cls_objectness = self.loss_weight * mmdet_weight_reduce_loss(
            objectness, label_weights, reduction, avg_factor)
        return {"loss_cls_objectness": loss_cls_objectness, "loss_cls_classes": loss_cls_classes}

    def get_activation(self, cls_score):
        score_classes = F.softmax(cls_score[..., :-2], dim=-1)
        score_objectness = F.softmax(cls_score[..., -2:], dim=-1)
        return torch.cat([score_classes * score_objectness[..., [0]], score_objectness[..., [1]]], dim=-1)
