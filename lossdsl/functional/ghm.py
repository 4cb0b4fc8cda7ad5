"""GHM-C gradient-density weights (Li et al. 2019), vectorised on the device.

mmdetection's reference loops over bins and calls ``.item()`` per bin; here one ``floor`` assigns every
element its bin and one ``bincount`` counts the bins, so the cost is independent of ``bins`` and
nothing waits for the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .tracing import is_compiling

# Hook for summing the counts over processes (set by the distributed support); identity by default.
CountReducer = Callable[[Tensor], Tensor]


def density_weights(
    g: Tensor,
    valid: Tensor | None,
    bins: int,
    momentum: float,
    accumulator: Tensor | None,
    reduce_counts: CountReducer | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Per-element GHM-C weights, and the updated momentum accumulator (None without momentum).

    Args:
        g: gradient norm ``|p - y|`` per element, in [0, 1], without gradient.
        valid: bool mask broadcastable to ``g`` (False for ignored elements), or None.
        bins: number of bins.
        momentum: 0 for plain counts, else the running-average factor of the accumulator.
        accumulator: ``[bins]`` running counts (the module's float32 buffer), or None.
        reduce_counts: sums the ``[bins + 1]`` counts over processes (see functional.distributed).

    Returns ``(weights, new_accumulator)``; weights are 0 on ignored elements. The caller decides
    whether to store the new accumulator (training mode only).

    Bin ``i`` holds ``i/bins <= g < (i+1)/bins`` with exact edges (``g = 1`` joins the last bin, as
    the reference's ``+1e-6`` on the last edge does): ``floor(g * bins)`` in float64 is exact for
    every float32 ``g``. mmdetection compares against float32-rounded edges instead, which can move
    an element whose ``g`` *equals* a rounded edge into the neighbouring bin; nothing else differs.
    """
    table, new_accumulator, index = density_table(bin_index(g, bins), valid, bins, momentum, accumulator,
                                                  reduce_counts, g.dtype)
    return table.index_select(0, index.reshape(-1)).view(index.shape), new_accumulator


def bin_index(g: Tensor, bins: int, out: Tensor | None = None, wide: Tensor | None = None) -> Tensor:
    """``floor(g * bins)`` as int32 (exact: computed in float64), clamped to ``0..bins-1``; into ``out``
    (an int32 tensor of g's shape) when given, so that a caller can bin a large tensor in parts, with
    ``wide`` (a float64 tensor of g's shape) for the product."""
    # int32 bin indices (bins <= 10_000) halve the memory of the largest temporaries. The lower clamp
    # keeps a NaN g (a NaN logit, when value checks are off) a valid index: its loss is NaN anyway.
    scaled = (g.to(torch.float64) if wide is None else wide.copy_(g)).mul_(bins)
    index = scaled.to(torch.int32) if out is None else out.copy_(scaled)
    return index.clamp_(0, bins - 1)


def density_table(
    index: Tensor, valid: Tensor | None, bins: int, momentum: float, accumulator: Tensor | None,
    reduce_counts: CountReducer | None = None, dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """GHM-C's weight per bin from the bin ``index`` of every element: ``[bins + 1]`` weights (the last,
    0, for ignored elements), the new accumulator, and the index with ignored elements in that last bin.
    See :func:`density_weights`."""
    if valid is not None:  # ignored elements go to an extra bin that weighs nothing
        index = torch.where(valid, index, torch.full_like(index, bins))
    flat = index.reshape(-1)
    if index.device.type == "cpu" and not is_compiling():
        # Fastest on the CPU; its size is bins + 1 because no index exceeds `bins`.
        counts = torch.bincount(flat, minlength=bins + 1)
    else:  # a fixed output size: static under torch.compile, and no host sync on a GPU
        wide = flat.long()  # scatter_add_ wants int64 indices
        counts = torch.zeros(bins + 1, dtype=torch.int64, device=index.device)
        counts.scatter_add_(0, wide, wide.new_ones(()).expand(wide.shape))
    if reduce_counts is not None:
        counts = reduce_counts(counts)
    # The weights are computed in g's dtype (float64 stays float64); the running counts are float32
    # buffers whatever the module's dtype, and the caller copies the new ones back into them.
    counts = counts[:bins].to(dtype)
    total = counts.sum().clamp(min=1.0)  # tot = max(#valid, 1), over every process
    non_empty = counts > 0
    new_accumulator = None
    denominator = counts
    if momentum > 0 and accumulator is not None:
        blended = momentum * accumulator.to(dtype) + (1 - momentum) * counts
        new_accumulator = torch.where(non_empty, blended, accumulator.to(dtype))
        denominator = new_accumulator
    used_bins = non_empty.sum().to(dtype).clamp(min=1.0)
    safe = torch.where(non_empty, denominator, torch.ones_like(denominator))
    table = torch.where(non_empty, total / safe, torch.zeros_like(safe)) / used_bins
    return torch.cat([table, table.new_zeros(1)]), new_accumulator, index
