"""Pruning (Pathak et al. sec. 5.1) and trimaps at the exact thresholds of the config."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.config import PruneConfig, TrimapConfig
from streamer.motion.prune import prune, pruned_summary, relax_hint
from streamer.motion.trimap import TRIMAP_IGNORE, TRIMAP_NEGATIVE, TRIMAP_POSITIVE, trimap

CFG = PruneConfig(min_fg=0.10, max_unsure=1.0)  # the paper's rules (the defaults add one and lower min_fg: below)
H = W = 100  # border band: 5 px on each side (0.05 x 100), 1900 px in all
BAND = H * W - (H - 10) * (W - 10)


def _centre_block(n: int, value: float = 1.0) -> np.ndarray:
    """n foreground pixels inside the centre (never touching the border band)."""
    inner = np.zeros((H, W), bool)
    inner[5 : H - 5, 5 : W - 5] = True
    idx = np.flatnonzero(inner)
    assert n <= idx.size
    prob = np.zeros((H, W), np.float32)
    prob.reshape(-1)[idx[:n]] = value
    return prob


def test_config_thresholds_are_the_documented_ones():
    d = PruneConfig()
    # the paper's, except min_fg: 10% of the frame starves a learner whose cameras see small objects
    assert (d.fg_threshold, d.min_fg, d.max_fg, d.border, d.max_border_fg) == (0.5, 0.03, 0.8, 0.05, 0.1)
    assert d.max_unsure == 0.8
    # not the paper's 0.4 / 0.7: placed where the teacher's measured foreground rate gives them that meaning
    t = TrimapConfig()
    assert (t.negative_below, t.positive_above, t.near_positive) == (0.3, 0.6, 0.02)


def test_a_mostly_unsure_mask_is_pruned_at_the_documented_share():
    cfg = PruneConfig(min_fg=0.10, max_unsure=0.7)
    sure, faint = _centre_block(3000, 0.9), _centre_block(3000, 0.55)
    # 1000 of 3000 maybe-foreground pixels sure: 2/3 unsure, kept; 900 of 3000: 70% + 1 px, pruned
    assert prune(np.where(_centre_block(1000) > 0, sure, faint), cfg)[1:] == (True, "")
    prob = np.where(_centre_block(899) > 0, sure, faint)
    assert prune(prob, cfg)[1:] == (False, "unsure")
    assert prune(prob, PruneConfig(min_fg=0.10, max_unsure=1.0))[1:] == (True, "")  # 1 = off
    # the band is the trimap's (default 0.3-0.6): with positives above 0.5, the faint pixels are sure
    assert prune(prob, cfg, band=(0.4, 0.5))[1:] == (True, "")
    # below the negative threshold nothing counts, so a faint halo does not prune a sure object
    assert prune(np.where(_centre_block(1000) > 0, 0.9, 0.2).astype(np.float32), cfg)[1:] == (True, "")


def test_too_little_foreground_at_the_threshold():
    frac, kept, reason = prune(_centre_block(999), CFG)
    assert (kept, reason) == (False, "too_little_fg") and frac == pytest.approx(0.0999)
    frac, kept, reason = prune(_centre_block(1000), CFG)  # exactly min_fg
    assert (kept, reason) == (True, "") and frac == pytest.approx(0.1)


def test_probability_exactly_at_fg_threshold_counts_as_foreground():
    assert prune(_centre_block(2000, 0.5), CFG)[:2] == (pytest.approx(0.2), True)
    assert prune(_centre_block(2000, 0.4999), CFG)[1:] == (False, "too_little_fg")


def test_too_much_foreground_at_the_threshold():
    prob = _centre_block((H - 10) * (W - 10))  # all 8100 inner pixels
    band = np.ones((H, W), bool)
    band[5 : H - 5, 5 : W - 5] = False
    band_idx = np.flatnonzero(band)
    prob.reshape(-1)[band_idx[:190]] = 1.0  # 8290 px: 82.9% > 80%, border 10% (not the reason)
    assert prune(prob, CFG)[1:] == (False, "too_much_fg")
    # exactly 80% is allowed by the fg check: 8000 px in the centre, nothing on the border
    assert prune(_centre_block(8000), CFG)[1:] == (True, "")


def test_foreground_on_the_border_at_the_threshold():
    band = np.ones((H, W), bool)
    band[5 : H - 5, 5 : W - 5] = False
    band_idx = np.flatnonzero(band)
    assert band_idx.size == BAND == 1900
    prob = _centre_block(3000)
    prob.reshape(-1)[band_idx[:190]] = 1.0  # exactly 10% of the band
    assert prune(prob, CFG)[1:] == (True, "")
    prob.reshape(-1)[band_idx[190]] = 1.0  # one pixel more
    frac, kept, reason = prune(prob, CFG)
    assert (kept, reason) == (False, "border_fg") and frac == pytest.approx(3191 / (H * W))


def test_object_touching_one_edge_is_pruned_but_centred_object_kept():
    prob = np.zeros((120, 160), np.float32)
    prob[40:80, 60:100] = 0.9
    assert prune(prob, CFG)[1:] == (False, "too_little_fg")  # 8.3%
    prob[30:90, 50:110] = 0.9  # 18.75%, centred
    frac, kept, reason = prune(prob, CFG)
    assert kept and reason == "" and frac == pytest.approx(0.1875)
    prob[30:90, 100:160] = 0.9  # now it runs off the right edge
    assert prune(prob, CFG)[1:] == (False, "border_fg")


def test_trimap_at_the_thresholds():
    prob = np.array([[0.0, 0.3999, 0.4, 0.55, 0.7, 0.7001, 1.0]], np.float32)
    tri = trimap(prob, TrimapConfig(negative_below=0.4, positive_above=0.7, near_positive=0.0))  # the paper's
    assert tri.dtype == np.uint8 and tri.shape == prob.shape
    assert tri.tolist() == [
        [
            TRIMAP_NEGATIVE,
            TRIMAP_NEGATIVE,
            TRIMAP_IGNORE,
            TRIMAP_IGNORE,
            TRIMAP_IGNORE,
            TRIMAP_POSITIVE,
            TRIMAP_POSITIVE,
        ]
    ]
    assert (TRIMAP_NEGATIVE, TRIMAP_IGNORE, TRIMAP_POSITIVE) == (0, 128, 255)


def test_trimap_follows_configured_thresholds():
    prob = np.linspace(0, 1, 101, dtype=np.float32)[None]
    tri = trimap(prob, TrimapConfig(negative_below=0.2, positive_above=0.9, near_positive=0.0))
    assert set(np.unique(tri)) == {0, 128, 255}
    assert (tri[prob < 0.2] == 0).all() and (tri[prob > 0.9] == 255).all()
    assert (tri[(prob >= 0.2) & (prob <= 0.9)] == 128).all()


def test_pruned_reasons_are_summarised_and_the_main_threshold_named():
    # the counts a video's pruning produced, the largest first
    counts: dict[str, int] = {}
    for n, prob in ((3, _centre_block(50)), (1, _centre_block(8100)), (2, np.zeros((H, W), np.float32))):
        for _ in range(n):
            reason = prune(prob, CFG)[2]
            counts[reason] = counts.get(reason, 0) + 1
    assert pruned_summary(counts) == "too_little_fg 5, too_much_fg 1"
    assert relax_hint(counts, CFG) == "for small or distant movers lower streamer.prune.min_fg (now 0.1)"
    assert relax_hint({"border_fg": 4, "too_little_fg": 1}, CFG).endswith("streamer.prune.max_border_fg (now 0.1)")
    assert relax_hint({"too_much_fg": 2}, CFG).endswith("raise streamer.prune.max_fg (now 0.8)")
    # a reason no threshold decides has no setting to change
    assert relax_hint({"no_motion_history": 9, "too_little_fg": 1}, CFG) == ""
    assert relax_hint({}, CFG) == "" and pruned_summary({}) == ""


def test_the_band_next_to_positives_holds_for_a_lone_sure_pixel_at_full_size():
    # at 640x480 the band is dilated on a coarser grid: one sure pixel must still mark its cell
    prob = np.full((480, 640), 0.1, np.float32)
    prob[100, 100] = 0.9
    t = trimap(prob, TrimapConfig())  # near_positive 0.02: 8 px at this size
    assert t[100, 100] == TRIMAP_POSITIVE
    assert t[100, 105] == TRIMAP_IGNORE and t[106, 100] == TRIMAP_IGNORE  # inside the band
    assert t[100, 115] == TRIMAP_NEGATIVE and t[300, 300] == TRIMAP_NEGATIVE  # beyond it
