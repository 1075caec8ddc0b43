"""Coherence over time: a residual motion that agrees with the same point's residual a frame ago
is more likely an object than flow noise, so it counts for a little more.

A slow mover (under a working pixel a frame) gives a residual near the noise floor in any one
frame, but in the same direction frame after frame; flow noise points anywhere. The previous
frame's (boosted) residual is carried along the flow to where each point is now, clipped to the
length of the current residual (so it can amplify motion that is there, never create it: a
mover's trailing ghost or a smear of flow stays as faint as it is), and added at `gain` x the
flow's forward-backward confidence. Aligned, it lengthens the residual by up to 1 + gain;
opposed, it shortens it. The saliency's noise scale grows by sqrt(1 + gain^2), what adding
`gain` x an independent residual of the same noise would give.
"""

from __future__ import annotations

import cv2
import numpy as np

from streamer.motion.flow import warp_by_flow


def carried_along(previous: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """`previous` (h x w x 2, on frame t-1's grid) sampled where each pixel of frame t was then,
    x - motion(x)."""
    return warp_by_flow(previous, -motion)


def _length(field: np.ndarray) -> np.ndarray:
    return cv2.magnitude(np.ascontiguousarray(field[..., 0]), np.ascontiguousarray(field[..., 1]))


def coherent_residual(
    residual: np.ndarray, previous: np.ndarray | None, motion: np.ndarray, conf: np.ndarray, gain: float
) -> np.ndarray:
    """The residual motion (h x w x 2, working px) with the previous frame's coherent residual
    added (module docstring); `previous` None (the first flow of a segment): unchanged."""
    if previous is None or gain <= 0:
        return residual
    carried = carried_along(previous, motion)
    scale = np.minimum(_length(residual) / np.maximum(_length(carried), 1e-6), 1.0)
    scale *= conf
    scale *= gain
    return (residual + scale[..., None] * carried).astype(np.float32, copy=False)


def noise_factor(gain: float) -> float:
    return float(np.sqrt(1.0 + gain * gain))
