"""The loss of Pathak et al. 2017 (5.2): logistic loss on the trimap's positive and negative
pixels only; "don't care" pixels (128, and crop padding) do not count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

POSITIVE, DONT_CARE, NEGATIVE = 255, 128, 0


def masked_bce(logits: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the counted pixels of the batch.

    logits: N x 1 x H x W (or N x H x W), any float dtype; computed in float32.
    trimap: N x H x W uint8, 255 positive, 0 negative, anything else ignored.
    A batch without a single counted pixel gives 0 (with a gradient of zeros), not NaN."""
    logits = logits.reshape(trimap.shape).float()
    pos = trimap == POSITIVE
    counted = pos | (trimap == NEGATIVE)
    per_pixel = F.binary_cross_entropy_with_logits(logits, pos.float(), reduction="none")
    n = counted.sum()
    # clamp: no division by zero; the sum is then 0 as well, so the loss is 0, never NaN
    return torch.where(counted, per_pixel, torch.zeros_like(per_pixel)).sum() / n.clamp(min=1)
