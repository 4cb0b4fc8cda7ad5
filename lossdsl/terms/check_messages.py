"""What the value checks say: what was found, and a hint that works when followed (issue 15 items
19 and 20). A hint names only options the loss takes, and never suggests switching a class-index
check off: with ``check_values=False`` a bad index only fails later, inside torch's kernels.
"""

from __future__ import annotations

import math

# The labels 8- and 16-bit masks conventionally use for void (VOC, Cityscapes): never a class count.
VOID_LABELS = (255, 65535)


def range_text(low: float, high: float) -> str:
    """What a range check found, in words: ``NaN`` when there is one (aminmax propagates it), else the
    range."""
    if math.isnan(low) or math.isnan(high):
        return "found NaN"
    return f"found values from {number_text(low)} to {number_text(high)}"


def number_text(value: float) -> str:
    """``value`` in six significant digits, unless that rounds it to a whole number it is not: a
    target of 1.0000001 must not read as 1 in a message that says it lies outside [0, 1]."""
    short = f"{value:g}"
    if not math.isfinite(value) or not float(short).is_integer() or float(short) == value:
        return short
    precise = f"{value:.9g}"  # enough for any float32 (a target read from one: 1.00000012)
    return precise if float(precise) != float(short) else repr(float(value))


def range_hint(low: float, high: float, limit: float) -> str | None:
    """What to do about values outside a range: NaN has a cause to find; 8-bit masks (0..255 where
    [0, 1] is expected) a scale; anything else may be meant (soft targets beyond 1)."""
    if math.isnan(low) or math.isnan(high):
        return "a NaN target makes the loss NaN: find where it comes from (torch.isnan(target).nonzero())"
    if limit == 1 and low >= 0 and 2 <= high <= 255 and float(high).is_integer():
        return "masks stored as 0..255 images need target / 255"  # (whole numbers beyond 1)
    return "pass check_values=False to lossdsl.compile to skip this check"


def index_hint(
    value: int, num_classes: int, background: bool, background_owner: str | None, ignore_owner: str | None
) -> str | None:
    """Hints for class index ``value`` out of range for ``num_classes``. ``background_owner`` and
    ``ignore_owner`` name the node of the loss as written that takes ``background`` and
    ``ignore_index`` (``focal()``, ``ce()`` inside ``poly(ce())``), None where it has none."""
    hints = []
    if value == num_classes and not background:
        if background_owner:
            hints.append(
                f"index {num_classes} is mmdetection's background label (num_classes); to read it as an "
                f"all-negative row give background=true to {background_owner}"
            )
        else:
            hints.append(
                f"indices run from 0 to {num_classes - 1} for {num_classes} classes: if yours start at 1, "
                f"subtract 1; if {num_classes} is a class of its own, the logits need {num_classes + 1} "
                "classes (dimension 1)"
            )
        return "; ".join(hints)
    if ignore_owner:
        hints.append(f"if {value} marks positions to leave out (void), give ignore_index={value} to "
                     f"{ignore_owner}")
    if value > num_classes and value not in VOID_LABELS:
        hints.append(f"if {value} is a class, the logits need at least {value + 1} classes (dimension 1)")
    return "; ".join(hints) or None
