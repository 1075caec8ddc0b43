"""common.npcv, the NumPy stand-ins a device-only install uses for OpenCV on predict's path,
against OpenCV itself on the same inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from common import npcv
from streamer.motion.shots import hsv_histogram
from streamer.motion.trimap import near_or_inside


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (12, 16, 3), np.uint8), (161, 121), interpolation=cv2.INTER_LINEAR)
    return base


# INTER_AREA only ever shrinks on the device's path (enlarging, npcv interpolates linearly)
@pytest.mark.parametrize(
    "size,interp",
    [
        (s, i)
        for s in [(80, 60), (64, 48), (50, 37), (320, 240), (161, 121)]
        for i in (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_NEAREST)
        if not (i == cv2.INTER_AREA and s[0] > 161)
    ],
)
def test_resize_matches_opencv(rgb: np.ndarray, size: tuple[int, int], interp: int) -> None:
    ref = cv2.resize(rgb, size, interpolation=interp)
    got = npcv.resize(rgb, size, interpolation=interp)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    tol = 0 if interp == cv2.INTER_NEAREST else 1
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= tol
    prob = rgb[..., 0].astype(np.float32) / 255
    np.testing.assert_allclose(npcv.resize(prob, size, interp), cv2.resize(prob, size, interpolation=interp), atol=2e-3)


def test_colour_and_histogram_match_opencv(rgb: np.ndarray) -> None:
    assert (
        np.abs(npcv.cvtColor(rgb, npcv.COLOR_RGB2GRAY).astype(int) - cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).max() <= 1
    )
    hsv_ref, hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV), npcv.cvtColor(rgb, npcv.COLOR_RGB2HSV)
    assert np.abs(hsv.astype(int) - hsv_ref).max() <= 1
    assert np.array_equal(npcv.convertScaleAbs(rgb, alpha=1.7), cv2.convertScaleAbs(rgb, alpha=1.7))
    args = ([0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256])
    np.testing.assert_array_equal(npcv.calcHist([hsv_ref], *args), cv2.calcHist([hsv_ref], *args))


@pytest.mark.parametrize("k", [3, 5, 9, 15])
def test_dilate_ellipse_matches_opencv(k: int) -> None:
    assert np.array_equal(
        npcv.getStructuringElement(npcv.MORPH_ELLIPSE, (k, k)), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    )
    src = (np.random.default_rng(k).random((40, 50)) > 0.97).astype(np.uint8)
    kern = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    assert np.array_equal(npcv.dilate(src, kern), cv2.dilate(src, kern))


def test_flood_fill_matches_opencv() -> None:
    mask = np.zeros((60, 80), np.uint8)
    cv2.circle(mask, (30, 30), 15, 1, 3)  # a ring with a hole
    cv2.rectangle(mask, (50, 5), (75, 50), 1, 2)  # a box with a hole, and a snake into a corner
    mask[40:58, 10] = 1
    mask[57, 10:40] = 1
    a, b = np.pad(mask, 1), np.pad(mask, 1)
    cv2.floodFill(a, None, (0, 0), 2)
    npcv.floodFill(b, None, (0, 0), 2)
    assert np.array_equal(a, b) and (a == 0).sum() > 100  # the holes stay 0


def test_trimap_band_and_shot_histogram_through_stand_ins(monkeypatch: pytest.MonkeyPatch, rgb: np.ndarray) -> None:
    import streamer.motion.shots as shots
    import streamer.motion.trimap as trimap

    prob = cv2.GaussianBlur(rgb[..., 1].astype(np.float32) / 255, (0, 0), 6)
    sure, mask = prob > 0.6, prob >= 0.5
    ref_band, ref_hist = near_or_inside(sure, mask, 0.1), hsv_histogram(rgb, 16)
    monkeypatch.setattr(trimap, "cv2", npcv)
    monkeypatch.setattr(shots, "cv2", npcv)
    band = near_or_inside(sure, mask, 0.1)
    assert (band != ref_band).mean() < 0.01  # the coarse grid's edge may move by a pixel
    assert np.abs(hsv_histogram(rgb, 16) - ref_hist).sum() < 0.02


def test_png_decodes_to_the_same_pixels(rgb: np.ndarray) -> None:
    for img in (rgb[..., ::-1], rgb[..., 0]):  # BGR as cv2.imencode takes it, and gray
        ok, buf = npcv.imencode(".png", np.ascontiguousarray(img), [npcv.IMWRITE_PNG_COMPRESSION, 1])
        assert ok
        assert np.array_equal(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), img)
    from streamer.live.protocol import PNG_PARAMS  # the mask stream's settings: run-length deflate, no filter

    ok, buf = npcv.imencode(".png", rgb[..., 0] // 64 * 64, PNG_PARAMS)
    assert np.array_equal(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), rgb[..., 0] // 64 * 64)


def test_other_opencv_names_raise_the_role_error() -> None:
    with pytest.raises(ModuleNotFoundError) as e:
        _ = npcv.findContours
    assert e.value.name == "cv2"
