"""Train a tiny segmenter on synthetic masks with small structures: ce() alone, ce() + dice(), and
ce() + dice() supervised at every decoder scale with deep().

    python examples/train_segmentation.py                  # the comparison, a minute or two on a CPU
    python examples/train_segmentation.py --steps 300 --loss "ce() + tversky(alpha=0.3, beta=0.7)"

Each image holds a large blob (class 1) and a few tiny dots (class 2) on background (class 0), under
noise, with a strip of void pixels labelled 255. The pixel-wise cross-entropy is dominated by the
background and the blob; a region loss weighs each class's mask as a whole, so the dots count as much
as the blob. Deep supervision (``deep(L, weights=exp)``) adds the same loss on the decoder's half and
quarter resolution outputs, the labels resized to each (nnU-Net's recipe). The table compares the
per-class IoU of the full-resolution output on held-out images after the same number of steps, from
the same initial weights, for each loss.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

import lossdsl

SIZE = 32
CLASSES = 3
VOID = 255
WIDTH = 8  # channels: small enough that `make demo` stays quick on a CPU
REGION = "dice(include_background=false, ignore_index=255)"
DEFAULT_LOSSES = (
    "ce(ignore_index=255)",
    f"ce(ignore_index=255) + {REGION}",
    f"deep(ce(ignore_index=255) + {REGION}, weights=exp)",
)


def synthetic_masks(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 1, 32, 32] and labels [n, 32, 32]: a disc of radius 6-10 (class 1), three dots of
    5 pixels (class 2), Gaussian noise, and the bottom two rows void (255)."""
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    labels = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    images = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n):
        cy, cx = torch.randint(10, SIZE - 10, (2,), generator=generator)
        radius = 6 + 4 * torch.rand((), generator=generator)
        blob = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
        labels[i][blob] = 1
        images[i, 0][blob] = 1.0
        for _ in range(3):
            dy, dx = torch.randint(2, SIZE - 2, (2,), generator=generator)
            dot = (ys - dy) ** 2 + (xs - dx) ** 2 <= 1.0
            labels[i][dot] = 2
            images[i, 0][dot] = -1.0
    images += 0.8 * torch.randn(images.shape, generator=generator)
    labels[:, -2:] = VOID
    return images, labels


class Segmenter(nn.Module):
    """A two-level U-Net: logits at full, half and quarter resolution, the full one first (what a
    deeply supervised decoder returns; the other losses read the first only)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(1, WIDTH, 3, padding=1), nn.ReLU())
        self.down1 = nn.Sequential(nn.Conv2d(WIDTH, WIDTH, 3, stride=2, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(WIDTH, WIDTH, 3, stride=2, padding=1), nn.ReLU())
        self.up2 = nn.Sequential(nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.ReLU())
        self.up1 = nn.Sequential(nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleList(nn.Conv2d(WIDTH, CLASSES, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        full = self.encode(x)
        half = self.down1(full)
        quarter = self.down2(half)
        half = self.up2(half + nn.functional.interpolate(quarter, scale_factor=2.0))
        full = self.up1(full + nn.functional.interpolate(half, scale_factor=2.0))
        return [head(features) for head, features in zip(self.heads, (full, half, quarter))]


def per_class_iou(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    predicted = logits.argmax(1)
    counted = labels != VOID
    scores = []
    for c in range(CLASSES):
        hit = ((predicted == c) & (labels == c) & counted).sum()
        union = (((predicted == c) | (labels == c)) & counted).sum()
        scores.append(float(hit) / max(float(union), 1.0))
    return scores


def train(expr: str, steps: int, data, seed: int) -> list[float]:
    (train_x, train_y), (test_x, test_y) = data
    torch.manual_seed(seed)  # the same initial weights for every loss
    model = Segmenter()
    loss = lossdsl.compile(expr)
    # deep() takes every scale, full resolution first; the other losses the full-resolution logits.
    deep = loss.spec.terms[0].loss.kind_name() == "deep"
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, train_x.shape[0], (16,), generator=generator)
        optimizer.zero_grad()
        outputs = model(train_x[batch])
        loss(outputs if deep else outputs[0], train_y[batch]).backward()
        optimizer.step()
    with torch.no_grad():
        return per_class_iou(model(test_x)[0], test_y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", action="append",
                        help="a loss to compare (repeatable); default: ce vs ce+dice")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    generator = torch.Generator().manual_seed(args.seed)
    data = synthetic_masks(256, generator), synthetic_masks(64, generator)
    print(f"tiny segmenter, {args.steps} steps, per-class IoU on 64 held-out images "
          "(0 background, 1 blob, 2 small dots)")
    width = max(len(expr) for expr in args.loss or DEFAULT_LOSSES)
    print(f"{'loss':{width}}  {'IoU 0':>6} {'IoU 1':>6} {'IoU 2':>6}  {'mean':>6}  time")
    for expr in args.loss or DEFAULT_LOSSES:
        start = time.perf_counter()
        scores = train(expr, args.steps, data, args.seed)
        elapsed = time.perf_counter() - start
        cells = " ".join(f"{score:6.3f}" for score in scores)
        print(f"{expr:{width}}  {cells}  {sum(scores) / len(scores):6.3f}  {elapsed:4.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
