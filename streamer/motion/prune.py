"""Pathak et al. 2017, sec. 5.1: discard frames whose mask is implausible (too little or too much
foreground, foreground on the border, mostly unsure), and say which threshold to relax."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streamer.config import PruneConfig


def prune(prob: np.ndarray, cfg: PruneConfig, band: tuple[float, float] = (0.3, 0.6)) -> tuple[float, bool, str]:
    """(foreground fraction, kept, reason). Reasons: too_little_fg, too_much_fg, border_fg, unsure.
    `band` is the trimap's (negative_below, positive_above): its "don't care" band."""
    fg = prob >= cfg.fg_threshold
    frac = float(fg.mean())
    if frac < cfg.min_fg:
        return frac, False, "too_little_fg"
    if frac > cfg.max_fg:
        return frac, False, "too_much_fg"
    h, w = fg.shape
    by, bx = max(1, int(round(h * cfg.border))), max(1, int(round(w * cfg.border)))
    edge = np.ones_like(fg)
    edge[by : h - by, bx : w - bx] = False
    if fg[edge].mean() > cfg.max_border_fg:
        return frac, False, "border_fg"
    if cfg.max_unsure < 1 and unsure_share(prob, *band) > cfg.max_unsure:
        return frac, False, "unsure"
    return frac, True, ""


def unsure_share(prob: np.ndarray, negative_below: float, positive_above: float) -> float:
    """Of the pixels not labelled negative, the share in the "don't care" band (0 when there are none)."""
    maybe = prob >= negative_below
    n = int(np.count_nonzero(maybe))
    return float(np.count_nonzero(maybe & (prob <= positive_above))) / n if n else 0.0


# Pruning that keeps under this fraction of a video earns a warning (motionmask train, the daemon's
# cameras): the learner then sees few frames, and usually one threshold is off for the footage.
FEW_KEPT_FRACTION = 0.25

# The reasons a threshold decides, with what to do when one of them prunes most of a video; the
# others (no_motion_history, dark, camera_unreliable) come from the footage, not a setting.
_KNOBS = {
    "too_little_fg": ("min_fg", "for small or distant movers lower"),
    "too_much_fg": ("max_fg", "for large movers or a close camera raise"),
    "border_fg": ("max_border_fg", "for movers that cross the frame's edge raise"),
    "unsure": ("max_unsure", "for faint or weakly textured movers raise"),
}


def pruned_summary(pruned: Mapping[str, int]) -> str:
    """'too_little_fg 80, border_fg 3': pruned frames per reason, the most first."""
    return ", ".join(f"{k} {v}" for k, v in sorted(pruned.items(), key=lambda kv: (-kv[1], kv[0])) if v)


def relax_hint(pruned: Mapping[str, int], cfg: PruneConfig) -> str:
    """What to change when a threshold pruned most frames, e.g. 'for small or distant movers lower
    streamer.prune.min_fg (now 0.03)'; '' when the main reason is not a threshold's."""
    if not pruned:
        return ""
    reason = max(pruned, key=lambda k: pruned[k])
    if reason not in _KNOBS:
        return ""
    key, advice = _KNOBS[reason]
    return f"{advice} streamer.prune.{key} (now {getattr(cfg, key):g})"
