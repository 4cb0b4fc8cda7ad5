"""``lossdsl plot`` for the long-tail names: a value per class where one means something (logit
adjustment's shift, LDAM's margins, the class-balanced weights), against the formula."""

from __future__ import annotations

import pytest
import reference_longtail as lt
import torch

import lossdsl
from lossdsl.errors import LossSpecError

pytest.importorskip("matplotlib")

COUNTS = [500, 120, 40, 9, 2]


def curves(figure):
    (ax,) = figure.axes
    return {line.get_label(): torch.tensor(line.get_ydata(), dtype=torch.float64) for line in ax.get_lines()}


def test_logit_adjustment_draws_its_shift_per_class_for_each_tau_of_a_sweep():
    figure = lossdsl.plot(f"logit_adjust(ce(), counts={COUNTS})", sweep="tau=0:2:3")
    drawn = curves(figure)
    assert list(drawn) == [f"tau={tau:g}: logit shift log(pi^{tau:g} + 1e-12)" for tau in (0, 1, 2)]
    for tau, values in zip((0, 1, 2), drawn.values()):
        torch.testing.assert_close(values, torch.log(lt.prior(COUNTS) ** tau + 1e-12), rtol=1e-6, atol=1e-6)
    (ax,) = figure.axes
    assert ax.get_xlabel() == "class j, and its count n_j"
    assert [tick.get_text() for tick in ax.get_xticklabels()] == [f"{j}\n{n}" for j, n in enumerate(COUNTS)]


def test_ldam_and_class_balanced_draw_their_margins_and_weights():
    drawn = curves(lossdsl.plot(f"class_balanced(ldam(counts={COUNTS}, s=2), beta=0.999, counts={COUNTS})"))
    margins = 1 / torch.tensor(COUNTS, dtype=torch.float64) ** 0.25
    assert drawn.keys() == {"class weight w_j (beta=0.999)", "margin s Delta_j (max_m=0.5, s=2)"}
    torch.testing.assert_close(drawn["margin s Delta_j (max_m=0.5, s=2)"], 2 * 0.5 * margins / margins.max(),
                               rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(drawn["class weight w_j (beta=0.999)"],
                               lt.class_balanced_weights(COUNTS, 0.999), rtol=1e-6, atol=1e-7)


def test_online_counts_have_nothing_to_draw_yet_and_the_message_says_what_to_give():
    with pytest.raises(LossSpecError) as info:
        lossdsl.plot("balanced_softmax()")
    assert info.value.reason == (
        "balanced_softmax(): logit_adjust() counts online, so its per-class values exist only once "
        "training has counted the targets; give counts=[...] (or a counts file) to plot them")
