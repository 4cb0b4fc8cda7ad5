"""Which of eager and torch.compile is closer to a float64 reference (asl, GHM + Poly focal)?"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lossdsl  # noqa: E402


def asl64(x, y, gp=1.0, gn=4.0, clip=0.05):
    x = x.double()
    p = torch.sigmoid(x)
    p_m = (p - clip).clamp(min=0)
    loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p_m))
    q = y * (1 - p) + (1 - y) * p_m
    return (loss * q.pow(gp * y + gn * (1 - y))).mean()


def focal64(x, y):
    x = x.double()
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y.double(), reduction="none")
    q = y * (1 - p) + (1 - y) * p
    return ((0.25 * y + 0.75 * (1 - y)) * ce * q**2).mean()


device = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator().manual_seed(0)
x = (torch.randn(64, 8, 4, 4, generator=g) * 4).to(device)
y = (torch.rand(64, 8, 4, 4, generator=g) < 0.1).float().to(device)
for expr, ref in [("asl()", asl64), ("focal()", focal64)]:
    leaf = x.clone().requires_grad_()
    r = ref(leaf, y)
    (rg,) = torch.autograd.grad(r, leaf)
    for name, fn in [("eager", lossdsl.compile(expr)), ("compiled", torch.compile(lossdsl.compile(expr), fullgraph=True))]:
        leaf = x.clone().requires_grad_()
        v = fn(leaf, y)
        (gr,) = torch.autograd.grad(v, leaf)
        ratio = float((gr.double() * rg).sum() / (rg * rg).sum())
        print(f"{expr:10} {name:9} grad/ref projection {ratio:.4f} value err {abs(float(v) - float(r)):.2e} (value {float(r):.5f})  "
              f"grad max err {float((gr.double() - rg).abs().max()):.2e} (grad max {float(rg.abs().max()):.2e})")
