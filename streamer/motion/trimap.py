"""Pathak et al. 2017, sec. 5.2: a probability becomes a trimap (negative, "don't care", positive)
so the ConvNet never trains on the uncertain middle, nor learns an object's missed parts as
background."""

from __future__ import annotations

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2
import numpy as np

from streamer.config import TrimapConfig

TRIMAP_NEGATIVE, TRIMAP_IGNORE, TRIMAP_POSITIVE = 0, 128, 255


def trimap(prob: np.ndarray, cfg: TrimapConfig) -> np.ndarray:
    """Positive above positive_above, negative below negative_below, else "don't care"; and "don't
    care" for would-be negatives near a positive or enclosed by the mask (TrimapConfig.near_positive)."""
    out = np.full(prob.shape, TRIMAP_IGNORE, np.uint8)
    out[prob < cfg.negative_below] = TRIMAP_NEGATIVE
    sure = prob > cfg.positive_above
    out[sure] = TRIMAP_POSITIVE
    if cfg.near_positive > 0 and sure.any():
        out[(out == TRIMAP_NEGATIVE) & near_or_inside(sure, prob >= 0.5, cfg.near_positive)] = TRIMAP_IGNORE
    return out


def near_or_inside(sure: np.ndarray, mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within radius x the diagonal of `sure`, or in a hole of `mask` (not connected to the border)."""
    h, w = sure.shape
    k = max(3, int(radius * np.hypot(h, w)) | 1)
    # a wide kernel at full resolution is slow (docs/benchmarks.md): dilate on a grid `f` times
    # coarser (the band's edge moves by under f px, a few % of its width), where any sure pixel
    # marks its cell
    f = max(1, k // 8)
    # (255, not 1: the cell's mean of one sure pixel in 16 must not round to 0)
    cells = (
        cv2.resize(sure.astype(np.uint8) * 255, (-(-w // f), -(-h // f)), interpolation=cv2.INTER_AREA)
        if f > 1
        else sure.astype(np.uint8)
    )
    kc = max(3, (k // f) | 1)
    near = cv2.dilate((cells > 0).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kc, kc)))
    if f > 1:
        near = cv2.resize(near, (w, h), interpolation=cv2.INTER_NEAREST)
    near = near > 0
    outside = np.zeros((h + 2, w + 2), np.uint8)
    outside[1:-1, 1:-1] = mask
    cv2.floodFill(outside, None, (0, 0), 2)  # the padded frame reaches every background region that touches the border
    return near | (outside[1:-1, 1:-1] == 0)
