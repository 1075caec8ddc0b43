"""Camera model from real flow: a virtual camera pans and zooms over a real photo, so the true
camera motion of every pixel is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from streamer.config import FlowConfig, GlobalMotionConfig
from streamer.motion.flow import FlowEstimator
from streamer.motion.global_motion import GlobalMotion, fit_global_motion, residual_motion

W, H = 240, 180
WORLD = cv2.cvtColor(cv2.resize(skimage.data.astronaut(), (400, 400), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
INNER = (slice(10, H - 10), slice(10, W - 10))


def _view_matrix(cx: float, cy: float, zoom: float) -> np.ndarray:
    """world -> view (2x3): world point (cx, cy) at the view centre, `zoom` view px per world px."""
    return np.float64([[zoom, 0, W / 2 - zoom * cx], [0, zoom, H / 2 - zoom * cy]])


def _view(cam: tuple[float, float, float]) -> np.ndarray:
    return cv2.warpAffine(WORLD, _view_matrix(*cam), (W, H), flags=cv2.INTER_LINEAR)


def _true_to_prev(cam_prev, cam_cur) -> np.ndarray:
    """3x3: current view point -> where the same world point was in the previous view."""
    a = np.vstack([_view_matrix(*cam_prev), [0, 0, 1]])
    b = np.vstack([_view_matrix(*cam_cur), [0, 0, 1]])
    return a @ np.linalg.inv(b)


CAMERAS = {
    "pan": ((200, 200, 1.0), (202.5, 199.0, 1.0)),  # content moves (-2.5, +1) px
    "zoom": ((200, 200, 1.0), (200, 200, 1.04)),  # 4% zoom-in about the centre
    "pan_zoom": ((200, 200, 1.0), (198.0, 201.5, 0.97)),
}


@pytest.mark.parametrize("model", ["homography", "affine"])
@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_camera_motion_is_explained(camera, model):
    cam_prev, cam_cur = CAMERAS[camera]
    motion, conf = FlowEstimator(FlowConfig())(_view(cam_prev), _view(cam_cur))
    gm = fit_global_motion(motion, conf, GlobalMotionConfig(model=model))
    assert gm.inlier_fraction > 0.9
    assert gm.residual_noise < 0.3
    res = np.linalg.norm(residual_motion(motion, gm), axis=2)
    assert res.shape == (H, W)
    assert float(np.median(res[INNER])) < 0.3
    # the model is the camera's motion, not only something that fits the flow
    pts = np.float64([[[30, 30], [210, 40], [120, 90], [40, 150], [200, 160]]])
    fitted = cv2.perspectiveTransform(pts, gm.to_prev)[0]
    truth = cv2.perspectiveTransform(pts, _true_to_prev(cam_prev, cam_cur))[0]
    assert np.abs(fitted - truth).max() < 0.3
    assert np.allclose(gm.to_cur @ gm.to_prev, np.eye(3), atol=1e-9)


@pytest.mark.parametrize("model", ["homography", "affine"])
def test_independent_object_stands_out_of_the_camera_model(model):
    prev, cur = _view((200, 200, 1.0)), _view((202, 200, 1.0))  # camera: content moves (-2, 0)
    ph, pw = 72, 90  # 15% of the frame
    patch = cv2.resize(cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2GRAY), (pw, ph), interpolation=cv2.INTER_AREA)
    prev[50 : 50 + ph, 60 : 60 + pw] = patch
    cur[53 : 53 + ph, 64 : 64 + pw] = patch  # the object moves (+4, +3): (+6, +3) relative to the scene
    motion, conf = FlowEstimator(FlowConfig())(prev, cur)
    gm = fit_global_motion(motion, conf, GlobalMotionConfig(model=model))
    res = np.linalg.norm(residual_motion(motion, gm), axis=2)
    on_object = res[61 : 53 + ph - 8, 72 : 64 + pw - 8]
    assert float(np.median(on_object)) > 5.0  # truth: |(6, 3)| = 6.7
    elsewhere = np.ones((H, W), bool)
    elsewhere[38 : 53 + ph + 12, 48 : 64 + pw + 12] = False
    elsewhere[:8] = elsewhere[-8:] = elsewhere[:, :8] = elsewhere[:, -8:] = False
    assert float(np.median(res[elsewhere])) < 0.2
    assert float(np.percentile(res[elsewhere], 90)) < 0.5
    # the object's vectors were rejected by RANSAC, most of the scene's were not
    assert 0.6 < gm.inlier_fraction < 0.95


def test_exact_homography_field_is_recovered():
    truth = np.array([[1.02, 0.01, -3.0], [-0.015, 0.99, 2.0], [1e-5, -2e-5, 1.0]])
    gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    cur = np.stack([gx, gy], axis=2)
    prev = cv2.perspectiveTransform(cur.reshape(1, -1, 2).astype(np.float64), truth).reshape(H, W, 2)
    motion = (cur - prev).astype(np.float32)
    gm = fit_global_motion(motion, np.ones((H, W), np.float32), GlobalMotionConfig())
    assert np.allclose(gm.to_prev / gm.to_prev[2, 2], truth, atol=1e-4)
    assert gm.inlier_fraction == 1.0 and gm.residual_noise < 1e-3
    assert float(np.abs(residual_motion(motion, gm)).max()) < 1e-2


def test_tiny_field_falls_back_to_a_static_camera():
    motion = np.full((3, 3, 2), 2.0, np.float32)  # 9 vectors: too few for any model
    gm = fit_global_motion(motion, np.ones((3, 3), np.float32), GlobalMotionConfig())
    assert isinstance(gm, GlobalMotion)
    assert np.array_equal(gm.to_prev, np.eye(3))
    # with a static camera all motion is residual
    assert np.allclose(residual_motion(motion, gm), motion)


def test_too_few_confident_vectors_mean_a_static_camera():
    rng = np.random.default_rng(0)
    motion = rng.normal(0.0, 5.0, (H, W, 2)).astype(np.float32)  # flow that means nothing
    gm = fit_global_motion(motion, np.zeros((H, W), np.float32), GlobalMotionConfig())
    assert np.allclose(gm.to_prev, np.eye(3))
