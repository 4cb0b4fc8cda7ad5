"""Speed of lossdsl's region losses against MONAI and smp, in one process.

    python benchmarks/bench_region.py                 # CPU, logits 8 x 21 x 128 x 128, index targets
    python benchmarks/bench_region.py --threads 1     # steadier on a shared machine
    python benchmarks/bench_region.py --device cuda   # on a GPU
    python benchmarks/bench_region.py --quick         # small sizes, a smoke run
    python benchmarks/bench_region.py --cpu-time      # one thread, timed by its CPU time (a busy machine)

Each row times forward + backward of a compiled loss (``lossdsl.compile(...)``, default settings:
value checks on) from the logits and the class-index targets, against the reference doing the same:
median of interleaved runs, then the ratio of lossdsl to the reference. Ratios, not absolute times,
are the result. The references take the softmax and a one-hot; lossdsl's terms zero the ignored
positions' logits (SPEC: they may be inf or NaN; MONAI and smp do not guard against that), take
the softmax (in ``ce() + dice()`` one log-softmax shared by both terms) and the statistics straight
from the class indices (no one-hot). Targets (issue 9): dice no slower than MONAI's DiceLoss
(<= 1.0), tversky at most 0.6x MONAI's TverskyLoss, ce + dice at most 0.8x MONAI's DiceCELoss,
lovasz at most 0.5x smp's LovaszLoss. Issue 18: ce + dice at most 1.8x ``F.cross_entropy`` alone,
and ``check_values=False`` never slower than the default (<= 1.05). The rows with ``void`` targets
carry VOC-style void borders (label 255, ``ignore_index=255``): every term then leaves positions
out, the path real segmentation data takes.

On a machine shared with other jobs, more than one intra-op thread makes every row several times
slower and the ratios erratic (threads wait for each other); --threads 1 measures the work itself.
When other jobs hold the cores, even one thread's wall clock counts the time it waits for them:
--cpu-time runs one thread and times each side by that thread's CPU time (every op runs on it),
the median of --repeat interleaved runs (lossdsl.bench.time_pair with the thread's clock).

MONAI (monai==1.6.1) and smp (segmentation-models-pytorch==0.6.0, installed with --no-deps: its
package import needs torchvision, so its loss files are loaded one by one) are needed for the rows
that use them; rows whose reference is missing are skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_losses import time_pair  # noqa: E402

import lossdsl  # noqa: E402
import lossdsl.bench  # noqa: E402

IGNORE = -100
IGNORE_VOID = 255


# -- references ---------------------------------------------------------------------------------------


def monai_losses():
    if importlib.util.find_spec("monai") is None:
        return None
    import monai.losses

    return monai.losses


def smp_loss_module(name: str):
    """One file of smp's losses package, loaded without the package (which imports torchvision)."""
    found = importlib.util.find_spec("segmentation_models_pytorch")
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(list(found.submodule_search_locations)[0]) / "losses"
    package = types.ModuleType("smp_losses")
    package.__path__ = [str(folder)]
    sys.modules.setdefault("smp_losses", package)
    spec = importlib.util.spec_from_file_location(f"smp_losses.{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cpu_time_pair(ours, ref, x, t, repeat: int, device: str) -> tuple[float, float]:
    """Median CPU time (ms) of the calling thread for forward + backward of both, interleaved
    (lossdsl.bench.time_pair with the thread's clock; CPU only: a GPU works on its own clock)."""
    if device != "cpu":
        raise SystemExit("--cpu-time times CPU work; on a GPU use the default timing")
    return lossdsl.bench.time_pair(ours, ref, x, t, repeat, device, clock=time.thread_time)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="8,21,128,128", help="N,C,d1,... of the logits")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread, timed by its CPU time: for a machine other jobs keep busy")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads (0: torch's default); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.cpu_time:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (2, 5, 32, 32) if args.quick else tuple(int(s) for s in args.shape.split(","))
    repeat = 3 if args.quick else args.repeat
    device = args.device
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).mul_(2).to(device)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator).to(device)

    # VOC-style void: a band of label 255 around each object boundary (here: stripes of 2 pixels).
    void = t.clone()
    if void.dim() >= 3:
        void[:, ::16] = IGNORE_VOID
        void[:, 1::16] = IGNORE_VOID
    with_void = lambda expr: lossdsl.compile(expr.replace("()", "(ignore_index=255)"))  # noqa: E731

    rows = [
        ("ce() + dice()", lossdsl.compile("ce() + dice()"), "F.cross_entropy", F.cross_entropy, "<= 1.8"),
        ("dice(), check_values=False", lossdsl.compile("dice()", check_values=False), "dice() (default)",
         lossdsl.compile("dice()"), "<= 1.05"),
        ("ce() + dice(), check_values=False", lossdsl.compile("ce() + dice()", check_values=False),
         "ce() + dice() (default)", lossdsl.compile("ce() + dice()"), "<= 1.05"),
        ("ce() + dice(), void", with_void("ce() + dice()"), "F.cross_entropy, void",
         lambda x, t: F.cross_entropy(x, t, ignore_index=IGNORE_VOID), "", void),
        ("same, check_values=False", lossdsl.compile("ce(ignore_index=255) + dice(ignore_index=255)",
                                                     check_values=False),
         "ce() + dice(), void (default)", with_void("ce() + dice()"), "<= 1.05", void),
    ]
    monai = monai_losses()
    if monai is not None:
        dice_ref = monai.DiceLoss(softmax=True, to_onehot_y=True)
        tversky_ref = monai.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)
        dice_ce_ref = monai.DiceCELoss(softmax=True, to_onehot_y=True)
        with_channel = lambda loss: (lambda x, t: loss(x, t.unsqueeze(1)))  # noqa: E731
        rows += [
            ("dice()", lossdsl.compile("dice()"), "MONAI DiceLoss", with_channel(dice_ref), "<= 1.0"),
            ("tversky(alpha=0.3, beta=0.7)", lossdsl.compile("tversky(alpha=0.3, beta=0.7)"),
             "MONAI TverskyLoss", with_channel(tversky_ref), "<= 0.6"),
            ("ce() + dice()", lossdsl.compile("ce() + dice()"), "MONAI DiceCELoss", with_channel(dice_ce_ref),
             "<= 0.8"),
        ]
    lovasz = smp_loss_module("lovasz")
    if lovasz is not None:
        rows.append(("lovasz()", lossdsl.compile("lovasz()"), "smp LovaszLoss(multiclass)",
                     lovasz.LovaszLoss("multiclass"), "<= 0.5"))

    print(f"device {device}, logits {'x'.join(map(str, shape))}, index targets, float32, forward+backward, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    header = f"{'lossdsl':34} {'reference':30} {'ms':>8} {'ref ms':>8} {'ratio':>6} {'target':>7}"
    print(header)
    print("-" * len(header))
    for name, ours, ref_name, ref, goal, *target in rows:
        timing = cpu_time_pair if args.cpu_time else time_pair
        ours_ms, ref_ms = timing(ours, ref, x, target[0] if target else t, repeat, device)
        print(f"{name:34} {ref_name:30} {ours_ms:8.1f} {ref_ms:8.1f} {ours_ms / ref_ms:6.2f} {goal:>7}")


if __name__ == "__main__":
    main()
