"""Speed and peak memory of lossdsl's box losses against torchvision's formulas, in one process.

    python benchmarks/bench_boxes.py                  # CPU, 262144 boxes
    python benchmarks/bench_boxes.py --device cuda    # on a GPU
    python benchmarks/bench_boxes.py --threads 1      # a CPU shared with other work: one thread
    python benchmarks/bench_boxes.py --quick          # small sizes, a smoke run

Each row times forward + backward of the mean loss w.r.t. the predicted boxes (median, the two sides
interleaved; see bench_losses.py, whose measurement this reuses) and prints the ratio of lossdsl to
torchvision's ``generalized_box_iou_loss`` / ``complete_box_iou_loss`` written plainly (torchvision
does not import here; the formulas are those of pytorch/vision torchvision/ops/giou_loss.py,
diou_loss.py, ciou_loss.py and _utils.py). Target (issue 10): giou on [262144, 4] no slower than
torchvision's (ratio <= 1.0).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_losses import peak_mib, time_pair  # noqa: E402

from lossdsl.functional.boxes import box_loss  # noqa: E402

# -- torchvision's formulas, as its source writes them --------------------------------------------


def _inter_union(boxes1, boxes2):
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    intsctk = torch.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    return intsctk, unionk


def torchvision_giou(boxes1, boxes2, eps=1e-7):
    intsctk, unionk = _inter_union(boxes1, boxes2)
    iouk = intsctk / (unionk + eps)
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    return (1 - (iouk - ((area_c - unionk) / (area_c + eps)))).mean()


def torchvision_ciou(boxes1, boxes2, eps=1e-7):
    intsct, union = _inter_union(boxes1, boxes2)
    iou = intsct / (union + eps)
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    diagonal_distance_squared = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    x_p, y_p = (x2 + x1) / 2, (y2 + y1) / 2
    x_g, y_g = (x1g + x2g) / 2, (y1g + y2g) / 2
    centers_distance_squared = ((x_p - x_g) ** 2) + ((y_p - y_g) ** 2)
    diou = 1 - iou + (centers_distance_squared / diagonal_distance_squared)
    w_pred, h_pred, w_gt, h_gt = x2 - x1, y2 - y1, x2g - x1g, y2g - y1g
    v = (4 / (math.pi**2)) * torch.pow((torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred)), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return (diou + alpha * v).mean()


def lossdsl_loss(kind: str):
    return lambda pred, target: box_loss(pred, target, kind).mean()


def boxes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets anywhere in a 1000-pixel image; predictions near them (most overlap, some do not)."""
    corner = torch.rand(n, 2, generator=generator) * 1000
    size = torch.rand(n, 2, generator=generator) * 200 + 4
    target = torch.cat((corner, corner + size), dim=-1)
    shift = (torch.rand(n, 4, generator=generator) - 0.5) * size.repeat(1, 2)
    pred = target + shift
    pred = torch.cat((torch.min(pred[:, :2], pred[:, 2:]), torch.max(pred[:, :2], pred[:, 2:])), dim=-1)
    return pred, target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=262144)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeat = 4096, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    pred, target = (t.to(device) for t in boxes(args.n, torch.Generator().manual_seed(0)))

    rows = [
        ("giou", lossdsl_loss("giou"), "torchvision generalized_box_iou_loss", torchvision_giou, "<= 1.0"),
        ("ciou", lossdsl_loss("ciou"), "torchvision complete_box_iou_loss", torchvision_ciou, ""),
    ]
    print(f"device {device}, boxes {args.n}x4, float32, forward+backward, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    header = f"{'lossdsl':8} {'reference':38} {'ms':>8} {'ref ms':>8} {'ratio':>6} {'target':>7} " \
             f"{'MiB':>7} {'ref MiB':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name, ours, ref_name, ref, goal in rows:
        ours_ms, ref_ms = time_pair(ours, ref, pred, target, args.repeat, device)
        ours_mem, ref_mem = peak_mib(ours, pred, target, device), peak_mib(ref, pred, target, device)
        mem_ratio = ours_mem / ref_mem if ref_mem else float("nan")
        print(f"{name:8} {ref_name:38} {ours_ms:8.1f} {ref_ms:8.1f} {ours_ms / ref_ms:6.2f} {goal:>7} "
              f"{ours_mem:7.0f} {ref_mem:8.0f} {mem_ratio:6.2f}")


if __name__ == "__main__":
    main()
