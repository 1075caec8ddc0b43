"""Tracked-patch mining (streamer/motion/patches.py) on real pipeline output: synthetic clips with
instance ground truth, a camera panning over a still photo, a crowd of movers, shot cuts."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
import pytest

from streamer.config import PatchConfig, StreamerConfig
from streamer.frames import Frame
from streamer.motion.patches import PatchMiner, PatchPair, best_box
from streamer.motion.pipeline import MotionSegmenter
from synth.things import load_photo, render_clip

FRAMES = 90


@cache
def _clip(seed: int):
    return render_clip(seed, FRAMES)


def mine(frames: list[np.ndarray], cfg: StreamerConfig | None = None) -> tuple[list[PatchPair], PatchMiner, list]:
    cfg = cfg or StreamerConfig()
    seg = MotionSegmenter(cfg)
    miner = PatchMiner(cfg.patches, camera="cam")
    pairs, results = [], []
    for i, img in enumerate(frames):
        for r in seg.push(Frame(img, "cam", i, i / 30)):
            results.append(r.shot)
            pairs += miner.push(r)
    for r in seg.flush():
        results.append(r.shot)
        pairs += miner.push(r)
    pairs += miner.flush()
    return pairs, miner, results


def dominant(inst: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, float]:
    x, y, w, h = box
    v = inst[y : y + h, x : x + w].ravel()
    if not (v > 0).any():
        return 0, 0.0
    k = int(np.bincount(v[v > 0]).argmax())
    return k, float((v == k).mean())


@pytest.mark.parametrize("seed", [1003, 1010])
def test_tracked_patch_stays_on_the_same_mover(seed):
    rgb, _gt, inst, info = _clip(seed)
    pairs, miner, _ = mine(rgb)
    assert len(pairs) >= 2, miner.stats  # a 90-frame clip holds only a few 30-frame tracks
    P = PatchConfig().size
    for p in pairs:
        assert p.query.shape == p.tracked.shape == (P, P, 3) and p.query.dtype == np.uint8
        assert p.t1 - p.t0 == PatchConfig().track_length and p.camera == "cam"
        a, cover0 = dominant(inst[p.t0], p.box0)
        b, cover1 = dominant(inst[p.t1], p.box1)
        assert a > 0 and a == b, (p.t0, p.t1, a, b)  # the same mover at both ends of the track
        assert cover0 > 0.05 and cover1 > 0.05
        # the query is the frame's pixels in its box, as the learner will see them
        x, y, w, h = p.box0
        want = cv2.resize(rgb[p.t0][y : y + h, x : x + w], (P, P), interpolation=cv2.INTER_AREA)
        assert np.array_equal(p.query, want)
    assert len({p.track for p in pairs}) == len(pairs)
    st = miner.stats
    assert st.pairs == len(pairs) and st.started >= len(pairs)
    assert st.ms / st.frames < 10.0  # next to a ~30 ms pipeline; ~1 ms measured


def _pan(n: int, speed: float = 1.5) -> list[np.ndarray]:
    """A camera panning (with a slight zoom) over a still photo: motion everywhere, none of it
    independent of the camera."""
    world = cv2.resize(load_photo("coffee"), (640, 480), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(n):
        s = 1.0 + 0.002 * i
        m = np.array([[s, 0, -(40 + speed * i)], [0, s, -(30 + 0.5 * speed * i)]], np.float32)
        frames.append(cv2.warpAffine(world, m, (320, 240), flags=cv2.INTER_LINEAR))
    return frames


def test_camera_pan_alone_yields_no_pairs():
    pairs, miner, _ = mine(_pan(45))
    st = miner.stats
    assert pairs == [] and st.started == 0
    assert st.examined >= 40 and st.skipped_few_moving >= 0.9 * st.examined, st
    assert max(st.fractions) < PatchConfig().min_moving


def _crowd(n: int) -> list[np.ndarray]:
    """A faint wall (texture too weak for interest points, enough to pin its flow at zero), six
    textured things crossing it in all directions: nearly every interest point moves on its own,
    and there is no one object to track."""
    noise = np.random.default_rng(3).normal(0, 1, (60, 80)).astype(np.float32)
    wall = np.clip(128 + 5 * cv2.resize(noise, (320, 240), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    tex = cv2.resize(load_photo("astronaut"), (256, 256), interpolation=cv2.INTER_AREA)
    starts = np.array([[60, 50], [200, 60], [120, 150], [250, 170], [30, 180], [160, 20]], float)
    angle = 2 * np.pi * np.arange(6) / 6 + 0.3
    vel = 3.0 * np.stack([np.cos(angle), np.sin(angle)], 1)  # px/frame, every one in its own direction
    frames = []
    for i in range(n):
        img = np.repeat(wall[:, :, None], 3, axis=2)
        for k in range(6):
            x, y = (np.abs((starts[k] + vel[k] * i + [280, 200]) % [560, 400] - [280, 200])).astype(int)  # bounce
            img[y : y + 40, x : x + 40] = tex[36 * k : 36 * k + 40, 30 * k : 30 * k + 40]
        frames.append(img)
    return frames


def test_frames_where_most_points_move_are_skipped():
    pairs, miner, _ = mine(_crowd(30))
    st = miner.stats
    assert st.skipped_many_moving >= 0.8 * st.examined and st.examined >= 25, st
    assert pairs == [] and st.started == 0


def test_a_shot_cut_ends_the_tracks_that_cross_it():
    a, _, inst_a, _ = _clip(1003)
    b, _, inst_b, _ = _clip(1010)
    cut = 40
    frames = list(a[:cut]) + list(b[:60])
    pairs, miner, shots = mine(frames)
    assert shots[cut - 1] == 0 and shots[cut] == 1  # the pipeline saw the cut
    assert miner.stats.ended_cut >= 1, miner.stats  # tracks started in the first shot ended there
    assert pairs, miner.stats
    for p in pairs:
        assert (p.t0 < cut) == (p.t1 < cut), (p.t0, p.t1)  # no pair spans the cut
        assert p.shot == (0 if p.t0 < cut else 1)
        inst = inst_b if p.t0 >= cut else inst_a
        off = cut if p.t0 >= cut else 0
        k0, _ = dominant(inst[p.t0 - off], p.box0)
        k1, _ = dominant(inst[p.t1 - off], p.box1)
        assert k0 > 0 and k0 == k1


def test_best_box_holds_the_cluster():
    rng = np.random.default_rng(0)
    cluster = rng.normal([200, 60], 6, (30, 2))
    stray = rng.uniform([0, 0], [240, 180], (8, 2))
    centre, n = best_box(np.concatenate([cluster, stray]).astype(np.float32), 48, 240, 180)
    assert n >= 28 and np.abs(centre - [200, 60]).max() < 12
    assert 24 <= centre[0] <= 240 - 24 and 24 <= centre[1] <= 180 - 24  # the box stays inside the frame
