"""How samples reach the trainer: an empty buffer is waited for (one log line, no spinning), and
the offline streamer process never drops a sample: it waits for the learner instead."""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time

import numpy as np
import pytest
from _learner_data import object_sample

from common.errors import UserError
from learner.samples import OfflineFeed, RingFeed, expand_inputs, next_batch
from streamer.config import StreamerConfig
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, ring_bytes
from synth.things import generate


def _late_put(name: str, delay: float) -> None:
    ring = RingBuffer.attach(name)
    time.sleep(delay)
    ring.put(object_sample(np.random.default_rng(1), 96, 72))
    ring.close()


def test_empty_buffer_waits_with_one_log_line_and_without_spinning(caplog):
    cfg = BufferConfig(train_width=96, train_height=72, memory_mb=ring_bytes(72, 96, 4) / 2**20)
    with RingBuffer.create(cfg) as ring:
        feed = RingFeed(ring)
        out = ring.new_batch(4)
        writer = mp.get_context("spawn").Process(target=_late_put, args=(ring.name, 1.0))
        writer.start()
        cpu0, t0 = time.process_time(), time.monotonic()
        with caplog.at_level(logging.INFO):
            batch = next_batch(feed, 4, np.random.default_rng(0), out, wait_log_s=30)
        waited, cpu = time.monotonic() - t0, time.process_time() - cpu0
        writer.join(10)
        assert len(batch) == 4 and (batch.frame_index == 0).all()  # one sample, drawn with replacement
        assert waited >= 0.9 and cpu < 0.25 * waited  # slept, did not spin
        waits = [r for r in caplog.records if "waiting_for_samples" in r.getMessage()]
        assert len(waits) == 1 and "samples_arrived" in caplog.text
        # an empty buffer and a stop request: None, promptly
        with RingBuffer.create(cfg) as empty:
            flag = threading.Event()
            threading.Timer(0.3, flag.set).start()
            t0 = time.monotonic()
            assert (
                next_batch(RingFeed(empty), 4, np.random.default_rng(0), empty.new_batch(4), stop=flag.is_set) is None
            )
            assert time.monotonic() - t0 < 2.0


def test_expand_inputs(tmp_path):
    vids = tmp_path / "vids"
    vids.mkdir()
    for name in ["clip10.mp4", "clip2.mp4", "notes.txt", "clip1.MKV"]:
        (vids / name).write_bytes(b"x")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "0001.png").write_bytes(b"x")
    assert expand_inputs([str(vids), str(imgs), "rtsp://cam/1"]) == [
        str(vids / "clip1.MKV"),
        str(vids / "clip2.mp4"),
        str(vids / "clip10.mp4"),
        str(imgs),
        "rtsp://cam/1",
    ]
    with pytest.raises(UserError, match="nowhere.mp4: no such file or folder"):
        expand_inputs([str(tmp_path / "nowhere.mp4")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no videos and no images"):
        expand_inputs([str(tmp_path / "empty")])


def test_offline_streamer_waits_instead_of_dropping(tmp_path):
    generate(tmp_path / "clips", seed=3, clips=2, frames=40, size=(160, 120))
    small = BufferConfig(train_width=64, train_height=48, memory_mb=ring_bytes(48, 64, 6) / 2**20)
    feed = OfflineFeed(
        [str(tmp_path / "clips")], StreamerConfig(), small, draws_per_sample=2.0, max_buffer_mb=small.memory_mb
    )  # the buffer may not grow: 6 slots
    assert feed.buffer_cfg.slots() == 6
    rng = np.random.default_rng(0)
    drawn = 0
    with feed:
        out = feed.ring.new_batch(2)
        deadline = time.monotonic() + 60
        while not feed.poll().done and time.monotonic() < deadline:
            feed.check()
            drawn += len(feed.sample(2, rng, out))  # a slow learner: 2 samples every 20 ms
            time.sleep(0.02)
        stats = feed.ring.stats()
    p = feed.progress
    assert p.done and p.frames == 80 and p.inputs_done == 2
    assert p.kept > 12, "the clips must keep more frames than the buffer holds"
    assert p.puts == p.kept and stats["puts"] == p.kept and stats["drops_total"] == 0  # nothing dropped
    assert sum(stats["evictions"].values()) == p.kept - 6  # only once full: no per-shot cap offline
    assert p.waited_s > 0  # the streamer waited for the learner...
    assert drawn >= 2.0 * (p.kept - 6)  # ... until it had drawn 2 samples per eviction


def test_offline_feed_reports_inputs_without_training_samples(tmp_path):
    # a still scene: nothing moves, so pruning keeps no frame
    import av

    path = tmp_path / "still.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        img = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
        for _ in range(8):
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    with OfflineFeed([str(path)], StreamerConfig(), BufferConfig(train_width=64, train_height=48, memory_mb=8)) as feed:
        # the reasons, the most first, and what to change for the main one
        with pytest.raises(
            UserError,
            match=r"no training samples: the motion masks of 8 frames were all pruned "
            r"\(too_little_fg 8\); use clips with moving objects, or for "
            r"small or distant movers lower streamer.prune.min_fg \(now 0.03\)",
        ):
            next_batch(feed, 2, np.random.default_rng(0), feed.ring.new_batch(2))
    with pytest.raises(UserError, match="nope.mp4: no such file"):
        OfflineFeed([str(tmp_path / "nope.mp4")], StreamerConfig(), BufferConfig())


_ORPHAN = """
import sys, time
from learner.samples import OfflineFeed
from streamer.config import StreamerConfig
from streamer.shm.ringbuffer import BufferConfig, ring_bytes
small = BufferConfig(train_width=64, train_height=48, memory_mb=ring_bytes(48, 64, 2) / 2**20)
feed = OfflineFeed([sys.argv[1]], StreamerConfig(), small, draws_per_sample=1.0, max_buffer_mb=small.memory_mb)
feed.__enter__()
print(feed._proc.pid, flush=True)
time.sleep(60)  # never draws: the streamer fills 2 slots and waits for the learner
"""


def test_offline_streamer_exits_when_the_learner_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    generate(tmp_path / "clips", seed=3, clips=1, frames=30, size=(160, 120))
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, str(tmp_path / "clips" / "clip000.mp4")], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    time.sleep(2.0)  # the streamer is running (and soon waiting on back-pressure)
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the streamer process outlived its learner")
