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
    """Synthetic predictions and targets shaped for the loss: per task for a multi-task loss, else
    by the kind of its first term (softmax terms get segmentation-shaped batches)."""
    if isinstance(loss, lossdsl.CompiledLoss):
        return term_batch(loss.terms[0], classes, generator)
    batches = {name: term_batch(task.terms[0], 3, generator) for name, task in loss.tasks.items()}
    return {name: b[0] for name, b in batches.items()}, {name: b[1] for name, b in batches.items()}


def term_batch(term, classes: int, generator: torch.Generator):
    kind = type(term).__name__
    if kind in ("SoftmaxTerm", "RegionTerm"):  # segmentation-shaped: [N, C, H, W] logits, [N, H, W] indices
        target = torch.randint(0, classes, (2, 8, 8), generator=generator)
        if term.ignore_index == 255:
            target[0, :2] = 255  # a strip of void pixels, ignored by ignore_index=255
        return torch.randn(2, classes, 8, 8, generator=generator), target
    if kind == "BoxTerm":  # boxes (x1, y1, x2, y2) and targets near them
        corner = torch.rand(16, 2, generator=generator) * 10
        boxes = torch.cat([corner, corner + 1 + 3 * torch.rand(16, 2, generator=generator)], 1)
        return boxes + torch.randn(16, 4, generator=generator) * 0.3, boxes
    if kind == "DFLTerm":  # 17 distances per box edge, targets in [0, 16]
        return torch.randn(16, 4, 17, generator=generator), torch.rand(16, 4, generator=generator) * 16
    if kind == "RegressionTerm":  # dense regression, e.g. depth
        return torch.randn(2, 1, 8, 8, generator=generator), torch.randn(2, 1, 8, 8, generator=generator)
    # multi-label: [N, C] logits, rare positives with soft (IoU-like) targets for quality losses
    positives = torch.rand(16, classes, generator=generator) < 0.1
    quality = 0.5 + 0.5 * torch.rand(16, classes, generator=generator)
    return torch.randn(16, classes, generator=generator), positives * quality


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
