"""GHM-C gradient-density weights (Li et al. 2019), vectorised on the device.

mmdetection's reference loops over bins and calls ``.item()`` per bin; here one ``bucketize`` assigns
every element its bin and one ``scatter_add_`` counts the bins, so the cost is independent of
``bins`` and nothing waits for the host. Same edges, same counts, same weights.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# Hook for summing the counts over processes (set by the distributed support); identity by default.
CountReducer = Callable[[Tensor], Tensor]


def bin_edges(bins: int, device: torch.device) -> Tensor:
    """``i / bins`` for i = 0..bins, the last edge raised by 1e-6 so that g = 1 falls in the last bin."""
    edges = torch.arange(bins + 1, dtype=torch.float64) / bins
    edges[-1] += 1e-6
    # Compared in float32 like the reference (a float32 tensor against Python-float edges).
    return edges.to(device=device, dtype=torch.float32)


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
        accumulator: float32 ``[bins]`` running counts (the module's buffer), or None.
        reduce_counts: sums ``[bins + 1]`` counts (bin counts, then the valid count) over processes.

    Returns ``(weights, new_accumulator)``; weights are 0 on ignored elements. The caller decides
    whether to store the new accumulator (training mode only).
    """
    edges = bin_edges(bins, g.device)
    # bucketize(right=True) gives i with edges[i-1] <= g < edges[i]: exactly the reference's test.
    index = (torch.bucketize(g.contiguous(), edges, right=True) - 1).clamp_(0, bins - 1)
    if valid is None:
        valid_count = torch.full((), g.numel(), dtype=torch.int64, device=g.device)
        members = index.new_ones(()).expand(index.shape)  # a stride-0 view: no allocation
    else:
        members = valid.expand_as(g).to(torch.int64)
        valid_count = members.sum()
    counts = torch.zeros(bins, dtype=torch.int64, device=g.device)
    counts.scatter_add_(0, index.reshape(-1), members.reshape(-1))
    if reduce_counts is not None:
        both = reduce_counts(torch.cat([counts, valid_count.reshape(1)]))
        counts, valid_count = both[:bins], both[bins]
    counts = counts.to(torch.float32)
    total = valid_count.to(torch.float32).clamp(min=1.0)
    non_empty = counts > 0
    new_accumulator = None
    denominator = counts
    if momentum > 0 and accumulator is not None:
        new_accumulator = torch.where(non_empty, momentum * accumulator + (1 - momentum) * counts, accumulator)
        denominator = new_accumulator
    used_bins = non_empty.sum().to(torch.float32).clamp(min=1.0)
    safe = torch.where(non_empty, denominator, torch.ones_like(denominator))
    table = torch.where(non_empty, total / safe, torch.zeros_like(safe)) / used_bins
    weights = table[index]
    if valid is not None:
        weights = weights * valid
    return weights, new_accumulator
