"""Train a small classifier on synthetic long-tailed data with the loss of an experiment file.

    python examples/train.py                         # examples/tagging.yaml (multi-label, ASL)
    python examples/train.py examples/detector.yaml  # any single-task example
    python examples/train.py my_exp.yaml --key model.loss --steps 500

A plain PyTorch loop: the loss is the only lossdsl object. Sigmoid-head losses train a multi-label
tagger (a few labels per sample, rare classes rare); softmax-head losses train a single-label
classifier on the same long-tailed classes. Every term is logged from ``loss.last_terms``; the
test mAP (multi-label) or macro recall (single-label) at the end shows how the rare classes fared.
Runs on the CPU in well under a minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import nn

import lossdsl

HERE = Path(__file__).resolve().parent


def long_tailed_data(n: int, classes: int, features: int, multi_label: bool, generator: torch.Generator):
    """Features from a Gaussian, labels from a random linear teacher whose class frequencies fall
    off as a power law (class 0 in ~30% of samples, the last in well under 1%)."""
    x = torch.randn(n, features, generator=generator)
    teacher = torch.randn(features, classes, generator=generator)
    scores = x @ teacher
    frequency = 0.3 * (torch.arange(classes, dtype=torch.float32) + 1) ** -1.2
    if multi_label:
        thresholds = torch.stack([torch.quantile(scores[:, c], 1 - frequency[c]) for c in range(classes)])
        return x, (scores > thresholds).float()
    # single label: boost frequent classes so that the argmax follows the long tail
    return x, (scores / scores.std() + frequency.log()).argmax(dim=1)


def mean_average_precision(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Average precision per class (threshold-free: ranks by score), for multi-label tagging."""
    order = scores.argsort(dim=0, descending=True)
    hits = truth.gather(0, order).float()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1).unsqueeze(1)
    return (precision * hits).sum(0) / hits.sum(0).clamp(min=1)


def per_class_quality(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Average precision per class (multi-label), or recall per class (single-label)."""
    if multi_label:
        return mean_average_precision(logits, target > 0.5)
    classes = logits.shape[1]
    predicted = nn.functional.one_hot(logits.argmax(1), classes).bool()
    truth = nn.functional.one_hot(target, classes).bool()
    return (predicted & truth).sum(0).float() / truth.sum(0).clamp(min=1).float()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default=str(HERE / "tagging.yaml"))
    parser.add_argument("--key", default="model.loss", help="dotted key of the loss in the file")
    parser.add_argument("--steps", type=int, default=None, help="default: train.steps, else 300")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    loss = lossdsl.compile(lossdsl.load(Path(args.config), key=args.key))
    if not isinstance(loss, lossdsl.CompiledLoss):
        print(f"{args.config} holds a multi-task loss; run examples/train_multitask.py instead")
        return 1
    heads = {getattr(term.loss, "head", None) for term in loss.spec.expand().terms}
    multi_label = "softmax" not in heads
    classes = int(config.get("model", {}).get("num_classes", 20))
    steps = args.steps or int(config.get("train", {}).get("steps", 300))
    print(f"loss: {loss!r}")
    print(f"task: {'multi-label' if multi_label else 'single-label'}, {classes} long-tailed classes, "
          f"{steps} steps")

    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    x, y = long_tailed_data(6000, classes, 32, multi_label, generator)
    x_train, y_train, x_test, y_test = x[:5000], y[:5000], x[5000:], y[5000:]
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, classes))
    # loss.parameters() is empty for these losses, but including it is the habit that matters:
    # learnable loss weights (uncertainty weighting) only train if the optimizer sees them.
    optimizer = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=3e-3)

    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(x_train), (256,), generator=generator)
        value = loss(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        # The last step too: with --steps 30 only step 1 was logged.
        if step % 50 == 0 or step == 1 or step == steps:
            terms = "  ".join(f"{name} {float(term):.4f}" for name, term in loss.last_terms.items())
            print(f"step {step:4d}  loss {value.item():.4f}  |  {terms}")
    with torch.no_grad():
        quality = per_class_quality(model(x_test), y_test, multi_label)
    metric = "mAP" if multi_label else "macro recall"
    rare = quality[-max(1, classes // 3):].mean()
    print(f"test {metric} {quality.mean():.3f}, on the rarest third of the classes {rare:.3f} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
