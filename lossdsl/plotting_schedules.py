"""The schedules of a loss drawn against the epoch (and the step): a panel under ``lossdsl.plot``'s
curves, which show the loss at epoch 0 (what a fresh ``compile`` computes).

Each schedule is drawn from its plain-Python form (``value_at``), which the compiled loss equals
(tests/test_schedules.py), over a range that shows every change and a little after the last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .catalogue.schedules import Ramp, ScheduleBase, spec_schedules
from .printer import schedule_to_expr
from .spec import LossSpec

NOTE = "scheduled values drawn at epoch 0 and step 0; their course is drawn below"


def horizon(schedules: Sequence[ScheduleBase]) -> int:
    """How far to draw: past the last point where any of them changes, by a quarter (at least 2)."""
    last = max((s.end if isinstance(s, Ramp) else s.at[-1]) for s in schedules)
    return last + max(2, last // 4)


def schedule_series(spec: LossSpec) -> dict[str, list[tuple[str, list[int], list[float]]]]:
    """``{clock: [(label, positions, values), ...]}`` for the loss's epoch and step schedules."""
    found = spec_schedules(spec)
    out: dict[str, list[tuple[str, list[int], list[float]]]] = {}
    for over in ("epoch", "step"):
        mine = [(where, s) for where, s in found if s.over == over]
        if not mine:
            continue
        end = horizon([s for _, s in mine])
        # Whole positions (the clock is an integer), thinned to about 400 points for long runs.
        stride = max(1, end // 400)
        positions = list(range(0, end + 1, stride))
        out[over] = [(f"{where}: {schedule_to_expr(s)}", positions, [s.value_at(t) for t in positions])
                     for where, s in mine]
    return out


def add_schedule_panels(figure: Any, specs: Sequence[LossSpec]) -> bool:
    """Draw the schedules of ``specs`` in panels added under the figure's axes (which move up to
    make room); False, and the figure untouched, when there are none."""
    series: dict[str, list[tuple[str, list[int], list[float]]]] = {}
    for spec in specs:
        for over, rows in schedule_series(spec).items():
            series.setdefault(over, []).extend(rows)
    if not series:
        return False
    panels = len(series)
    old_height = figure.get_figheight()
    added = 2.6 * panels
    figure.set_figheight(old_height + added)
    share = old_height / (old_height + added)
    for ax in figure.axes:  # the curves keep their layout in the upper part
        box = ax.get_position()
        ax.set_position([box.x0, 1 - (1 - box.y0) * share, box.width, box.height * share])
    # The notes under the curves stay at the bottom of the taller figure: the panels go above them,
    # into the room the notes leave free under the curves.
    lifted = _notes_height(figure) / figure.get_figheight()
    for index, (over, rows) in enumerate(series.items()):
        height = (1 - share) / panels
        bottom = lifted + height * (panels - 1 - index) + 0.22 * height
        ax = figure.add_axes([0.1, bottom, 0.85, 0.6 * height])
        for label, positions, values in rows:
            ax.step(positions, values, where="post", label=label)
        ax.set_xlabel(over)
        ax.set_ylabel("value")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return True


def _notes_height(figure: Any) -> float:
    """Inches taken by the notes written at the bottom of ``figure`` (lossdsl.plotting's): their lines
    at their font size, 1.25 line spacing, 72 points an inch."""
    heights = [(text.get_text().count("\n") + 1) * text.get_fontsize() * 1.25 / 72
               for text in figure.texts if text.get_position()[1] < 0.1]
    return max(heights, default=0.0)
