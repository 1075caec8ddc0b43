"""Dense optical flow (OpenCV DIS) with a forward-backward consistency confidence."""

from __future__ import annotations

from functools import lru_cache

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2
import numpy as np

from streamer.config import FlowConfig

_PRESETS = {  # names, looked up when a flow estimator is made: a device imports this module for working_size
    "ultrafast": "DISOPTICAL_FLOW_PRESET_ULTRAFAST",
    "fast": "DISOPTICAL_FLOW_PRESET_FAST",
    "medium": "DISOPTICAL_FLOW_PRESET_MEDIUM",
}


def working_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """(w, h) at the working width, keeping the aspect ratio; never upsamples."""
    w = min(target_width, width)
    h = max(8, int(round(height * w / width)))
    return max(8, w), h


@lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel (read-only use: shared between calls of one frame size)."""
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def warp_by_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `image` at x + flow(x): brings frame t+1 content back onto frame t's grid."""
    gx, gy = _pixel_grid(*flow.shape[:2])
    return cv2.remap(image, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class FlowEstimator:
    """Motion of each pixel of the current frame since the previous one, on the current grid
    (where the mask is wanted): pixel x of frame t was at x - motion(x) in frame t-1.
    Confidence in [0, 1] from the forward-backward check: both directions must agree."""

    def __init__(self, cfg: FlowConfig):
        self.cfg = cfg
        self._dis = cv2.DISOpticalFlow.create(getattr(cv2, _PRESETS[cfg.preset]))
        self._dis.setFinestScale(cfg.finest_scale)
        if cfg.patch_stride:
            self._dis.setPatchStride(cfg.patch_stride)

    def __call__(self, gray_prev: np.ndarray, gray_cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        back = self._dis.calc(gray_cur, gray_prev, None)  # t -> t-1, on t's grid
        fwd = self._dis.calc(gray_prev, gray_cur, None)  # t-1 -> t, on t-1's grid
        # A consistent pixel that goes back then forward lands where it started.
        err2 = np.square(back + warp_by_flow(fwd, back)).sum(axis=2)
        conf = np.exp(-0.5 * err2 / (self.cfg.fb_sigma**2)).astype(np.float32)
        return -back, conf


def image_gradient(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) of the image in gray levels per pixel (3x3 Sobel)."""
    g = gray.astype(np.float32)
    return cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) * 0.125, cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) * 0.125


def structure_eigenvalues(
    gray: np.ndarray, gradient: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(smaller, larger) eigenvalue of the 5x5 structure tensor at each pixel, in squared gray
    levels per pixel. The smaller is large only where flow is fully measurable (corners, texture);
    the larger is large on any edge, where at least the motion across the edge is. `gradient`:
    image_gradient(gray), when the caller has it already."""
    gx, gy = gradient if gradient is not None else image_gradient(gray)
    a = cv2.boxFilter(gx * gx, -1, (5, 5))
    b = cv2.boxFilter(gx * gy, -1, (5, 5))
    c = cv2.boxFilter(gy * gy, -1, (5, 5))
    mean, spread = 0.5 * (a + c), np.sqrt(0.25 * np.square(a - c) + b * b)
    return np.maximum(mean - spread, 0), mean + spread


def saturating(eigenvalue: np.ndarray, scale: float) -> np.ndarray:
    """1 - exp(-eigenvalue / scale): 0 on a flat patch, 63% at `scale`, towards 1 beyond."""
    return (1.0 - np.exp(-eigenvalue / scale)).astype(np.float32)
