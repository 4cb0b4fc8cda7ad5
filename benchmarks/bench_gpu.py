"""Everything issue 12 measures on a GPU, in one run: lossdsl against the fused floor and against the
code people use today, at the sizes real detectors and segmenters use.

    python benchmarks/bench_gpu.py --device cuda --out benchmarks/results/   # the GPU run (~3 min, H200)
    python benchmarks/bench_gpu.py --quick --no-compile                       # CPU smoke run (~25 s)
    python benchmarks/bench_gpu.py --device cuda --rows focal,ce_dice --no-compile

Rows (``--rows`` takes their ids, comma-separated; default all):

- detection, logits ``[1_000_000, 80]``, 1% positives (multi-hot float targets; for qfocal and
  varifocal the positives carry a soft IoU quality in (0.1, 1]); the floor is
  ``F.binary_cross_entropy_with_logits``:
  ``focal`` focal() vs torchvision's sigmoid_focal_loss formula written plainly; ``asl`` asl() vs timm's
  AsymmetricLossMultiLabel; ``poly`` poly(focal(), eps=1) vs the PolyLoss paper's Poly-1 focal;
  ``ghm`` ghm(bins=30, momentum=0.75) vs mmdetection's GHM-C (a loop over the bins, one host sync
  each); ``qfocal`` and ``varifocal`` vs mmdetection's QFL/VFL formulas written plainly;
- segmentation, logits ``[16, 21, 512, 512]``, class-index targets; the floor is ``F.cross_entropy``:
  ``ce_dice`` ce() + dice() vs MONAI DiceCELoss; ``softmax_focal`` focal(head=softmax) vs a
  hand-written softmax focal loss; ``tversky`` tversky(alpha=0.3, beta=0.7) vs MONAI TverskyLoss.

A row whose reference library (timm, MONAI) is missing is skipped with a line saying so.

What each row measures (the main table), for each mode (eager; ``torch.compile``, fullgraph=True for
lossdsl, which supports it for every name, default graph breaks allowed for the references) and
dtype (float32 logits; bfloat16 logits, as a model under autocast gives them, with the loss called
inside ``torch.autocast(dtype=torch.bfloat16)``):

- forward + backward time w.r.t. the logits: the median of interleaved runs of lossdsl and the other
  side (``time_pair`` from bench_losses.py: the two sides alternate, after a warm-up, until both have
  run about two seconds, 50 runs at most), synchronising the device around each run; each ratio comes
  from its own interleaved pair. ``x floor`` divides by the fused floor in eager mode and the same
  dtype (in compile mode too: the floor is what eager torch offers); ``x ref`` by the reference,
  compiled in compile mode (the GHM-C loop stays eager: it synchronises once per bin);
- peak memory of one forward + backward beyond the inputs (``peak_mib`` from bench_losses.py: the
  CUDA allocator's peak; on the CPU the process's resident high-water mark, noise at --quick sizes);
- achieved bandwidth as a fraction of the device's peak: the bytes the floor must move (one read of
  the logits and the targets, one write of the gradient, in their dtypes) divided by the measured
  time, over the peak copy bandwidth measured in the same run: a device-to-device ``copy_`` of a
  1 GiB buffer into another (256 MiB on the CPU, 32 MiB with --quick), counted as 2 bytes moved per
  byte copied (one read, one write), the best of 5 trials of 10 back-to-back copies, measured at the
  start and at the end of the run (the higher is the peak). On an H200 such a copy reaches about
  4.3 TB/s (the datasheet's 4.8 TB/s is not reachable by a copy).

lossdsl's losses are compiled with the default settings (value checks on), as users get them. The
value-check table (eager, float32) sets ``lossdsl.compile(expr)`` (on) against
``lossdsl.compile(expr, check_values=False)`` (off):
- ``ms``: interleaved forward + backward steps with the device synchronised around each (time_pair):
  the checks' own work and the latency of their round trips;
- ``queued ms`` (CUDA): a training-like loop, 5 trials of 10 steps per side, alternating: each step
  queues 5 ms of stand-in model work (``torch.cuda._sleep``, calibrated with CUDA events) and then the
  loss's forward + backward, with no sync between steps. A loss that synchronises waits there for the
  queued work, and its own launches stop overlapping the GPU's work; the on - off difference is what
  the checks cost a training step, which the synchronised timing cannot show;
- ``syncs`` and ``host reads`` in one forward + backward, on the first call of a fresh loss and on its
  fifth (after three more):
  ``syncs``: on CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` makes torch warn at each
  synchronising CUDA operation (the device-to-host copy behind ``.item()``, ``bool()``, ``float()``, a
  ``nonzero``, a blocking copy, a stream or device synchronize); the warnings are recorded and counted
  (``warnings.simplefilter("always")``: repeats are not deduplicated; autograd replays the ones raised
  in the backward pass to the calling thread). torch documents that not every synchronising operation
  warns, hence the second count.
  ``host reads``: on every device, calls of ``Tensor.item``, ``tolist``, ``__bool__``, ``__float__``,
  ``__int__`` and ``__index__`` on tensors of the benchmark's device, counted by wrapping those
  methods for the duration of the step: on a GPU each is a host synchronisation. It cannot see syncs
  inside torch's C++ (a boolean-mask index, say), which the first count does. On the CPU it is the
  only count (nothing waits there; it says what would on a GPU).

Runtime at full size on an H200 (an estimate, made without the machine; the run prints each phase's
time and each compiled row's first-call time, so the first run corrects it). The inputs are built on
the device (~1 s) and the copy peak takes well under a second. An eager row is 2 interleaved pairs:
time_pair stops at 50 runs a side, and a step takes 1-10 ms at these sizes (the GHM-C loop ~30-50 ms:
30 syncs a step), so about 0.5 s a pair, 3 s for GHM-C; with the peak-memory steps, 9 rows and 2
floors in 2 dtypes: ~30 s. The value checks: ~1 s a row (queued loop 100 steps a side), ~10 s.
Compile rows dominate: ~38 graphs (9 lossdsl + 8 references + the 2 floors, in 2 dtypes; the GHM-C
loop is not compiled), each traced and compiled by Inductor (forward and backward) on 16 cores, at
3-6 s a graph after the first (~15 s more: Inductor's workers and Triton start), then timed like an
eager row: ~2.5-4.5 minutes. In all about 3-5 minutes, so ``--budget-s`` (default 240 at full size)
bounds it: once that many seconds have passed, rows not yet started are skipped with a line saying
so (the row then running finishes: with a compile row, about 4.5 minutes in all at worst). Compile
rows run last, float32 before bfloat16, so the eager tables and the value checks always complete;
``--out DIR`` rewrites ``DIR/<device name>.md`` after every row, so a run cut short (a timeout) still
leaves what it measured. ``--budget-s inf`` lifts the bound.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import math
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_losses import (  # noqa: E402
    fused_bce,
    hand_focal,
    hand_poly1_focal,
    hand_softmax_focal,
    load_timm,
    mmdet_qfl,
    mmdet_vfl,
    peak_mib,
    time_pair,
)

import lossdsl  # noqa: E402
from lossdsl.bench import step, sync  # noqa: E402

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FULL_DETECTION = (1_000_000, 80)
FULL_SEGMENTATION = (16, 21, 512, 512)
QUICK_DETECTION = (512, 80)
QUICK_SEGMENTATION = (2, 21, 16, 16)


class Missing(Exception):
    """A reference library is not installed: the row is skipped, with this reason."""


# -- references not in bench_losses.py ------------------------------------------------------------------


def fused_ce(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(x, t)


class MmdetGHMC:
    """GHM-C as mmdetection's ``GHMC(bins, momentum, use_sigmoid=True)`` computes it
    (mmdet/models/losses/ghm_loss.py), for multi-hot targets and all-valid label weights: the bin edges
    and the momentum-averaged bin counts live on the device, as that module's buffers do, and each bin
    costs a few passes over the data and a host sync (``.item()``, then a boolean-mask write)."""

    def __init__(self, bins: int, momentum: float, device: str) -> None:
        self.bins, self.momentum = bins, momentum
        self.edges = torch.arange(bins + 1, device=device).float() / bins
        self.edges[-1] += 1e-6
        self.acc_sum = torch.zeros(bins, device=device)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = torch.ones_like(pred) > 0  # every label weight is 1
        weights = torch.zeros_like(pred)
        g = (pred.sigmoid().detach() - target).abs()
        tot = max(valid.float().sum().item(), 1.0)
        non_empty = 0
        for i in range(self.bins):
            members = (g >= self.edges[i]) & (g < self.edges[i + 1]) & valid
            count = members.sum().item()
            if count > 0:
                if self.momentum > 0:
                    self.acc_sum[i] = self.momentum * self.acc_sum[i] + (1 - self.momentum) * count
                    weights[members] = tot / self.acc_sum[i]
                else:
                    weights[members] = tot / count
                non_empty += 1
        if non_empty > 0:
            weights = weights / non_empty
        return F.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum") / tot


def timm_asl(device: str) -> Loss:
    cls = load_timm("asymmetric_loss.py", "AsymmetricLossMultiLabel")
    if cls is None:
        raise Missing("timm is not installed (timm/loss/asymmetric_loss.py not found)")
    try:
        return cls(reduction="mean").to(device)
    except TypeError:  # older timm: no reduction argument, returns the negated sum
        summed = cls().to(device)
        return lambda x, y: summed(x, y) / x.numel()


def monai_loss(name: str, **kwargs) -> Callable[[str], Loss]:
    def make(device: str) -> Loss:
        try:
            import monai.losses
        except ImportError as error:
            raise Missing(f"MONAI is not installed ({error})") from None
        loss = getattr(monai.losses, name)(softmax=True, to_onehot_y=True, **kwargs)
        return lambda x, t: loss(x, t.unsqueeze(1))

    return make


# -- the rows -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    expr: str
    family: str  # detection (sigmoid, floor: fused BCE) or segmentation (softmax, floor: cross-entropy)
    targets: str  # hard (multi-hot), soft (IoU quality at positives) or index (class indices)
    ref_name: str
    make_ref: Callable[[str], Loss]  # device -> reference; raises Missing
    compile_ref: bool = True  # False: the reference cannot be compiled usefully (host syncs per bin)


CASES = [
    Case("focal", "focal()", "detection", "hard", "torchvision sigmoid_focal_loss formula",
         lambda device: hand_focal),
    Case("asl", "asl()", "detection", "hard", "timm AsymmetricLossMultiLabel", timm_asl),
    Case("poly", "poly(focal(), eps=1)", "detection", "hard", "Poly-1 focal (PolyLoss paper)",
         lambda device: hand_poly1_focal),
    Case("ghm", "ghm(bins=30, momentum=0.75)", "detection", "hard", "mmdet GHM-C per-bin loop",
         lambda device: MmdetGHMC(30, 0.75, device), compile_ref=False),
    Case("qfocal", "qfocal()", "detection", "soft", "mmdet QFL formula", lambda device: mmdet_qfl),
    Case("varifocal", "varifocal()", "detection", "soft", "mmdet VFL formula", lambda device: mmdet_vfl),
    Case("ce_dice", "ce() + dice()", "segmentation", "index", "MONAI DiceCELoss", monai_loss("DiceCELoss")),
    Case("softmax_focal", "focal(head=softmax)", "segmentation", "index", "hand-written softmax focal",
         lambda device: hand_softmax_focal),
    Case("tversky", "tversky(alpha=0.3, beta=0.7)", "segmentation", "index", "MONAI TverskyLoss",
         monai_loss("TverskyLoss", alpha=0.3, beta=0.7)),
]
FLOORS = {"detection": ("F.binary_cross_entropy_with_logits", fused_bce),
          "segmentation": ("F.cross_entropy", fused_ce)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Row:
    loss: str
    mode: str
    dtype: str
    reference: str = ""
    ms: float | None = None
    floor_ms: float | None = None
    ref_ms: float | None = None
    x_floor: float | None = None
    x_ref: float | None = None
    mib: float | None = None
    floor_mib: float | None = None
    ref_mib: float | None = None
    achieved: float | None = None  # the floor's bytes over the measured time, bytes/s
    note: str = ""


@dataclass
class CheckRow:
    loss: str
    on_ms: float | None = None
    off_ms: float | None = None
    syncs_on: tuple[int, int] | None = None  # first call, fifth call (CUDA sync debug mode)
    syncs_off: tuple[int, int] | None = None
    reads_on: tuple[int, int] | None = None  # first call, fifth call (wrapped Tensor host reads)
    reads_off: tuple[int, int] | None = None
    queued_on_ms: float | None = None  # CUDA: steps queued behind stand-in model work, no sync between
    queued_off_ms: float | None = None
    note: str = ""


@dataclass
class Report:
    header: list[str]
    peak: str = ""
    rows: list[Row] = field(default_factory=list)
    checks: list[CheckRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    peak_bps: float = math.nan


# -- measurement ----------------------------------------------------------------------------------------


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Peak device memory bandwidth in bytes/s: the best of 5 trials of 10 back-to-back ``copy_`` of an
    ``nbytes`` buffer into another, counting each copy as 2 * nbytes moved (one read, one write)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(5):
        dst.copy_(src)
    best = math.inf
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            dst.copy_(src)
        sync(device)
        best = min(best, (time.perf_counter() - start) / 10)
    del src, dst
    return 2 * (nbytes // 4) * 4 / best


def floor_bytes(x: torch.Tensor, target: torch.Tensor) -> int:
    """What a fused forward + backward must move at least: read the logits and the targets once, write
    the gradient (the logits' dtype and shape) once."""
    return 2 * x.numel() * x.element_size() + target.numel() * target.element_size()


_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def counting_syncs(device: str) -> Iterator[dict[str, int | None]]:
    """Counts the host synchronisations of the block: ``syncs`` (CUDA only: the warnings of
    ``torch.cuda.set_sync_debug_mode("warn")``) and ``reads`` (calls of Tensor host reads on tensors of
    ``device``'s type, each a sync on a GPU). The counts are filled in when the block exits."""
    counts: dict[str, int | None] = {"syncs": None, "reads": 0}
    kind = torch.device(device).type
    saved = {name: torch.Tensor.__dict__.get(name) for name in _READS}

    def wrap(name: str):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            if self.device.type == kind:
                counts["reads"] += 1
            return original(self, *args, **kwargs)

        return counted

    for name in _READS:
        setattr(torch.Tensor, name, wrap(name))
    cuda = kind == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            yield counts
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()
            for name, original in saved.items():
                if original is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, original)
    if cuda:
        counts["syncs"] = sum("synchroniz" in str(w.message) for w in caught)


def sync_counts(loss: Loss, x, target, device: str) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """(syncs, host reads) of one forward + backward on the first call of a fresh loss and on its fifth."""
    with counting_syncs(device) as first:
        step(loss, x, target)
    for _ in range(3):
        step(loss, x, target)
    with counting_syncs(device) as fifth:
        step(loss, x, target)
    syncs = None if first["syncs"] is None else (first["syncs"], fifth["syncs"])
    return syncs, (first["reads"], fifth["reads"])


def busy_cycles(device: str, ms: float) -> int:
    """GPU clock cycles that ``torch.cuda._sleep`` spins for about ``ms`` milliseconds (timed with events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1_000_000)  # warm-up
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    end.synchronize()
    return int(1_000_000 * ms / max(start.elapsed_time(end), 1e-3))


def queued_pair(on: Loss, off: Loss, x, y, device: str, cycles: int, steps: int = 10,
                trials: int = 5) -> tuple[float, float]:
    """Median ms per step of a training-like loop: each step queues ``cycles`` of GPU work standing in
    for the model's forward (``torch.cuda._sleep``), then the loss's forward + backward, with no sync
    between steps. A loss that synchronises waits there for the queued work, and its own launches no
    longer overlap the GPU's work: the difference between the two sides is what the sync costs a
    training step. Trials of ``steps`` steps alternate between the two sides."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for loss in (on, off):  # warm-up
        torch.cuda._sleep(cycles)
        step(loss, x, y)
    for _ in range(trials):
        for side, loss in ((0, on), (1, off)):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                torch.cuda._sleep(cycles)
                step(loss, x, y)
            torch.cuda.synchronize()
            times[side].append((time.perf_counter() - start) * 1e3 / steps)
    return statistics.median(times[0]), statistics.median(times[1])


QUEUED_WORK_MS = 5.0


def with_mode(loss: Loss, mode: str, dtype: str, device: str, backend: str, fullgraph: bool) -> Loss:
    fn = torch.compile(loss, fullgraph=fullgraph, backend=backend) if mode == "compile" else loss
    if dtype == "fp32":
        return fn
    kind = torch.device(device).type

    def autocast(x, y):
        with torch.autocast(kind, dtype=DTYPES[dtype]):
            return fn(x, y)

    return autocast


def same_value(case: Case, x: torch.Tensor, y: torch.Tensor, device: str) -> str:
    """A note when lossdsl and the reference (fresh instances: GHM-C keeps state) disagree on the loss
    value beyond float32 rounding, which would make the timing compare different computations."""
    with torch.no_grad():
        ours = float(lossdsl.compile(case.expr).to(device)(x, y))
        ref = float(case.make_ref(device)(x, y))
    difference = abs(ours - ref) / max(abs(ref), 1e-12)
    return "" if difference <= 1e-4 else f"value differs from the reference: {ours:.6g} vs {ref:.6g}"


def first_call_s(loss: Loss, x, y, device: str) -> float:
    """Seconds of the first forward + backward (in compile mode: tracing and compiling both passes)."""
    sync(device)
    start = time.perf_counter()
    step(loss, x, y)
    sync(device)
    return time.perf_counter() - start


def free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def error_note(error: Exception) -> str:
    first_line = (str(error).splitlines() or [""])[0]
    return f"error: {type(error).__name__}: {first_line[:160]}".replace("|", "/")


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b > 0 or not math.isfinite(a):
        return None
    return a / b


# -- output ---------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def fmt_pair(pair: tuple[int, int] | None) -> str:
    return "n/a" if pair is None else f"{pair[0]} / {pair[1]}"


def render(report: Report) -> str:
    lines = list(report.header)
    lines += ["", report.peak, ""]
    lines += [
        "| loss | mode | dtype | reference | ms | floor ms | ref ms | x floor | x ref | MiB | floor MiB | "
        "ref MiB | mem x floor | mem x ref | % peak BW | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.loss} | {r.mode} | {r.dtype} | {r.reference} | {fmt(r.ms, '.2f')} | "
            f"{fmt(r.floor_ms, '.2f')} | {fmt(r.ref_ms, '.2f')} | {fmt(r.x_floor, '.2f')} | "
            f"{fmt(r.x_ref, '.2f')} | {fmt(r.mib, '.0f')} | {fmt(r.floor_mib, '.0f')} | "
            f"{fmt(r.ref_mib, '.0f')} | {fmt(ratio(r.mib, r.floor_mib), '.2f')} | "
            f"{fmt(ratio(r.mib, r.ref_mib), '.2f')} | "
            f"{fmt(None if r.achieved is None else 100 * r.achieved / report.peak_bps, '.0f')} | {r.note} |"
        )
    if report.checks:
        lines += [
            "",
            "Value checks (eager, float32): `lossdsl.compile(expr)` (checks on, the default) against "
            "`lossdsl.compile(expr, check_values=False)` (off). ms: alone, the device synchronised around "
            "each step (the checks' own work and latency); queued ms (CUDA): steps queued back to back "
            f"behind {QUEUED_WORK_MS:g} ms of stand-in model work each, no sync between them (what a "
            "host sync in the loss costs a training step); syncs and host reads: counted in one forward "
            "+ backward, on the first call / the fifth.",
            "",
            "| loss | ms on | ms off | cost ms | cost % | queued ms on | queued ms off | queued cost ms | "
            "syncs on | syncs off | host reads on | host reads off | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in report.checks:
            cost, queued_cost = difference(c.on_ms, c.off_ms), difference(c.queued_on_ms, c.queued_off_ms)
            percent = ratio(cost, c.off_ms)
            lines.append(
                f"| {c.loss} | {fmt(c.on_ms, '.2f')} | {fmt(c.off_ms, '.2f')} | {fmt(cost, '.3f')} | "
                f"{fmt(None if percent is None else 100 * percent, '.0f')} | {fmt(c.queued_on_ms, '.2f')} | "
                f"{fmt(c.queued_off_ms, '.2f')} | {fmt(queued_cost, '.3f')} | "
                f"{fmt_pair(c.syncs_on)} | {fmt_pair(c.syncs_off)} | {fmt_pair(c.reads_on)} | "
                f"{fmt_pair(c.reads_off)} | {c.note} |"
            )
    if report.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in report.notes]
    if report.phases:
        lines += ["", "Run time: " + "; ".join(report.phases) + "."]
    return "\n".join(lines) + "\n"


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu " + line.split(":", 1)[1].strip()
    return "cpu " + (platform.processor() or platform.machine())


def file_name(name: str, quick: bool) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "device"
    return f"{stem}{'-quick' if quick else ''}.md"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe_device(device: str) -> str:
    if torch.device(device).type != "cuda":
        return f"{torch.get_num_threads()} intra-op threads"
    props = torch.cuda.get_device_properties(torch.device(device))
    text = (f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, "
            f"CUDA {torch.version.cuda}")
    clock, width = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock and width:  # kHz and bits, double data rate
        text += f", nominal memory bandwidth {2 * clock * 1e3 * width / 8 / 1e12:.2f} TB/s"
    return text


# -- the run --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, help="also write DIR/<device name>.md (after every row)")
    ids = ", ".join(c.id for c in CASES)
    parser.add_argument("--rows", help=f"comma-separated row ids (default all): {ids}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    parser.add_argument("--detection", help="N,C of the detection logits (default 1000000,80)")
    parser.add_argument("--segmentation", help="N,C,H,W of the segmentation logits (default 16,21,512,512)")
    parser.add_argument("--repeat", type=int, default=5, help="fewest timed runs per side (time_pair adds "
                        "runs, up to 50, until both sides have run about 2 s)")
    parser.add_argument("--budget-s", type=float, help="start no new row after this many seconds "
                        "(default 240; none with --quick)")
    parser.add_argument("--compile-backend",
                        help="torch.compile backend (default inductor; aot_eager or eager only to smoke-test "
                        "the compile rows quickly: their times are then not compiled code's). With --quick "
                        "on the CPU the compile rows run only when this is given (Inductor takes 5-20 s a "
                        "graph on a 2-core CPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 with --quick on "
                        "the CPU, where a machine shared with other jobs makes more threads wait for each "
                        "other and every row erratic)")
    args = parser.parse_args(argv)
    known = {c.id for c in CASES}
    args.row_ids = [r.strip() for r in (args.rows or ids).split(",") if r.strip()]
    unknown = [r for r in args.row_ids if r not in known]
    if unknown:
        parser.error(f"unknown row id(s) {', '.join(unknown)}; choose from {ids}")
    args.dtype_names = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not args.dtype_names or any(d not in DTYPES for d in args.dtype_names):
        parser.error(f"--dtypes takes a comma-separated subset of {', '.join(DTYPES)}")
    shape = lambda text: tuple(int(s) for s in text.split(","))  # noqa: E731
    args.det_shape = shape(args.detection) if args.detection else (
        QUICK_DETECTION if args.quick else FULL_DETECTION)
    args.seg_shape = shape(args.segmentation) if args.segmentation else (
        QUICK_SEGMENTATION if args.quick else FULL_SEGMENTATION)
    if args.quick:
        args.repeat = min(args.repeat, 3)
        if args.threads is None and torch.device(args.device).type == "cpu":
            args.threads = 1
    args.skip_compile_note = ""
    if args.compile_backend is None:
        args.compile_backend = "inductor"
        if args.quick and torch.device(args.device).type == "cpu" and not args.no_compile:
            args.no_compile = True
            args.skip_compile_note = (
                "compile rows: skipped, --quick on the CPU runs them only with an explicit "
                "--compile-backend (aot_eager smoke-tests them in about a minute)"
            )
    if args.budget_s is None:
        args.budget_s = math.inf if args.quick else 240.0
    return args


def make_inputs(args, device: str) -> dict[str, dict[str, torch.Tensor]]:
    """Logits (float32 and bfloat16) and targets for both families, built on the device."""
    generator = torch.Generator(device=device).manual_seed(0)
    n, c = args.det_shape
    x = torch.randn(n, c, device=device, generator=generator).mul_(2)
    hard = (torch.rand(n, c, device=device, generator=generator) < 0.01).float()
    # IoU quality at the positives, in (0.1, 1]: qfocal's and varifocal's soft targets
    soft = hard * (torch.rand(n, c, device=device, generator=generator) * 0.9 + 0.1)
    seg = torch.randn(args.seg_shape, device=device, generator=generator).mul_(2)
    index = torch.randint(0, args.seg_shape[1], (args.seg_shape[0], *args.seg_shape[2:]), device=device,
                          generator=generator)
    return {
        "detection": {"fp32": x, "bf16": x.bfloat16(), "hard": hard, "soft": soft},
        "segmentation": {"fp32": seg, "bf16": seg.bfloat16(), "index": index},
    }


def dynamo_settings() -> dict[str, object]:
    """Each compiled row starts from a clean dynamo cache (``torch._dynamo.reset()``); a high recompile
    limit, and failing instead of falling back to eager when it is hit, keep a compile row from silently
    measuring eager code (names differ between torch versions: only those this torch has)."""
    config = torch._dynamo.config
    settings: dict[str, object] = {}
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            settings[name] = max(getattr(config, name), 64)
            break
    for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
        if hasattr(config, name):
            settings[name] = True
            break
    return settings


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; the torch settings it changes (threads, dynamo's limits) are restored after,
    so a test can call it in-process."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.no_compile:  # importing torch._dynamo takes seconds: only when compiling
            return run(args, argv)
        with torch._dynamo.config.patch(**dynamo_settings()):
            try:
                return run(args, argv)
            finally:
                torch._dynamo.reset()
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    requested = torch.device(args.device)
    cuda = requested.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu", file=sys.stderr)
        return 2
    if cuda and requested.index is not None:
        torch.cuda.set_device(requested.index)
    # bench_losses' helpers synchronise and read the CUDA allocator for device == "cuda" exactly
    device = "cuda" if cuda else requested.type
    started = time.perf_counter()
    elapsed = lambda: time.perf_counter() - started  # noqa: E731
    log = lambda text: print(f"[{elapsed():6.1f} s] {text}", file=sys.stderr, flush=True)  # noqa: E731

    name = device_name(device)
    out_path = args.out / file_name(name, args.quick) if args.out else None
    command = "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = Report(header=[
        f"# lossdsl on {name}{' (--quick smoke run: tiny sizes, not a measurement)' if args.quick else ''}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"lossdsl commit {git_commit()}; `{command}`",
        f"- device: `{args.device}`, {name}, {describe_device(device)}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- detection logits {'x'.join(map(str, args.det_shape))} (1% positives; soft IoU targets for "
        f"qfocal/varifocal), floor `F.binary_cross_entropy_with_logits`; segmentation logits "
        f"{'x'.join(map(str, args.seg_shape))} with class-index targets, floor `F.cross_entropy`",
        f"- forward + backward w.r.t. the logits; time: median of interleaved runs (>= {args.repeat} "
        f"each, up to 50); memory: peak beyond the inputs "
        f"({'CUDA allocator' if cuda else 'process resident high-water mark'}); "
        "bf16: bfloat16 logits, loss under torch.autocast(bfloat16); compile: torch.compile "
        f"(backend {args.compile_backend}; fullgraph=True for lossdsl), x floor against the eager floor",
        "- ratios below 1 are better; % peak BW: the floor's bytes (read logits and targets, write the "
        "gradient) per measured time, over the peak copy bandwidth below",
    ])

    def save() -> None:
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(render(report))

    cases = [c for c in CASES if c.id in args.row_ids]
    inputs = make_inputs(args, device)

    # Peak bandwidth, measured now and again at the end (the higher counts).
    copy_bytes = (32 if args.quick else 1024 if cuda else 256) * 2**20
    peaks = [copy_bandwidth(device, copy_bytes)]
    log(f"copy bandwidth {peaks[0] / 1e9:.1f} GB/s")

    def describe_peak() -> None:
        report.peak_bps = max(peaks)
        report.peak = (
            f"Peak bandwidth: {max(peaks) / 1e9:.1f} GB/s, device-to-device `copy_` of a "
            f"{copy_bytes // 2**20} MiB buffer into another, counted as read + write, best of 5 trials of "
            f"10 back-to-back copies (measured at the start and the end: "
            f"{', '.join(f'{p / 1e9:.1f}' for p in peaks)} GB/s)."
        )

    describe_peak()
    save()

    references: dict[str, Loss] = {}
    for case in cases:
        try:
            references[case.id] = case.make_ref(device)
        except Missing as why:
            line = f"{case.id} ({case.expr}): skipped, {why}"
            report.notes.append(line)
            log(line)
    cases = [c for c in cases if c.id in references]
    if args.skip_compile_note:
        report.notes.append(args.skip_compile_note)
        log(args.skip_compile_note)
    families = [f for f in FLOORS if any(c.family == f for c in cases)]
    floor_mib: dict[tuple[str, str], float] = {}

    def over_budget(what: str) -> bool:
        if elapsed() <= args.budget_s:
            return False
        line = f"{what}: skipped, the time budget ({args.budget_s:.0f} s) was spent"
        report.notes.append(line)
        log(line)
        return True

    def target_of(case_or_family) -> torch.Tensor:
        if isinstance(case_or_family, Case):
            return inputs[case_or_family.family][case_or_family.targets]
        return inputs[case_or_family]["index" if case_or_family == "segmentation" else "hard"]

    def failed(row: Row, error: Exception) -> None:
        row.note = error_note(error)
        log(f"{row.loss} {row.mode} {row.dtype} failed:\n{traceback.format_exc()}")
        free(device)

    def run_floor(family: str, mode: str, dtype: str) -> None:
        floor_name, floor = FLOORS[family]
        row = Row(f"`{floor_name}` (floor)", mode, dtype)
        report.rows.append(row)
        if over_budget(f"{floor_name} {mode} {dtype}"):
            row.note = "skipped (time budget)"
            return
        x, y = inputs[family][dtype], target_of(family)
        try:
            if mode == "compile":
                torch._dynamo.reset()
            eager = with_mode(floor, "eager", dtype, device, args.compile_backend, True)
            fn = with_mode(floor, mode, dtype, device, args.compile_backend, True)
            if mode == "compile":
                row.note = f"first call {first_call_s(fn, x, y, device):.1f} s"
            ms, row.floor_ms = time_pair(fn, eager, x, y, args.repeat, device)
            if mode == "eager":  # both sides are the floor: take both medians
                ms = row.floor_ms = (ms + row.floor_ms) / 2
            row.ms, row.x_floor = ms, ratio(ms, row.floor_ms)
            row.mib = peak_mib(fn, x, y, device)
            if mode == "eager":
                floor_mib[(family, dtype)] = row.mib
            row.floor_mib = floor_mib.get((family, dtype))
            row.achieved = floor_bytes(x, y) / (ms / 1e3)
        except Exception as error:  # noqa: BLE001 - one failed row must not cost the whole run
            failed(row, error)
        log(f"{row.loss} {mode} {dtype}: {fmt(row.ms, '.2f')} ms {row.note}")
        save()

    def run_case(case: Case, mode: str, dtype: str) -> None:
        compiled_ref = mode == "compile" and case.compile_ref
        ref_label = case.ref_name + ("" if mode == "eager" or compiled_ref else " (eager)")
        row = Row(f"`{case.expr}`", mode, dtype, ref_label)
        report.rows.append(row)
        if over_budget(f"{case.expr} {mode} {dtype}"):
            row.note = "skipped (time budget)"
            return
        x, y = inputs[case.family][dtype], target_of(case)
        try:
            if mode == "eager" and dtype == "fp32":
                row.note = same_value(case, x, y, device)
            if mode == "compile":
                torch._dynamo.reset()
            ours = with_mode(lossdsl.compile(case.expr).to(device), mode, dtype, device,
                             args.compile_backend, True)
            ref = with_mode(references[case.id], mode if compiled_ref else "eager", dtype, device,
                            args.compile_backend, False)
            floor = with_mode(FLOORS[case.family][1], "eager", dtype, device, args.compile_backend, True)
            if mode == "compile":
                ours_s = first_call_s(ours, x, y, device)
                ref_s = first_call_s(ref, x, y, device) if compiled_ref else None
                row.note = f"first call {ours_s:.1f} s" + (f", ref {ref_s:.1f} s" if ref_s else "")
            row.ms, row.floor_ms = time_pair(ours, floor, x, y, args.repeat, device)
            ours_again, row.ref_ms = time_pair(ours, ref, x, y, args.repeat, device)
            row.x_floor, row.x_ref = ratio(row.ms, row.floor_ms), ratio(ours_again, row.ref_ms)
            row.mib = peak_mib(ours, x, y, device)
            row.ref_mib = peak_mib(ref, x, y, device)
            if (case.family, dtype) not in floor_mib:
                floor_mib[(case.family, dtype)] = peak_mib(floor, x, y, device)
            row.floor_mib = floor_mib[(case.family, dtype)]
            row.achieved = floor_bytes(x, y) / (row.ms / 1e3)
        except Exception as error:  # noqa: BLE001 - one failed row must not cost the whole run
            failed(row, error)
        log(f"{case.expr} {mode} {dtype}: {fmt(row.ms, '.2f')} ms, x floor {fmt(row.x_floor, '.2f')}, "
            f"x ref {fmt(row.x_ref, '.2f')} {row.note}")
        save()

    cycles: list[int] = []  # torch.cuda._sleep cycles for QUEUED_WORK_MS, measured once

    def run_checks(case: Case) -> None:
        row = CheckRow(f"`{case.expr}`")
        report.checks.append(row)
        if over_budget(f"value checks of {case.expr}"):
            row.note = "skipped (time budget)"
            return
        x, y = inputs[case.family]["fp32"], target_of(case)
        try:
            on = lossdsl.compile(case.expr).to(device)
            off = lossdsl.compile(case.expr, check_values=False).to(device)
            row.on_ms, row.off_ms = time_pair(on, off, x, y, args.repeat, device)
            if cuda and hasattr(torch.cuda, "_sleep"):
                if not cycles:
                    cycles.append(busy_cycles(device, QUEUED_WORK_MS))
                row.queued_on_ms, row.queued_off_ms = queued_pair(on, off, x, y, device, cycles[0])
            row.syncs_on, row.reads_on = sync_counts(lossdsl.compile(case.expr).to(device), x, y, device)
            row.syncs_off, row.reads_off = sync_counts(
                lossdsl.compile(case.expr, check_values=False).to(device), x, y, device)
        except Exception as error:  # noqa: BLE001
            row.note = error_note(error)
            log(f"value checks of {case.expr} failed:\n{traceback.format_exc()}")
            free(device)
        log(f"value checks {case.expr}: {fmt(row.on_ms, '.2f')} vs {fmt(row.off_ms, '.2f')} ms, "
            f"syncs {fmt_pair(row.syncs_on)} / {fmt_pair(row.syncs_off)}, "
            f"host reads {fmt_pair(row.reads_on)} / {fmt_pair(row.reads_off)}")
        save()

    def phase(label: str, body: Callable[[], None]) -> None:
        start = elapsed()
        body()
        report.phases.append(f"{label} {elapsed() - start:.0f} s")
        free(device)

    def rows_of(mode: str, dtype: str) -> Callable[[], None]:
        def body() -> None:
            for family in families:
                run_floor(family, mode, dtype)
                for case in cases:
                    if case.family == family:
                        run_case(case, mode, dtype)
        return body

    first, *rest = args.dtype_names
    phase(f"eager {first}", rows_of("eager", first))
    phase("value checks", lambda: [run_checks(case) for case in cases])
    for dtype in rest:
        phase(f"eager {dtype}", rows_of("eager", dtype))
    if not args.no_compile:
        for dtype in args.dtype_names:
            phase(f"compile {dtype}", rows_of("compile", dtype))

    peaks.append(copy_bandwidth(device, copy_bytes))
    describe_peak()
    report.phases.append(f"total {elapsed():.0f} s")
    save()
    print(render(report), end="")
    if out_path is not None:
        log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
