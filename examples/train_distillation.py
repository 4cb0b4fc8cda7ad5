"""Distil a teacher into a small student on synthetic data with noisy labels: ce() alone against
Hinton's recipe, 0.5 * ce() + 0.5 * kd(T=4), and the same with the distillation ramped in.

    python examples/train_distillation.py                  # the comparison, a few seconds on a CPU
    python examples/train_distillation.py --loss "ce() + steps([0, 1], at=[5]) * kd(T=2)"

Ten classes of Gaussian clusters in 20 dimensions. The teacher, a wider network, trains on 4,000
clean examples; the student sees only 300 examples whose labels are 30% wrong, and the teacher's
logits on them (``loss(student_logits, labels, teacher=teacher_logits)``). The teacher's softened
probabilities carry what the wrong labels lose. The loop calls ``loss.set_epoch(epoch)`` at each
epoch's start, which is all a scheduled loss needs (a loss without schedules ignores it).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

import lossdsl

CLASSES = 10
DIMENSIONS = 20
DEFAULT_LOSSES = ("ce()", "0.5 * ce() + 0.5 * kd(T=4)", "ce() + ramp(0, 1, end=10) * kd(T=4)")


def clusters(n: int, centres: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    points = centres[labels] + 1.2 * torch.randn(n, DIMENSIONS, generator=generator)
    return points, labels


def network(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(DIMENSIONS, width), nn.ReLU(), nn.Linear(width, CLASSES))


def fit(model: nn.Module, loss, x, y, epochs: int, teacher: torch.Tensor | None = None) -> None:
    """``epochs`` passes over (x, y) in batches of 50, the teacher's logits beside them."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(1)
    for epoch in range(epochs):
        loss.set_epoch(epoch)  # the only thing a schedule needs from the loop
        for batch in torch.randperm(x.shape[0], generator=generator).split(50):
            optimizer.zero_grad()
            # The teacher's logits go to the losses that read them (loss.reads: kd's teacher=).
            extra = {"teacher": teacher[batch]} if "teacher" in loss.reads else {}
            loss(model(x[batch]), y[batch], **extra).backward()
            optimizer.step()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", action="append", help="a student loss to compare (repeatable)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    generator = torch.Generator().manual_seed(args.seed)
    centres = 1.5 * torch.randn(CLASSES, DIMENSIONS, generator=generator)
    teacher_x, teacher_y = clusters(4000, centres, generator)
    student_x, clean_y = clusters(300, centres, generator)
    test_x, test_y = clusters(2000, centres, generator)
    noisy = torch.rand(300, generator=generator) < 0.3
    student_y = torch.where(noisy, torch.randint(0, CLASSES, (300,), generator=generator), clean_y)

    torch.manual_seed(args.seed)
    teacher = network(128)
    fit(teacher, lossdsl.compile("ce()"), teacher_x, teacher_y, epochs=5)
    with torch.no_grad():
        teacher_logits = teacher(student_x)
    print(f"teacher (4,000 clean examples): test accuracy {accuracy(teacher, test_x, test_y):.3f}")
    print(f"student: 300 examples, {int(noisy.sum())} with a wrong label, {args.epochs} epochs")
    width = max(len(expr) for expr in args.loss or DEFAULT_LOSSES)
    for expr in args.loss or DEFAULT_LOSSES:
        torch.manual_seed(args.seed)  # the same initial student for every loss
        student = network(32)
        fit(student, lossdsl.compile(expr), student_x, student_y, args.epochs, teacher_logits)
        print(f"  {expr:{width}}  test accuracy {accuracy(student, test_x, test_y):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
