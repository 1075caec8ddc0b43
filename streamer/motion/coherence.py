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

from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=4)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx, gy


def carried_along(previous: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """`previous` (h x w x 2, on frame t-1's grid) sampled where each pixel of frame t was then."""
    gx, gy = _grid(*motion.shape[:2])
    return cv2.remap(
        previous, gx - motion[..., 0], gy - motion[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


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
