"""Camera motion: a homography (or affine) fitted with RANSAC to flow samples, so that a
panning or zooming camera does not make the whole frame foreground."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streamer.config import GlobalMotionConfig


@dataclass
class GlobalMotion:
    to_prev: np.ndarray  # 3x3: current-frame point -> where the camera model puts it in frame t-1
    inlier_fraction: float  # of the sampled vectors; low = the model explains little of the frame
    residual_noise: float  # median residual (px) of the inliers: how noisy this frame's flow is
    reliable: bool = True  # False: too few trustworthy vectors or inliers; the camera is assumed static

    @property
    def to_cur(self) -> np.ndarray:
        return np.linalg.inv(self.to_prev)


def _grid(h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    step = max(1, int(np.sqrt(h * w / max(n, 1))))
    ys, xs = np.mgrid[step // 2 : h : step, step // 2 : w : step]
    return ys.ravel(), xs.ravel()


def fit_global_motion(motion: np.ndarray, conf: np.ndarray, cfg: GlobalMotionConfig) -> GlobalMotion:
    """Fit the dominant (camera) motion to confident flow vectors on a regular grid."""
    h, w = motion.shape[:2]
    ys, xs = _grid(h, w, cfg.samples)
    keep = conf[ys, xs] > 0.5
    ys, xs = ys[keep], xs[keep]
    cur = np.stack([xs, ys], axis=1).astype(np.float32)
    prev = cur - motion[ys, xs]
    if len(cur) < 12:  # nothing to fit a camera to: assume it is static, and say so
        return GlobalMotion(np.eye(3), 0.0, 0.0, reliable=False)
    model = None
    if cfg.model == "homography":
        model, inliers = cv2.findHomography(cur, prev, cv2.RANSAC, cfg.ransac_threshold, maxIters=200)
    else:
        a, inliers = cv2.estimateAffine2D(
            cur, prev, method=cv2.RANSAC, ransacReprojThreshold=cfg.ransac_threshold, maxIters=200
        )
        if a is not None:
            model = np.vstack([a, [0, 0, 1]])
    if model is None or inliers is None or not np.isfinite(model).all():
        return GlobalMotion(np.eye(3), 0.0, 0.0, reliable=False)
    inl = inliers.ravel().astype(bool)
    fraction = float(inl.mean())
    if fraction < cfg.min_inliers:  # no dominant motion: a fit this weak would mislead more than help
        return GlobalMotion(np.eye(3), fraction, 0.0, reliable=False)
    pred = cv2.perspectiveTransform(cur[None], model)[0]
    noise = float(np.median(np.linalg.norm(pred - prev, axis=1)[inl]))
    return GlobalMotion(model.astype(np.float64), fraction, noise)


def residual_motion(motion: np.ndarray, gm: GlobalMotion) -> np.ndarray:
    """Per-pixel motion the camera model does not explain (h x w x 2, working px)."""
    h, w = motion.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    cur = np.stack([gx, gy], axis=2)
    camera_prev = cv2.perspectiveTransform(cur.reshape(1, -1, 2), gm.to_prev).reshape(h, w, 2)
    # where the pixel really was minus where the camera alone would have put it
    return camera_prev - (cur - motion)
