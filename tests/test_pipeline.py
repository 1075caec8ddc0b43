"""MotionSegmenter end to end: ordering and shots, a panning camera, mask quality against the
exact synthetic ground truth, and real footage of pedestrians."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skimage.data

from streamer.config import StreamerConfig
from streamer.motion.pipeline import motion_saliency
from synth import things as synth
from tests._pipeline import config, run_segmenter

SAMPLE = Path(__file__).parent / "data" / "sample.mp4"
SMALL = (160, 120)


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def test_motion_saliency_scale():
    res = np.array([0.0, 0.5, 1.0, 3.0], np.float32)
    assert motion_saliency(res, noise=0.0, scale=1.0)[2] == pytest.approx(0.5)
    s = motion_saliency(res, noise=0.0, scale=1.0)
    assert s[0] == 0.0 and np.all(np.diff(s) > 0) and s[-1] < 1.0
    # adaptive: the scale follows the frame's flow noise, with a floor
    assert motion_saliency(np.float32([1.5]), noise=0.5, scale=0.0, noise_multiplier=3.0)[0] == pytest.approx(0.5)
    assert motion_saliency(np.float32([0.5]), noise=0.01, scale=0.0, min_scale=0.5)[0] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def clip_with_cut():
    frames, gt, _, info = synth.render_clip(4, 45, SMALL)
    assert info["shot_starts"] == [0, 23]
    return frames, gt


@pytest.mark.parametrize("lookahead", [0, 3])
def test_every_frame_returns_once_in_order_across_cuts_and_dark_frames(clip_with_cut, lookahead):
    frames, _ = clip_with_cut
    black = np.zeros_like(frames[0])
    other = cv2.resize(skimage.data.chelsea(), SMALL, interpolation=cv2.INTER_AREA)
    # shot 0 with black frames in the middle, a cut to shot 1, then a one-frame shot at the end
    stream = frames[:10] + [black] * 3 + frames[10:] + [other]
    expected_shot = [0] * 13 + [0] * 13 + [1] * 22 + [2]
    dark = set(range(10, 13))
    results, returned = run_segmenter(stream, config(lookahead=lookahead))

    assert [r.frame.index for r in results] == list(range(len(stream)))
    assert [r.shot for r in results] == expected_shot
    for r in results:
        assert r.prob.shape == (120, 160) and r.prob.dtype == np.float32
        assert r.trimap.shape == (120, 160) and r.trimap.dtype == np.uint8
        assert 0.0 <= float(r.prob.min()) and float(r.prob.max()) <= 1.0
        assert r.fg_fraction == pytest.approx(float((r.prob >= 0.5).mean()))
    for i in dark:
        assert results[i].reason == "dark" and not results[i].kept and not results[i].prob.any()
    assert results[-1].reason == "no_motion_history" and not results[-1].prob.any()
    lit_reasons = {r.reason for i, r in enumerate(results[:-1]) if i not in dark}
    assert lit_reasons <= {"", "too_little_fg", "too_much_fg", "border_fg"}

    # latency: inside a shot, a frame comes back `lookahead` frames after it was pushed
    # (one later for a segment's first frame, which waits for the next frame's flow)
    seg_starts = [0, 13, 26]
    for i in range(len(stream) - 1):
        start = max(s for s in seg_starts if s <= i)
        if i in dark or i - start < max(lookahead, 1):
            continue
        assert returned[i] and returned[i][-1] == i - lookahead, (i, returned[i])


def test_first_frame_of_a_shot_borrows_the_next_frames_flow(clip_with_cut):
    frames, gt = clip_with_cut
    results, _ = run_segmenter(frames)
    for start in (0, 23):
        assert gt[start].any()  # things move in this shot
        first = _iou(results[start].prob >= 0.5, gt[start] > 0)
        assert first > 0.3
        assert first > 0.6 * _iou(results[start + 1].prob >= 0.5, gt[start + 1] > 0)


def _camera_clip(
    photo: str, pan: tuple[float, float], zoom: float, n: int = 20, size: tuple[int, int] = (320, 240)
) -> list[np.ndarray]:
    """A camera moving over a still photo: nothing in the scene moves by itself."""
    w, h = size
    world = cv2.resize(getattr(skimage.data, photo)(), (2 * w, 2 * h), interpolation=cv2.INTER_AREA)
    frames = []
    for t in range(n):
        cx, cy, s = w + pan[0] * t, h + pan[1] * t, zoom**t
        a = np.float64([[s, 0, w / 2 - s * cx], [0, s, h / 2 - s * cy]])
        frames.append(cv2.warpAffine(world, a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


@pytest.mark.parametrize(
    "photo,pan,zoom",
    [
        ("astronaut", (3.0, 1.0), 1.015),  # pan and zoom-in together
        ("coffee", (0.0, 0.0), 1.015),  # zoom only: the hardest of these for the camera model
    ],
)
def test_moving_camera_over_a_still_scene_stays_background(photo, pan, zoom):
    results, _ = run_segmenter(_camera_clip(photo, pan, zoom))
    fg = [float((r.prob >= 0.5).mean()) for r in results]
    assert np.mean(fg) < 0.05
    assert max(fg) < 0.1
    assert not any(r.kept for r in results)


def _paused_masks(plan: synth.ClipPlan, inst: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Frame -> pixels of movers that have stood still (relative to the scene) for 2 frames."""
    out = {}
    for t in range(plan.frames):
        shot, i = plan.shot_at(t)
        if i < 2:
            continue
        for layer in shot.layers:
            if layer.role == "mover" and np.allclose(layer.pos[i - 2 : i + 1], layer.pos[i]):
                mask = inst[t] == layer.inst
                if mask.sum() > 50:
                    out[t] = out.get(t, np.zeros_like(mask)) | mask
    return out


@pytest.mark.parametrize("model", ["homography", "affine"])
def test_mask_quality_on_synthetic_clips(model):
    """Mean IoU of prob >= 0.5 vs exact GT on two clips whose cameras pan and zoom: the current
    code scores ~0.68 per frame; without the camera model ~0.3. On the movers of clip 2 while
    they pause, the vote keeps ~24% of their pixels foreground; without it ~1%."""
    cfg = StreamerConfig()
    cfg.global_motion = replace(cfg.global_motion, model=model)
    ious, paused_recall = [], []
    for seed in (2, 5):
        plan = synth.plan_clip(seed, 40, (320, 240))
        frames, gt, inst, info = synth.render_clip(seed, 40, (320, 240))
        assert any(s["camera"] != "static" for s in info["shots"])
        results, _ = run_segmenter(frames, cfg)
        ious += [_iou(r.prob >= 0.5, g > 0) for r, g in zip(results, gt) if g.any()]
        paused_recall += [float((results[t].prob[m] >= 0.5).mean()) for t, m in _paused_masks(plan, inst).items()]
    assert len(ious) >= 60
    assert np.mean(ious) > 0.55
    assert len(paused_recall) >= 8
    assert np.mean(paused_recall) > 0.12


def test_pedestrians_in_real_footage():
    with av.open(str(SAMPLE)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][:30]
    results, _ = run_segmenter(frames, fps=10.0)
    assert [r.shot for r in results] == [0] * 30
    lawn = np.zeros(frames[0].shape[:2], bool)
    lawn[170:280, 0:200] = True  # grass in the lower left: nobody walks there

    def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > 30

    hit, fg = [], []
    for i in range(1, 29):
        mask = results[i].prob >= 0.5
        # changed against the frames before and after: where a walker is now (one frame's change
        # alone also holds where he was, which is background now)
        here = changed(frames[i], frames[i - 1]) & changed(frames[i], frames[i + 1])
        hit.append(float(mask[here].mean()))
        fg.append(float(mask.mean()))
        assert float(results[i].prob[lawn].max()) < 0.3
    # where walkers are the mask is far more often on than by chance
    assert np.mean(hit) > 0.35
    assert np.mean(hit) > 8 * np.mean(fg)
    assert 0.005 < np.mean(fg) < 0.15
