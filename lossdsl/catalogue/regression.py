"""Regression losses: no probability, so no modifier can wrap them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict

from .base import LossNode, register


class RegressionLoss(LossNode):
    """A loss without a probability: predictions against targets of the same kind (no block wraps
    it, pos_mean does not apply, uncertainty uses its regression form)."""

    category = "regression"

    @property
    def head(self) -> None:
        return None

    @property
    def is_regression(self) -> bool:
        return True


@register
class MSE(RegressionLoss):
    """Squared error ``(x - y)^2`` per element. Exactly ``torch.nn.functional.mse_loss``."""

    kind: Literal["mse"] = "mse"
    summary = "mean squared error (x - y)^2"
    paper = "torch.nn.functional.mse_loss"


@register
class L1(RegressionLoss):
    """Absolute error ``|x - y|`` per element. Exactly ``torch.nn.functional.l1_loss``."""

    kind: Literal["l1"] = "l1"
    summary = "absolute error |x - y|"
    paper = "torch.nn.functional.l1_loss"


@register
class SmoothL1(RegressionLoss):
    """Huber-style error: ``0.5 (x-y)^2 / beta`` where ``|x-y| < beta``, else ``|x-y| - beta/2``.

    Exactly ``torch.nn.functional.smooth_l1_loss`` (Girshick 2015, Fast R-CNN).
    """

    kind: Literal["smooth_l1"] = "smooth_l1"
    beta: Annotated[float, Strict(), Field(gt=0, description="where the quadratic part becomes linear "
                                                             "(in the units of the predictions)")] = 1.0
    summary = "smooth L1 (Huber) error with threshold beta"
    paper = "Girshick 2015, Fast R-CNN; torch.nn.functional.smooth_l1_loss"
