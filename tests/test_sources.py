"""Video sources on real media: files written with PyAV, images with OpenCV, and live MPEG-TS
streams served over loopback TCP."""

from __future__ import annotations

import logging
import os
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from _media import (
    StreamServer,
    encode_stream,
    free_port,
    moving_square,
    stream_udp,
    write_empty_video,
    write_images,
    write_video,
)

from common.errors import SourceError, UserError
from streamer.config import SourceConfig
from streamer.sources import open_source, redact_url

SHARED = Path("/work/shared/data")
RED = np.array([250, 40, 40])


def cfg(**kw) -> SourceConfig:
    return SourceConfig(**kw)


def live_cfg(**kw) -> SourceConfig:
    base = dict(open_timeout_s=1.0, read_timeout_s=1.0, reconnect_backoff_s=0.1, reconnect_backoff_max_s=0.4)
    return SourceConfig(**{**base, **kw})


def events(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"event={name} ")]


def square_x(image: np.ndarray) -> float:
    """Column of the red square's centre: lets a test check which frame it got, and that the
    channels came out in RGB order."""
    red = (image[..., 0] > 180) & (image[..., 1] < 110) & (image[..., 2] < 110)
    assert red.sum() > 20, "no red square: wrong colour order or wrong frame"
    return float(np.nonzero(red)[1].mean())


# -- files


@pytest.mark.parametrize("name, codec", [("clip.mp4", "libx264"), ("clip.avi", "mpeg4")])
def test_file_decodes_every_frame_in_rgb_with_index_and_time(tmp_path, name, codec):
    frames = moving_square(30, 64, 48, step=1)  # 30 distinct positions
    path = write_video(tmp_path / name, frames, fps=25, codec=codec)
    with open_source(str(path), cfg()) as src:
        assert (src.kind, src.live, src.source_id) == ("file", False, name)
        assert (src.width, src.height, src.fps, src.frame_count) == (64, 48, 25.0, 30)
        got = list(src)
        assert src.stats["decoded"] == 30 and src.stats["skipped_corrupt"] == 0
    assert [f.index for f in got] == list(range(30))
    assert np.allclose([f.timestamp for f in got], np.arange(30) / 25, atol=1e-6)
    for f in got:
        assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
        assert f.source_id == name
        # which frame it is, by where its square stands (1 px a frame, centre at x + 5.5): the mean
        # difference to every original once picked a neighbour on a loaded CI machine
        assert abs(square_x(f.image) - (f.index + 5.5)) < 0.5, f.index  # and red is red: RGB, not BGR


def test_odd_size_yuv444_and_grayscale_come_out_hxwx3(tmp_path):
    frames = moving_square(5, 175, 143)
    path = write_video(tmp_path / "odd.mkv", frames, codec="libx264", pix_fmt="yuv444p")
    with open_source(path, cfg()) as src:
        got = list(src)
    assert (src.width, src.height) == (175, 143)
    assert len(got) == 5
    for f, original in zip(got, frames):
        assert f.image.shape == (143, 175, 3) and f.image.flags.c_contiguous
        assert abs(square_x(f.image) - square_x(original)) < 1.0

    gray = [np.full((143, 175), 30 + 40 * i, np.uint8) for i in range(4)]
    path = write_video(tmp_path / "gray.mkv", gray, codec="ffv1", pix_fmt="gray")
    with open_source(path, cfg()) as src:
        got = list(src)
    assert [f.image.shape for f in got] == [(143, 175, 3)] * 4
    for f, g in zip(got, gray):
        assert np.array_equal(f.image[..., 0], f.image[..., 2])  # gray stays gray in all 3 channels
        assert abs(int(f.image[70, 80, 1]) - int(g[70, 80])) <= 2


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_frame_rate_keeps_real_timestamps(tmp_path, suffix):
    times = [0.0, 0.04, 0.2, 0.25, 1.0, 1.1]
    path = write_video(tmp_path / f"vfr{suffix}", moving_square(6), timestamps=times)
    with open_source(path, cfg()) as src:
        got = [f.timestamp for f in src]
    assert np.allclose(got, times, atol=2e-3)


def test_phone_rotation_is_applied(tmp_path):
    image = np.zeros((48, 64, 3), np.uint8)
    image[:8, :8] = (255, 0, 0)  # red in the top-left corner
    path = write_video(tmp_path / "portrait.mp4", [image] * 3, rotation=90)
    with open_source(path, cfg()) as src:
        f = next(src)
    assert (src.width, src.height) == (48, 64)
    ys, xs = np.nonzero(f.image[..., 0] > 128)
    assert ys.mean() > 50 and xs.mean() < 10  # 90 degrees counter-clockwise: now bottom-left


def test_one_frame_file_yields_exactly_one_frame(tmp_path):
    path = write_video(tmp_path / "one.mp4", moving_square(1))
    with open_source(path, cfg()) as src:
        got = list(src)
    assert len(got) == 1 and got[0].index == 0 and got[0].timestamp == 0.0


def test_truncated_files_decode_their_first_part(tmp_path, caplog):
    caplog.set_level(logging.INFO, "streamer.sources")
    full = write_video(tmp_path / "full.mkv", moving_square(60), fps=25)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with open_source(cut, cfg()) as src:
        got = list(src)
    assert 0 < len(got) < 60
    assert [f.index for f in got] == list(range(len(got)))
    assert len(events(caplog, "ended_early")) == 1  # the header said 2.4 s

    full = write_video(tmp_path / "full.ts", moving_square(60), fps=25, format="mpegts")
    cut = tmp_path / "cut.ts"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with open_source(cut, cfg()) as src:
        assert 0 < len(list(src)) < 60


def test_corrupt_packets_are_skipped_with_one_warning_each(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "streamer.sources")
    path = write_video(tmp_path / "cam.avi", moving_square(30), codec="mjpeg")
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG SOI
    assert len(starts) == 30
    for k in (10, 20):  # scribble inside two frames' scan data
        data[starts[k] + 100 : starts[k] + 400] = np.random.default_rng(k).integers(0, 256, 300, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with open_source(path, cfg()) as src:
        got = list(src)
    assert src.stats["skipped_corrupt"] == 2
    assert len(events(caplog, "corrupt_packet")) == 2
    assert len(got) == 28 and [f.index for f in got] == list(range(28))
    assert got[-1].timestamp == pytest.approx(29 / 25)  # frames after the damage keep their own time


@pytest.mark.parametrize(
    "content, why",
    [
        (os.urandom(4000), "not a video file PyAV can decode"),
        (b"", "not a video file PyAV can decode (the file is empty)"),
        (b"just some notes\n" * 100, "not a video file PyAV can decode"),
    ],
)
def test_not_video_is_a_source_error(tmp_path, content, why):
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    with pytest.raises(SourceError) as e:
        open_source(str(path), cfg())
    assert str(e.value).startswith(f"{path}: {why}")
    assert isinstance(e.value, UserError)


def test_audio_only_missing_and_empty_containers(tmp_path):
    wav = tmp_path / "sound.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(bytes(8000))
    with pytest.raises(SourceError, match="sound.wav: not a video file PyAV can decode \\(no video stream\\)"):
        open_source(wav, cfg())
    with pytest.raises(SourceError, match="nope.mp4: no such file or folder"):
        open_source(tmp_path / "nope.mp4", cfg())
    empty = write_empty_video(tmp_path / "empty.avi")
    with pytest.raises(SourceError, match="empty.avi: contains no decodable video frames"):
        open_source(empty, cfg())
    with pytest.raises(SourceError, match="unsupported scheme ftp://"):
        open_source("ftp://host/clip.mp4", cfg())


def test_cut_mp4_names_the_likely_cause(tmp_path):
    full = write_video(tmp_path / "rec.mp4", moving_square(30))  # index (moov) at the end
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(SourceError, match="rec.mp4: not a video file .* cut short"):
        open_source(full, cfg())


def test_loop_restarts_with_increasing_index_and_time(tmp_path):
    path = write_video(tmp_path / "loop.mp4", moving_square(10), fps=25)
    with open_source(path, cfg(loop=True)) as src:
        assert src.frame_count is None
        got = [next(src) for _ in range(25)]
    assert [f.index for f in got] == list(range(25))
    times = [f.timestamp for f in got]
    assert np.allclose(times, np.arange(25) / 25, atol=1e-6)  # one frame after the last, again and again
    assert np.array_equal(got[0].image, got[10].image) and np.array_equal(got[3].image, got[23].image)


# -- folders


def test_folder_natural_order_skips_junk_and_bad_images(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "streamer.sources")
    colours = {n: np.full((24, 32, 3), (n * 20, 255 - n * 20, 7), np.uint8) for n in (1, 2, 10)}
    write_images(tmp_path / "seq", [colours[1], colours[2], colours[10]], names=["1.png", "2.jpg", "10.png"])
    (tmp_path / "seq" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (tmp_path / "seq" / "notes.txt").write_text("not an image")
    (tmp_path / "seq" / "._1.png").write_bytes(b"macOS resource fork")
    with open_source(tmp_path / "seq", cfg(folder_fps=10)) as src:
        assert (src.kind, src.source_id, src.frame_count, src.fps) == ("folder", "seq", 4, 10.0)
        got = list(src)
    assert [f.index for f in got] == [0, 1, 2]
    assert [f.image[0, 0, 0] for f in got] == pytest.approx([20, 40, 200], abs=3)  # 1, 2, 10: not 1, 10, 2
    assert [f.timestamp for f in got] == pytest.approx([0.0, 0.1, 0.3])  # 10.png is 4th in line
    assert src.stats["skipped_corrupt"] == 1 and len(events(caplog, "unreadable_image")) == 1


def test_folder_loop_and_errors(tmp_path):
    write_images(tmp_path / "seq", moving_square(3, 32, 24))
    with open_source(tmp_path / "seq", cfg(loop=True, folder_fps=10)) as src:
        got = [next(src) for _ in range(7)]
    assert [f.index for f in got] == list(range(7))
    assert [f.timestamp for f in got] == pytest.approx([i / 10 for i in range(7)])
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.md").write_text("x")
    with pytest.raises(SourceError, match="none: folder has no images"):
        open_source(tmp_path / "none", cfg())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "0.png").write_bytes(b"garbage")
    with pytest.raises(SourceError, match="none of its 1 images can be read"):
        open_source(tmp_path / "bad", cfg())


# -- cameras


@pytest.mark.parametrize("spec", [7, "camera:7", "/dev/video7"])
def test_missing_camera_fails_fast(spec):
    t = time.monotonic()
    with pytest.raises(SourceError, match=r"camera 7: cannot open \(unplugged\? check /dev/video\*\)"):
        open_source(spec, live_cfg())
    assert time.monotonic() - t < 5


# -- network


@pytest.fixture(scope="module")
def ts_data() -> bytes:
    return encode_stream(moving_square(100, 64, 48), fps=25)


def test_network_stream_delivers_live_frames(ts_data):
    with StreamServer(ts_data, seconds=4.0) as server, open_source(server.url, live_cfg()) as src:
        assert (src.kind, src.live, src.source_id) == ("network", True, server.url)
        assert (src.width, src.height, src.fps, src.frame_count) == (64, 48, 25.0, None)
        got = [next(src) for _ in range(10)]
    indices = [f.index for f in got]
    assert indices == sorted(set(indices))
    for f in got:
        assert f.image.shape == (48, 64, 3)
        assert abs(f.timestamp - time.time()) < 10  # wall clock, not stream time
        square_x(f.image)


def test_udp_stream_sent_by_pyav():
    port, stop = free_port(), threading.Event()
    sender = threading.Thread(target=stream_udp, args=(port, moving_square(150), 25, stop), daemon=True)
    sender.start()
    try:
        with open_source(f"udp://127.0.0.1:{port}", live_cfg(open_timeout_s=2.0)) as src:
            got = [next(src) for _ in range(10)]
            assert src.kind == "network" and (src.width, src.height) == (64, 48)
    finally:
        stop.set()
        sender.join(5)
    assert all(a.index < b.index for a, b in zip(got, got[1:]))
    for f in got:
        square_x(f.image)


def test_network_reconnects_after_server_restart_without_resetting_index(ts_data, caplog):
    caplog.set_level(logging.INFO, "streamer.sources")
    server = StreamServer(ts_data, seconds=4.0).start()
    try:
        with open_source(server.url, live_cfg(max_reconnects=20)) as src:  # fail, never hang
            before = [next(src) for _ in range(5)]
            assert src.link["state"] == "running" and src.link["error"] == ""
            states, watching = set(), threading.Event()
            watching.set()

            def watch() -> None:  # what the daemon's status would say meanwhile
                while watching.is_set():
                    states.add((src.link["state"], bool(src.link["error"])))
                    time.sleep(0.005)

            threading.Thread(target=watch, daemon=True).start()
            server.stop()  # the encoder box reboots...
            threading.Timer(0.6, server.start).start()  # ...and comes back on the same port
            after = []
            while len(after) < 5:  # what the socket still held comes first, then the new connection
                frame = next(src)
                if server.connections == 2:
                    after.append(frame)
                before.append(frame)
            assert src.stats["reconnects"] >= 1
            watching.clear()
            assert ("reconnecting", True) in states, states
            assert src.link["state"] == "running" and src.link["error"]  # back, with the last drop's reason
    finally:
        server.stop()
    indices = [f.index for f in before]
    assert all(a < b for a, b in zip(indices, indices[1:]))
    assert server.connections == 2
    assert len(events(caplog, "reconnect")) == src.stats["reconnects"]
    assert len(events(caplog, "reconnected")) == 1


def test_network_drop_without_reconnect_raises_naming_the_source(ts_data):
    with StreamServer(ts_data, seconds=4.0) as server, open_source(server.url, live_cfg(reconnect=False)) as src:
        next(src)
        server.stop()
        t = time.monotonic()
        with pytest.raises(SourceError, match=f"{server.url}: .*reconnect is off"):
            for _ in range(200):
                next(src)
        assert time.monotonic() - t < 3


def test_network_stream_that_goes_quiet_counts_as_dropped(ts_data):
    with StreamServer(ts_data, seconds=4.0, stall_after=0.5) as server:
        with open_source(server.url, live_cfg(reconnect=False)) as src:
            t = time.monotonic()
            with pytest.raises(SourceError, match=f"{server.url}: no (data|frame) for 1"):
                for _ in range(200):
                    next(src)
            assert time.monotonic() - t < 0.5 + 1.0 + 1.0
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith(f"source-{server.url}")]


def test_close_from_another_thread_ends_a_waiting_next(ts_data):
    # what a daemon's SIGTERM handler does while the camera is away and the source reconnects
    with StreamServer(ts_data, seconds=4.0, stall_after=0.3) as server:
        src = open_source(server.url, live_cfg())
        threading.Timer(1.0, src.close).start()
        t = time.monotonic()
        with pytest.raises(StopIteration):
            while True:
                next(src)
        assert 0.9 < time.monotonic() - t < 2.0


def test_network_without_drop_stale_keeps_every_frame(ts_data):
    with StreamServer(ts_data, seconds=2.0) as server, open_source(server.url, live_cfg(drop_stale=False)) as src:
        first = next(src)
        time.sleep(0.5)
        got = [next(src) for _ in range(10)]
        assert src.stats["dropped_stale"] == 0
    assert [f.index for f in got] == list(range(first.index + 1, first.index + 11))


def test_network_gives_up_after_max_reconnects(ts_data, caplog):
    caplog.set_level(logging.INFO, "streamer.sources")
    server = StreamServer(ts_data, seconds=4.0).start()
    try:
        with open_source(server.url, live_cfg(max_reconnects=2)) as src:
            next(src)
            server.stop()
            with pytest.raises(SourceError, match="gave up after 2 reconnect attempts"):
                for _ in range(200):
                    next(src)
            assert src.stats["reconnects"] == 2
            assert src.link["state"] == "failed" and "gave up after 2 reconnect attempts" in src.link["error"]
    finally:
        server.stop()
    waits = [m.split(" in_s=")[1].split()[0] for m in events(caplog, "reconnect")]
    assert waits == ["0.1", "0.2"]  # exponential backoff


def test_unreachable_or_silent_endpoint_fails_within_the_timeout():
    t = time.monotonic()
    with pytest.raises(SourceError, match="cannot open stream"):
        open_source(f"tcp://127.0.0.1:{free_port()}", live_cfg())
    assert time.monotonic() - t < 2
    with StreamServer(silent=True) as server:
        t = time.monotonic()
        with pytest.raises(SourceError, match=f"{server.url}: no stream within 1 s"):
            open_source(server.url, live_cfg())
        assert time.monotonic() - t < 3


def test_slow_consumer_gets_the_newest_frame(ts_data):
    with StreamServer(ts_data, seconds=4.0) as server, open_source(server.url, live_cfg()) as src:
        first = next(src)
        time.sleep(0.6)  # busy: about 15 frames arrive meanwhile
        newest = next(src)
        assert src.stats["dropped_stale"] >= 5
        assert newest.index - first.index > 5
        assert time.time() - newest.timestamp < 0.5


def test_credentials_never_reach_ids_or_messages():
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/stream1") == "rtsp://10.0.0.5:554/stream1"
    assert redact_url("rtsp://10.0.0.5/s") == "rtsp://10.0.0.5/s"
    port = free_port()
    with pytest.raises(SourceError) as e:
        open_source(f"tcp://admin:hunter2@127.0.0.1:{port}", live_cfg())
    assert "hunter2" not in str(e.value) and f"127.0.0.1:{port}" in str(e.value)


# -- real footage, when this machine has it


@pytest.mark.skipif(not (SHARED / "carphone_pristine.mp4").exists(), reason="no /work/shared/data here")
@pytest.mark.parametrize(
    "name, size, count", [("carphone_pristine.mp4", (144, 176), 120), ("tree.avi", (240, 320), 68)]
)
def test_real_footage(name, size, count):
    with open_source(SHARED / name, cfg()) as src:
        assert src.frame_count == count  # tree.avi declares 444 frames, 376 of them empty drop chunks
        got = [f for f, _ in zip(src, range(20))]
    assert [f.image.shape[:2] for f in got] == [size] * 20
    assert all(b.timestamp > a.timestamp for a, b in zip(got, got[1:]))
