"""A plug-in region loss: the Matthews correlation coefficient loss for segmentation.

Abhishek and Hamarneh 2021 (Matthews Correlation Coefficient Loss for Deep Convolutional Networks:
Application to Skin Lesion Segmentation): ``1 - MCC`` per sample and class, with the soft counts of a
mask (``TP = sum p y``, ``FP = sum p (1 - y)``, ``FN = sum (1 - p) y``, ``TN = sum (1 - p)(1 - y)``
over the positions that count):

    MCC = (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN) + smooth)

Unlike dice it also rewards true negatives, which matters when the foreground is tiny. Importing this
module registers the name ``mcc``; from then on it parses, validates, prints, is in the JSON Schema,
``lossdsl list`` and ``lossdsl explain mcc``, composes (``ce() + 0.5 * mcc()``) and compiles::

    import lossdsl
    import mcc  # noqa: F401  (registers the name)
    loss = lossdsl.compile("ce(ignore_index=255) + mcc(include_background=false, ignore_index=255)")
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, Strict

import lossdsl


@lossdsl.register
class MCC(lossdsl.RegionLoss):
    """Matthews correlation coefficient loss, ``1 - MCC`` per sample and class (Abhishek and
    Hamarneh 2021). Takes every region-loss option: ``head``, ``include_background``, ``weight``,
    ``ignore_index``."""

    kind: Literal["mcc"] = "mcc"
    smooth: Annotated[float, Strict(), Field(ge=0, description="added under the square root")] = 1.0

    summary = "Matthews correlation coefficient loss 1 - MCC (segmentation, rewards true negatives)"
    paper = "Abhishek and Hamarneh 2021, Matthews Correlation Coefficient Loss"

    def region(self, p: torch.Tensor, y: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """``p`` and ``y`` are ``[N, C, d1, ...]`` with 0 at ignored positions; ``valid`` marks the
        positions that count (``[N, 1, d1, ...]``) or is None."""
        dims = tuple(range(2, p.dim()))
        counted = torch.ones_like(p) if valid is None else valid.expand_as(p).to(p.dtype)
        tp = (p * y).sum(dims)
        fp = (p * (1 - y) * counted).sum(dims)
        fn = ((1 - p) * y).sum(dims)
        tn = ((1 - p) * (1 - y) * counted).sum(dims)
        denominator = torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) + self.smooth)
        return 1 - (tp * tn - fp * fn) / denominator
