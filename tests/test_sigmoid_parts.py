"""A large CPU input is computed in parts of rows (functional.sigmoid_kernel.CHUNK_ELEMENTS): every
element gets the arithmetic one piece gives it, for every block, weight, mask and running state, so
the value and the gradients agree to rounding (an element's vectorised and scalar evaluation may
differ in the last bit: which elements fall in a part's scalar tail depends on where parts end).
Parts are made small here so that small inputs take that path."""

from __future__ import annotations

import pytest
import torch

import lossdsl
import lossdsl.functional.sigmoid_kernel as kernel

EXPRESSIONS = [
    "bce()",
    "bce(pos_weight=2, smoothing=0.1)",
    "bce(weight=[1, 2, 3, 4, 5])",
    "focal()",
    "poly(focal(), eps=1)",
    "poly(focal(gamma=1.5), eps=[1, -0.5])",
    "asl()",
    "clip(bce(), margin=0.1)",
    "ghm(bins=7)",
    "ghm(bins=7, momentum=0.75)",
    "modulate(bce(), gamma=2, detach=true)",
    "qfocal()",
    "varifocal()",
    "balance(focal(alpha=none), alpha=[0.1, 0.2, 0.3, 0.4, 0.5])",
    "class_balanced(focal(), beta=0.9, counts=[3, 1, 2, 5, 4])",
    "eqlv2()",
]


def _run(expr: str, x: torch.Tensor, y: torch.Tensor, chunk: int, monkeypatch) -> tuple:
    monkeypatch.setattr(kernel, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    loss = lossdsl.compile(expr).train()
    x = x.clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(y.requires_grad)
    value = loss(x, y)
    value.backward()
    state = [buffer.clone() for buffer in loss.buffers()]
    return value.detach(), x.grad, y.grad, state


def _inputs(expr: str, soft: bool, indices: bool):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(37, 5, generator=generator, dtype=torch.float64) * 4
    if indices:  # class indices, some ignored (-100): a mask of valid elements
        t = torch.randint(0, 5, (37,), generator=generator)
        t[::6] = -100
        return x, t
    y = (torch.rand(37, 5, generator=generator, dtype=torch.float64) < 0.3).to(x.dtype)
    if soft or expr in ("qfocal()", "varifocal()"):
        y = y * torch.rand(37, 5, generator=generator, dtype=x.dtype)
        y.requires_grad_(soft)
    return x, y


@pytest.mark.parametrize("expr", EXPRESSIONS)
@pytest.mark.parametrize("case", ["hard", "soft", "indices"])
def test_parts_give_the_same_bits_as_one_piece(expr, case, monkeypatch):
    if case == "indices" and expr in ("qfocal()", "varifocal()"):
        pytest.skip("quality targets are soft IoUs, not class indices")
    if expr == "eqlv2()" and case != "indices":
        pytest.skip("eqlv2 reads class indices")
    x, y = _inputs(expr, case == "soft", case == "indices")
    if expr == "eqlv2()":
        y = y.clamp(min=0)
    whole = _run(expr, x, y, 1 << 30, monkeypatch)
    parts = _run(expr, x, y, 16, monkeypatch)  # 16 elements: parts of 3 rows
    close = {"rtol": 1e-14, "atol": 1e-17}  # a few ulps of float64
    torch.testing.assert_close(parts[0], whole[0], **close)
    torch.testing.assert_close(parts[1], whole[1], **close)
    assert (parts[2] is None) == (whole[2] is None) == (case != "soft")
    if whole[2] is not None:
        torch.testing.assert_close(parts[2], whole[2], **close)
    assert len(parts[3]) == len(whole[3])
    for a, b in zip(parts[3], whole[3]):  # GHM-C's counts: the same bins
        assert torch.equal(a, b)


def test_float32_parts_match_too(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(64, 8, generator=generator) * 30
    y = (torch.rand(64, 8, generator=generator) < 0.1).float()
    for expr in ("bce()", "focal()", "asl()", "ghm(bins=30)", "poly(focal(), eps=1)"):
        whole = _run(expr, x, y, 1 << 30, monkeypatch)
        parts = _run(expr, x, y, 40, monkeypatch)  # parts of 5 rows
        torch.testing.assert_close(parts[0], whole[0], rtol=1e-6, atol=1e-12, msg=expr)
        torch.testing.assert_close(parts[1], whole[1], rtol=1e-6, atol=1e-12, msg=expr)


@pytest.mark.parametrize("expr", ["bce(reduction=none)", "asl(reduction=none)",
                                  "ghm(bins=7, reduction=none)"])
def test_the_per_element_loss_in_parts_is_the_one_piece_loss(expr, monkeypatch):
    """reduction=none keeps every element's loss (the other reductions sum each part as it comes)."""
    x, y = _inputs(expr, soft=False, indices=False)
    results = []
    for chunk in (1 << 30, 16):
        monkeypatch.setattr(kernel, "CHUNK_ELEMENTS", chunk)
        leaf = x.clone().requires_grad_(True)
        value = lossdsl.compile(expr)(leaf, y)
        value.backward(torch.linspace(0.5, 2, value.numel(), dtype=x.dtype).view(value.shape))
        results.append((value.detach(), leaf.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-14, atol=1e-17)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-14, atol=1e-17)


@pytest.mark.parametrize("expr", [
    "asl()", "asl(gamma_pos=0)", "poly(asl(), eps=1)", "modulate(bce(), gamma_pos=2, gamma_neg=3)",
    "poly(modulate(bce(), gamma_pos=1, gamma_neg=2, detach=true), eps=[0.5, 1])",
])
def test_hard_targets_take_integer_powers_that_agree_with_exp_of_the_log(expr):
    """On a CPU, targets all 0 or 1 take asymmetric integer focusing as lerp(q^k_neg, q^k_pos, y);
    targets that require grad take exp(g log q): both give the formula's value and gradient."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(300, 7, generator=generator, dtype=torch.float64) * 3
    y = (torch.rand(300, 7, generator=generator, dtype=torch.float64) < 0.3).to(x.dtype)
    hard = x.clone().requires_grad_(True)
    value = lossdsl.compile(expr)(hard, y)
    value.backward()
    general = x.clone().requires_grad_(True)
    reference = lossdsl.compile(expr)(general, y.clone().requires_grad_(True))
    reference.backward()
    torch.testing.assert_close(value, reference, rtol=1e-14, atol=0)
    torch.testing.assert_close(hard.grad, general.grad, rtol=1e-12, atol=1e-17)
