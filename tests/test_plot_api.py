"""``lossdsl.plot``: a matplotlib Figure with stated axes and notes, the curves the loss computes,
log-y and signed gradients, softmax class counts, GHM-C's batch, region losses, losses it does not
apply to, an Axes to draw into, and matplotlib as an optional extra. Also the notebook views
(``_repr_html_``) of a spec and a compiled loss.
"""

from __future__ import annotations

import sys

import pytest
import torch
from matplotlib.figure import Figure

import lossdsl
from lossdsl.errors import MissingDependencyError


def lines_of(ax) -> list:
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 2]  # not the zero line


def figure_text(figure) -> str:
    parts = [text.get_text() for text in figure.texts]
    if figure._suptitle is not None:
        parts.append(figure._suptitle.get_text())
    return "\n".join(parts)


def test_plot_returns_a_figure_with_labelled_panels():
    figure = lossdsl.plot("focal(gamma=2)")
    assert isinstance(figure, Figure)
    axes = figure.axes
    assert len(axes) == 4
    assert [ax.get_ylabel() for ax in axes] == ["loss", "loss", "|d loss / d logit|", "|d loss / d logit|"]
    assert [ax.get_title() for ax in axes[:2]] == ["positive target (y = 1)", "negative target (y = 0)"]
    assert all(ax.get_xlabel() == "p_t, the probability given to the target" for ax in axes[2:])
    assert figure._suptitle.get_text() == "focal(gamma=2)"


def test_the_curve_is_the_loss_the_library_computes():
    figure = lossdsl.plot("focal(gamma=2, alpha=none)")
    (line,) = lines_of(figure.axes[0])
    p_t = torch.tensor(line.get_xdata(), dtype=torch.float64)
    expected = -((1 - p_t) ** 2) * torch.log(p_t)  # a positive target: -(1 - p)^gamma log p
    torch.testing.assert_close(torch.tensor(line.get_ydata(), dtype=torch.float64), expected,
                               rtol=1e-4, atol=1e-6)
    (gradient,) = lines_of(figure.axes[2])
    # d/dx of -(1-p)^2 log p at p = sigmoid(x): (1-p)^2 (2 p log p - (1 - p)), in size
    size = ((1 - p_t) ** 2 * (2 * p_t * torch.log(p_t) - (1 - p_t))).abs()
    torch.testing.assert_close(torch.tensor(gradient.get_ydata(), dtype=torch.float64), size,
                               rtol=1e-4, atol=1e-6)


def test_a_sweep_draws_one_labelled_curve_per_value():
    figure = lossdsl.plot("asl()", sweep="gamma_neg=0:4:3")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["gamma_neg=0", "gamma_neg=2", "gamma_neg=4"]
    figure = lossdsl.plot(["asl()", "asl(clip=0)"], sweep=("gamma_neg", [1, 2]))  # several: full labels
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["asl(gamma_neg=1)", "asl(gamma_neg=2)", "asl(gamma_neg=1, clip=0)",
                      "asl(gamma_neg=2, clip=0)"]
    with pytest.raises(lossdsl.LossDSLError, match="no loss in focal\\(\\) has a parameter 'gamma_neg'"):
        lossdsl.plot("focal()", sweep=("gamma_neg", [1, 2]))


def test_log_y_sets_logarithmic_axes():
    figure = lossdsl.plot("bce()", log_y=True)
    assert [ax.get_yscale() for ax in figure.axes] == ["log", "log", "log", "log"]
    figure = lossdsl.plot("bce()", log_y=True, signed=True)
    assert [ax.get_yscale() for ax in figure.axes] == ["log", "log", "symlog", "symlog"]


def test_signed_gradient_shows_polys_sign_flip():
    # With alpha inside, a positive's leading coefficient is alpha + eps = -0.75 < 0: beyond some p_t
    # the loss pushes p_t down, and d loss / d z_t turns positive.
    figure = lossdsl.plot("poly(focal(alpha=0.25), eps=-1)", signed=True)
    top, bottom = figure.axes[0], figure.axes[2]
    assert bottom.get_ylabel() == "d loss / d z_t  (< 0 raises p_t)"
    (gradient,) = lines_of(bottom)
    values = torch.tensor(gradient.get_ydata())
    assert values.min() < 0 < values.max()
    plain = lossdsl.plot("focal()", signed=True)
    (gradient,) = lines_of(plain.axes[2])
    assert torch.tensor(gradient.get_ydata()).max() <= 0  # focal never rewards a wrong prediction
    # the unsigned view shows sizes only
    (size,) = lines_of(lossdsl.plot("poly(focal(alpha=0.25), eps=-1)").axes[2])
    assert torch.tensor(size.get_ydata()).min() >= 0
    assert top.get_ylabel() == "loss"


def test_softmax_plots_state_the_class_count():
    figure = lossdsl.plot("focal(head=softmax)")
    assert len(figure.axes) == 2  # one target class per position: no negative-target column
    assert figure.axes[0].get_title() == "target class"
    stated = "softmax: 10 classes assumed; the target's logit z_t swept, the other 9 logits 0"
    assert stated in figure_text(figure)
    figure = lossdsl.plot("ce(smoothing=0.1)", classes=3)
    assert "softmax: 3 classes assumed" in figure_text(figure)
    figure = lossdsl.plot("ce(weight=[1, 2, 4, 8])")  # per-class lists fix the count
    assert "softmax: 4 classes assumed" in figure_text(figure)


def test_softmax_curve_is_cross_entropy_at_p_t():
    figure = lossdsl.plot("ce()", classes=5)
    (line,) = lines_of(figure.axes[0])
    p_t = torch.tensor(line.get_xdata(), dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(line.get_ydata(), dtype=torch.float64), -torch.log(p_t),
                               rtol=1e-4, atol=1e-6)


def test_ghm_states_its_batch_and_draws_for_it():
    figure = lossdsl.plot("ghm(bins=10)")
    text = figure_text(figure)
    assert "GHM-C weights depend on the batch: drawn for a batch of 10,000 elements, 90% easy" in text
    default = torch.tensor(lines_of(figure.axes[0])[0].get_ydata())
    hard = lossdsl.plot("ghm(bins=10)", batch=[0.95] * 5000)
    assert "a batch of 5,000 elements with the given g = |p - y|" in figure_text(hard)
    assert not torch.allclose(default, torch.tensor(lines_of(hard.axes[0])[0].get_ydata()))


def test_region_losses_are_drawn_against_the_predicted_foreground():
    figure = lossdsl.plot(["dice()", "tversky(alpha=0.3, beta=0.7)", "ce() + dice()"])
    (ax,) = figure.axes
    assert ax.get_xlabel() == "predicted foreground fraction" and ax.get_ylabel() == "loss"
    assert "one mask of 1,000 positions, 25% foreground" in figure_text(figure)
    dice, tversky, _ = lines_of(ax)
    fraction = torch.tensor(dice.get_xdata())
    values = torch.tensor(dice.get_ydata())
    best = int(values.argmin())
    assert abs(float(fraction[best]) - 0.25) < 0.02  # the loss is lowest at the true fraction
    # beta > alpha weighs missed foreground more than false positives
    tv = torch.tensor(tversky.get_ydata())
    under, over = int((fraction - 0.1).abs().argmin()), int((fraction - 0.4).abs().argmin())
    assert tv[under] > tv[over]


def test_region_and_element_losses_do_not_share_a_figure():
    with pytest.raises(lossdsl.LossDSLError, match="cannot draw region losses"):
        lossdsl.plot(["dice()", "focal()"])


@pytest.mark.parametrize(("expression", "fragment"), [
    ("giou()", "giou() compares boxes, so it has no p_t and no mask to plot against; plot does not apply"),
    ("dfl()", "dfl() is a cross-entropy over box-edge distances; it has no p_t"),
    ("mse()", "mse() has no p_t"),
    ("uncertainty({a: ce(), b: l1()})", "plot each task's loss"),
])
def test_losses_without_p_t_say_plot_does_not_apply(expression, fragment):
    with pytest.raises(lossdsl.LossSpecError) as raised:
        lossdsl.plot(expression)
    assert fragment in str(raised.value)


def test_plot_into_a_given_axes():
    figure = Figure()
    ax = figure.add_subplot(1, 1, 1)
    assert lossdsl.plot("focal()", ax=ax) is figure
    solid, dashed = ax.get_lines()
    assert solid.get_linestyle() == "-" and dashed.get_linestyle() == "--"
    assert solid.get_color() == dashed.get_color()
    assert "dashed: negative target" in ax.get_xlabel()


def test_plot_takes_a_spec_or_a_compiled_loss():
    for source in (lossdsl.parse("asl()"), lossdsl.compile("asl()")):
        figure = lossdsl.plot(source)
        assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["asl()"]


def test_without_matplotlib_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError) as raised:
        lossdsl.plot("focal()")
    assert isinstance(raised.value, MissingDependencyError)
    assert isinstance(raised.value, lossdsl.LossDSLError)
    assert "pip install 'lossdsl[plot]'" in str(raised.value)


# -- notebook views ---------------------------------------------------------------------------------


def test_a_spec_shows_its_tree_in_a_notebook():
    html = lossdsl.parse("poly(focal(gamma=3), eps=1) + 0.5 * ghm(bins=30)")._repr_html_()
    assert html.startswith("<details open><summary><code>LossSpec poly(focal(gamma=3)) + 0.5 * ghm(bins=30)")
    assert "term 2: weight 0.5, reduction mean, head sigmoid" in html
    assert "  focal: gamma=3, alpha=0.25 (default)" in html
    assert "running buffers" not in html  # a spec has no module state


def test_a_compiled_loss_shows_its_tree_and_state_in_a_notebook():
    loss = lossdsl.compile("ghm(bins=30, momentum=0.5) + ce(smoothing=0.1)")
    html = loss._repr_html_()
    assert "<code>lossdsl.compile(&#x27;ghm(bins=30, momentum=0.5) + ce(smoothing=0.1)&#x27;)</code>" in html
    assert "terms.0.ghm_accumulator  float32[30]" in html
    multitask = lossdsl.compile("uncertainty({seg: ce(), depth: l1()})")._repr_html_()
    assert "log_variance.depth" in multitask and "task seg:" in multitask
