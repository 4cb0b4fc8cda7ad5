"""The compiled nn.Module (SPEC sections 5 and 6): repr, spec, last_terms, constants, dtypes, errors."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import lossdsl

RTOL, ATOL = 1e-5, 1e-6


def shape_pattern(shape):
    """A shape as a message may print it: ``[4, 3]``, ``(4, 3)`` or ``torch.Size([4, 3])``."""
    inner = r",\s*".join(str(d) for d in shape)
    return rf"[\[(]{inner},?[\])]"


def assert_names_shape(message, shape):
    assert re.search(shape_pattern(shape), message), f"{shape} not in: {message}"


# --------------------------------------------------------------------------------------------------
# repr, spec, last_terms


def test_repr_is_the_compile_call_of_the_canonical_expression():
    loss = lossdsl.compile("0.7*ce(smoothing=0.1,ignore_index=255)+0.3*bce(pos_weight=[1,2])")
    assert repr(loss) == (
        "lossdsl.compile('0.7 * ce(ignore_index=255, smoothing=0.1) + 0.3 * bce(pos_weight=[1, 2])')"
    )


def test_repr_evaluates_back_to_an_equal_loss():
    loss = lossdsl.compile("2 * (ce(weight=[1, 2]) - smooth_l1(beta=0.5) / 4)")
    again = eval(repr(loss), {"lossdsl": lossdsl})
    assert again.spec == loss.spec
    assert repr(again) == repr(loss)


@pytest.mark.parametrize(
    "expr",
    [
        "ce()",
        "0.7 * ce(smoothing=0.1, ignore_index=255) + 0.3 * bce(pos_weight=[1, 2])",
        "2 * (mse() + l1(reduction=sum))",
    ],
)
def test_spec_attribute_equals_the_parsed_expression(expr):
    assert lossdsl.compile(expr).spec == lossdsl.parse(expr)


def test_compile_of_a_spec_keeps_that_spec():
    spec = lossdsl.parse("ce() + bce()")
    assert lossdsl.compile(spec).spec == spec


def test_last_terms_holds_each_terms_reduced_value_before_its_weight():
    loss = lossdsl.compile("0.7*ce(smoothing=0.1, ignore_index=255) + 0.3*bce(pos_weight=[1, 2], reduction=sum)")
    x = torch.randn(6, 2, requires_grad=True)
    target = torch.tensor([0, 1, 1, 0, 1, 0])
    total = loss(x, target)
    ce_value = F.cross_entropy(x, target, ignore_index=255, label_smoothing=0.1)
    bce_value = F.binary_cross_entropy_with_logits(
        x, F.one_hot(target, 2).float(), pos_weight=torch.tensor([1.0, 2.0]), reduction="sum"
    )
    assert list(loss.last_terms) == [
        "ce(ignore_index=255, smoothing=0.1)",
        "bce(pos_weight=[1, 2], reduction=sum)",
        "total",
    ]
    torch.testing.assert_close(loss.last_terms["ce(ignore_index=255, smoothing=0.1)"], ce_value.detach())
    torch.testing.assert_close(loss.last_terms["bce(pos_weight=[1, 2], reduction=sum)"], bce_value.detach())
    torch.testing.assert_close(total, 0.7 * ce_value + 0.3 * bce_value)
    torch.testing.assert_close(loss.last_terms["total"], total.detach())


def test_last_terms_values_are_detached():
    loss = lossdsl.compile("ce() + 2 * bce()")
    loss(torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 0]))
    assert all(not value.requires_grad for value in loss.last_terms.values())


def test_last_terms_are_replaced_on_each_call():
    loss = lossdsl.compile("mse()")
    loss(torch.zeros(3), torch.ones(3))
    assert loss.last_terms["mse()"] == 1
    loss(torch.zeros(3), torch.full((3,), 2.0))
    assert loss.last_terms["mse()"] == 4


# --------------------------------------------------------------------------------------------------
# fresh modules, cached parse


def test_each_compile_builds_fresh_modules():
    a = lossdsl.compile("ce(weight=[1, 2, 3]) + bce(pos_weight=[1, 2, 3])")
    b = lossdsl.compile("ce(weight=[1, 2, 3]) + bce(pos_weight=[1, 2, 3])")
    assert a is not b
    for buffer_a, buffer_b in zip(a.buffers(), b.buffers()):
        assert buffer_a is not buffer_b
    assert not set(map(id, a.modules())) & set(map(id, b.modules()))


def test_changing_one_compiled_loss_leaves_another_untouched():
    a = lossdsl.compile("ce(weight=[1, 2, 3])")
    b = lossdsl.compile("ce(weight=[1, 2, 3])")
    before = [buffer.clone() for buffer in b.buffers()]
    a.to("meta")
    assert all(buffer.device.type == "cpu" for buffer in b.buffers())
    assert all(torch.equal(x, y) for x, y in zip(before, b.buffers()))


def test_compiling_the_same_spec_twice_builds_two_modules():
    spec = lossdsl.parse("ce(weight=[1, 2, 3])")
    a, b = lossdsl.compile(spec), lossdsl.compile(spec)
    assert a is not b
    assert not set(map(id, a.modules())) & set(map(id, b.modules()))


def test_parse_is_cached():
    expr = "0.5 * ce(weight=[1, 2], smoothing=0.1) + bce()"
    assert lossdsl.parse(expr) is lossdsl.parse(expr)


# --------------------------------------------------------------------------------------------------
# constants: not in state_dict, follow .to(device), keep their dtype


@pytest.mark.parametrize(
    "expr", ["ce(weight=[1, 2, 3])", "bce(weight=[1, 2, 3], pos_weight=[0.5, 1, 2])", "bce(weight=2, pos_weight=3)"]
)
def test_class_constants_are_not_in_state_dict(expr):
    loss = lossdsl.compile(expr)
    assert len(list(loss.buffers())) > 0
    assert list(loss.state_dict()) == ["_extra_state"]  # only the recorded expression


def test_state_dict_of_a_fresh_compile_loads_into_another():
    a = lossdsl.compile("ce(weight=[1, 2, 3]) + bce(pos_weight=[1, 2, 3])")
    b = lossdsl.compile("ce(weight=[1, 2, 3]) + bce(pos_weight=[1, 2, 3])")
    b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_class_constants_keep_their_dtype_under_to_dtype(dtype):
    """Constants are float64 (cast to the computation's dtype when used): a .half() model must not
    round a class weight of 0.3 to float16 for a float32 loss."""
    loss = lossdsl.compile("ce(weight=[1, 2, 0.3]) + bce(weight=[1, 2, 3], pos_weight=[0.5, 1, 2])")
    loss.to(dtype)
    buffers = list(loss.buffers())
    assert buffers and all(buffer.dtype == torch.float64 for buffer in buffers)
    assert loss.terms[0].weight[2].item() == 0.3


def test_class_constants_follow_to_device():
    loss = lossdsl.compile("ce(weight=[1, 2, 3]) + bce(pos_weight=[0.5, 1, 2])")
    loss.to("meta")
    buffers = list(loss.buffers())
    assert buffers and all(buffer.device.type == "meta" for buffer in buffers)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "expr, target, reference",
    [
        (
            "ce(weight=[0.5, 1, 2], smoothing=0.1)",
            torch.tensor([0, 1, 2, 1, 0, 2]),
            lambda x, y: F.cross_entropy(x, y, weight=torch.tensor([0.5, 1.0, 2.0]), label_smoothing=0.1),
        ),
        (
            "bce(weight=[0.5, 1, 2], pos_weight=[2, 1, 4])",
            (torch.arange(18).reshape(6, 3) % 4 == 0).float(),
            lambda x, y: F.binary_cross_entropy_with_logits(
                x, y, weight=torch.tensor([[0.5, 1.0, 2.0]]), pos_weight=torch.tensor([[2.0, 1.0, 4.0]])
            ),
        ),
    ],
    ids=["ce", "bce"],
)
def test_loss_moved_to_another_dtype_still_computes(dtype, expr, target, reference):
    """``loss.to(dtype)`` (e.g. with ``model.half()``/``.double()``) keeps the loss usable on logits
    of that dtype; the constants are exactly representable, so the value is the float32 one."""
    loss = lossdsl.compile(expr).to(dtype)
    x = torch.randn(6, 3).to(dtype)
    value = loss(x, target)
    torch.testing.assert_close(value.float(), reference(x.float(), target), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------------
# half precision inputs


HALF_CASES = [
    (
        "ce(weight=[0.5, 1, 2, 4], smoothing=0.1, ignore_index=255)",
        lambda: torch.tensor([0, 1, 2, 3, 255, 1, 0, 2]),
        lambda x, y: F.cross_entropy(x, y, weight=torch.tensor([0.5, 1.0, 2.0, 4.0]), ignore_index=255, label_smoothing=0.1),
    ),
    (
        "ce(smoothing=0.1)",
        lambda: torch.softmax(torch.randn(8, 4), dim=1),
        lambda x, y: F.cross_entropy(x, y.float(), label_smoothing=0.1),
    ),
    (
        "bce(pos_weight=[1, 2, 3, 4], smoothing=0.1)",
        lambda: (torch.rand(8, 4) < 0.5).float(),
        lambda x, y: F.binary_cross_entropy_with_logits(
            x, y.float() * 0.9 + 0.05, pos_weight=torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        ),
    ),
    (
        "smooth_l1(beta=0.5, reduction=sum)",
        lambda: torch.randn(8, 4),
        lambda x, y: F.smooth_l1_loss(x, y.float(), beta=0.5, reduction="sum"),
    ),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("expr, make_target, reference", HALF_CASES, ids=[c[0] for c in HALF_CASES])
def test_half_precision_logits_give_the_float32_result_in_float32(dtype, expr, make_target, reference):
    x = (torch.randn(8, 4) * 3).to(dtype).requires_grad_(True)
    target = make_target()
    if target.is_floating_point():
        target = target.to(dtype)
    value = lossdsl.compile(expr)(x, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference(x.detach().float(), target), rtol=RTOL, atol=ATOL)
    value.backward()
    assert x.grad.dtype == dtype
    assert torch.isfinite(x.grad.float()).all()


def test_autocast_gives_a_float32_result():
    x, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    loss = lossdsl.compile("ce(smoothing=0.1) + bce()")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(x, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(x, target), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------------
# input errors


def test_loss_input_error_is_a_loss_dsl_error():
    assert issubclass(lossdsl.LossInputError, lossdsl.LossDSLError)


@pytest.mark.parametrize(
    "expr, label, input_shape, target",
    [
        ("ce()", "ce()", (4, 3), torch.zeros(5, dtype=torch.long)),
        ("ce()", "ce()", (2, 3, 4, 5), torch.zeros(2, 4, 4, dtype=torch.long)),
        ("ce(smoothing=0.1)", "ce(smoothing=0.1)", (4, 3), torch.zeros(4, 2)),
        ("bce(pos_weight=2)", "bce(pos_weight=2)", (4, 3), torch.zeros(4, 2)),
        ("bce()", "bce()", (2, 3, 4, 5), torch.zeros(2, 5, 4, dtype=torch.long)),
        ("mse()", "mse()", (4, 3), torch.zeros(4)),
        ("smooth_l1(beta=0.5)", "smooth_l1(beta=0.5)", (4, 3), torch.zeros(3, 4)),
        ("0.5 * l1()", "l1()", (4,), torch.zeros(4, 1)),
    ],
)
def test_shape_error_names_the_term_and_both_shapes(expr, label, input_shape, target):
    loss = lossdsl.compile(expr)
    with pytest.raises(lossdsl.LossInputError) as info:
        loss(torch.randn(input_shape), target)
    message = str(info.value)
    assert label in message
    assert_names_shape(message, input_shape)
    assert_names_shape(message, tuple(target.shape))


def test_softmax_on_one_dimensional_logits_is_an_input_error_naming_the_shape():
    with pytest.raises(lossdsl.LossInputError) as info:
        lossdsl.compile("ce()")(torch.randn(4), torch.zeros(4, dtype=torch.long))
    assert "ce()" in str(info.value)
    assert_names_shape(str(info.value), (4,))


@pytest.mark.parametrize("expr", ["ce()", "bce()"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_float_targets_of_index_shape_are_an_input_error(expr, dtype):
    loss = lossdsl.compile(expr)
    with pytest.raises(lossdsl.LossInputError) as info:
        loss(torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=dtype))
    assert expr in str(info.value)


@pytest.mark.parametrize(
    "expr, parameter, values, input_shape",
    [
        ("ce(weight=[1, 2, 3])", "weight", 3, (4, 5)),
        ("ce(weight=[1, 2, 3])", "weight", 3, (2, 2, 4, 4)),
        ("bce(weight=[1, 2, 3])", "weight", 3, (4, 5)),
        ("bce(pos_weight=[1, 2])", "pos_weight", 2, (2, 3, 4, 4)),
    ],
)
def test_per_class_constant_length_mismatch_names_both_counts(expr, parameter, values, input_shape):
    target = torch.zeros(input_shape[0], *input_shape[2:], dtype=torch.long)
    with pytest.raises(lossdsl.LossInputError) as info:
        lossdsl.compile(expr)(torch.randn(input_shape), target)
    message = str(info.value)
    assert expr in message
    assert parameter in message
    assert re.search(rf"\b{values}\b", message)
    assert re.search(rf"\b{input_shape[1]}\b", message)


# --------------------------------------------------------------------------------------------------
# value checks

BAD_VALUES = [
    ("ce()", (4, 3), torch.tensor([0, 1, 3, 1])),  # index == C
    ("ce()", (4, 3), torch.tensor([0, -1, 2, 1])),  # negative, not ignore_index
    ("ce(ignore_index=255)", (2, 3, 2, 2), torch.tensor([[[0, 1], [7, 255]], [[2, 2], [1, 0]]])),
    ("bce()", (4, 3), torch.tensor([0, 1, 3, 1])),
    ("bce(ignore_index=255)", (4, 3), torch.tensor([0, 1, 254, 255])),
    ("bce()", (4, 3), torch.tensor([[0.0, 1.0, 1.5]]).repeat(4, 1)),
    ("bce()", (4, 3), torch.tensor([[0.0, -0.1, 1.0]]).repeat(4, 1)),
    ("ce()", (4, 3), torch.tensor([[1.2, -0.2, 0.0]]).repeat(4, 1)),  # probabilities outside [0, 1]
]


@pytest.mark.parametrize("expr, input_shape, target", BAD_VALUES)
def test_value_checks_raise_by_default(expr, input_shape, target):
    with pytest.raises(lossdsl.LossInputError) as info:
        lossdsl.compile(expr)(torch.randn(input_shape), target)
    assert expr in str(info.value)


@pytest.mark.parametrize("expr, input_shape, target", BAD_VALUES)
def test_value_checks_are_skipped_with_check_values_false(expr, input_shape, target):
    loss = lossdsl.compile(expr, check_values=False)
    try:
        loss(torch.randn(input_shape), target)
    except lossdsl.LossDSLError as error:  # pragma: no cover - the failure being tested for
        pytest.fail(f"value check ran with check_values=False: {error}")
    except (IndexError, RuntimeError):
        pass  # torch's own kernel may still refuse an out-of-range index


def test_unchecked_soft_targets_outside_the_unit_interval_follow_the_formula():
    x, y = torch.randn(4, 3), torch.tensor([[0.0, 1.5, -0.5]]).repeat(4, 1)
    value = lossdsl.compile("bce(pos_weight=2)", check_values=False)(x, y)
    reference = F.binary_cross_entropy_with_logits(x, y, pos_weight=torch.tensor(2.0))
    torch.testing.assert_close(value, reference, rtol=RTOL, atol=ATOL)


def test_ignore_index_is_not_a_value_error():
    target = torch.tensor([0, 255, 2, 255])
    for expr in ["ce(ignore_index=255)", "bce(ignore_index=255)"]:
        lossdsl.compile(expr)(torch.randn(4, 3), target)


@pytest.mark.parametrize(
    "expr, target",
    [
        ("ce(ignore_index=255) + bce()", torch.tensor([0, 1, 255, 2])),  # bce: 255 is out of range
        ("ce() + mse()", torch.tensor([0, 1, 2, 2])),  # mse: shape mismatch
        ("bce() + 0.5 * ce(weight=[1, 2])", torch.tensor([0, 1, 2, 2])),  # ce: weight count
    ],
)
def test_bad_input_for_the_second_term_raises_before_the_first_term_computes(monkeypatch, expr, target):
    loss = lossdsl.compile(expr)
    first = loss.terms[0]
    calls = []
    original = first.compute
    monkeypatch.setattr(first, "compute", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    with pytest.raises(lossdsl.LossInputError):
        loss(torch.randn(4, 3), target)
    assert calls == []
    assert loss.last_terms == {}
    # control: the spy does see the first term compute on a batch both terms accept
    good = torch.tensor([0, 1, 1, 0]) if "ce(weight=[1, 2])" in expr else None
    if good is not None:
        loss(torch.randn(4, 2), good)
        assert calls == [1]


# --------------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is unavailable")
@pytest.mark.parametrize(
    "expr, make_target",
    [
        ("0.7 * ce(weight=[1, 2, 3], smoothing=0.1, ignore_index=255)", lambda: torch.tensor([0, 2, 255, 1, 1, 0])),
        ("bce(pos_weight=[1, 2, 3], reduction=pos_mean) + 0.5 * bce(smoothing=0.1)", lambda: (torch.rand(6, 3) < 0.5).float()),
    ],
)
def test_torch_compile_fullgraph_matches_eager(expr, make_target):
    """fullgraph=True fails on any graph break, e.g. a host sync from a value check. The aot_eager
    backend traces exactly like inductor (dynamo + AOT autograd) without the slow C++ build."""
    torch._dynamo.reset()
    loss = lossdsl.compile(expr)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    target = make_target()
    x_eager = torch.randn(6, 3, requires_grad=True)
    x_compiled = x_eager.detach().clone().requires_grad_(True)
    eager = loss(x_eager, target)
    value = compiled(x_compiled, target)
    torch.testing.assert_close(value, eager, rtol=RTOL, atol=ATOL)
    eager.backward()
    value.backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=RTOL, atol=ATOL)
