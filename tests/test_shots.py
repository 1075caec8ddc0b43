"""Shot boundaries on synthetic clips with recorded cuts, black frames, fades and real footage."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from streamer.config import ShotConfig
from streamer.motion.flow import working_size
from streamer.motion.shots import ShotDetector
from synth import things as synth

SMALL = (160, 120)
SAMPLE = Path(__file__).parent / "data" / "sample.mp4"


def _decide(frames: list[np.ndarray]):
    detector = ShotDetector(ShotConfig())
    return [detector(f) for f in frames]


def _cuts(frames: list[np.ndarray]) -> list[int]:
    return [i for i, d in enumerate(_decide(frames)) if d.cut]


@pytest.fixture(scope="module")
def two_scenes() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two shots of one synthetic clip (different photos, objects and camera)."""
    frames, _, _, info = synth.render_clip(13, 40, SMALL)
    assert info["shot_starts"] == [0, 20]
    return frames[:20], frames[20:]


@pytest.mark.parametrize("seed", [0, 4, 5, 10])
def test_cuts_of_synthetic_clips_are_found(seed):
    frames, _, _, info = synth.render_clip(seed, 60, SMALL)
    starts = info["shot_starts"]
    assert len(starts) > 1  # the seed was chosen for its cuts
    decisions = _decide(frames)
    cuts = [i for i, d in enumerate(decisions) if d.cut]
    assert set(starts) <= set(cuts), f"missed cuts: {sorted(set(starts) - set(cuts))}"
    assert len(cuts) - len(starts) <= 1
    # shot ids count the cuts
    shots = [d.shot for d in decisions]
    assert shots[0] == 0
    assert all(b == a + (i + 1 in cuts) for i, (a, b) in enumerate(zip(shots, shots[1:])))
    assert not any(d.dark for d in decisions)


def test_black_frames_inside_a_shot_are_dark_and_do_not_cut(two_scenes):
    a, _ = two_scenes
    black = [np.zeros_like(a[0])] * 5
    decisions = _decide(a[:10] + black + a[10:])
    assert [i for i, d in enumerate(decisions) if d.cut] == [0]
    assert [i for i, d in enumerate(decisions) if d.dark] == list(range(10, 15))
    assert {d.shot for d in decisions} == {0}


def test_black_lead_in_is_not_a_cut(two_scenes):
    a, _ = two_scenes
    decisions = _decide([np.zeros_like(a[0])] * 4 + a)
    assert [i for i, d in enumerate(decisions) if d.cut] == [0]  # frame 0 always starts shot 0
    assert [i for i, d in enumerate(decisions) if d.dark] == [0, 1, 2, 3]


def test_hard_cut_through_black_is_one_cut(two_scenes):
    a, b = two_scenes
    decisions = _decide(a[:15] + [np.zeros_like(a[0])] * 5 + b)
    assert [i for i, d in enumerate(decisions) if d.cut] == [0, 20]  # the first lit frame of b
    assert decisions[-1].shot == 1


def _fade(img: np.ndarray, gains) -> list[np.ndarray]:
    return [(img.astype(np.float32) * g).astype(np.uint8) for g in gains]


def test_fade_through_black_into_another_scene_is_one_cut(two_scenes):
    a, b = two_scenes
    n = 15  # 0.5 s at 30 fps
    out = _fade(a[15], [1 - k / n for k in range(1, n + 1)])
    into = _fade(b[0], [k / n for k in range(n + 1)])
    frames = a[:16] + out + into + b[1:]
    cuts = [i for i, d in enumerate(_decide(frames)) if d.cut]
    assert len(cuts) == 2 and cuts[0] == 0  # frame 0, then one cut during the fade-in
    assert 16 + n < cuts[1] <= 16 + 2 * n + 1


def test_real_footage_without_cuts_has_one_shot():
    with av.open(str(SAMPLE)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 80
    w, h = working_size(frames[0].shape[1], frames[0].shape[0], 240)  # what the streamer feeds it
    decisions = _decide([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    assert [i for i, d in enumerate(decisions) if d.cut] == [0]
    assert {d.shot for d in decisions} == {0}
    assert not any(d.dark for d in decisions)
