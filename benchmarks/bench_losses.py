"""Speed and peak memory of lossdsl's losses, in one process.

    python benchmarks/bench_losses.py                       # issue 18's table, CPU, 65536 x 80
    python benchmarks/bench_losses.py --cpu-time            # one thread, timed by its CPU time
    python benchmarks/bench_losses.py --cpu-time --update README.md   # rewrite the README's table
    python benchmarks/bench_losses.py --table references    # against hand-written losses (issue 3)
    python benchmarks/bench_losses.py --device cuda         # on a GPU
    python benchmarks/bench_losses.py --quick               # small sizes, a smoke run

The default table (issue 18) times each loss with default settings against the fused torch function
on the same input (``F.binary_cross_entropy_with_logits`` for the sigmoid head, ``F.cross_entropy``
for the softmax head and ``ce() + dice()``; ``check_values=False`` against the default checks):
forward + backward, best of --rounds interleaved rounds, each round the medians of --repeat runs of
both sides (lossdsl.bench.best_rounds), beside the peak memory of one step beyond the inputs (on the
CPU the process's resident high-water mark, Linux only; on a GPU the CUDA allocator's peak).
``--update README.md`` writes that table between the README's ``<!-- speed-table:begin -->`` and
``<!-- speed-table:end -->`` markers. Goals (issue 18): bce <= 1.1, focal <= 1.8, Poly-1 focal <= 2.0,
asl and ghm(bins=30) <= 2.2, softmax focal <= 1.5, ce + dice <= 1.8, check_values=False <= 1.05.

The references table times forward + backward (median of --repeat runs after a warm-up, the two
sides interleaved) against the code people copy today. Ratios, not absolute times, are the result:
both sides run on the same machine in the same process, interleaved. Targets (issue 3): every named
loss at most 1.0x its hand-written eager version, asl at most 0.8x timm, GHM-C at bins=30 at least 5x
faster than the per-bin loop (ratio <= 0.2), under torch.compile within 1.5x of fused BCE.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lossdsl  # noqa: E402
import lossdsl.bench  # noqa: E402

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- references: the code people copy today --------------------------------------------------------


def fused_bce(x, y):
    return F.binary_cross_entropy_with_logits(x, y)


def hand_focal(x, y, gamma=2.0, alpha=0.25):
    """torchvision.ops.sigmoid_focal_loss, as commonly copied (mean reduction)."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return (alpha_t * loss).mean()


def hand_poly1_focal(x, y, gamma=2.0, alpha=0.25, eps=1.0):
    """Poly-1 focal as in the PolyLoss paper's code: alpha on the focal part only."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    focal = alpha_t * ce * ((1 - p_t) ** gamma)
    return (focal + eps * (1 - p_t) ** (gamma + 1)).mean()


def hand_softmax_focal(x, t, gamma=2.0):
    log_p = F.log_softmax(x, dim=1)
    log_pt = log_p.gather(1, t.unsqueeze(1)).squeeze(1)
    return (-((1 - log_pt.exp()) ** gamma) * log_pt).mean()


def ghm_loop(bins: int):
    """mmdetection-style GHM-C: one pass per bin with a host sync (.item()) each."""
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6

    def loss(x, y):
        g = (torch.sigmoid(x).detach() - y).abs()
        weights = torch.zeros_like(x)
        tot = max(x.numel(), 1.0)
        n = 0
        for i in range(bins):
            inds = (g >= edges[i]) & (g < edges[i + 1])
            num = inds.sum().item()
            if num > 0:
                weights[inds] = tot / num
                n += 1
        if n > 0:
            weights = weights / n
        return F.binary_cross_entropy_with_logits(x, y, weights, reduction="sum") / tot

    return loss


def mmdet_qfl(x, y, beta=2.0):
    """mmdetection quality_focal_loss_tensor_target (gfocal_loss.py), written plainly; mean over
    elements (lossdsl's qfocal() default)."""
    p = x.sigmoid()
    loss = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none") * p.pow(beta)
    positive = y > 0
    pos_loss = F.binary_cross_entropy_with_logits(x, y, reduction="none") * (y - p).abs().pow(beta)
    return torch.where(positive, pos_loss, loss).mean()


def mmdet_vfl(x, y, alpha=0.75, gamma=2.0):
    """mmdetection varifocal_loss (varifocal_loss.py), iou_weighted, mean over elements."""
    p = x.sigmoid()
    focal_weight = y * (y > 0.0).float() + alpha * (p - y).abs().pow(gamma) * (y <= 0.0).float()
    return (F.binary_cross_entropy_with_logits(x, y, reduction="none") * focal_weight).mean()


def load_timm(file: str, name: str):
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "loss" / file
    if not path.is_file():  # older timm releases lack some losses
        return None
    module_spec = importlib.util.spec_from_file_location(f"timm_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


# -- measurement: the helpers `lossdsl bench` uses -------------------------------------------------


def time_pair(ours: Loss, ref: Loss, x, y, repeat: int, device: str) -> tuple[float, float]:
    """Median ms of forward+backward for both, interleaved; fast rows are noisier, so both sides run
    for about two seconds (50 runs at most)."""
    return lossdsl.bench.time_pair(ours, ref, x, y, repeat, device, min_seconds=2.0, max_repeat=50)


def peak_mib(loss: Loss, x, y, device: str) -> float:
    peak = lossdsl.bench.peak_mib(loss, x, y, device)
    return float("nan") if peak is None else peak


def references_table(args: argparse.Namespace) -> None:
    """lossdsl against the code people copy today (issue 3's table)."""
    device = args.device
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(args.n, args.c, generator=generator) * 2).to(device)
    y = (torch.rand(args.n, args.c, generator=generator) < 0.01).float().to(device)
    t = torch.randint(0, args.c, (args.n,), generator=generator).to(device)
    # IoU-quality targets: 1% soft positives (detection's quality focal and varifocal losses)
    soft = (y * torch.rand(args.n, args.c, generator=generator).to(device) * 0.9 + y * 0.1)

    rows: list[tuple[str, Loss, str, Loss, object, str]] = [
        ("bce()", lossdsl.compile("bce()"), "F.binary_cross_entropy_with_logits", fused_bce, y, "~1.0"),
        ("focal()", lossdsl.compile("focal()"), "hand-written focal (eager)", hand_focal, y, "<= 1.0"),
        ("poly(focal(), eps=1)", lossdsl.compile("poly(focal(), eps=1)"), "hand-written Poly-1 focal",
         hand_poly1_focal, y, "<= 1.0"),
        ("focal(head=softmax)", lossdsl.compile("focal(head=softmax)"), "hand-written softmax focal",
         hand_softmax_focal, t, "<= 1.0"),
        ("ghm(bins=30)", lossdsl.compile("ghm(bins=30)"), "per-bin GHM-C loop (mmdet)", ghm_loop(30), y,
         "<= 0.2"),
        ("qfocal()", lossdsl.compile("qfocal()"), "mmdet quality_focal_loss, plainly", mmdet_qfl, soft,
         "<= 0.7"),
        ("varifocal()", lossdsl.compile("varifocal()"), "mmdet varifocal_loss, plainly", mmdet_vfl, soft,
         "<= 0.7"),
    ]
    timm_asl = load_timm("asymmetric_loss.py", "AsymmetricLossMultiLabel")
    if timm_asl is not None:
        try:
            reference = timm_asl(reduction="mean").to(device)
        except TypeError:  # older timm: no reduction argument, returns the negated sum
            summed = timm_asl().to(device)
            reference = lambda x, y: summed(x, y) / x.numel()  # noqa: E731
        rows.append(("asl()", lossdsl.compile("asl()"), "timm AsymmetricLossMultiLabel",
                     reference, y, "<= 0.8"))
    timm_zlpr = load_timm("zlpr_loss.py", "ZlprLoss")
    if timm_zlpr is not None:
        rows.append(
            ("zlpr()", lossdsl.compile("zlpr()"), "timm ZlprLoss", timm_zlpr().to(device), y, "<= 1.0")
        )
    if not args.no_compile:
        compiled_focal = torch.compile(lossdsl.compile("focal()"), fullgraph=True)
        rows.append(("compile(focal())", compiled_focal, "F.binary_cross_entropy_with_logits (eager)",
                     fused_bce, y, "<= 1.5"))
        rows.append(("compile(focal())", compiled_focal, "compile(hand-written focal)",
                     torch.compile(hand_focal, fullgraph=True), y, "~1.0"))
        compiled_asl = torch.compile(lossdsl.compile("asl()"), fullgraph=True)
        rows.append(("compile(asl())", compiled_asl, "F.binary_cross_entropy_with_logits (eager)",
                     fused_bce, y, "<= 1.5"))

    print(f"device {device}, logits {args.n}x{args.c}, float32, forward+backward, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    header = f"{'lossdsl':24} {'reference':44} {'ms':>8} {'ref ms':>8} {'ratio':>6} {'target':>7} " \
             f"{'MiB':>7} {'ref MiB':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name, ours, ref_name, ref, target, goal in rows:
        ours_ms, ref_ms = time_pair(ours, ref, x, target, args.repeat, device)
        ours_mem, ref_mem = peak_mib(ours, x, target, device), peak_mib(ref, x, target, device)
        mem_ratio = ours_mem / ref_mem if ref_mem else float("nan")
        print(f"{name:24} {ref_name:44} {ours_ms:8.1f} {ref_ms:8.1f} {ours_ms / ref_ms:6.2f} {goal:>7} "
              f"{ours_mem:7.0f} {ref_mem:8.0f} {mem_ratio:6.2f}")


# -- issue 18: the default path against the fused torch floor ----------------------------------------

ISSUE18_GOALS = {
    "bce()": 1.1, "focal()": 1.8, "poly(focal(), eps=1)": 2.0, "asl()": 2.2, "ghm(bins=30)": 2.2,
    "focal(head=softmax)": 1.5, "ce() + dice()": 1.8, "dice(), check_values=False": 1.05,
    "ce() + dice(), check_values=False": 1.05,
}


@dataclass
class Row:
    name: str
    ours: Loss
    floor_name: str
    floor: Loss
    x: torch.Tensor
    target: object
    shape: str

    @property
    def goal(self) -> float:
        return ISSUE18_GOALS[self.name]


def issue18_rows(n: int, c: int, region_shape: tuple[int, ...], device: str) -> list[Row]:
    """Issue 18's rows: each loss with default settings against the fused torch function on the same
    input (logits [n, c], 1% positives or class indices; region logits ``region_shape``)."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(n, c, generator=generator) * 2).to(device)
    y = (torch.rand(n, c, generator=generator) < 0.01).float().to(device)
    t = torch.randint(0, c, (n,), generator=generator).to(device)
    masks = (torch.randn(region_shape, generator=generator) * 2).to(device)
    classes = torch.randint(0, region_shape[1], (region_shape[0], *region_shape[2:]),
                            generator=generator).to(device)
    flat, region = f"{n}x{c}", "x".join(map(str, region_shape))
    bce_name = "F.binary_cross_entropy_with_logits"
    rows = [Row(expr, lossdsl.compile(expr), bce_name, fused_bce, x, y, flat)
            for expr in ("bce()", "focal()", "poly(focal(), eps=1)", "asl()", "ghm(bins=30)")]
    rows += [
        Row("focal(head=softmax)", lossdsl.compile("focal(head=softmax)"), "F.cross_entropy", F.cross_entropy,
            x, t, flat),
        Row("ce() + dice()", lossdsl.compile("ce() + dice()"), "F.cross_entropy", F.cross_entropy, masks,
            classes, region),
    ]
    for expr in ("dice()", "ce() + dice()"):
        rows.append(Row(f"{expr}, check_values=False", lossdsl.compile(expr, check_values=False),
                        f"{expr} (default)", lossdsl.compile(expr), masks, classes, region))
    return rows


@dataclass
class Measured:
    row: Row
    rounds: lossdsl.bench.Rounds
    peak: float
    floor_peak: float


def measure(row: Row, rounds: int, repeat: int, device: str, clock: Callable[[], float]) -> Measured:
    timed = lossdsl.bench.best_rounds(row.ours, row.floor, row.x, row.target, rounds, repeat, device,
                                      clock=clock)
    return Measured(row, timed, peak_mib(row.ours, row.x, row.target, device),
                    peak_mib(row.floor, row.x, row.target, device))


def markdown(results: list[Measured], caption: str) -> str:
    lines = [caption, "", "| lossdsl | floor | logits | time ratio | goal | every round | fastest / fastest | "
             "peak MiB (lossdsl / floor) |", "|---|---|---|---|---|---|---|---|"]
    for m in results:
        met = "" if m.rounds.ratio <= m.row.goal else " (not met)"
        every = " ".join(f"{ratio:.2f}" for ratio in m.rounds.ratios)
        lines.append(f"| `{m.row.name}` | `{m.row.floor_name}` | {m.row.shape} | {m.rounds.ratio:.2f} | "
                     f"<= {m.row.goal:g}{met} | {every} | {m.rounds.best_times_ratio:.2f} | "
                     f"{m.peak:.0f} / {m.floor_peak:.0f} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- speed-table:begin -->", "<!-- speed-table:end -->"


def update_between_markers(text: str, table: str) -> str:
    """``text`` with what lies between the speed-table markers replaced by ``table``."""
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < start:
        raise SystemExit(f"--update: the file has no {BEGIN} ... {END} markers")
    return text[: start + len(BEGIN)] + "\n" + table + text[stop:]


def issue18_table(args: argparse.Namespace) -> None:
    """Issue 18's table: best of --rounds interleaved rounds, each the medians of --repeat runs."""
    clock = time.thread_time if args.cpu_time else time.perf_counter
    rows = issue18_rows(args.n, args.c, args.region_shape, args.device)
    if args.only:
        rows = [row for row in rows if row.name in args.only]
    timing = "one thread's CPU time" if args.cpu_time else "wall clock"
    caption = (f"{args.device}, float32, forward+backward, {torch.get_num_threads()} thread(s), {timing}, "
               f"best of {args.rounds} interleaved rounds (each the medians of {args.repeat} runs), "
               f"torch {torch.__version__}; peak memory of one step beyond its inputs:")
    print(caption)
    header = f"{'lossdsl':34} {'floor':36} {'ms':>8} {'ref ms':>8} {'ratio':>6} {'goal':>6} " \
             f"{'MiB':>6} {'ref MiB':>7} {'min/min':>7}  rounds"
    print(header)
    print("-" * len(header))
    results = []
    for row in rows:
        m = measure(row, args.rounds, args.repeat, args.device, clock)
        results.append(m)
        best = m.rounds.best
        ours_ms, floor_ms = m.rounds.first_ms[best], m.rounds.second_ms[best]
        print(f"{row.name:34} {row.floor_name:36} {ours_ms:8.1f} {floor_ms:8.1f} "
              f"{m.rounds.ratio:6.2f} {row.goal:6.2f} {m.peak:6.0f} {m.floor_peak:7.0f} "
              f"{m.rounds.best_times_ratio:7.2f}  "
              + " ".join(f"{r:.2f}" for r in m.rounds.ratios), flush=True)
    if args.update:
        path = Path(args.update)
        path.write_text(update_between_markers(path.read_text(), markdown(results, caption)))
        print(f"updated {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", choices=("issue18", "references"), default="issue18",
                        help="issue18: the default path against torch's fused floor (default); "
                             "references: against hand-written losses and other libraries")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--c", type=int, default=80)
    parser.add_argument("--region-shape", default="8,21,128,128", help="N,C,H,W of the region rows")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per side (per round)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (issue18 table)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread, timed by its CPU time: for a machine other jobs keep busy")
    parser.add_argument("--update", metavar="README", help="rewrite the table between the file's "
                        f"{BEGIN} and {END} markers (issue18 table)")
    parser.add_argument("--only", nargs="+", metavar="ROW", help="issue18 rows to run, by name")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args(argv)
    args.region_shape = tuple(int(part) for part in args.region_shape.split(","))
    if args.quick:
        args.n, args.c, args.region_shape = 512, 8, (2, 3, 8, 8)
        args.repeat, args.rounds = min(args.repeat, 2), min(args.rounds, 2)
    if args.cpu_time:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.table == "references":
        references_table(args)
    else:
        issue18_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
