"""Plug-ins that bring their own computation (SPEC section 5; issue 9): a region loss (the example
examples/plugins/mcc.py) and an element-wise loss (a Brier score defined here). Each parses,
validates, prints, appears in the schema, `lossdsl list` and `explain`, composes and compiles."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch

import lossdsl
from lossdsl.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "plugins" / "mcc.py"


@pytest.fixture(scope="module")
def mcc():
    if "mcc" in lossdsl.CATALOGUE:
        return lossdsl.CATALOGUE["mcc"]
    spec = importlib.util.spec_from_file_location("mcc_plugin_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the annotations in the module's namespace
    spec.loader.exec_module(module)
    return module.MCC


@pytest.fixture(scope="module")
def brier():
    if "brier" in lossdsl.CATALOGUE:
        return lossdsl.CATALOGUE["brier"]

    @lossdsl.register
    class Brier(lossdsl.ElementLoss):
        """Brier score ``(p - y)^2`` per element."""

        kind: Literal["brier"] = "brier"
        summary = "Brier score (p - y)^2"

        def elementwise(self, p, y):
            return (p - y) ** 2

    return Brier


def mcc_formula(x, t, num_classes, smooth=1.0):
    """1 - MCC per sample and class, from one-hot targets (examples/plugins/mcc.py's docstring)."""
    p = torch.softmax(x, 1)
    y = torch.nn.functional.one_hot(t, num_classes).movedim(-1, 1).to(x.dtype)
    dims = tuple(range(2, x.dim()))
    tp, fp = (p * y).sum(dims), (p * (1 - y)).sum(dims)
    fn, tn = ((1 - p) * y).sum(dims), ((1 - p) * (1 - y)).sum(dims)
    return 1 - (tp * tn - fp * fn) / torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) + smooth)


def test_a_region_plugin_computes_its_formula_and_composes(mcc):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 5, 6))
    per = lossdsl.compile("mcc(reduction=none)")(x, t)
    torch.testing.assert_close(per, mcc_formula(x, t, 3))
    loss = lossdsl.compile("ce() + 0.5 * mcc(include_background=false)")
    value = loss(x, t)
    expected = torch.nn.functional.cross_entropy(x, t) + 0.5 * mcc_formula(x, t, 3)[:, 1:].mean()
    torch.testing.assert_close(value, expected)
    value.backward()
    assert torch.isfinite(x.grad).all()


def test_a_region_plugin_leaves_ignored_positions_out(mcc):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 4, 4))
    t[:, 0] = 255
    poisoned = x.clone()
    poisoned[:, :, 0] = float("nan")
    value = lossdsl.compile("mcc(ignore_index=255, reduction=none)")(poisoned, t)
    torch.testing.assert_close(value, mcc_formula(x[:, :, 1:], t[:, 1:], 3))


def test_plugins_parse_print_and_round_trip(mcc, brier):
    for expr in ("mcc(smooth=0.5, include_background=false)", "0.5 * brier(head=softmax) + ce()"):
        spec = lossdsl.parse(expr)
        assert lossdsl.parse(spec.to_expr()) == spec
        assert lossdsl.load(spec.to_yaml()) == spec
    with pytest.raises(lossdsl.LossSpecError, match="smooth=-1 is out of range"):
        lossdsl.parse("mcc(smooth=-1)")
    with pytest.raises(lossdsl.LossSpecError, match="no block can wrap it"):
        lossdsl.parse("poly(brier())")


def test_plugins_are_in_the_schema_list_and_explain(mcc, brier, capsys):
    schema = json.dumps(lossdsl.json_schema())
    assert '"mcc"' in schema and '"brier"' in schema
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "mcc" in listing and "Matthews correlation" in listing and "brier" in listing
    assert main(["explain", "mcc"]) == 0
    assert "smooth" in capsys.readouterr().out


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_an_element_plugin_gets_probabilities_and_dense_targets(brier, head):
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (4, 5))
    t[0, 0] = 255
    loss = lossdsl.compile(f"brier(head={head}, ignore_index=255, reduction=sum)")
    p = torch.sigmoid(x) if head == "sigmoid" else torch.softmax(x, 1)
    y = torch.nn.functional.one_hot(t.clamp(max=2), 3).movedim(-1, 1).double()
    per = ((p - y) ** 2) * (t != 255).unsqueeze(1)
    torch.testing.assert_close(loss(x, t), per.sum())
    multi = lossdsl.compile(f"{{a: brier(head={head}), b: l1()}}")
    value = multi({"a": x, "b": x.detach()}, {"a": t.clamp(max=2), "b": x.detach()})
    assert torch.isfinite(value)
