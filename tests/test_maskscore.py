"""bench/maskscore: the scores every quality figure of issue 18 comes from, on arrays small
enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bench.maskscore import HALF, THRESHOLDS, LabelScore, MaskScore


def _at(t: float) -> int:
    return int(np.argmin(np.abs(THRESHOLDS - t)))


def test_iou_curve_of_a_ramp_is_known_at_every_threshold() -> None:
    # 10 object pixels at probability 0.1 .. 1.0 and 10 background pixels at 0.05 .. 0.5
    prob = np.concatenate([np.linspace(0.1, 1.0, 10), np.linspace(0.05, 0.5, 10)]).astype(np.float32)[None]
    ref = np.array([[255] * 10 + [0] * 10], np.uint8)
    s = MaskScore()
    s.add(prob, ref)
    for k, t in enumerate(THRESHOLDS):
        pred = prob[0] >= np.float32(t)
        tp = pred[:10].sum()
        expected = tp / (10 + pred[10:].sum())
        assert s.iou[0][k] == pytest.approx(expected), t
    out = s.summary()
    assert out["iou"] == pytest.approx(s.iou[0][HALF])
    assert out["best_iou"] == pytest.approx(max(s.iou[0]))
    assert out["precision"] == pytest.approx(6 / 7)  # 0.5 .. 1.0 in the object, 0.5 in the background
    assert out["recall"] == pytest.approx(0.6)


def test_a_pixel_exactly_at_a_threshold_reaches_it() -> None:
    # float32 0.7 lies below float64 0.7: the grid must compare as `prob >= 0.7` does
    prob = np.full((3, 3), 0.7, np.float32)
    s = MaskScore()
    s.add(prob, np.full((3, 3), 255, np.uint8))
    assert s.iou[0][_at(0.7)] == 1.0
    assert s.iou[0][_at(0.75)] == 0.0


def test_void_counts_nowhere() -> None:
    ref = np.array([[255, 255, 128, 128, 0, 0]], np.uint8)
    prob = np.array([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
    s = MaskScore()
    assert s.add(prob, ref) == 1.0  # the void pixel marked foreground is no false positive
    # anything in the void gives the same figures
    t = MaskScore()
    t.add(np.array([[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]], np.float32), ref)
    assert s.summary() == t.summary()
    assert s.summary()["ece"] == pytest.approx(0.0)


def test_perfectly_calibrated_map_has_ece_near_zero() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((200, 200)).astype(np.float32)
    ref = np.where(rng.random(prob.shape) < prob, 255, 0).astype(np.uint8)  # foreground with probability p
    s = MaskScore()
    s.add(prob, ref)
    out = s.summary()
    assert out["ece"] < 0.01
    for row in s.reliability():
        assert row["fg_fraction"] == pytest.approx(row["mean_prob"], abs=0.02)


def test_overconfident_map_has_the_ece_it_should() -> None:
    # every pixel says 0.9, half of them are foreground: ECE = 0.4
    ref = np.array([[255, 0] * 50], np.uint8)
    s = MaskScore()
    s.add(np.full(ref.shape, 0.9, np.float32), ref)
    assert s.summary()["ece"] == pytest.approx(0.4, abs=1e-6)
    assert s.reliability()[9]["pixels"] == 100


def test_frames_without_an_object_count_only_for_false_positives() -> None:
    s = MaskScore()
    assert s.add(np.full((2, 2), 0.9, np.float32), np.zeros((2, 2), np.uint8)) is None
    out = s.summary()
    assert out["frames"] == 0 and out["empty_frames"] == 1 and out["iou"] is None
    assert out["empty_fp"] == 1.0
    assert out["ece"] is None  # no frame with an object: nothing calibrated yet
    s.add(np.array([[1.0, 0.0]], np.float32), np.array([[255, 0]], np.uint8))
    assert s.summary()["ece"] == pytest.approx(0.0)


def test_uint8_and_boolean_inputs() -> None:
    s = MaskScore()
    s.add(np.array([[255, 128, 127, 0]], np.uint8), np.array([[1, 1, 0, 0]], bool))
    assert s.summary()["iou"] == 1.0  # 128/255 >= 0.5 > 127/255, a boolean reference has no void


def test_label_score_counts_kept_frames_and_skips_void() -> None:
    ref = np.array([[255, 255, 255, 255, 128, 0, 0, 0, 0, 0, 0, 0]], np.uint8)
    tri = np.array([[255, 255, 128, 0, 255, 0, 0, 0, 0, 255, 128, 128]], np.uint8)
    ls = LabelScore()
    ls.add(tri, ref, kept=True)
    ls.add(np.full(ref.shape, 255, np.uint8), ref, kept=False)  # pruned: counted as a frame only
    out = ls.summary()
    assert out["frames"] == 2 and out["kept"] == 1
    assert out["fg_positive"] == 0.5 and out["fg_negative"] == 0.25
    assert out["bg_positive"] == pytest.approx(1 / 7)
    assert out["bg_dont_care_per_object"] == 0.5  # two background pixels unlabelled, four object pixels
    assert out["positive_precision"] == pytest.approx(2 / 3)
