"""Dense flow (DIS) on a real photo moved by known amounts: direction, accuracy, confidence."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from streamer.config import FlowConfig
from streamer.motion.flow import FlowEstimator, saturating, structure_eigenvalues, warp_by_flow, working_size

W, H = 240, 180
INNER = (slice(16, H - 16), slice(16, W - 16))  # away from borders that the shift exposes


def _photo_gray(name: str = "astronaut") -> np.ndarray:
    rgb = cv2.resize(getattr(skimage.data, name)(), (W, H), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Content moves by (+dx, +dy): out(x) = img(x - d)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("dx,dy", [(2.0, -1.0), (1.5, 0.5), (-0.7, 1.3), (-3.0, 0.0)])
def test_known_translation_is_recovered_with_the_documented_sign(dx, dy):
    prev = _photo_gray()
    cur = _shift(prev, dx, dy)
    motion, conf = FlowEstimator(FlowConfig())(prev, cur)
    assert motion.shape == (H, W, 2) and motion.dtype == np.float32
    assert conf.shape == (H, W) and conf.dtype == np.float32
    # motion = displacement of the current frame's pixels since the previous frame
    assert abs(float(np.median(motion[INNER][..., 0])) - dx) < 0.2
    assert abs(float(np.median(motion[INNER][..., 1])) - dy) < 0.2
    assert float(np.median(conf[INNER])) > 0.8
    # pixel x of the current frame was at x - motion(x): sampling prev there rebuilds cur
    rebuilt = warp_by_flow(prev.astype(np.float32), -motion)
    err = np.abs(rebuilt - cur.astype(np.float32))[INNER].mean()
    unaligned = np.abs(prev.astype(np.float32) - cur.astype(np.float32))[INNER].mean()
    assert err < 0.3 * unaligned


@pytest.mark.parametrize("preset", ["ultrafast", "fast", "medium"])
def test_every_preset_tracks_a_shift(preset):
    prev = _photo_gray("coffee")
    cur = _shift(prev, 1.0, 2.0)
    motion, _ = FlowEstimator(FlowConfig(preset=preset))(prev, cur)
    assert np.allclose(np.median(motion[INNER].reshape(-1, 2), axis=0), [1.0, 2.0], atol=0.3)


def test_flow_at_the_working_resolution_measures_a_small_fast_mover_whole():
    """A 16-px textured patch moving 3 px a frame over a photo: the flow of before 2026-12-07
    ("fast", stopping at half the working resolution) gets under half of it right and smears its
    motion over the ground around it; the default ("ultrafast" down to the working resolution with
    sparser patches, the same cost) gets it whole."""
    bg = _photo_gray()
    patch = cv2.resize(cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2GRAY), (16, 16), interpolation=cv2.INTER_AREA)
    prev, cur = bg.copy(), bg.copy()
    prev[80:96, 100:116] = patch
    cur[80:96, 103:119] = patch
    obj = np.zeros((H, W), bool)
    obj[80:96, 103:119] = True
    ring = cv2.dilate(obj.astype(np.uint8), np.ones((13, 13), np.uint8)).astype(bool) & ~obj

    def measured(cfg: FlowConfig) -> tuple[float, float]:
        motion, _ = FlowEstimator(cfg)(prev, cur)
        right = float(np.mean(np.abs(motion[obj][:, 0] - 3.0) < 0.5))
        smear = float(np.mean(np.linalg.norm(motion[ring], axis=1) > 0.5))
        return right, smear

    right_half, smear_half = measured(FlowConfig(preset="fast", finest_scale=1, patch_stride=0))  # before 12-07
    right, smear = measured(FlowConfig())
    assert right > 0.9 and right_half < 0.6
    assert smear < smear_half - 0.1


def test_confidence_is_low_where_content_changed_and_high_elsewhere():
    prev = _photo_gray()
    cur = _shift(prev, 2.0, 0.0)
    # a new patch appears only in the current frame: no flow explains it in both directions
    patch = cv2.resize(cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2GRAY), (60, 60), interpolation=cv2.INTER_AREA)
    cur[60:120, 90:150] = patch
    _, conf = FlowEstimator(FlowConfig())(prev, cur)
    changed = float(np.median(conf[66:114, 96:144]))
    unchanged = np.ones((H, W), bool)
    unchanged[45:135, 75:165] = False  # the patch and a margin around it
    unchanged[:16] = unchanged[-16:] = unchanged[:, :16] = unchanged[:, -16:] = False
    assert changed < 0.5
    assert float(np.median(conf[unchanged])) > 0.8


def texture_weight(gray: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """How far the pipeline trusts flow from texture alone (its `rel` before flow confidence)."""
    return saturating(structure_eigenvalues(gray)[0], scale)


def test_texture_weight_separates_flat_edges_and_texture():
    flat = np.full((120, 160), 128, np.uint8)
    assert float(texture_weight(flat).max()) < 1e-3
    # a ramp has gradient in one direction only (aperture problem): its flow is not trustworthy
    ramp = np.tile(np.linspace(0, 255, 160, dtype=np.float32), (120, 1)).astype(np.uint8)
    assert float(np.median(texture_weight(ramp)[8:-8, 8:-8])) < 0.05
    photo = texture_weight(_photo_gray())
    assert photo.dtype == np.float32 and photo.shape == (H, W)
    assert float(photo.min()) >= 0.0 and float(photo.max()) <= 1.0
    assert float(np.median(photo)) > 0.5
    # the scale sets how much texture counts as enough
    assert float(np.median(texture_weight(_photo_gray(), scale=100.0))) < float(np.median(photo))


@pytest.mark.parametrize(
    "size,target,expected",
    [
        ((640, 480), 240, (240, 180)),
        ((1920, 1080), 240, (240, 135)),
        ((480, 640), 240, (240, 320)),  # portrait
        ((160, 120), 240, (160, 120)),  # never upsampled
        ((240, 180), 240, (240, 180)),
    ],
)
def test_working_size_keeps_aspect_and_never_upsamples(size, target, expected):
    w, h = working_size(size[0], size[1], target)
    assert (w, h) == expected
    assert w <= size[0] and h <= size[1]
    assert abs(w / h - size[0] / size[1]) < 0.02
