"""Running state of compiled terms and hostile tensor inputs (issue 8, items 7, 8 and 13).

- running statistics stay float32 whatever the module's dtype (.half() must not overflow them);
- a call that is rejected changes no buffer (every term checks its inputs before any term computes);
- bad tensors get a LossDSLError; NaN in gives NaN out where no check applies; meta tensors pass.
"""

from __future__ import annotations

import pytest
import torch

import lossdsl
from lossdsl import LossDSLError, LossInputError


def _ghm_buffer(loss) -> torch.Tensor:
    return dict(loss.named_buffers())["terms.0.ghm_accumulator"]


@pytest.mark.parametrize("convert", ["half", "bfloat16", "double", "to_float16"])
def test_ghm_counts_stay_float32_when_the_module_changes_dtype(convert):
    loss = lossdsl.compile("ghm(bins=4, momentum=0.5)")
    _ghm_buffer(loss).fill_(70_000.0)  # past float16's largest finite value, 65504
    if convert == "to_float16":
        loss.to(torch.float16)
    else:
        getattr(loss, convert)()
    buffer = _ghm_buffer(loss)
    assert buffer.dtype == torch.float32
    assert (buffer == 70_000.0).all()
    # The counts keep working: a large batch keeps a finite, non-zero loss.
    x = torch.randn(70_000, 1).half()
    value = loss(x, (torch.rand(70_000, 1) > 0.5).half())
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(_ghm_buffer(loss)).all()


def test_term_buffers_follow_the_device():
    loss = lossdsl.compile("ghm(momentum=0.5) + ce(weight=[1, 2])").to("meta")
    assert all(buffer.device.type == "meta" for buffer in loss.buffers())
    assert _ghm_buffer(loss).dtype == torch.float32


@pytest.mark.parametrize("expr, target", [
    # sigmoid [N, C] with index targets gives [N, C]; ce gives [N]: the sum cannot be formed
    ("ghm(momentum=0.5, reduction=none) + ce(reduction=none)", torch.tensor([0, 1, 2, 1])),
    ("ce(reduction=none) + ghm(momentum=0.5, reduction=none)", torch.tensor([0, 1, 2, 1])),
    # the second term rejects the call (two class weights for three classes)
    ("ghm(momentum=0.5) + ce(weight=[1, 2])", torch.rand(4, 3)),
])
def test_a_rejected_call_updates_no_buffer(expr, target):
    loss = lossdsl.compile(expr)
    before = {name: buffer.clone() for name, buffer in loss.named_buffers()}
    with pytest.raises(LossInputError) as error:
        loss(torch.randn(4, 3), target)
    assert "ghm" in str(error.value) or "ce(" in str(error.value)
    for name, buffer in loss.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_unequal_unreduced_shapes_name_both_terms():
    loss = lossdsl.compile("ghm(momentum=0.5, reduction=none) + ce(reduction=none)")
    expected = r"ghm\(momentum=0.5, reduction=none\) gives \[4, 3\], ce\(reduction=none\) gives \[4\]"
    with pytest.raises(LossInputError, match=expected):
        loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]))


# -- 13: inputs that used to escape as other exceptions -------------------------------------------


def test_a_nan_logit_in_ghm_is_a_clear_error_with_value_checks():
    x = torch.randn(4, 3)
    x[1, 2] = float("nan")
    with pytest.raises(LossInputError, match=r"GHM-C .* logits must be finite; found NaN"):
        lossdsl.compile("ghm()")(x, torch.rand(4, 3))


def test_a_nan_logit_in_ghm_without_value_checks_gives_nan_not_a_crash():
    x = torch.randn(4, 3)
    x[1, 2] = float("nan")
    value = lossdsl.compile("ghm(momentum=0.5)", check_values=False)(x, torch.rand(4, 3))
    assert torch.isnan(value)


@pytest.mark.parametrize("expr", ["focal()", "ce()", "zlpr()", "asl()"])
def test_nan_in_gives_nan_out_elsewhere(expr):
    x = torch.randn(4, 3)
    x[0, 0] = float("nan")
    target = torch.tensor([0, 1, 2, 1]) if expr == "ce()" else (torch.rand(4, 3) > 0.5).float()
    assert torch.isnan(lossdsl.compile(expr)(x, target))


@pytest.mark.parametrize("expr", ["zlpr()", "ce()", "focal(head=softmax)"])
def test_zero_classes_is_an_input_error(expr):
    target = torch.zeros(4, 0) if expr == "zlpr()" else torch.zeros(4, dtype=torch.long)
    with pytest.raises(LossInputError, match="at least one class"):
        lossdsl.compile(expr)(torch.zeros(4, 0), target)


@pytest.mark.parametrize("expr, target", [
    ("focal()", lambda: torch.rand(4, 3, device="meta")),
    ("ce(ignore_index=2)", lambda: torch.zeros(4, dtype=torch.long, device="meta")),
    ("ghm(momentum=0.5) + zlpr()", lambda: torch.rand(4, 3, device="meta")),
    ("bce()", lambda: torch.zeros(4, dtype=torch.long, device="meta")),
])
def test_meta_tensors_skip_the_value_checks_and_give_a_meta_result(expr, target):
    value = lossdsl.compile(expr).to("meta")(torch.randn(4, 3, device="meta"), target())
    assert value.device.type == "meta" and value.shape == ()


def test_running_buffers_on_another_device_than_the_input_are_an_input_error():
    loss = lossdsl.compile("ghm(momentum=0.5)")
    with pytest.raises(LossInputError, match=r"(?s)running buffers are on cpu but the input is on meta.*loss\.to"):
        loss(torch.randn(4, 3, device="meta"), torch.rand(4, 3, device="meta"))


def test_an_ignore_index_beyond_int64_is_refused_at_parse_time():
    with pytest.raises(LossDSLError) as error:
        lossdsl.parse("ce(ignore_index=100000000000000000000)")
    assert "ignore_index must be in [-9223372036854775808, 9223372036854775807]" in str(error.value)


def test_a_node_built_in_python_with_a_bad_value_is_a_lossdsl_error():
    from lossdsl.catalogue.named import Focal

    with pytest.raises(LossDSLError, match=r"focal\(\): gamma: Input should be greater than or equal to 0"):
        Focal(gamma=-1)


@pytest.mark.parametrize("expr", ["ce(ignore_index=255)", "ce(ignore_index=255, smoothing=0.1) + dice(ignore_index=255)"])
def test_probability_targets_with_a_non_default_ignore_index_compute(expr):
    """ignore_index applies to class indices; with probability targets it has nothing to ignore
    (torch's cross_entropy refuses the combination outright)."""
    x = torch.randn(4, 3, 5)
    probabilities = torch.softmax(torch.randn(4, 3, 5), 1)
    value = lossdsl.compile(expr)(x, probabilities)
    plain = lossdsl.compile(expr.replace("ignore_index=255", "ignore_index=-100").replace(", )", ")"))(x, probabilities)
    torch.testing.assert_close(value, plain)
