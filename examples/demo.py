"""Compile and evaluate every example config and a few expressions on synthetic data.

Run with `make demo`. For each loss it prints the canonical expression, the value on a random
batch, each term's value (loss.last_terms) and checks that the gradient is finite.
"""

from __future__ import annotations

from pathlib import Path

import torch

import lossdsl

HERE = Path(__file__).resolve().parent


def batch_for(spec: lossdsl.LossSpec, num_classes: int, generator: torch.Generator):
    """Synthetic logits and targets shaped for the loss's head."""
    head = spec.terms[0].loss.head
    if head == "softmax":  # segmentation-shaped: [N, C, H, W] logits, [N, H, W] indices
        logits = torch.randn(2, num_classes, 8, 8, generator=generator)
        target = torch.randint(0, num_classes, (2, 8, 8), generator=generator)
        ignore = {getattr(t.loss, "ignore_index", None) for t in spec.terms} - {None, -100}
        if ignore:  # mark a strip of pixels as void, as segmentation labels do
            target[0, :2] = ignore.pop()
        return logits, target
    if head == "sigmoid":  # multi-label: [N, C] logits, multi-hot targets with rare positives
        logits = torch.randn(16, num_classes, generator=generator)
        target = (torch.rand(16, num_classes, generator=generator) < 0.15).float()
        return logits, target
    predictions = torch.randn(16, 4, generator=generator)
    return predictions, predictions + 0.3 * torch.randn(16, 4, generator=generator)


def show(title: str, spec: lossdsl.LossSpec, num_classes: int, generator: torch.Generator) -> None:
    loss = lossdsl.compile(spec)
    logits, target = batch_for(spec, num_classes, generator)
    logits.requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    print(f"== {title}")
    print(f"   {loss!r}")
    print(f"   value {value.item():.4f}   grad finite: {bool(torch.isfinite(logits.grad).all())}")
    for name, term in loss.last_terms.items():
        print(f"   term {name}: {term.item():.4f}")


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    for path in sorted(HERE.glob("*.yaml")):
        key = "model.loss" if "model:" in path.read_text() else "loss"
        spec = lossdsl.load(path, key=key)
        show(f"{path.name} ({key})", spec, num_classes=4 if "segmentation" in path.name else 6,
             generator=generator)
    for expression in [
        "0.7 * ce(smoothing=0.1) + 0.3 * bce(pos_weight=2)",
        "bce(smoothing=0.05, reduction=pos_mean)",
    ]:
        show(expression, lossdsl.parse(expression), num_classes=6, generator=generator)
    print("\nAn error points at the exact character:")
    try:
        lossdsl.parse("0.5 * ce(smothing=0.1)")
    except lossdsl.LossDSLError as error:
        print(error)


if __name__ == "__main__":
    main()
