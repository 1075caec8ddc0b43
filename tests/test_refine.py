"""Edge-aware refinement (streamer/motion/refine.py): the vote's outline, a superpixel's, moves
toward the frame's colour edges; a thin mover's mask at 0.5 loses the ground beside it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from learner.evaluate import score
from streamer.config import StreamerConfig
from streamer.motion.refine import edge_aware
from tests._pipeline import config, run_segmenter


def _ground(rng: np.random.Generator, h: int = 180, w: int = 240) -> np.ndarray:
    """Grey ground with fine texture and sensor noise, as tarmac seen from above."""
    t = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)).astype(np.float32), (0, 0), 1.0)
    return np.clip(t / t.std() * 6 + 120, 0, 255)


def test_a_blob_around_a_thin_dark_walker_shrinks_onto_the_walker():
    rng = np.random.default_rng(3)
    img = _ground(rng)
    walker = np.zeros((180, 240), bool)
    walker[60:110, 100:106] = True  # 6 px wide, 50 tall: a pedestrian at the working resolution
    img[walker] = (40, 30, 60)
    img = img.astype(np.uint8)
    # what the vote paints: superpixels (here 12 px blocks, offset from the walker) each at the share
    # of it that moved, so the walker's blocks carry the ground beside it
    cover = cv2.resize(walker[3:171, 2:218].astype(np.float32), (18, 14), interpolation=cv2.INTER_AREA)
    blocks = np.full((180, 240), 0.05, np.float32)
    blocks[3:171, 2:218] = cv2.resize(0.05 + 1.8 * cover, (216, 168), interpolation=cv2.INTER_NEAREST)
    blob = np.clip(blocks, 0, 1)
    out = edge_aware(img, blob, 3, 25.0)
    assert out.dtype == np.float32 and out.shape == blob.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    ring = (blob >= 0.5) & ~walker
    assert out[walker].mean() > blob[walker].mean() - 0.01  # the walker stays as sure
    assert out[ring].mean() < blob[ring].mean() - 0.2  # the ground beside it in its blocks falls
    before, after = score(blob >= 0.5, walker)[0], score(out >= 0.5, walker)[0]
    assert before < 0.5 and after > before + 0.05, (before, after)


def test_radius_zero_is_off_and_flat_colour_keeps_the_probability():
    rng = np.random.default_rng(4)
    prob = rng.uniform(0, 1, (40, 60)).astype(np.float32)
    img = np.full((40, 60, 3), 90, np.uint8)
    assert edge_aware(img, prob, 0, 25.0) is prob
    smooth = cv2.GaussianBlur(prob, (0, 0), 8)
    # no edge to follow: the filter is a local mean, which leaves a smooth map as it was
    out = edge_aware(img, smooth, 3, 25.0)
    assert np.abs(out - smooth)[8:-8, 8:-8].max() < 0.01


def _walker_clip(n: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A thin dark walker crossing textured ground at 2 px a frame, in a 320x240 frame."""
    rng = np.random.default_rng(7)
    ground = _ground(rng, 240, 320)
    frames, masks = [], []
    for t in range(n):
        m = np.zeros((240, 320), bool)
        x = 120 + 2 * t
        m[80:150, x : x + 9] = True
        img = ground.copy()
        img[m] = (50, 35, 70)
        frames.append(np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8))
        masks.append(m)
    return frames, masks


def test_the_pipeline_refines_its_mask_onto_a_thin_mover():
    frames, masks = _walker_clip()
    ious = {}
    for radius in (0, 3):
        results, _ = run_segmenter(frames, config(refine_radius=radius))
        ious[radius] = np.mean([score(r.prob >= 0.5, m)[0] for r, m in zip(results[4:], masks[4:])])
        assert all("refine" in r.timings_ms for r in results)
    assert ious[3] > ious[0] + 0.05, ious


def test_the_default_refines_and_a_bad_radius_names_its_key():
    assert StreamerConfig().motion.refine_radius == 3
    with pytest.raises(ValueError, match="motion.refine_radius"):
        config(refine_radius=-1).validate()
