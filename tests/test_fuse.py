"""The fused live mask (motionmask/fuse.py): the rule on small arrays, carrying the student along
real optical flow, the run-every-Nth schedule, and its config keys."""

import numpy as np
import pytest

from motionmask.config import ConfigError, load_config
from motionmask.fuse import CarriedStudent, carry_forward, fuse, live_step
from streamer.config import FlowConfig
from streamer.motion.flow import FlowEstimator


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int, value: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = value
    return m


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_an_actor_that_stopped_is_kept_by_the_student():
    motion = np.zeros((12, 16), np.uint8)  # it stands still: motion sees nothing
    student = _box(12, 16, 2, 8, 3, 9, 230)
    student[student == 0] = 90  # the student's unsure haze over the background (0.35)
    out = fuse(motion, student)
    assert out.dtype == np.uint8 and out.shape == (12, 16)
    assert (out[2:8, 3:9] == 230).all()  # the actor, as sure as the student is
    assert (out[student == 90] == 0).all()  # the haze below fuse_min_student does not pass


def test_a_mover_the_student_misses_is_kept_by_motion():
    motion = _box(12, 16, 4, 10, 8, 14, 240)
    student = np.full((12, 16), 20, np.uint8)  # never saw it
    out = fuse(motion, student)
    np.testing.assert_array_equal(out, motion)


def test_both_at_once_and_no_student_yet():
    motion = _box(12, 16, 0, 4, 0, 4, 200)
    student = _box(12, 16, 6, 12, 10, 16, 180)
    out = fuse(motion, student)
    np.testing.assert_array_equal(out, np.maximum(motion, student))
    same = fuse(motion, None)
    np.testing.assert_array_equal(same, motion)
    assert same is not motion  # a copy: the caller may publish both


def test_min_student_sets_where_the_student_marks_alone():
    motion = np.zeros((4, 4), np.uint8)
    student = np.array([[100, 127, 128, 200]] * 4, np.uint8)
    assert fuse(motion, student, 0.5)[0].tolist() == [0, 0, 128, 200]
    assert fuse(motion, student, 0.0)[0].tolist() == [100, 127, 128, 200]
    assert fuse(motion, student, 0.9)[0].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="min_student"):
        fuse(motion, student, 1.5)
    with pytest.raises(ValueError, match="motion must be"):
        fuse(motion.astype(np.float32), student)


def test_a_student_mask_at_another_size_is_resized():
    motion = np.zeros((48, 64), np.uint8)
    student = _box(12, 16, 3, 9, 4, 12, 255)
    out = fuse(motion, student)
    assert out.shape == (48, 64)
    assert out[24, 32] == 255 and out[2, 2] == 0


def _textured_frames(shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two gray frames: a textured square on a textured background, moved right by `shift`, and
    the square's mask in each."""
    rng = np.random.default_rng(3)
    h, w = 72, 96
    bg = (rng.random((h, w)) * 60 + 40).astype(np.uint8)
    tex = (rng.random((24, 24)) * 100 + 140).astype(np.uint8)
    a, b = bg.copy(), bg.copy()
    a[24:48, 20:44] = tex
    b[24:48, 20 + shift : 44 + shift] = tex
    return a, b, _box(h, w, 24, 48, 20, 44, 255), _box(h, w, 24, 48, 20 + shift, 44 + shift, 255)


def test_carry_forward_moves_the_mask_with_real_flow():
    a, b, mask_a, mask_b = _textured_frames(6)
    flow, _ = FlowEstimator(FlowConfig())(a, b)  # what MaskResult.flow holds: t-1 -> t on t's grid
    carried = carry_forward(mask_a, flow)
    assert carried.dtype == np.uint8 and carried.shape == mask_a.shape
    stale, moved, truth = mask_a >= 128, carried >= 128, mask_b >= 128
    assert _iou(moved, truth) > 0.85 and _iou(moved, truth) > _iou(stale, truth) + 0.15
    with pytest.raises(ValueError, match="flow's resolution"):
        carry_forward(mask_a[:10], flow)


def test_a_still_actor_stays_put_when_carried():
    a, _, mask_a, _ = _textured_frames(0)
    flow, _ = FlowEstimator(FlowConfig())(a, a.copy())
    assert _iou(carry_forward(mask_a, flow) >= 128, mask_a >= 128) > 0.95


def test_the_student_runs_every_nth_frame_and_sooner_when_carrying_cannot_go_on():
    flow = np.zeros((6, 8, 2), np.float32)
    student = _box(12, 16, 2, 6, 2, 6, 255)
    c = CarriedStudent(every=3)
    runs = []
    for frame in range(7):
        if c.due(0, flow, "v1"):
            c.ran(student, 0, "v1", (8, 6))
            runs.append(frame)
        else:
            c.step(flow)
    assert runs == [0, 3, 6] and c.mask.shape == (6, 8)
    assert not c.due(0, flow, "v1")
    assert c.due(1, flow, "v1")  # a new shot: the scene changed
    assert c.due(0, flow, "v2")  # a new bundle
    assert c.due(0, None, "v1")  # no flow to carry along
    every_frame = CarriedStudent(every=1)
    every_frame.ran(student, 0, "v1", (8, 6))
    assert every_frame.due(0, flow, "v1")


def test_fuse_config_keys_are_typed_and_named(tmp_path):
    cfg = load_config(None)
    assert cfg.export.fused is True and cfg.export.fuse_min_student == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("export:\n  fuse_min_student: 1.5\n")
    with pytest.raises(ConfigError, match=r"export\.fuse_min_student must be in \[0, 1\]"):
        load_config(bad)
    bad.write_text("export:\n  fused: maybe\n")
    with pytest.raises(ConfigError, match=r"export\.fused: expected true or false"):
        load_config(bad)


def test_live_step_runs_the_student_every_nth_frame_and_carries_it_in_between():
    """The camera's frame step (motionmask.fuse.live_step) on a textured square walking right over
    real DIS flow; motion sees nothing (as if it had stopped), so the fused mask is the student's,
    fresh on every 3rd frame and carried along the flow on the others."""
    rng = np.random.default_rng(5)
    h, w, step = 72, 96, 4
    bg = (rng.random((h, w)) * 60 + 40).astype(np.uint8)
    tex = (rng.random((24, 24)) * 100 + 140).astype(np.uint8)
    grays, truths = [], []
    for i in range(7):
        g = bg.copy()
        g[24:48, 10 + step * i : 34 + step * i] = tex
        grays.append(g)
        truths.append(_box(h, w, 24, 48, 10 + step * i, 34 + step * i, 255) >= 128)
    est = FlowEstimator(FlowConfig())
    calls = []

    def student(image):  # sees the square wherever it is in the frame it is given
        calls.append(int(image[0, 0, 0]))
        return truths[int(image[0, 0, 0])].astype(np.float32)

    carried = CarriedStudent(every=3)
    motion = np.zeros((h, w), np.uint8)
    for i in range(7):
        flow = est(grays[i - 1], grays[i])[0] if i else None
        image = np.dstack([grays[i]] * 3)
        image[0, 0, 0] = i  # tells the student which frame it was handed
        fused, fresh = live_step(carried, motion, image, 0, flow, student, "v1", 0.5, flow_width=w)
        assert (fresh is not None) == (i % 3 == 0)
        assert _iou(fused >= 128, truths[i]) > 0.8, i  # carried along: it walks with the square
        if i % 3:
            assert _iou(fused >= 128, truths[i]) > _iou(truths[i - i % 3], truths[i])  # better than standing still
    assert calls == [0, 3, 6]
