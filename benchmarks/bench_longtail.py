"""Speed of the long-tail losses against their plain formulas written in torch, in one process.

    python benchmarks/bench_longtail.py                  # CPU, logits 65536 x 80 and 65536 x 1000
    python benchmarks/bench_longtail.py --device cuda    # on a GPU
    python benchmarks/bench_longtail.py --quick          # small sizes, a smoke run

Each row times eager forward + backward of a lossdsl expression and of the formula as its
reference implementation writes it (the loss and, for running state, the state's update: seesaw's
counts, EQLv2's gradient statistics, online counts), with lossdsl.bench's helpers: the fastest of
--rounds medians of interleaved runs. It prints the ratio (lower is better; the target is at most
1.0). On a shared machine, ``--cpu-time`` times one thread's CPU time instead of the wall clock. Class-index targets drawn from a
long-tailed distribution (imbalance ratio 100, exponential); EQLv2 gets C + 1 channels, its last the
background. lossdsl runs as ``lossdsl.compile`` gives it (``check_values=True``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lossdsl  # noqa: E402
import lossdsl.bench  # noqa: E402

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def long_tailed_counts(classes: int, largest: float = 5000.0, imbalance: float = 100.0) -> torch.Tensor:
    return torch.tensor([max(1.0, round(largest * imbalance ** (-j / (classes - 1)))) for j in range(classes)],
                        dtype=torch.float32)


# -- the plain formulas ------------------------------------------------------------------------------


def plain_logit_adjust(counts: torch.Tensor) -> Loss:
    """google-research build_loss_fn: logits + log(pi^tau + 1e-12), then cross-entropy."""
    shift = torch.log(counts / counts.sum() + 1e-12)
    return lambda x, t: F.cross_entropy(x + shift.to(x.device), t)


def plain_online_balanced_softmax(classes: int) -> Loss:
    """BalancedMetaSoftmax's loss on counts kept from the batches (a bincount each step)."""
    state = {"counts": None}

    def loss(x, t):
        if state["counts"] is None:
            state["counts"] = torch.zeros(classes, device=x.device)
        state["counts"] += torch.bincount(t, minlength=classes).float()
        return F.cross_entropy(x + state["counts"].clamp(min=1).log(), t)

    return loss


def plain_ldam(counts: torch.Tensor, max_m=0.5, s=30.0) -> Loss:
    """LDAM-DRW losses.py LDAMLoss (bool masks instead of its uint8 and CUDA tensors)."""
    m_list = 1.0 / torch.sqrt(torch.sqrt(counts))
    m_list = m_list * (max_m / torch.max(m_list))

    def loss(x, target):
        index = torch.zeros_like(x, dtype=torch.bool)
        index.scatter_(1, target.view(-1, 1), True)
        batch_m = torch.matmul(m_list.to(x.device)[None, :], index.float().transpose(0, 1)).view(-1, 1)
        return F.cross_entropy(s * torch.where(index, x - batch_m, x), target)

    return loss


def class_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    weights = (1 - beta) / (1 - torch.pow(beta, counts.double()))
    return (weights / weights.sum() * len(counts)).float()


def plain_class_balanced_ce(counts: torch.Tensor, beta=0.9999) -> Loss:
    """Cui et al.'s softmax loss: each sample's cross-entropy times its class's weight, mean."""
    weights = class_weights(counts, beta)
    return lambda x, t: (weights.to(x.device)[t] * F.cross_entropy(x, t, reduction="none")).mean()


def plain_class_balanced_focal(counts: torch.Tensor, beta=0.9999, gamma=2.0) -> Loss:
    """Cui et al.'s sigmoid focal loss on one-hot labels, weighted per sample, over the positives."""
    weights = class_weights(counts, beta)

    def loss(x, t):
        labels = F.one_hot(t, x.shape[1]).float()
        alpha = weights.to(x.device)[t].unsqueeze(1)
        cross_entropy = F.binary_cross_entropy_with_logits(x, labels, reduction="none")
        modulator = torch.exp(-gamma * labels * x - gamma * torch.log1p(torch.exp(-x)))
        return (alpha * modulator * cross_entropy).sum() / labels.sum()

    return loss


def plain_seesaw(classes: int, p=0.8, q=2.0, eps=1e-2) -> Loss:
    """mmpretrain seesaw_ce_loss, its counts updated with one bincount per step (mmpretrain loops
    over the classes present with a host sync each, far slower)."""
    state = {"cum": None}

    def loss(cls_score, labels):
        if state["cum"] is None:
            state["cum"] = torch.zeros(classes, device=cls_score.device)
        state["cum"] += torch.bincount(labels, minlength=classes).float()
        cum_samples = state["cum"]
        onehot_labels = F.one_hot(labels, classes)
        seesaw_weights = cls_score.new_ones(onehot_labels.size())
        sample_ratio_matrix = cum_samples[None, :].clamp(min=1) / cum_samples[:, None].clamp(min=1)
        index = (sample_ratio_matrix < 1.0).float()
        sample_weights = sample_ratio_matrix.pow(p) * index + (1 - index)
        seesaw_weights = seesaw_weights * sample_weights[labels.long(), :]
        scores = F.softmax(cls_score.detach(), dim=1)
        self_scores = scores[torch.arange(0, len(scores), device=scores.device), labels]
        score_matrix = scores / self_scores[:, None].clamp(min=eps)
        index = (score_matrix > 1.0).float()
        seesaw_weights = seesaw_weights * (score_matrix.pow(q) * index + (1 - index))
        cls_score = cls_score + (seesaw_weights.log() * (1 - onehot_labels))
        return F.cross_entropy(cls_score, labels)

    return loss


def plain_eqlv2(classes: int, gamma=12.0, mu=0.8, alpha=4.0) -> Loss:
    """mmdetection EQLV2Loss.forward and collect_grad (C + 1 channels, the last the background)."""
    state = {}

    def loss(cls_score, label):
        if not state:
            state.update(pos_grad=cls_score.new_zeros(classes), neg_grad=cls_score.new_zeros(classes),
                         pos_neg=cls_score.new_ones(classes) * 100)
        n_i, n_c = cls_score.size()
        target = cls_score.new_zeros(n_i, n_c)
        target[torch.arange(n_i, device=cls_score.device), label] = 1
        neg_w = torch.cat([1 / (1 + torch.exp(-gamma * (state["pos_neg"] - mu))), cls_score.new_ones(1)])
        pos_w = 1 + alpha * (1 - neg_w)
        neg_w, pos_w = neg_w.view(1, -1).expand(n_i, n_c), pos_w.view(1, -1).expand(n_i, n_c)
        weight = pos_w * target + neg_w * (1 - target)
        cls_loss = F.binary_cross_entropy_with_logits(cls_score, target, reduction="none")
        cls_loss = torch.sum(cls_loss * weight) / n_i
        with torch.no_grad():
            prob = torch.sigmoid(cls_score)
            grad = torch.abs(target * (prob - 1) + (1 - target) * prob)
            state["pos_grad"] += torch.sum(grad * target * weight, dim=0)[:-1]
            state["neg_grad"] += torch.sum(grad * (1 - target) * weight, dim=0)[:-1]
            state["pos_neg"] = state["pos_grad"] / (state["neg_grad"] + 1e-10)
        return cls_loss

    return loss


def rows(classes: int) -> list[tuple[str, str, Loss, str | None, bool]]:
    """(lossdsl expression, reference name, reference, the counts its "..." stands for, whether the
    logits have C + 1 channels as EQLv2's)."""
    counts = long_tailed_counts(classes)
    n = "[" + ", ".join(f"{c:g}" for c in counts.tolist()) + "]"
    return [
        ("logit_adjust(ce(), counts=...)", "google-research logit adjustment", plain_logit_adjust(counts),
         n, False),
        ("balanced_softmax()", "BalancedMetaSoftmax, bincount counts", plain_online_balanced_softmax(classes),
         None, False),
        ("ldam(counts=..., s=30)", "LDAM-DRW LDAMLoss", plain_ldam(counts), n, False),
        ("class_balanced(ce(), counts=...)", "Cui et al. softmax", plain_class_balanced_ce(counts), n, False),
        ("class_balanced(focal(alpha=none), counts=..., reduction=pos_mean)", "Cui et al. sigmoid focal",
         plain_class_balanced_focal(counts), n, False),
        ("seesaw()", "mmpretrain seesaw_ce_loss, bincount counts", plain_seesaw(classes), None, False),
        ("eqlv2()", "mmdetection EQLV2Loss", plain_eqlv2(classes), None, True),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--classes", type=int, nargs="+", default=[80, 1000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each side at least this long")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --repeat runs; the fastest median "
                        "of each side is reported")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time "
                        "(time.thread_time): steady on a shared machine, where wall time is mostly noise")
    parser.add_argument("--only", action="append", help="rows whose expression holds this text (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    args = parser.parse_args(argv)
    if args.cpu_time:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    if args.quick:
        args.n, args.classes, args.repeat, args.min_seconds, args.rounds = 1024, [16], 2, 0.0, 1
    device = args.device
    print(f"device {device}, float32, eager forward+backward, {torch.get_num_threads()} threads, "
          f"{'CPU' if args.cpu_time else 'wall'} time, torch {torch.__version__}")
    header = f"{'logits':>12}  {'lossdsl':58} {'reference':42} {'ms':>8} {'ref ms':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for classes in args.classes:
        generator = torch.Generator().manual_seed(0)
        for expr, ref_name, reference, counts, background in rows(classes):
            if args.only and not any(text in expr for text in args.only):
                continue
            channels = classes + 1 if background else classes
            x = (torch.randn(args.n, channels, generator=generator) * 2).to(device)
            frequency = long_tailed_counts(channels)
            t = torch.multinomial(frequency, args.n, replacement=True, generator=generator).to(device)
            ours = lossdsl.compile(expr.replace("counts=...", f"counts={counts}") if counts else expr).to(device)
            # Several rounds of interleaved runs; each side's least disturbed median counts (on a
            # shared machine other processes only ever add time).
            rounds = [lossdsl.bench.time_pair(ours, reference, x, t, args.repeat, device,
                                              min_seconds=args.min_seconds, max_repeat=30, clock=clock)
                      for _ in range(args.rounds)]
            ours_ms, ref_ms = min(r[0] for r in rounds), min(r[1] for r in rounds)
            shape = f"{args.n}x{channels}"
            print(f"{shape:>12}  {expr:58} {ref_name:42} {ours_ms:8.1f} {ref_ms:8.1f} {ours_ms / ref_ms:6.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
