"""The validated loss: ``LossSpec``, a weighted sum of ``Term``s, each a tree of catalogue nodes.

Defined in ``lossdsl.catalogue.spec`` (a multi-task node holds specs, so specs sit in the catalogue's
layer); this is their public place, ``lossdsl.spec.LossSpec``.
"""

from .catalogue.spec import (
    RESERVED_TERM_NAMES,
    TERM_NAME,
    CompositionProblem,
    LossSpec,
    Term,
    composition_problem,
    per_class_lengths,
    term_name_problem,
)

__all__ = [
    "RESERVED_TERM_NAMES",
    "TERM_NAME",
    "CompositionProblem",
    "LossSpec",
    "Term",
    "composition_problem",
    "per_class_lengths",
    "term_name_problem",
]
