"""Other libraries' names for catalogue losses (``cross_entropy``, ``BCEWithLogitsLoss``,
``sigmoid_focal_loss``, ``DiceLoss``...), so that a name carried over from torch, torchvision,
MONAI, smp, timm or mmdetection gets "did you mean" with lossdsl's own."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import unknown_name_hint

# Keys are spelled as _normalised() leaves them: lower case, no underscores, no trailing "loss".
_ELSEWHERE = {
    "crossentropy": "ce",
    "softmaxcrossentropy": "ce",
    "labelsmoothingcrossentropy": "ce",
    "binarycrossentropy": "bce",
    "binarycrossentropywithlogits": "bce",
    "bcewithlogits": "bce",
    "sigmoidfocal": "focal",
    "softmaxfocal": "focal",
    "sigmoidcrossentropy": "bce",
    "asymmetric": "asl",
    "asymmetricmultilabel": "asl",
    "asymmetricsinglelabel": "asl",
    "ghmc": "ghm",
    "qualityfocal": "qfocal",
    "distributionfocal": "dfl",
    "generalizeddice": "gdice",
    "lovaszsoftmax": "lovasz",
    "lovaszhinge": "lovasz",
    "generalizedboxiou": "giou",
    "distanceboxiou": "diou",
    "completeboxiou": "ciou",
    "smoothl1": "smooth_l1",
    "huber": "smooth_l1",
    "poly1": "poly",
}


def _normalised(name: str) -> str:
    squeezed = name.lower().replace("_", "").replace("-", "")
    return squeezed.removesuffix("loss") or squeezed


def lossdsl_name(name: str, valid: Iterable[str]) -> str | None:
    """lossdsl's name for what another library calls ``name``, or None."""
    valid = list(valid)
    wanted = _normalised(name)
    own = {_normalised(known): known for known in valid}
    if wanted in own and own[wanted] != name:
        return own[wanted]  # focal_loss, DiceLoss, MSELoss
    found = _ELSEWHERE.get(wanted)
    return found if found in valid else None


def unknown_loss_hint(name: str, valid: Iterable[str], what: str) -> str:
    """'did you mean ce?' for ``cross_entropy``; otherwise the closest spelling, as for any name."""
    valid = sorted(valid)
    ours = lossdsl_name(name, valid)
    if ours is None:
        return unknown_name_hint(name, valid, what)
    return f"did you mean '{ours}', lossdsl's name for {name}? valid {what}: " + ", ".join(valid)
