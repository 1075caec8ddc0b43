"""Pathak et al. 2017, sec. 5.1-5.2: discard frames whose mask is implausible, and turn the
probability into a trimap so the ConvNet never trains on the uncertain middle."""
from __future__ import annotations

import numpy as np

from streamer.config import PruneConfig, TrimapConfig

TRIMAP_NEGATIVE, TRIMAP_IGNORE, TRIMAP_POSITIVE = 0, 128, 255


def prune(prob: np.ndarray, cfg: PruneConfig) -> tuple[float, bool, str]:
    """(foreground fraction, kept, reason). Reasons: too_little_fg, too_much_fg, border_fg."""
    fg = prob >= cfg.fg_threshold
    frac = float(fg.mean())
    if frac < cfg.min_fg:
        return frac, False, "too_little_fg"
    if frac > cfg.max_fg:
        return frac, False, "too_much_fg"
    h, w = fg.shape
    by, bx = max(1, int(round(h * cfg.border))), max(1, int(round(w * cfg.border)))
    band = np.ones_like(fg)
    band[by : h - by, bx : w - bx] = False
    if fg[band].mean() > cfg.max_border_fg:
        return frac, False, "border_fg"
    return frac, True, ""


def trimap(prob: np.ndarray, cfg: TrimapConfig) -> np.ndarray:
    out = np.full(prob.shape, TRIMAP_IGNORE, np.uint8)
    out[prob < cfg.negative_below] = TRIMAP_NEGATIVE
    out[prob > cfg.positive_above] = TRIMAP_POSITIVE
    return out
