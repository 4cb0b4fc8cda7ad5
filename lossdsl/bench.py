"""How fast and how lean a loss is, against the cheapest torch loss on the same input: ``lossdsl bench``.

The floor is the fused torch function a hand-written loss of the same kind starts from:

- sigmoid losses (``bce``, ``focal``, ``asl``, ``ghm``, ``zlpr``, ``qfocal``, ...):
  ``F.binary_cross_entropy_with_logits``;
- softmax losses (``ce``, ``focal(head=softmax)``, softmax region losses): ``F.cross_entropy``;
- sigmoid region losses: ``F.binary_cross_entropy_with_logits`` on the same masks;
- regression: the same ``F.mse_loss``, ``F.l1_loss`` or ``F.smooth_l1_loss``;
- box losses: ``F.l1_loss`` on the coordinates (torch has no IoU loss: an element-wise floor);
- ``dfl``: ``F.cross_entropy`` at the lower bin of each distance (half of DFL's work).

Each side runs forward + backward on a fresh leaf of the same input, interleaved with the other so
that machine noise hits both alike; the result is the median time over ``repeat`` runs after a
warm-up, and the peak memory of one step beyond what existed before it (the CUDA allocator's peak on
a GPU; on a CPU the process's resident high-water mark, Linux only). The timing helpers are shared
with ``benchmarks/bench_losses.py``, which compares against other libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .catalogue.boxes import DFL, BoxLoss
from .catalogue.detection import Varifocal
from .catalogue.longtail import EQLv2
from .catalogue.multitask import MultiTask
from .catalogue.region import RegionLoss
from .errors import LossConfigError
from .spec import LossSpec, per_class_lengths

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# progress(stage, done, total): what a long run reports while it works.
Progress = Callable[[str, int, int], None]
BENCH_FORMAT = "lossdsl.bench/1"
POSITIVES = 0.01  # the share of positive targets on a sigmoid head (a long-tailed multi-label task)
MAX_ELEMENTS = 2**31 - 1


# -- what a run needs, checked before anything is allocated (the command line asks) ---------------

# Tensors of the logits' size a run holds at once: the input and its target, the leaf and its
# gradient, and at least two intermediates of forward+backward. A lower bound: what it refuses
# cannot run; what it lets through may still need more.
HELD_AT_ONCE = 6
# The inputs each kind of term reads (_kinds below); sigmoid, softmax and region terms share theirs
# (ce() + dice() reads one mask of class indices).
_INPUTS = {"boxes": "boxes [N, 4]", "dfl": "distance logits (dfl)", "mse": "regression targets",
           "l1": "regression targets", "smooth_l1": "regression targets"}


def check_workload(spec: LossSpec, shape: tuple[int, ...], device: str) -> None:
    """Refuse, before anything is allocated, a loss whose terms read different inputs (boxes and
    masks are no one tensor: a run would invent a target for some of them) and a shape whose
    tensors cannot fit in the memory available."""
    from .memory import refuse_if_too_large

    inputs = sorted({_INPUTS.get(kind, "class logits or masks") for kind in _kinds(spec)})
    if len(inputs) > 1:
        raise LossConfigError(
            f"bench feeds one input to the whole loss, but the terms of {spec.to_expr()} read "
            f"{' and '.join(inputs)}", hint="bench each term on its own",
        )
    numel = 1
    for dim in shape:
        numel *= dim
    refuse_if_too_large(
        numel * 4 * HELD_AT_ONCE,
        f"--shape {','.join(map(str, shape))} ({numel:,} float32 elements; a run holds at least "
        f"{HELD_AT_ONCE} tensors of that size at once)",
        _device(device), hint="give a smaller --shape",
    )


# -- timing and memory (shared with benchmarks/bench_losses.py) ----------------------------------


def step(loss: Loss, x: torch.Tensor, y: Any) -> None:
    """One forward + backward on a fresh leaf of ``x``."""
    leaf = x.detach().requires_grad_(True)
    loss(leaf, y).backward()


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_pair(
    first: Loss, second: Loss, x: torch.Tensor, y: Any, repeat: int, device: str | torch.device, *,
    second_target: Any = None, warmup: int = 2, min_seconds: float = 0.0, max_repeat: int | None = None,
    progress: Progress | None = None, clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float]:
    """Median milliseconds of forward+backward of both losses, interleaved so that machine noise hits
    both alike. ``repeat`` timed runs each, or more until both have run ``min_seconds`` (at most
    ``max_repeat``). ``second_target``: the second loss's target, when it takes another one.
    ``clock``: wall time by default; ``time.thread_time`` counts only this thread's CPU time, steadier
    on a shared machine when torch runs on one thread (the CPU work then stays on this thread)."""
    other = y if second_target is None else second_target
    for index in range(warmup):
        if progress:
            progress("warming up", index, warmup)
        step(first, x, y)
        step(second, x, other)
    if min_seconds > 0:
        sync(device)
        start = time.perf_counter()
        step(first, x, y)
        step(second, x, other)
        sync(device)
        pair = time.perf_counter() - start
        repeat = max(repeat, int(min_seconds / max(pair, 1e-6)))
        if max_repeat is not None:
            repeat = min(repeat, max_repeat)
    first_times: list[float] = []
    second_times: list[float] = []
    for index in range(repeat):
        if progress:
            progress("timing", index, repeat)
        for loss, target, times in ((first, y, first_times), (second, other, second_times)):
            sync(device)
            start = clock()
            step(loss, x, target)
            sync(device)
            times.append((clock() - start) * 1e3)
    return statistics.median(first_times), statistics.median(second_times)


@dataclass
class Rounds:
    """The best of several interleaved rounds: each round's medians of ``first`` and ``second``, and
    the round whose ratio is the lowest (machine noise only ever slows a side down, so the round least
    disturbed is the one that measures the work)."""

    first_ms: list[float]
    second_ms: list[float]

    @property
    def ratios(self) -> list[float]:
        return [a / b if b > 0 else float("nan") for a, b in zip(self.first_ms, self.second_ms)]

    @property
    def best(self) -> int:
        return min(range(len(self.first_ms)), key=lambda index: self.ratios[index])

    @property
    def ratio(self) -> float:
        return self.ratios[self.best]

    @property
    def best_times_ratio(self) -> float:
        """The fastest round of ``first`` over the fastest of ``second``: each side's least disturbed
        time, a check on :attr:`ratio` when the noise hits one side more than the other."""
        fastest = min(self.second_ms)
        return min(self.first_ms) / fastest if fastest > 0 else float("nan")


def best_rounds(
    first: Loss, second: Loss, x: torch.Tensor, y: Any, rounds: int, repeat: int, device: str | torch.device,
    *, second_target: Any = None, warmup: int = 2, clock: Callable[[], float] = time.perf_counter,
    progress: Progress | None = None,
) -> Rounds:
    """``rounds`` rounds of :func:`time_pair` (``repeat`` interleaved runs each, the warm-up before
    the first round only); see :class:`Rounds` for which round counts."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    result = Rounds([], [])
    for index in range(rounds):
        if progress:
            progress("rounds", index, rounds)
        first_ms, second_ms = time_pair(first, second, x, y, repeat, device, second_target=second_target,
                                        warmup=warmup if index == 0 else 0, clock=clock)
        result.first_ms.append(first_ms)
        result.second_ms.append(second_ms)
    return result


def peak_mib(loss: Loss, x: torch.Tensor, y: Any, device: str | torch.device) -> float | None:
    """Peak memory of one forward+backward beyond what existed before it (MiB); None where it
    cannot be measured (a CPU without Linux's /proc)."""
    step(loss, x, y)  # warm-up: compilation, lazily built constants
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(loss, x, y)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # On the CPU: the process's resident-memory high-water mark, reset just before the step
    # (Linux: writing 5 to clear_refs), after handing freed memory back to the system.
    try:
        gc.collect()
        _trim()
        base = _status_mib("VmRSS:")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return None
    step(loss, x, y)
    return _status_mib("VmHWM:") - base


def _trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed memory stays mapped, the peak is higher
        pass


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise OSError(f"{key} not in /proc/self/status")


# -- what to feed a loss, and its floor -----------------------------------------------------------


@dataclass
class Workload:
    """Inputs shaped for a loss and the torch floor to compare with."""

    x: torch.Tensor
    target: Any
    target_text: str
    input_name: str
    floor_name: str
    floor: Loss
    floor_target: Any
    why: str


def _kinds(spec: LossSpec) -> set[str]:
    kinds = set()
    for term in spec.expand().terms:
        node = term.loss
        if isinstance(node, RegionLoss):
            kinds.add(f"region-{node.head}")
        elif isinstance(node, BoxLoss):
            kinds.add("boxes")
        elif isinstance(node, DFL):
            kinds.add("dfl")
        elif node.is_regression:
            kinds.add(node.kind_name())
        else:
            kinds.add(getattr(node, "head", None) or "sigmoid")
    return kinds


def _quality_targets(spec: LossSpec) -> bool:
    """Whether the loss reads soft IoU-quality targets (qfocal, varifocal)."""
    stack = [t.loss for t in spec.expand().terms]
    while stack:
        node = stack.pop()
        if isinstance(node, Varifocal) or getattr(node, "focus", None) == "quality":
            return True
        stack += list(node.children())
    return False


def default_shape(spec: LossSpec) -> tuple[int, ...]:
    kinds = _kinds(spec)
    if any(kind.startswith("region") for kind in kinds):
        return (8, 4, 64, 64)
    if "boxes" in kinds:
        return (65536, 4)
    if "dfl" in kinds:
        return (8192, 4, 17)
    classes = max(per_class_lengths(spec), default=80)
    return (4096, classes)


def workload(spec: LossSpec, shape: tuple[int, ...], device: str, seed: int = 0) -> Workload:
    """Inputs for ``spec`` with logits of ``shape`` on ``device``, and its floor."""
    kinds = _kinds(spec)
    generator = torch.Generator().manual_seed(seed)
    if not shape or any(d < 1 for d in shape):
        raise LossConfigError(f"--shape dimensions must be positive, got {list(shape)}")
    numel = 1
    for dim in shape:
        numel *= dim
    if numel > MAX_ELEMENTS:
        raise LossConfigError(f"--shape {list(shape)} has {numel:,} elements, more than torch indexes")

    def put(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device)

    if "boxes" in kinds:
        count = shape[0]
        corner = torch.rand(count, 2, generator=generator) * 100
        boxes = torch.cat([corner, corner + 5 + 20 * torch.rand(count, 2, generator=generator)], 1)
        x = put(boxes + torch.randn(count, 4, generator=generator) * 2)
        target = put(boxes)
        return Workload(
            x, target, f"target boxes [{count}, 4]", "predicted boxes", "F.l1_loss", F.l1_loss, target,
            "box loss: torch has no IoU loss; the element-wise L1 on the coordinates is the floor",
        )
    if "dfl" in kinds:
        if len(shape) < 2:
            raise LossConfigError("dfl takes logits [..., n+1]: give --shape N,4,17")
        bins = shape[-1]
        x = put(torch.randn(*shape, generator=generator))
        target = put(torch.rand(*shape[:-1], generator=generator) * (bins - 1))
        lower = target.floor().long().clamp(max=bins - 2)

        def dfl_floor(logits: torch.Tensor, _: Any) -> torch.Tensor:
            return F.cross_entropy(logits.reshape(-1, bins), lower.reshape(-1))

        return Workload(x, target, f"distances {list(shape[:-1])} in [0, {bins - 1}]", "logits",
                        "F.cross_entropy (lower bin)", dfl_floor, None,
                        "dfl: the cross-entropy at the lower bin of each distance, half of DFL's work")
    regression = kinds & {"mse", "l1", "smooth_l1"}
    if regression and kinds <= {"mse", "l1", "smooth_l1"}:
        x = put(torch.randn(*shape, generator=generator))
        target = put(torch.randn(*shape, generator=generator))
        name = sorted(regression)[0] if len(regression) == 1 else "mse"
        floor = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}[name]
        return Workload(x, target, f"targets {list(shape)}", "predictions", f"F.{name}_loss", floor, target,
                        "regression: the same torch loss")
    softmax = "softmax" in kinds or "region-softmax" in kinds
    if len(shape) < 2:
        raise LossConfigError(f"logits need a class dimension: give --shape N,C (got {list(shape)})")
    region = any(kind.startswith("region") for kind in kinds)
    if region and len(shape) < 3:
        raise LossConfigError(f"a region loss compares masks: give --shape N,C,H,W (got {list(shape)})")
    x = put(torch.randn(*shape, generator=generator) * 2)
    if softmax:
        target = put(torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator))
        return Workload(x, target, f"class indices {[shape[0], *shape[2:]]}", "logits", "F.cross_entropy",
                        F.cross_entropy, target, "softmax head: the fused cross-entropy on the same input")
    if any(isinstance(term.loss, EQLv2) for term in spec.expand().terms):
        # eqlv2 reads class indices 0..C-1, the last channel the background (a detector's RoIs)
        index = put(torch.randint(0, shape[1], (shape[0],), generator=generator))
        return Workload(x, index, f"class indices [{shape[0]}] (label {shape[1] - 1}: the background)",
                        "logits", "F.binary_cross_entropy_with_logits",
                        F.binary_cross_entropy_with_logits, F.one_hot(index, shape[1]).to(x.dtype),
                        "eqlv2: the fused binary cross-entropy on the same labels, one-hot")
    if region:
        target = put((torch.rand(*shape, generator=generator) < 0.3).float())
        text = f"masks {list(shape)} (30% foreground)"
    else:
        positive = torch.rand(*shape, generator=generator) < POSITIVES
        if _quality_targets(spec):
            target = put(positive * (0.1 + 0.9 * torch.rand(*shape, generator=generator)))
            text = f"soft IoU targets {list(shape)} ({POSITIVES:.0%} positive)"
        else:
            target = put(positive.float())
            text = f"multi-hot targets {list(shape)} ({POSITIVES:.0%} positive)"
    return Workload(x, target, text, "logits", "F.binary_cross_entropy_with_logits",
                    F.binary_cross_entropy_with_logits, target,
                    "sigmoid head: the fused binary cross-entropy on the same input")


# -- the benchmark --------------------------------------------------------------------------------


@dataclass
class BenchResult:
    expression: str
    device: str
    compiled: bool
    shape: list[int]
    input: str
    target: str
    floor: str
    why: str
    repeat: int
    time_ms: float
    floor_time_ms: float
    peak_mib: float | None
    floor_peak_mib: float | None

    @property
    def time_ratio(self) -> float:
        return self.time_ms / self.floor_time_ms if self.floor_time_ms > 0 else float("nan")

    @property
    def memory_ratio(self) -> float | None:
        if self.peak_mib is None or self.floor_peak_mib is None or self.floor_peak_mib <= 0:
            return None
        return self.peak_mib / self.floor_peak_mib

    def report(self) -> str:
        name = f"torch.compile({self.expression})" if self.compiled else self.expression
        rows = [
            ("", "time", "peak memory"),
            (name, f"{self.time_ms:.3g} ms", _mib(self.peak_mib)),
            (self.floor + " (floor)", f"{self.floor_time_ms:.3g} ms", _mib(self.floor_peak_mib)),
            ("ratio", f"{self.time_ratio:.2f}x",
             f"{self.memory_ratio:.2f}x" if self.memory_ratio is not None else "n/a"),
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        table = [f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2].rjust(widths[2])}".rstrip()
                 for row in rows]
        memory = "CUDA allocator peak" if self.device.startswith("cuda") else "resident high-water mark"
        return "\n".join([
            f"{name} on {self.device}: forward+backward, median of {self.repeat} runs, "
            f"peak memory beyond the inputs ({memory})",
            f"input: {self.input} {self.shape}, {self.target}",
            f"floor: {self.floor} ({self.why})" + (", eager" if self.compiled else ""),
            "",
            *table,
        ])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BENCH_FORMAT,
            "expression": self.expression,
            "device": self.device,
            "compiled": self.compiled,
            "input": self.input,
            "shape": self.shape,
            "target": self.target,
            "floor": self.floor,
            "repeat": self.repeat,
            "time_ms": self.time_ms,
            "floor_time_ms": self.floor_time_ms,
            "time_ratio": self.time_ratio,
            "peak_mib": self.peak_mib,
            "floor_peak_mib": self.floor_peak_mib,
            "memory_ratio": self.memory_ratio,
        }


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g} MiB"


def bench(
    loss: Any, *, shape: tuple[int, ...] | None = None, device: str = "cpu", compile: bool = False,
    repeat: int = 20, warmup: int = 2, seed: int = 0, progress: Progress | None = None,
) -> BenchResult:
    """Time and peak memory of a loss (expression, spec or path) against its torch floor.

        >>> result = bench("focal()", shape=(512, 20), repeat=3)
        >>> result.floor
        'F.binary_cross_entropy_with_logits'

    ``compile=True`` times ``torch.compile(loss)`` (the floor stays eager); the first calls compile,
    which takes a while: ``progress`` hears about it.
    """
    from .api import as_spec
    from .compiler import compile_spec

    spec = as_spec(loss)
    if isinstance(spec.terms[0].loss, MultiTask):
        raise LossConfigError(
            "bench times one loss on one input; a multi-task loss takes one per task: bench each "
            "task's loss"
        )
    if repeat < 1:
        raise LossConfigError(f"--repeat must be at least 1, got {repeat}")
    device = _device(device)
    shape = tuple(shape) if shape else default_shape(spec)
    work = workload(spec, shape, device, seed)
    module = compile_spec(spec).to(device)
    ours: Loss = module
    if compile:
        if progress:
            progress("compiling (the first calls)", 0, 1)
        ours = torch.compile(module)
    ours_ms, floor_ms = time_pair(ours, work.floor, work.x, work.target, repeat, device,
                                  second_target=work.floor_target, warmup=warmup, progress=progress)
    if progress:
        progress("measuring memory", 0, 2)
    ours_mib = peak_mib(ours, work.x, work.target, device)
    if progress:
        progress("measuring memory", 1, 2)
    floor_mib = peak_mib(work.floor, work.x, work.floor_target, device)
    if progress:
        progress("done", 1, 1)
    return BenchResult(
        expression=spec.to_expr(), device=str(device), compiled=compile, shape=list(shape),
        input=work.input_name, target=work.target_text, floor=work.floor_name, why=work.why, repeat=repeat,
        time_ms=ours_ms, floor_time_ms=floor_ms, peak_mib=ours_mib, floor_peak_mib=floor_mib,
    )


def _device(name: str) -> str:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise LossConfigError(f"--device {name!r} is not a torch device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LossConfigError(f"--device {name}: CUDA is not available here (torch.cuda.is_available() "
                              "is False)")
    if device.type not in ("cpu", "cuda"):
        raise LossConfigError(f"--device {name}: bench measures memory on cpu and cuda only")
    return str(device)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"4096,80"`` (or ``"4096x80"``) -> (4096, 80)."""
    try:
        shape = tuple(int(part) for part in re.split(r"[,x]", text))
    except ValueError:
        raise LossConfigError(
            f"--shape expects integers separated by commas, e.g. 4096,80; got {text!r}"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise LossConfigError(f"--shape expects positive integers, e.g. 4096,80; got {text!r}")
    return shape


def terminal_progress(stream: Any = None, quiet_seconds: float = 2.0) -> Progress:
    """A ``progress`` that shows a live line on a terminal (cleared at the end); elsewhere (a log
    file, CI) it names each stage once, and only when the run has already taken ``quiet_seconds``."""
    stream = stream if stream is not None else sys.stderr
    is_terminal = getattr(stream, "isatty", lambda: False)()
    start = time.perf_counter()
    announced: set[str] = set()
    last = [0.0]

    def report(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if is_terminal:
            if stage == "done":
                stream.write("\r\033[K")
            elif now - last[0] > 0.1 or done == 0:
                count = f" {done + 1}/{total}" if total > 1 else ""
                stream.write(f"\r\033[Klossdsl bench: {stage}{count}")
            else:
                return
            last[0] = now
            stream.flush()
        elif stage != "done" and stage not in announced and now - start >= quiet_seconds:
            announced.add(stage)
            stream.write(f"lossdsl bench: {stage}...\n")
            stream.flush()

    return report


__all__ = ["BenchResult", "Rounds", "bench", "best_rounds", "check_workload", "default_shape", "parse_shape",
           "peak_mib", "step", "sync",
           "terminal_progress", "time_pair", "workload"]
