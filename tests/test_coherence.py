"""Coherence over time (streamer/motion/coherence.py): the previous residual, carried along the flow,
lengthens a residual it agrees with, never creates one; and a slow mover the pipeline barely sees
frame by frame is seen with it."""

from __future__ import annotations

import cv2
import numpy as np

from streamer.motion.coherence import carried_along, coherent_residual
from tests._pipeline import config, run_segmenter


def _field(h: int, w: int, vector: tuple[float, float]) -> np.ndarray:
    f = np.zeros((h, w, 2), np.float32)
    f[...] = vector
    return f


def test_agreement_lengthens_the_residual_by_up_to_the_gain_and_disagreement_shortens_it():
    residual, still, sure = _field(8, 8, (0.4, 0.0)), _field(8, 8, (0.0, 0.0)), np.ones((8, 8), np.float32)
    assert np.array_equal(coherent_residual(residual, None, still, sure, 0.5), residual)  # a segment's first flow
    same = coherent_residual(residual, _field(8, 8, (3.0, 0.0)), still, sure, 0.5)
    assert np.allclose(same, _field(8, 8, (0.6, 0.0)))  # clipped to the residual's own length: x 1.5
    opposed = coherent_residual(residual, _field(8, 8, (-0.2, 0.0)), still, sure, 0.5)
    assert np.allclose(opposed, _field(8, 8, (0.3, 0.0)))
    unsure = coherent_residual(residual, _field(8, 8, (0.4, 0.0)), still, sure * 0, 0.5)
    assert np.allclose(unsure, residual)  # the flow could not be checked: nothing carried
    ghost = coherent_residual(still, _field(8, 8, (2.0, 1.0)), still, sure, 0.5)
    assert np.allclose(ghost, 0.0)  # where nothing moves now, the past adds nothing


def test_the_previous_residual_is_carried_to_where_each_point_is_now():
    previous = np.zeros((10, 20, 2), np.float32)
    previous[4:6, 5:7] = (1.0, 0.0)
    motion = _field(10, 20, (3.0, 0.0))  # everything moved 3 px right since the previous frame
    carried = carried_along(previous, motion)
    assert np.allclose(carried[4:6, 8:10], (1.0, 0.0)) and np.allclose(carried[4:6, 5:7], 0.0)


def _slow_patch_clip(n: int = 20, speed: float = 0.6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A textured square sliding `speed` px a frame (sub-pixel) over other texture, with sensor
    noise: each frame's residual sits near the flow's noise floor."""
    rng = np.random.default_rng(5)

    def texture(offset: float) -> np.ndarray:
        t = cv2.GaussianBlur(rng.normal(0, 1, (180, 240, 3)).astype(np.float32), (0, 0), 1.5)
        return np.clip(t / t.std() * 25 + offset, 0, 255)

    background, patch = texture(110), texture(120)
    square = np.zeros((180, 240), np.float32)
    square[60:120, 70:130] = 1
    frames, masks = [], []
    for t in range(n):
        shift = np.float32([[1, 0, speed * t], [0, 1, 0]])
        m = cv2.warpAffine(square, shift, (240, 180))[..., None]
        img = background * (1 - m) + cv2.warpAffine(patch, shift, (240, 180)) * m + rng.normal(0, 2, background.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(m[..., 0] > 0.5)
    return frames, masks


def test_a_slow_mover_is_seen_with_coherence_and_the_background_is_not():
    frames, masks = _slow_patch_clip()
    scores = {}
    for gain in (0.0, 0.5):
        results, _ = run_segmenter(frames, config(coherence_gain=gain))
        pairs = list(zip(results[4:], masks[4:]))
        scores[gain] = (np.mean([r.prob[m].mean() for r, m in pairs]), np.mean([r.prob[~m].mean() for r, m in pairs]))
    (inside_without, outside_without), (inside_with, outside_with) = scores[0.0], scores[0.5]
    assert inside_with > inside_without + 0.1, scores
    assert outside_with < outside_without + 0.02, scores
