"""The pair store (streamer/shm/pairbuffer.py) across real processes, and the feeds that hand pairs
to the learner (learner/pairs.py, OfflineFeed.sample_pairs)."""

from __future__ import annotations

import _posixshmem
import fcntl
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from _learner_data import make_ring
from _media import free_port, write_video

from common.errors import UserError
from learner.pairs import MemoryPairFeed, PairBatch, RingPairFeed
from learner.samples import OfflineFeed, RingFeed
from streamer.config import StreamerConfig
from streamer.motion.patches import PatchPair
from streamer.shm.pairbuffer import WRITING, PairBuffer, pair_slots
from streamer.shm.ringbuffer import BufferConfig
from synth.things import render_clip

P = 16


def fake_pair(v: int, camera: str = "cam", shot: int = 0, p: int = P) -> PatchPair:
    """A pair whose every byte says which pair it is: a torn copy would mix two values."""
    q = np.full((p, p, 3), v % 256, np.uint8)
    return PatchPair(q, 255 - q, camera, shot, t0=v, t1=v + 30, track=v)


def consistent(batch_q: np.ndarray, batch_t: np.ndarray, t0: np.ndarray) -> bool:
    v = batch_q[:, :1, :1, :1]
    return bool((batch_q == v).all() and (batch_t == 255 - v).all() and (v.ravel() == t0 % 256).all())


def _writer(store: PairBuffer, camera: str, n: int, start, done) -> None:
    done.put(("ready", camera))
    start.wait()
    for i in range(n):
        pair = fake_pair(i, camera, shot=i // 50)
        while not store.put(pair):
            time.sleep(0.0005)
        if i % 100 == 0:
            time.sleep(0.001)  # a camera's pace: the two writers interleave
    done.put((camera, store.stats()["puts"]))
    store.close()


def test_round_trip_across_processes_never_tears():
    ctx = mp.get_context("spawn")
    with PairBuffer.create(P, 0.5) as store:
        assert store.capacity == pair_slots(P, 0.5) > 100
        start, done = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(store, f"cam{k}", 3000, start, done)) for k in range(2)]
        for p in procs:
            p.start()
        assert {done.get(timeout=20)[0] for _ in procs} == {"ready"}
        start.set()
        rng = np.random.default_rng(0)
        drawn, groups = 0, set()
        deadline = time.monotonic() + 25
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            rows = store.sample(32, rng)  # the writers overwrite slots while we copy them
            assert consistent(rows.query, rows.tracked, rows.t0)
            assert (rows.t1 == rows.t0 + 30).all()
            drawn += len(rows)
            groups |= set(rows.group.tolist())
        for p in procs:
            p.join(10)
            assert p.exitcode == 0
        st = store.stats()
        assert st["puts"] == 6000 and st["fill"] == store.capacity  # the newest pairs, the oldest overwritten
        assert set(st["by_camera"]) <= {"cam0", "cam1"} and sum(st["by_camera"].values()) == store.capacity
        assert drawn > 0 and st["pairs_drawn"] == drawn and len(groups) >= 2
        rows = store.sample(store.capacity, rng)
        assert len(rows) == store.capacity and consistent(rows.query, rows.tracked, rows.t0)
        # groups are (camera, shot): 2 cameras x 60 shots written, the newest few held
        assert {(c, int(s)) for c, s in zip(rows.cameras, rows.shot)}.__len__() == len(set(rows.group.tolist()))


def test_a_slot_being_written_is_never_read_and_a_dead_writer_is_reclaimed():
    with PairBuffer.create(P, 0.05) as store:
        for i in range(store.capacity):
            assert store.put(fake_pair(i))
        slot = store.capacity - 1
        store._seq[slot] += 1  # a writer in the middle of this slot: odd
        store._meta["state"][slot] = WRITING
        store._meta["writer_pid"][slot] = 2**22 + 12345  # no such process
        store._meta["write_start"][slot] = time.monotonic() - 5
        store._query[slot] = 7  # half-written content
        rows = store.sample(store.capacity, np.random.default_rng(1))
        assert consistent(rows.query, rows.tracked, rows.t0)
        assert slot not in set(rows.t0.tolist())  # t0 == the slot's original pair id here
        for i in range(store.capacity):  # the writers come round to the abandoned slot and take it over
            assert store.put(fake_pair(1000 + i))
        st = store.stats()
        assert st["reclaimed_abandoned"] == 1 and st["fill"] == store.capacity
        rows = store.sample(store.capacity, np.random.default_rng(2))
        assert len(rows) == store.capacity and consistent(rows.query, rows.tracked, rows.t0)


def test_a_busy_lock_drops_the_pair_instead_of_waiting():
    with PairBuffer.create(P, 0.05, lock_timeout_ms=2.0) as store:
        fd = _posixshmem.shm_open("/" + store.name, os.O_RDWR, mode=0o600)  # another open file: another holder
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            t0 = time.monotonic()
            assert not store.put(fake_pair(1))
            assert time.monotonic() - t0 < 0.1
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        assert store.put(fake_pair(2))
        st = store.stats()
        assert st["drops"]["lock_timeout"] == 1 and st["puts"] == 1 and st["fill"] == 1
    with pytest.raises(UserError, match="no pair store named"):
        PairBuffer.attach(store.name)
    with pytest.raises(ValueError, match="store holds 16x16x3"):
        with PairBuffer.create(P, 0.05) as other:
            other.put(fake_pair(1, p=8))


def test_feeds_group_pairs_by_camera_and_shot():
    pairs = [fake_pair(i, camera=f"c{i % 2}", shot=i // 4) for i in range(16)]
    feed = MemoryPairFeed(pairs)
    b = feed.sample_pairs(64, np.random.default_rng(0))
    assert isinstance(b, PairBatch) and b.query.shape == (64, P, P, 3) and b.group.dtype == np.int64
    assert b.groups == 8 and (b.group >= 0).all()
    assert MemoryPairFeed([]).sample_pairs(4, np.random.default_rng(0)) is None
    with PairBuffer.create(P, 0.05) as store, make_ring(4) as ring:
        rf = RingFeed(ring, pairs=RingPairFeed(store))
        assert rf.sample_pairs(4, np.random.default_rng(0)) is None  # empty: never waits
        for p in pairs:
            store.put(p)
        b2 = rf.sample_pairs(16, np.random.default_rng(0))
        assert len(b2) == 16 and sorted(set(b2.group.tolist())) == sorted(set(feed.group.tolist()))
        assert RingFeed(ring).sample_pairs(4, np.random.default_rng(0)) is None  # mining off


def test_offline_feed_mines_pairs(tmp_path):
    rgb, *_ = render_clip(1003, 90)
    clip = write_video(tmp_path / "clip.mp4", rgb, fps=30)
    cfg = StreamerConfig()
    cfg.patches.enabled = True
    with OfflineFeed(
        [str(clip)], cfg, BufferConfig(train_width=64, train_height=48, memory_mb=8), draws_per_sample=0
    ) as feed:
        deadline = time.monotonic() + 25
        while not feed.poll().done and time.monotonic() < deadline:
            feed.check()
            time.sleep(0.1)
        assert feed.progress.done
        batch = feed.sample_pairs(8, np.random.default_rng(0))
        st = feed.pair_store.stats()
    assert batch is not None and batch.query.shape == (8, 64, 64, 3) and batch.tracked.dtype == np.uint8
    assert st["puts"] >= 2 and st["groups"] == 1
    assert not (batch.query == batch.tracked).all()
    with OfflineFeed([str(clip)], StreamerConfig(), BufferConfig(train_width=64, train_height=48, memory_mb=8)) as off:
        assert off.pair_store is None and off.sample_pairs(4, np.random.default_rng(0)) is None


def test_daemon_cameras_mine_pairs_into_the_store_the_learner_reads(tmp_path):
    rgb, *_ = render_clip(1003, 90)
    clip = write_video(tmp_path / "clip.mp4", rgb, fps=30)
    control = f"tcp://127.0.0.1:{free_port()}"
    cfg = {
        "streamer": {"patches": {"enabled": True, "size": 32, "store_mb": 1}},
        "buffer": {"train_width": 64, "train_height": 48, "memory_mb": 2},
        "publish": {"enabled": False},
        "daemon": {"control_endpoint": control, "shutdown_timeout_s": 5.0},
        "cameras": [{"name": "a", "source": str(clip), "loop": True, "realtime": False}],
        "learner": {
            "enabled": True,
            "run_dir": str(tmp_path / "run"),
            "model": {"width": 8, "blocks": [1, 1, 1, 1]},
            "crops": {"size": 32},
            "train": {"batch": 4, "device": "cpu", "warmup_steps": 0, "threads": 1},
            "bootstrap": {"enabled": False},
        },
    }
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / "daemon.log"
    from motionmask.control import ControlUnavailable, request

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "motionmask.cli", "run", "--config", str(tmp_path / "d.yaml")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        st, deadline = None, time.monotonic() + 60  # a learner process starts slowly on a busy host
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                st = request(control, "status", timeout=2.0)
            except ControlUnavailable:
                st = None
            # the camera's own count reaches status with its next report, after the store's
            if (
                st
                and st["pairs"]["puts"] >= 2
                and st["cameras"].get("a", {}).get("pair_puts", 0) >= 2
                and "event=learner_running" in log.read_text(errors="replace")
            ):
                break
            time.sleep(0.3)
        assert st and st["pairs"]["puts"] >= 2, (json.dumps(st), log.read_text()[-3000:])
        assert st["cameras"]["a"]["pair_puts"] >= 2 and st["pairs"]["by_camera"].get("a", 0) >= 2
        out = subprocess.run(
            [sys.executable, "-m", "motionmask.cli", "status", "--endpoint", control],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert any(x.startswith("pairs:") and "tracked-patch pairs" in x for x in out.stdout.splitlines()), out.stdout
        with PairBuffer.attach(st["pairs"]["name"]) as store:  # as the learner does
            b = RingPairFeed(store).sample_pairs(4, np.random.default_rng(0))
            assert b is not None and b.query.shape == (4, 32, 32, 3)
        text = log.read_text(errors="replace")
        assert f"pairs={st['pairs']['name']}" in text  # the learner process attached the same store
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert not os.path.exists(f"/dev/shm/{st['pairs']['name']}")  # the daemon unlinked its store
