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


# -- issue 15, items 21 and 23 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharp():
    """A plug-in that rewrites into a named loss, as the README shows: focal with gamma 3."""
    if "sharp_focal" in lossdsl.CATALOGUE:
        return lossdsl.CATALOGUE["sharp_focal"]

    @lossdsl.register
    class SharpFocal(lossdsl.LossNode):
        kind: Literal["sharp_focal"] = "sharp_focal"
        head: Literal["sigmoid", "softmax"] = "sigmoid"

        def expand(self):
            return lossdsl.parse(f"focal(gamma=3, head={self.head})").terms[0].loss

    return SharpFocal


@pytest.mark.parametrize("plugin, written", [
    ("sharp_focal()", "focal(gamma=3)"),
    ("0.5 * sharp_focal(head=softmax) + ce()", "0.5 * focal(gamma=3, head=softmax) + ce()"),
    ("poly(sharp_focal(), eps=1)", "poly(focal(gamma=3), eps=1)"),
    ("{a: sharp_focal(), b: l1()}", "{a: focal(gamma=3), b: l1()}"),
])
def test_a_plugin_expanding_into_a_named_loss_compiles_to_it(sharp, plugin, written):
    assert lossdsl.parse(plugin).expand() == lossdsl.parse(written).expand()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (6,))
    ours, theirs = lossdsl.compile(plugin), lossdsl.compile(written)
    if plugin.startswith("{"):
        inputs = ({"a": x, "b": x}, {"a": t, "b": x.detach()})
    else:
        inputs = (x, t)
    value = ours(*inputs)
    torch.testing.assert_close(value, theirs(*inputs))
    (grad,) = torch.autograd.grad(value, x)
    (expected,) = torch.autograd.grad(theirs(*inputs), x)
    torch.testing.assert_close(grad, expected)


def test_a_plugin_that_expands_back_into_itself_is_refused_by_name():
    if "lossdsl_test_loop" not in lossdsl.CATALOGUE:

        @lossdsl.register
        class Loop(lossdsl.LossNode):
            kind: Literal["lossdsl_test_loop"] = "lossdsl_test_loop"
            gamma: float = 0.0

            def expand(self):  # a new node each time: never the same, never primitive
                return type(self)(gamma=self.gamma + 1)

    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("lossdsl_test_loop()")
    assert info.value.reason == "lossdsl_test_loop() expands more than 32 levels deep"
    assert info.value.hint == "does a plug-in's expand() return a loss that expands back into it?"


def test_a_plugin_without_a_docstring_is_in_the_schema_list_and_explain(capsys):
    if "lossdsl_test_bare" not in lossdsl.CATALOGUE:

        @lossdsl.register
        class Bare(lossdsl.ElementLoss):
            kind: Literal["lossdsl_test_bare"] = "lossdsl_test_bare"

            def elementwise(self, p, y):
                return (p - y).abs()

    node = lossdsl.json_schema()["definitions"]["node_lossdsl_test_bare"]
    assert node["description"] == "lossdsl_test_bare (a plug-in)"
    assert main(["schema"]) == 0 and "node_lossdsl_test_bare" in capsys.readouterr().out
    assert main(["list"]) == 0 and "  lossdsl_test_bare" in capsys.readouterr().out
    assert main(["explain", "lossdsl_test_bare"]) == 0
    assert capsys.readouterr().out.startswith("lossdsl_test_bare\nusage: lossdsl_test_bare(")
