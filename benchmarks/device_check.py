"""Checks that need a GPU: CUDA parity, half precision, no host synchronisation, torch.compile.

    python benchmarks/device_check.py            # needs CUDA; prints one line per check

The CPU test suite covers the same formulas; this script shows that the CUDA path agrees with a
float64 CPU reference, that float16/bfloat16/autocast inputs give the float32 result, that the
forward and backward passes never synchronise with the host (``torch.cuda.set_sync_debug_mode``
turns any sync into an error), and that ``torch.compile(fullgraph=True)`` matches eager on CUDA.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lossdsl  # noqa: E402

SIGMOID = [
    "bce(pos_weight=2, smoothing=0.1)",
    "focal()",
    "focal(gamma=0.5, alpha=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])",
    "poly(focal(gamma=2), eps=1) + 0.5 * ghm(bins=30, momentum=0.75)",
    "asl()",
    "asl(gamma_pos=0.3, gamma_neg=2.5, clip=0.1, detach=true)",
    "balance(poly(modulate(clip(bce(), margin=0.2), gamma_pos=0.1, gamma_neg=0.7), eps=[1, 2]))",
    "ghm(bins=10)",
    "zlpr()",
]
SOFTMAX = [
    "ce(weight=[1, 2, 3, 4, 5, 6, 7, 8], smoothing=0.1, ignore_index=255)",
    "focal(head=softmax, gamma=2, ignore_index=255)",
    "asl(head=softmax, smoothing=0.1, ignore_index=255)",
    "poly(ce(smoothing=0.1, ignore_index=255), eps=2)",
    # region losses (the first shares one log_softmax with its ce term)
    "ce(ignore_index=255) + dice(include_background=false, ignore_index=255)",
    "tversky(alpha=0.3, beta=0.7, gamma=0.75, ignore_index=255)",
    "jaccard(ignore_index=255) + gdice(ignore_index=255)",
    "lovasz(ignore_index=255, per_image=true)",
]
QUALITY = ["qfocal(beta=2)", "varifocal()", "balance(poly(modulate(bce(), gamma=1.5, focus=quality)))"]
BOXES = ["giou() + diou() + ciou() + iou()", "dfl()"]


def batch(expr: str, device: str, generator: torch.Generator):
    x = torch.randn(64, 8, 4, 4, generator=generator) * 4
    if expr in BOXES:
        if expr == "dfl()":
            return (torch.randn(256, 4, 17, generator=generator).to(device),
                    (torch.rand(256, 4, generator=generator) * 16).to(device))
        corner = torch.rand(256, 2, generator=generator) * 10
        boxes = torch.cat([corner, corner + 1 + 3 * torch.rand(256, 2, generator=generator)], 1)
        return (boxes + torch.randn(256, 4, generator=generator) * 0.5).to(device), boxes.to(device)
    if expr in SOFTMAX:
        t = torch.randint(0, 8, (64, 4, 4), generator=generator)
        t[0] = 255
    elif expr in QUALITY:  # IoU targets: 10% positives with a soft quality
        t = (torch.rand(64, 8, 4, 4, generator=generator) < 0.1) * torch.rand(64, 8, 4, 4, generator=generator)
    else:
        t = (torch.rand(64, 8, 4, 4, generator=generator) < 0.1).float()
    return x.to(device), t.to(device)


def value_and_grad(loss, x, t, dtype=None, autocast=False):
    leaf = (x if dtype is None else x.to(dtype)).detach().requires_grad_(True)
    if autocast:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            value = loss(leaf, t)
    else:
        value = loss(leaf, t)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad.detach()


def close(a, b, rtol=1e-4, atol=1e-5) -> bool:
    return torch.allclose(a.double().cpu(), b.double().cpu(), rtol=rtol, atol=atol)


def main() -> int:
    # --dry-run exercises the script on the CPU (no sync or compile checks) before a GPU is used.
    device = "cpu" if "--dry-run" in sys.argv else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; nothing to check")
        return 0
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"
    print(f"{name}  torch {torch.__version__}")
    generator = torch.Generator().manual_seed(0)
    failures = 0

    def report(name: str, ok: bool, detail: str = "") -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")

    for expr in (SIGMOID + SOFTMAX + QUALITY + BOXES) * ("--compile-only" not in sys.argv):
        x, t = batch(expr, device, generator)
        cpu = lossdsl.compile(expr)
        gpu = lossdsl.compile(expr).to(device)
        ref_v, ref_g = value_and_grad(cpu, x.cpu().double().float(), t.cpu())
        v, g = value_and_grad(gpu, x, t)
        report(f"cuda == cpu      {expr}", close(v, ref_v) and close(g, ref_g))
        for dtype in (torch.float16, torch.bfloat16):
            half_ref_v, _ = value_and_grad(lossdsl.compile(expr).to(device), x.to(dtype).float(), t)
            hv, hg = value_and_grad(lossdsl.compile(expr).to(device), x, t, dtype=dtype)
            report(f"{str(dtype)[6:]:9} == fp32 {expr}",
                   hv.dtype == torch.float32 and close(hv, half_ref_v) and bool(torch.isfinite(hg).all()))
        # float64 on the device is computed in float64: equal to the CPU's float64 to 1e-12.
        dv, dg = value_and_grad(lossdsl.compile(expr).to(device), x.double(), t)
        cv, cg = value_and_grad(lossdsl.compile(expr), x.cpu().double(), t.cpu())
        report(f"float64 == cpu    {expr}", dv.dtype == torch.float64 and close(dv, cv, 1e-12, 1e-12)
               and close(dg, cg, 1e-10, 1e-12))
        if not any(name in expr for name in ("dice", "tversky", "jaccard", "lovasz")):  # region: no weight
            w = torch.rand(x.shape[0], generator=generator)
            wv, _ = value_and_grad(lambda a, b: gpu(a, b, weight=w.to(device)), x, t)
            cv, _ = value_and_grad(lambda a, b: cpu(a, b, weight=w), x.cpu(), t.cpu())
            report(f"call weight       {expr}", close(wv, cv))
        av, ag = value_and_grad(lossdsl.compile(expr).to(device), x, t, autocast=True)
        report(f"autocast bf16     {expr}", av.dtype == torch.float32 and close(av, ref_v, 1e-2, 1e-3)
               and bool(torch.isfinite(ag).all()))
        if device != "cuda":
            continue
        # No host synchronisation in forward or backward once value checks are off.
        quiet = lossdsl.compile(expr, check_values=False).cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            value_and_grad(quiet, x, t)
            synced = ""
        except RuntimeError as error:
            synced = str(error).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        report(f"no host sync     {expr}", not synced, synced)

    for expr in ["poly(focal(gamma=2), eps=1) + 0.5 * ghm(bins=30, momentum=0.75)", "asl()",
                 "focal(head=softmax, gamma=2, ignore_index=255)", "varifocal()",
                 "ce(ignore_index=255) + dice(include_background=false, ignore_index=255)",
                 "giou() + diou() + ciou() + iou()"] * (device == "cuda"):
        x, t = batch(expr, "cuda", generator)
        eager = lossdsl.compile(expr).cuda()
        compiled_module = lossdsl.compile(expr).cuda()
        compiled = torch.compile(compiled_module, fullgraph=True)
        start = time.perf_counter()
        ok = True
        worst = 0.0
        for _ in range(3):
            ev, eg = value_and_grad(eager, x, t)
            cv, cg = value_and_grad(compiled, x, t)
            ok &= close(ev, cv) and close(eg, cg)
            worst = max(worst, float((ev - cv).abs()), float((eg - cg).abs().max()))
        ok &= all(torch.equal(a, b) for a, b in zip(eager.state_dict().values(),
                                                        compiled_module.state_dict().values()))
        report(f"compile == eager {expr}", ok,
               f"(max abs diff {worst:.2e}, {time.perf_counter() - start:.0f} s)")

    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
