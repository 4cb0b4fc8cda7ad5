"""Named call-time inputs: the tensors a term reads besides the prediction and the target.

``loss(student, labels, teacher=t)``: a term declares what it reads (``TermModule.reads``, kd's
``teacher``), and the loss that owns the call checks the names once, before any term runs: a name
no term reads (``teachr=``) is refused with the closest name that some term does read, so a typo
never silently drops an input. A missing input is the reading term's own error (it names the term).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import LossInputError, suggest

# What every loss takes besides the named inputs (for the message when a loss reads none).
BUILT_IN = "input, target, weight= and avg_factor="


def readers(terms: Iterable[Any]) -> dict[str, list[str]]:
    """``{input name: labels of the terms that read it}``, in the terms' order."""
    out: dict[str, list[str]] = {}
    for term in terms:
        for name in getattr(term, "reads", {}):
            out.setdefault(name, []).append(term.label)
    return out


def check_names(inputs: Mapping[str, Any], read: Mapping[str, list[str]], where: str = "") -> None:
    """Refuse the first name in ``inputs`` that no term reads (``where``: "task 'cls': " or "")."""
    for name in inputs:
        if name in read:
            continue
        if not read:
            raise LossInputError(
                f"{where}no term of this loss reads a call-time input, but it was given {name}=",
                hint=f"a loss takes {BUILT_IN}; named inputs are for terms such as kd() (teacher=)",
            )
        best = suggest(name, read)
        who = "; ".join(f"{', '.join(labels)} reads {key}=" for key, labels in read.items())
        raise LossInputError(
            f"{where}no term of this loss reads the input {name}=",
            hint=(f"did you mean '{best}'? " if best else "") + who,
        )
