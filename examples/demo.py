"""Compile and evaluate every example config on a synthetic batch, then show what errors look like.

Run with `make demo` (which then trains a small model with examples/train.py). For each loss it
prints the canonical expression, the value on a random batch, each term's value (``last_terms``)
and whether the gradient is finite.
"""

from __future__ import annotations

from pathlib import Path

import torch

import lossdsl

HERE = Path(__file__).resolve().parent


def batch_for(loss, classes: int, generator: torch.Generator):
    """Synthetic predictions and targets shaped for the loss's head (or heads, for multi-task)."""
    if isinstance(loss, lossdsl.CompiledLoss):
        heads = {getattr(t.loss, "head", None) for t in loss.spec.expand().terms}
        if "softmax" in heads:  # segmentation-shaped: [N, C, H, W] logits, [N, H, W] indices
            target = torch.randint(0, classes, (2, 8, 8), generator=generator)
            target[0, :2] = 255  # a strip of void pixels, ignored by ignore_index=255
            return torch.randn(2, classes, 8, 8, generator=generator), target
        # multi-label: [N, C] logits, multi-hot targets with rare positives
        return torch.randn(16, classes, generator=generator), (
            torch.rand(16, classes, generator=generator) < 0.1
        ).float()
    preds = {"seg": torch.randn(2, 3, 8, 8, generator=generator),
             "depth": torch.randn(2, 1, 8, 8, generator=generator)}
    targets = {"seg": torch.randint(0, 3, (2, 8, 8), generator=generator),
               "depth": torch.randn(2, 1, 8, 8, generator=generator)}
    return preds, targets


def show(title: str, loss, classes: int, generator: torch.Generator) -> None:
    inputs, target = batch_for(loss, classes, generator)
    leaves = inputs.values() if isinstance(inputs, dict) else [inputs]
    for leaf in leaves:
        leaf.requires_grad_(True)
    value = loss(inputs, target)
    value.backward()
    finite = all(bool(torch.isfinite(leaf.grad).all()) for leaf in leaves)
    print(f"== {title}")
    print(f"   {loss!r}")
    print(f"   value {value.item():.4f}   gradient finite: {finite}")
    for name, term in loss.last_terms.items():
        print(f"   {name}: {term.item():.4f}")


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    for path in sorted(HERE.glob("*.yaml")):
        spec = lossdsl.load(path, key="model.loss")
        classes = 4 if "segmentation" in path.name else 6
        show(path.name, lossdsl.compile(spec), classes, generator)
    for expression in [
        "poly(focal(gamma=2), eps=1) + 0.5 * ghm(bins=30, momentum=0.75)",
        "0.7 * ce(smoothing=0.1, ignore_index=255) + 0.3 * focal(head=softmax, gamma=2, ignore_index=255)",
    ]:
        show(expression, lossdsl.compile(expression), 6, generator)
    print("\nAn error points at the exact character:")
    try:
        lossdsl.parse("poly(focal(gama=2), eps=1)")
    except lossdsl.LossDSLError as error:
        print(error)


if __name__ == "__main__":
    main()
