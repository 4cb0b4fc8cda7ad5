"""The paths region losses take for speed give the numbers of the plain ones (issue 18 item 2).

- ``region_stats(log_p, ..., log=True)`` (the ``log_softmax`` a cross-entropy term shares, with the
  gradient written w.r.t. it in one pass) equals ``region_stats(exp(log_p), ...)``, value and
  gradient, with NaN at ignored positions;
- the masked path (positions left out) equals the mask-free one when nothing is left out, and the
  choice between them no longer depends on ``check_values`` for data on the host;
- in ``ce() + dice()`` the terms share one sanitised copy of the logits: NaN at ignored positions
  still reaches neither the value nor the gradient, and the sum equals the terms compiled apart.
"""

from __future__ import annotations

import pytest
import torch

import lossdsl
from lossdsl.functional import region
from lossdsl.value_checks import CallChecks

F64 = {"rtol": 1e-12, "atol": 1e-14}


def logits_and_labels(seed=0, shape=(2, 4, 5, 6), void=255):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * 2
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    t[0, 1] = void
    t[1, :, ::3] = void
    return x, t


@pytest.mark.parametrize("powers", [(1,), (2,), (1, 2)])
@pytest.mark.parametrize("targets", ["indices", "one-hot"])
@pytest.mark.parametrize("ignored", [False, True])
def test_stats_from_log_probabilities_equal_those_from_probabilities(powers, targets, ignored):
    x, t = logits_and_labels()
    valid = (t != 255).unsqueeze(1)
    safe = torch.where(valid.squeeze(1), t, 0)
    y = safe if targets == "indices" else torch.nn.functional.one_hot(safe, 4).movedim(-1, 1).double()
    x = torch.where(valid, x, 0.0).requires_grad_() if ignored else x.requires_grad_()
    mask = valid if ignored else None

    def total(stats):
        return sum((s * torch.arange(1.0, s.numel() + 1, dtype=s.dtype).view(s.shape)).sum()
                   for s in stats if s is not None)

    log_p = torch.log_softmax(x, 1)
    if ignored:  # whatever the log-probabilities hold at ignored positions stays out
        log_p = torch.where(valid, log_p, float("nan"))
    ours = total(region.region_stats(log_p, y, mask, powers=powers, log=True))
    plain = total(region.region_stats(log_p.exp(), y, mask, powers=powers))
    torch.testing.assert_close(ours, plain, **F64)
    grads = [torch.autograd.grad(v, x, retain_graph=True)[0] for v in (ours, plain)]
    torch.testing.assert_close(*grads, **F64)
    assert torch.isfinite(grads[0]).all()


def test_stats_from_log_probabilities_pass_gradcheck():
    x, t = logits_and_labels(shape=(2, 3, 3, 2))
    valid = (t != 255).unsqueeze(1)
    safe = torch.where(valid.squeeze(1), t, 0)

    def stats(x):
        return region.region_stats(torch.log_softmax(x, 1), safe, valid, powers=(1, 2), log=True)

    assert torch.autograd.gradcheck(lambda x: tuple(s for s in stats(x) if s is not None),
                                    (x.requires_grad_(),))


@pytest.mark.parametrize("expr", ["ce() + dice()", "dice()", "ce() + tversky(alpha=0.3, beta=0.7)",
                                  "ce() + dice(squared=true)", "ce() + lovasz()"])
def test_the_masked_path_equals_the_mask_free_one_when_nothing_is_left_out(expr, monkeypatch):
    x, t = logits_and_labels()
    t = t.masked_fill(t == 255, 1)
    fast = lossdsl.compile(expr, check_values=True)
    x1 = x.clone().requires_grad_()
    expected = fast(x1, t)
    # as if the data were on a device: after the first call the indices are not looked at, and
    # every term takes the path that leaves positions out
    monkeypatch.setattr(CallChecks, "reads_now", lambda self, tensor: not self.deferred)
    masked = lossdsl.compile(expr)
    masked(x, t)
    x2 = x.clone().requires_grad_()
    value = masked(x2, t)
    torch.testing.assert_close(value, expected, **F64)
    torch.testing.assert_close(torch.autograd.grad(value, x2)[0], torch.autograd.grad(expected, x1)[0], **F64)


@pytest.mark.parametrize("check_values", [True, False, "deferred"])
def test_check_values_does_not_change_the_numbers(check_values):
    x, t = logits_and_labels()
    reference = lossdsl.compile("ce(ignore_index=255) + dice(ignore_index=255)", check_values=True)
    loss = lossdsl.compile("ce(ignore_index=255) + dice(ignore_index=255)", check_values=check_values)
    for target in (t, t.masked_fill(t == 255, 2)):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = loss(x1, target), reference(x2, target)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        grads = [torch.autograd.grad(value, x)[0] for value, x in ((a, x1), (b, x2))]
        torch.testing.assert_close(*grads, rtol=0, atol=0)


@pytest.mark.parametrize("expr", ["ce(ignore_index=255) + dice(ignore_index=255)",
                                  "focal(head=softmax, ignore_index=255) + jaccard(ignore_index=255)",
                                  "ce(ignore_index=255) + lovasz(ignore_index=255)"])
def test_one_sanitised_copy_keeps_ignored_logits_out(expr):
    x, t = logits_and_labels()
    poisoned = x.clone()
    poisoned[(t == 255).unsqueeze(1).expand_as(x)] = float("nan")
    poisoned[0, 2, 1, 0] = float("inf")  # t[0, 1] is ignored
    poisoned.requires_grad_()
    value = lossdsl.compile(expr)(poisoned, t)
    (grad,) = torch.autograd.grad(value, poisoned)
    apart = sum(lossdsl.compile(term)(x.clone(), t) for term in expr.split(" + "))
    torch.testing.assert_close(value, apart, **F64)
    assert torch.isfinite(grad).all()
    assert not grad[(t == 255).unsqueeze(1).expand_as(x)].any()
