"""Specs back to text and to plain data (the canonical expression, the structured node form).

Defined in ``lossdsl.catalogue.printing``, below the specs that print themselves with it; this is
its public place.
"""

from .catalogue.printing import (
    format_number,
    format_value,
    node_to_dict,
    node_to_expr,
    schedule_to_dict,
    schedule_to_expr,
    spec_to_dict,
    spec_to_expr,
    term_to_expr,
    weight_to_expr,
)

__all__ = ["format_number", "format_value", "node_to_dict", "node_to_expr", "schedule_to_dict",
           "schedule_to_expr", "spec_to_dict", "spec_to_expr", "term_to_expr", "weight_to_expr"]
