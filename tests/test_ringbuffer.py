"""Shared-memory ring buffer: exact round trips, eviction, sampling, and real multi-process
concurrency (writers, a reader, a lock holder, SIGKILLed writers)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from multiprocessing import resource_tracker
from pathlib import Path

import numpy as np
import pytest

import streamer.shm.ringbuffer as ringbuffer
from common.errors import UserError
from motionmask.config import ConfigError, load_config
from streamer.frames import Frame
from streamer.motion.pipeline import MaskResult
from streamer.shm.ringbuffer import (
    READY,
    WRITING,
    BufferConfig,
    RingBuffer,
    Sample,
    camera_key,
    sample_from_result,
)

ROOT = Path(__file__).resolve().parents[1]
FORK = mp.get_context("fork")


def cfg_for(slots: int, w: int = 64, h: int = 48, **kw) -> BufferConfig:
    """A config whose memory budget holds exactly `slots` slots of w x h."""
    mb = ringbuffer.ring_bytes(h, w, slots) / 2**20
    cfg = BufferConfig(train_width=w, train_height=h, memory_mb=mb, **kw)
    assert cfg.slots() == slots
    return cfg


def random_sample(rng, w, h, camera="cam0", frame=0, shot=0, flow=True) -> Sample:
    return Sample(
        camera=camera,
        frame_index=frame,
        shot=shot,
        capture_time=frame / 25.0,
        image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        trimap=rng.choice(np.array([0, 128, 255], np.uint8), (h, w)),
        prob=rng.integers(0, 256, (h, w), dtype=np.uint8),
        flow=rng.standard_normal((h, w, 2)).astype(np.float16) * 4 if flow else None,
        valid=(0, 0, h - 3, w),
        source_hw=(720, 1280),
    )


def constant_sample(w, h, camera, frame, shot) -> Sample:
    """Every array a constant derived from (camera, frame): a torn copy mixes two constants."""
    v = _value(camera, frame)
    return Sample(
        camera=camera,
        frame_index=frame,
        shot=shot,
        capture_time=float(frame),
        image=np.full((h, w, 3), v, np.uint8),
        trimap=np.full((h, w), (v * 3) % 256, np.uint8),
        prob=np.full((h, w), (v * 5) % 256, np.uint8),
        flow=np.full((h, w, 2), v, np.float16) * np.array([1, -1], np.float16),
        valid=(0, 0, h, w),
        source_hw=(h, w),
    )


def _value(camera: str, frame: int) -> int:
    return (frame * 31 + int(camera[-1]) * 7) % 251


def count_torn(batch) -> int:
    torn = 0
    for k in range(batch.n):
        v = _value(batch.cameras[k], int(batch.frame_index[k]))
        ok = (
            (batch.frames[k] == v).all()
            and (batch.trimaps[k] == (v * 3) % 256).all()
            and (batch.probs[k] == (v * 5) % 256).all()
            and (batch.flows[k][..., 0] == v).all()
            and (batch.flows[k][..., 1] == -v).all()
            and batch.capture_time[k] == batch.frame_index[k]
        )
        torn += not ok
    return torn


@pytest.fixture
def rb_factory():
    made = []

    def make(cfg, name=None):
        rb = RingBuffer.create(cfg, name=name)
        made.append(rb)
        return rb

    yield make
    for rb in made:
        rb.close()


# ---- single process ----------------------------------------------------------------------------
def test_put_sample_round_trip_is_exact(rb_factory):
    cfg = cfg_for(8, per_shot_cap=8)
    rb = rb_factory(cfg)
    rng = np.random.default_rng(1)
    put = [random_sample(rng, 64, 48, camera=f"cam{i}", frame=10 + i, shot=i, flow=i != 1) for i in range(3)]
    assert all(rb.put(s) for s in put)
    batch = rb.sample(3, np.random.default_rng(0))
    assert batch.n == 3
    got = {int(f): k for k, f in enumerate(batch.frame_index)}
    assert sorted(got) == [10, 11, 12]  # without replacement while enough are held
    for s in put:
        k = got[s.frame_index]
        assert batch.cameras[k] == s.camera and batch.shot[k] == s.shot
        assert batch.capture_time[k] == s.capture_time
        np.testing.assert_array_equal(batch.frames[k], s.image)
        np.testing.assert_array_equal(batch.trimaps[k], s.trimap)
        np.testing.assert_array_equal(batch.probs[k], s.prob)
        assert tuple(batch.valid[k]) == s.valid and tuple(batch.source_hw[k]) == s.source_hw
        if s.flow is None:
            assert not batch.has_flow[k] and (batch.flows[k] == 0).all()
        else:
            assert batch.has_flow[k]
            np.testing.assert_array_equal(batch.flows[k], s.flow)
    # the batch is a copy: rewriting the buffer does not change it
    before = batch.frames.copy()
    for i in range(8):
        rb.put(random_sample(rng, 64, 48, camera="other", frame=100 + i))
    np.testing.assert_array_equal(batch.frames, before)
    # reuse of the preallocated batch
    again = rb.sample(2, rng, out=batch)
    assert again is batch and batch.n == 2 and batch.frames.shape == (2, 48, 64, 3)


def test_empty_buffer_gives_empty_batch_at_once(rb_factory):
    rb = rb_factory(cfg_for(4))
    t = time.perf_counter()
    batch = rb.sample(16, np.random.default_rng(0), mode="recency")
    assert time.perf_counter() - t < 0.05
    assert batch.n == 0 and batch.frames.shape == (0, 48, 64, 3) and batch.cameras == []
    st = rb.stats()
    assert st["fill"] == 0 and st["samples_drawn"] == 0 and st["by_camera"] == {}


def test_per_shot_cap_then_oldest_first_eviction(rb_factory):
    rb = rb_factory(cfg_for(6, per_shot_cap=3))
    rng = np.random.default_rng(2)

    def put(camera, shot, *frames):
        for f in frames:
            assert rb.put(random_sample(rng, 64, 48, camera, frame=f, shot=shot))

    def held():
        b = rb.sample(6, rng)
        assert b.n == rb.stats()["fill"]
        return sorted(zip(b.cameras, b.frame_index.tolist()))

    # one long shot (a fixed camera never cuts) fills the free slots, past its cap
    put("a", 0, 0, 1, 2, 3, 4, 5)
    st = rb.stats()
    assert st["fill"] == 6 and st["evictions"] == {"shot_cap": 0, "oldest": 0}
    # full: the shot at its cap replaces its own oldest
    put("a", 0, 6)
    assert held() == [("a", f) for f in range(1, 7)] and rb.stats()["evictions"]["shot_cap"] == 1
    # a new shot takes the long shot's oldest slots until both hold their cap
    put("a", 1, 10, 11, 12)
    assert held() == [("a", 4), ("a", 5), ("a", 6), ("a", 10), ("a", 11), ("a", 12)]
    # a new camera takes from the shots at their cap, the oldest first, and never blocks
    t = time.perf_counter()
    put("b", 0, 20, 21)
    assert time.perf_counter() - t < 0.05
    assert held() == [("a", 5), ("a", 6), ("a", 11), ("a", 12), ("b", 20), ("b", 21)]
    # no shot at its cap: the globally oldest sample goes
    put("c", 0, 30)
    assert held() == [("a", 6), ("a", 11), ("a", 12), ("b", 20), ("b", 21), ("c", 30)]
    st = rb.stats()
    assert st["evictions"] == {"shot_cap": 6, "oldest": 1} and st["puts"] == 13 and st["drops_total"] == 0
    assert st["by_camera"] == {"a": 3, "b": 2, "c": 1} and st["by_shot"] == {
        "a": {0: 1, 1: 2},
        "b": {0: 2},
        "c": {0: 1},
    }


def test_recency_sampling_prefers_new_samples(rb_factory):
    rb = rb_factory(cfg_for(40, per_shot_cap=40))
    rng = np.random.default_rng(3)
    for f in range(20):
        rb.put(random_sample(rng, 64, 48, frame=f))
    time.sleep(0.3)
    for f in range(100, 120):
        rb.put(random_sample(rng, 64, 48, frame=f))
    batch = rb.new_batch(8)

    def new_fraction(mode):
        new = [
            (rb.sample(8, rng, mode=mode, half_life_s=0.05, out=batch).frame_index >= 100).mean() for _ in range(200)
        ]
        return float(np.mean(new))

    uniform, recency = new_fraction("uniform"), new_fraction("recency")
    assert 0.4 < uniform < 0.6
    assert recency > 0.95  # old ones are 6 half-lives older: weight 1/64


def test_sample_from_result_letterboxes_and_rescales_flow():
    cfg = BufferConfig(train_width=320, train_height=240)
    H, W = 360, 640  # 16:9 into 4:3: fits as 320 x 180, padded below
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    prob = (xx / (W - 1)).astype(np.float32)
    trimap = np.where(prob > 0.7, 255, np.where(prob < 0.4, 0, 128)).astype(np.uint8)
    flow = np.zeros((90, 160, 2), np.float32)  # working resolution 160 px wide
    flow[..., 0], flow[..., 1] = 1.5, -0.5
    res = MaskResult(
        frame=Frame(image, "clip.mp4", 42, 1.68),
        shot=3,
        prob=prob,
        trimap=trimap,
        fg_fraction=0.3,
        kept=True,
        reason="",
        flow=flow,
    )
    s = sample_from_result(res, "cam0", cfg)
    assert s.valid == (0, 0, 180, 320) and s.source_hw == (360, 640)
    assert (s.frame_index, s.shot, s.capture_time, s.camera) == (42, 3, 1.68, "cam0")
    assert s.image.shape == (240, 320, 3) and (s.image[180:] == 0).all()
    assert (s.trimap[180:] == 128).all() and set(np.unique(s.trimap[:180])) <= {0, 128, 255}
    assert (s.prob[180:] == 0).all()
    assert s.prob[90, 0] == 0 and s.prob[90, 319] == 255 and abs(int(s.prob[90, 160]) - 128) <= 2
    # working px -> slot px: 160 -> 320 wide, 90 -> 180 high, so both components double
    assert s.flow.dtype == np.float16
    np.testing.assert_allclose(s.flow[:180, :, 0], 3.0)
    np.testing.assert_allclose(s.flow[:180, :, 1], -1.0)
    assert (s.flow[180:] == 0).all()
    with RingBuffer.create(cfg) as rb:
        assert rb.put(s)
        b = rb.sample(1)
        np.testing.assert_array_equal(b.frames[0], s.image)
    # no flow yet (first frame of a shot), and a portrait frame padded on the right
    res2 = MaskResult(
        frame=Frame(image.transpose(1, 0, 2).copy(), "c", 0, 0.0),
        shot=0,
        prob=prob.T.copy(),
        trimap=trimap.T.copy(),
        fg_fraction=0.3,
        kept=True,
        reason="",
    )
    s2 = sample_from_result(res2, "cam0", cfg)
    assert s2.flow is None and s2.valid == (0, 0, 240, 135) and (s2.trimap[:, 135:] == 128).all()


def test_long_camera_names_stay_distinct():
    a, b = (
        "rtsp://user:pw@10.0.0.1:554/stream/" + "x" * 60 + "1",
        "rtsp://user:pw@10.0.0.1:554/stream/" + "x" * 60 + "2",
    )
    assert len(camera_key(a)) == 64 and camera_key(a) != camera_key(b)
    assert camera_key("cam0") == b"cam0"


# ---- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "section, key",
    [
        ({"memory_mb": 0.5}, "buffer.memory_mb"),
        ({"sampling": "newest"}, "buffer.sampling"),
        ({"train_width": 8}, "buffer.train_width"),
        ({"memroy_mb": 64}, "buffer.memroy_mb"),
        ({"half_life_s": 0}, "buffer.half_life_s"),
    ],
)
def test_config_errors_name_the_buffer_key(section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides={"buffer": section})


def test_default_config_budget():
    cfg = load_config(ROOT / "configs" / "default.yaml").buffer
    assert (cfg.train_width, cfg.train_height) == (320, 240) and cfg.slots() >= 300


# ---- lifetime ----------------------------------------------------------------------------------
def test_attach_errors_are_clear(rb_factory):
    with pytest.raises(UserError, match="no ring buffer named 'mm_test_nope'"):
        RingBuffer.attach("mm_test_nope")
    rb = rb_factory(cfg_for(4))
    with pytest.raises(UserError, match="64x48 slots"):
        RingBuffer.attach(rb.name, BufferConfig(train_width=320, train_height=240))
    with pytest.raises(UserError, match="in use by running process"):
        RingBuffer.create(cfg_for(4), name=rb.name)


def _create_and_die(name, cfg, ready):
    RingBuffer.create(cfg, name=name)
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_stale_segment_from_crashed_run(rb_factory):
    name = f"mm_test_stale_{os.getpid()}"
    cfg = cfg_for(4)
    # The child shares our resource tracker, which outlives it: as when a whole run is killed,
    # nobody cleans the segment up.
    resource_tracker.ensure_running()
    ready = FORK.Event()
    p = FORK.Process(target=_create_and_die, args=(name, cfg, ready))
    p.start()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL and os.path.exists(f"/dev/shm/{name}")
    keep = cfg_for(4, replace_stale=False)
    with pytest.raises(UserError, match=f"{name}.*crashed run.*replace_stale"):
        RingBuffer.create(keep, name=name)
    rb = rb_factory(cfg, name=name)  # replace_stale defaults to true
    assert rb.put(random_sample(np.random.default_rng(0), 64, 48)) and rb.stats()["fill"] == 1
    rb.close()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_attacher_in_another_interpreter_neither_unlinks_nor_warns(rb_factory):
    rb = rb_factory(cfg_for(4))
    code = (
        "import numpy as np, sys\n"
        "from streamer.shm.ringbuffer import RingBuffer, Sample\n"
        "rb = RingBuffer.attach(sys.argv[1])\n"
        "z = np.zeros((48, 64), np.uint8)\n"
        "ok = rb.put(Sample('ext', 7, 0, 0.0, np.zeros((48, 64, 3), np.uint8), z, z, None, (0, 0, 48, 64)))\n"
        "sys.exit(0 if ok else 3)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, rb.name], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "resource_tracker" not in r.stderr and "leaked" not in r.stderr
    assert os.path.exists(f"/dev/shm/{rb.name}")
    st = rb.stats()
    assert st["by_camera"] == {"ext": 1} and st["puts"] == 1 and st["processes"] == 1


# ---- concurrency, with real processes ----------------------------------------------------------
def _writer(rb_or_name, camera, seconds, go, out):
    rb = RingBuffer.attach(rb_or_name) if isinstance(rb_or_name, str) else rb_or_name
    s = constant_sample(rb.width, rb.height, camera, 0, 0)
    go.wait()
    end, f, ok = time.monotonic() + seconds, 0, 0
    while time.monotonic() < end:
        v = _value(camera, f)
        s.frame_index, s.capture_time, s.shot = f, float(f), f // 40  # shots of 40 frames
        s.image[:], s.trimap[:], s.prob[:] = v, (v * 3) % 256, (v * 5) % 256
        s.flow[..., 0], s.flow[..., 1] = v, -v
        ok += rb.put(s)
        f += 1
    out.put((camera, f, ok))


def _reader(name, seconds, go, out):
    rb = RingBuffer.attach(name)
    rng = np.random.default_rng(0)
    batch = rb.new_batch(8)
    go.wait()
    end, checked, torn, batches = time.monotonic() + seconds, 0, 0, 0
    while time.monotonic() < end:
        rb.sample(8, rng, out=batch)
        checked += batch.n
        torn += count_torn(batch)
        batches += 1
    out.put(("reader", checked, torn, batches))


def test_two_writers_one_reader_never_see_a_torn_sample(rb_factory):
    # Few, large slots: writers overwrite exactly the slots the reader is copying.
    rb = rb_factory(cfg_for(4, w=320, h=240, per_shot_cap=2))
    go, out = FORK.Event(), FORK.Queue()
    procs = [
        FORK.Process(target=_writer, args=(rb.name, "cam1", 2.0, go, out)),  # attaches by name
        FORK.Process(target=_writer, args=(rb, "cam2", 2.0, go, out)),  # inherits the object
        FORK.Process(target=_reader, args=(rb.name, 2.0, go, out)),
    ]
    for p in procs:
        p.start()
    time.sleep(0.2)
    go.set()
    results = {r[0]: r[1:] for r in (out.get(timeout=20) for _ in procs)}
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    checked, torn, batches = results["reader"]
    assert torn == 0
    assert checked > 100 and batches > 20
    st = rb.stats()
    assert results["cam1"][1] > 50 and results["cam2"][1] > 50
    assert st["drops_total"] == sum(tried - ok for tried, ok in (results["cam1"], results["cam2"]))
    assert st["puts"] == results["cam1"][1] + results["cam2"][1]
    assert st["samples_drawn"] == checked and st["writing"] == 0 and st["fill"] == 4
    # what the parent reads afterwards is consistent too
    assert count_torn(rb.sample(4, np.random.default_rng(1))) == 0


def _hold_lock(name, seconds, held):
    rb = RingBuffer.attach(name)
    assert rb._acquire(1.0)
    held.set()
    time.sleep(seconds)


def test_put_never_blocks_while_another_process_holds_the_lock(rb_factory):
    cfg = cfg_for(3, lock_timeout_ms=2.0)
    rb = rb_factory(cfg)
    rng = np.random.default_rng(5)
    for f in range(3):
        rb.put(random_sample(rng, 64, 48, frame=f, shot=f))  # full
    held = FORK.Event()
    p = FORK.Process(target=_hold_lock, args=(rb.name, 1.0, held))
    p.start()
    assert held.wait(10)
    s = random_sample(rng, 64, 48, frame=9, shot=9)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        assert rb.put(s) is False
        times.append(time.perf_counter() - t)
    assert max(times) < 0.030, times  # 2 ms timeout, generous for a loaded 2-core machine
    assert rb.stats()["drops"]["lock_timeout"] == 20
    assert rb.sample(3).n == 3  # readers never take the lock
    p.join(10)  # the holder exits: its flock goes with it
    assert rb.put(s) and rb.stats()["puts"] == 4


def _die_mid_write(name, stage, ready):
    rb = RingBuffer.attach(name)
    s = constant_sample(64, 48, "cam9", 999, 0)
    if stage == "holding_lock":
        rb._acquire(1.0)
    else:  # killed after taking a slot, halfway through copying into it
        key = camera_key(s.camera)
        slot, _ = rb._reserve((key, ringbuffer.camera_id_of(key)), s.shot)
        rb._frames[slot][:24] = 255
    ready.set()
    time.sleep(60)


@pytest.mark.parametrize("stage", ["holding_lock", "mid_write"])
def test_sigkilled_writer_leaves_the_buffer_usable(rb_factory, monkeypatch, stage):
    monkeypatch.setattr(ringbuffer, "ABANDON_CHECK_S", 0.0)
    rb = rb_factory(cfg_for(4, per_shot_cap=4))
    for f in range(2):
        rb.put(constant_sample(64, 48, "cam1", f, 0))
    ready = FORK.Event()
    p = FORK.Process(target=_die_mid_write, args=(rb.name, stage, ready))
    p.start()
    assert ready.wait(10)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    st = rb.stats()
    if stage == "mid_write":
        assert st["writing"] == 1
        slot = int(np.flatnonzero(rb._m_state == WRITING)[0])
        assert rb._seq[slot] % 2 == 1
    for _ in range(5):  # the half-written slot is never handed out
        b = rb.sample(4)
        assert b.n == 4 and set(b.frame_index.tolist()) <= {0, 1} and count_torn(b) == 0
    t = time.perf_counter()
    for f in range(2, 8):  # fills the buffer and wraps; the dead writer's slot is reclaimed
        assert rb.put(constant_sample(64, 48, "cam1", f, 0))
    assert time.perf_counter() - t < 0.5
    st = rb.stats()
    assert st["fill"] == 4 and st["writing"] == 0
    assert st["reclaimed_abandoned"] == (1 if stage == "mid_write" else 0)
    assert (rb._m_state == READY).all() and (rb._seq % 2 == 0).all()
    b = rb.sample(4)
    assert sorted(b.frame_index.tolist()) == [4, 5, 6, 7] and count_torn(b) == 0
    assert os.path.exists(f"/dev/shm/{rb.name}")
