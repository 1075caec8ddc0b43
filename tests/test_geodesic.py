"""The geodesic fill of weakly textured objects (streamer/motion/geodesic.py) and the trimap's "don't
care" near positives and in holes (streamer/motion/trimap.py), on real pipeline runs and tiny maps."""

from __future__ import annotations

import cv2
import numpy as np

from streamer.config import TrimapConfig
from streamer.motion.geodesic import fill, geodesic_foreground
from streamer.motion.superpixels import adjacency, describe
from streamer.motion.trimap import TRIMAP_IGNORE, TRIMAP_NEGATIVE, TRIMAP_POSITIVE, trimap
from tests._media import flat_box_clip
from tests._pipeline import config, run_segmenter


def _recall(trust: float) -> float:
    frames, masks = flat_box_clip()
    results, _ = run_segmenter(frames, config(geodesic_trust=trust, outline_gain=0.0))  # the fill alone
    return float(np.mean([(r.prob[m] >= 0.5).mean() for r, m in zip(results[4:], masks[4:])]))


def test_the_geodesic_fill_marks_the_flat_interior_of_a_moving_box():
    without, with_fill = _recall(0.0), _recall(0.3)
    assert with_fill > without + 0.2, (without, with_fill)
    assert with_fill > 0.5


def test_geodesic_distance_follows_colour_regions():
    # a blue frame (superpixel 2) around a red object made of two superpixels: 0 (its moving
    # edge, sure foreground) and 1 (its flat interior, unmeasured); and a blue patch 3 inside
    # the frame whose vote is low but unreliable too
    labels = np.full((40, 40), 2, np.int32)
    labels[10:30, 5:15], labels[10:30, 15:25], labels[10:30, 28:36] = 0, 1, 3
    rgb = np.full((40, 40, 3), (30, 30, 200), np.uint8)
    rgb[10:30, 5:25] = (200, 30, 30)
    sp = describe(labels, cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab))
    a, b = adjacency(labels, sp.n)
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 1), (0, 2), (1, 2), (2, 3)]
    voted = np.array([0.9, 0.1, 0.1, 0.1], np.float32)
    reliability = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    geo = geodesic_foreground(sp, voted, reliability, sure_fg=0.5, sure_bg=0.2, min_reliability=0.3, edge_floor=0.05)
    assert geo[0] > 0.9 and geo[1] > 0.9  # the interior goes with its colour, not with its low vote
    assert geo[2] < 0.1 and geo[3] < 0.1
    # unreliable superpixels follow the geodesic answer, reliable ones keep their vote
    out = fill(voted, geo, reliability, trust=0.3)
    assert abs(out[0] - voted[0]) < 0.05 and out[1] > 0.9 and out[2] < 0.2 and out[3] < 0.2
    # no sure foreground: nothing to fill from
    assert geodesic_foreground(sp, np.full(4, 0.3, np.float32), reliability, 0.5, 0.2, 0.3, 0.05) is None


def test_trimap_does_not_call_the_neighbours_and_holes_of_an_object_background():
    prob = np.zeros((100, 100), np.float32)
    prob[30:70, 30:70] = 0.9  # a sure object ...
    prob[45:55, 45:55] = 0.1  # ... with a hole the mask did not mark
    cfg = TrimapConfig(near_positive=0.04)
    t = trimap(prob, cfg)
    assert (t[30:70, 30:45] == TRIMAP_POSITIVE).all()
    assert (t[45:55, 45:55] == TRIMAP_IGNORE).all()  # enclosed: not background
    assert t[50, 28] == TRIMAP_IGNORE  # next to the object's edge
    assert t[50, 5] == TRIMAP_NEGATIVE and t[95, 95] == TRIMAP_NEGATIVE  # far away: background
    old = trimap(prob, TrimapConfig(near_positive=0.0))  # off: Pathak et al.'s plain thresholds
    assert old[50, 50] == TRIMAP_NEGATIVE and old[50, 28] == TRIMAP_NEGATIVE
