"""A long-tailed recognition table on scikit-learn's digits, as the long-tail papers report it.

    python examples/train_longtail.py                 # 9 losses x 3 seeds, about 30 s on a CPU
    python examples/train_longtail.py --seeds 5 --loss "class_balanced(ce(), beta=0.99, counts=online)"

The training set is made long-tailed as CIFAR-LT is (Cui et al. 2019): class j keeps
``n_max * 100^(-j / 9)`` of its images (imbalance ratio 100, an exponential profile: 100, 59, 35, 21,
12, 7, 4, 2, 1, 1 images), the test set stays balanced (``--test-per-class`` images of each digit).
The same small network (64 -> 64 -> 10) is trained from the same initial weights with each loss and
evaluated with ``loss.predict`` (for the post-hoc row that is where the adjustment happens). The
table gives the balanced accuracy (the mean of the per-class accuracies) and the accuracy of the
many-shot (30 or more training images), medium-shot (5 to 29) and few-shot (fewer than 5) classes,
as mean +- standard deviation over the seeds. LDAM gets ``s=1``: its usual ``s=30`` assumes a
classifier of normalised features, which this small network does not have. LDAM-DRW is LDAM whose
class-balanced weights a schedule switches on at 80% of training (``beta=steps([0, 0.999], at=[16])``
over the demo's 20 "epochs" of 10 steps; the loop calls ``loss.set_epoch`` at each one's start).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

import lossdsl

IMBALANCE = 100.0
MANY, FEW = 30, 5  # many-shot: n >= 30 training images; few-shot: n < 5; medium in between
STEPS_PER_EPOCH = 10  # the demo's "epoch": 200 steps are 20 epochs
DRW_EPOCH = 16  # DRW's switch at 80% of training, as epoch 160 of 200 in Cao et al.


def long_tailed_digits(largest: int, test_per_class: int, seed: int):
    """(train_x, train_y, test_x, test_y, counts): the digits, the training split long-tailed."""
    from sklearn.datasets import load_digits  # a test dependency of lossdsl, as the demo's data

    features, labels = load_digits(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32) / 16.0
    y = torch.tensor(labels)
    generator = torch.Generator().manual_seed(seed)
    train, test, counts = [], [], []
    for digit in range(10):
        rows = torch.nonzero(y == digit).squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        keep = max(1, int(largest * IMBALANCE ** (-digit / 9)))
        test.append(rows[:test_per_class])
        train.append(rows[test_per_class:test_per_class + keep])
        counts.append(keep)
    train, test = torch.cat(train), torch.cat(test)
    return x[train], y[train], x[test], y[test], counts


def default_losses(counts: list[int]) -> list[tuple[str, str]]:
    """(row label, expression): the baselines of the long-tail papers."""
    n = "[" + ", ".join(str(c) for c in counts) + "]"
    return [
        ("ce", "ce()"),
        ("focal", "focal(head=softmax, gamma=1)"),
        ("class-balanced focal", f"class_balanced(focal(head=softmax, gamma=1), beta=0.999, counts={n})"),
        ("logit adjustment (loss)", f"logit_adjust(ce(), tau=1, counts={n})"),
        ("logit adjustment (post-hoc)", f"logit_adjust(ce(), tau=1, counts={n}, posthoc=true)"),
        ("balanced softmax", f"balanced_softmax(counts={n})"),
        ("ldam", f"ldam(counts={n}, max_m=0.5, s=1)"),
        # Cao et al.'s deferred re-weighting: plain LDAM, then class-balanced from 80% of training
        # (their epoch 160 of 200), written as a schedule that follows the loop's set_epoch.
        ("ldam-drw", f"class_balanced(ldam(counts={n}, max_m=0.5, s=1), "
                     f"beta=steps([0, 0.999], at=[{DRW_EPOCH}]), counts={n})"),
        ("seesaw", "seesaw(p=0.8, q=2)"),
    ]


def network() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train_and_evaluate(expr: str, data, steps: int, seed: int) -> list[float]:
    """Per-class accuracy on the balanced test set after ``steps`` Adam steps."""
    train_x, train_y, test_x, test_y, _ = data
    torch.manual_seed(seed)  # the same initial weights for every loss
    model = network()
    loss = lossdsl.compile(expr)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if step % STEPS_PER_EPOCH == 0:
            loss.set_epoch(step // STEPS_PER_EPOCH)  # what a plain loop does at each epoch's start
        batch = torch.randint(0, len(train_y), (64,), generator=generator)
        optimizer.zero_grad()
        loss(model(train_x[batch]), train_y[batch]).backward()
        optimizer.step()
    loss.eval()
    with torch.no_grad():
        predicted = loss.predict(model(test_x)).argmax(dim=1)
    return [float((predicted[test_y == digit] == digit).float().mean()) for digit in range(10)]


def summary(per_class: list[float], counts: list[int]) -> dict[str, float]:
    groups = {"balanced": range(10),
              "many": [j for j, n in enumerate(counts) if n >= MANY],
              "medium": [j for j, n in enumerate(counts) if FEW <= n < MANY],
              "few": [j for j, n in enumerate(counts) if n < FEW]}
    return {name: sum(per_class[j] for j in classes) / len(classes) for name, classes in groups.items()}


def cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} +- {100 * spread:4.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", action="append", help="an expression to compare (repeatable); "
                        "default: the nine baselines of the table")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--largest", type=int, default=100, help="training images of the most frequent digit")
    parser.add_argument("--test-per-class", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tensors of 64 x 64: more threads only wait for each other
    data = long_tailed_digits(args.largest, args.test_per_class, seed=0)
    counts = data[4]
    rows = [(expr, expr) for expr in args.loss] if args.loss else default_losses(counts)
    print(f"long-tailed digits: {sum(counts)} training images, per class {counts} (imbalance ratio "
          f"{counts[0] // counts[-1]}), {len(data[3])} balanced test images")
    print(f"a 64-64-10 network, {args.steps} Adam steps of 64, accuracy in % over {args.seeds} seeds "
          f"(many-shot: >= {MANY} images, medium: {FEW}-{MANY - 1}, few: < {FEW})")
    width = max(len(label) for label, _ in rows)
    print(f"{'loss':{width}}  {'balanced':>12}  {'many':>12}  {'medium':>12}  {'few':>12}  time")
    for label, expr in rows:
        start = time.perf_counter()
        results = [summary(train_and_evaluate(expr, data, args.steps, seed), counts)
                   for seed in range(args.seeds)]
        elapsed = time.perf_counter() - start
        cells = "  ".join(cell([result[group] for result in results])
                          for group in ("balanced", "many", "medium", "few"))
        print(f"{label:{width}}  {cells}  {elapsed:4.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
