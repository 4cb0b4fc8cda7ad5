"""Knowledge distillation (Hinton et al. 2015) as a per-position loss."""

from __future__ import annotations

import torch
from torch import Tensor


def kd_elementwise(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 KL(softmax(t/T) || softmax(z/T))`` per position: ``[N, C, d1, ...] -> [N, d1, ...]``.

    The KL term is ``xlogy(p, p) - p log q``, the formula of ``F.kl_div``, so a teacher that gives a
    class probability 0 (a logit of -inf) contributes 0 there rather than ``0 * -inf``. The teacher
    carries no gradient.
    """
    log_q = torch.log_softmax(student / temperature, dim=1)
    p = torch.softmax(teacher.detach() / temperature, dim=1)
    kl = torch.special.xlogy(p, p) - p * log_q
    return kl.sum(dim=1) * (temperature * temperature)
