"""Train a tiny two-head network with a multi-task loss and watch the task weights move.

    python examples/train_multitask.py                      # examples/multitask.yaml (uncertainty)
    python examples/train_multitask.py --loss "dtp({seg: ce(), depth: smooth_l1(beta=0.5)})"

One shared trunk, a segmentation-like head (per-pixel classes on a 4x4 grid) and a depth-like
head (per-pixel regression), on synthetic data; a few hundred steps on the CPU. With uncertainty
weighting the learnable log-variances go to the optimizer with the model; with dtp the depth
task's indicator comes from ``loss.observe(depth=...)`` (regression has no accuracy to measure).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

import lossdsl

HERE = Path(__file__).resolve().parent
CLASSES, GRID, FEATURES = 3, 4, 16


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU())
        self.seg = nn.Linear(64, CLASSES * GRID * GRID)
        self.depth = nn.Linear(64, GRID * GRID)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {
            "seg": self.seg(h).view(-1, CLASSES, GRID, GRID),
            "depth": self.depth(h).view(-1, 1, GRID, GRID),
        }


def synthetic(n: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = torch.randn(n, FEATURES, generator=generator)
    seg_teacher = torch.randn(FEATURES, CLASSES * GRID * GRID, generator=generator)
    depth_teacher = torch.randn(FEATURES, GRID * GRID, generator=generator) * 0.3
    seg = (x @ seg_teacher).view(n, CLASSES, GRID, GRID).argmax(dim=1)
    seg[:, 0, 0] = 255  # a void pixel per image, ignored by ce(ignore_index=255)
    noise = 0.5 * torch.randn(n, GRID * GRID, generator=generator)
    depth = ((x @ depth_teacher) + noise).view(n, 1, GRID, GRID)
    return x, {"seg": seg, "depth": depth}


def weights_line(loss: nn.Module) -> str:
    return "  ".join(f"{name} {float(value):.3f}" for name, value in loss.last_terms.items()
                     if name.endswith(".weight"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(HERE / "multitask.yaml"))
    parser.add_argument("--key", default="model.loss")
    parser.add_argument("--loss", help="an expression instead of the config's loss")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    spec = lossdsl.parse(args.loss) if args.loss else lossdsl.load(Path(args.config), key=args.key)
    loss = lossdsl.compile(spec)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x, targets = synthetic(4096, generator)
    model = TwoHeads()
    # The loss's own parameters (uncertainty's log-variances) must reach the optimizer too.
    optimizer = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=1e-2)
    print(f"loss: {loss!r}")
    print(f"learnable loss parameters: {[name for name, _ in loss.named_parameters()] or 'none'}")
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, len(x), (128,), generator=generator)
        preds = model(x[batch])
        target = {name: value[batch] for name, value in targets.items()}
        if "dtp" in spec.to_expr():
            # Regression has no accuracy: give dtp a score, here one minus a bounded error.
            error = (preds["depth"].detach() - target["depth"]).abs().mean()
            loss.observe(depth=float(torch.exp(-error)))
        value = loss(preds, target)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        # The last step too: with --steps 20 only step 1 was logged.
        if step == 1 or step % 50 == 0 or step == args.steps:
            raw = "  ".join(f"{name} {float(loss.last_terms[name]):.3f}" for name in ("seg", "depth"))
            print(f"step {step:4d}  total {value.item():.3f}  |  {raw}  |  weights {weights_line(loss)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
