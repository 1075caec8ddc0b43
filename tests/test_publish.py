"""Publisher and subscribers over real loopback sockets (random free ports via tcp://127.0.0.1:*)."""

import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from common.errors import UserError
from motionmask.cli import main
from motionmask.client import MaskSubscriber, subscribe
from motionmask.commands.keys import create_keys
from motionmask.config import ConfigError, load_config
from streamer.live import protocol
from streamer.live.publish import MaskPublisher, PublishConfig

ANY = "tcp://127.0.0.1:*"


def _mask(frame=0, h=120, w=160):
    m = np.zeros((h, w), np.uint8)
    x = (frame * 7) % (w - 40)
    m[30:90, x : x + 40] = 255
    m[0:10, :] = 128
    return m


def _first(pub, sub, camera="cam0", kind="motion", timeout=5.0):
    """Publish until the subscriber has joined and received one (ZeroMQ's slow joiner)."""
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        pub.publish(camera, kind, _mask(i), i, 0, time.time_ns())
        got = sub.recv(0.05)
        if got is not None:
            return got
        i += 1
    raise AssertionError("subscriber never received a mask")


@pytest.fixture
def pub():
    p = MaskPublisher(PublishConfig(endpoint=ANY, latest_endpoint=ANY))
    yield p
    p.close()


@pytest.mark.parametrize("encoding", ["png", "u8"])
@pytest.mark.parametrize("latest", [False, True])
def test_round_trip_both_encodings_and_framings(encoding, latest):
    with MaskPublisher(PublishConfig(endpoint=ANY, latest_endpoint=ANY, encoding=encoding)) as pub:
        ep = pub.latest_endpoint if latest else pub.endpoint
        with MaskSubscriber(ep, latest=latest) as sub:
            _first(pub, sub)
            # joined: now one known mask, with every header field checked
            time.sleep(0.05)
            while sub.recv(0.05) is not None:
                pass
            mask = _mask(5, 480, 640)
            before = time.time_ns()
            assert pub.publish(
                "clip.mp4", "trimap", mask, frame=1234, shot=7, capture_ns=before, model_version="unet-3"
            )
            header, got = sub.recv(2.0)
    np.testing.assert_array_equal(got, mask)
    assert header["camera"] == "clip.mp4" and header["kind"] == "trimap"
    assert (header["frame"], header["shot"], header["width"], header["height"]) == (1234, 7, 640, 480)
    assert header["encoding"] == encoding and header["model_version"] == "unet-3"
    assert header["schema"] == protocol.SCHEMA and header["seq"] == 0  # first on its topic
    assert before == header["capture_ns"] <= header["publish_ns"] <= header["recv_ns"]


def test_topic_filtering_on_both_framings(pub):
    with (
        MaskSubscriber(pub.endpoint, "mask.cam1.") as sub,
        MaskSubscriber(pub.latest_endpoint, "mask.cam1.trimap", latest=True) as latest,
    ):
        # cam1's first masks may arrive before the joins settle; then only cam1 (and trimap) counts
        deadline = time.monotonic() + 5
        seen, seen_latest = [], []
        i = 0
        while time.monotonic() < deadline and (len(seen) < 20 or len(seen_latest) < 3):
            for cam in ("cam0", "cam1", "cam10"):
                for kind in ("motion", "trimap"):
                    pub.publish(cam, kind, _mask(i), i, 0, time.time_ns())
            i += 1
            time.sleep(0.005)
            while (got := sub.recv(0)) is not None:
                seen.append((got[0]["camera"], got[0]["kind"]))
            if (got := latest.recv(0)) is not None:
                seen_latest.append((got[0]["camera"], got[0]["kind"]))
    assert len(seen) >= 20 and len(seen_latest) >= 3
    assert {c for c, _ in seen} == {"cam1"}  # "mask.cam1." excludes cam10
    assert {k for _, k in seen} == {"motion", "trimap"}
    assert set(seen_latest) == {("cam1", "trimap")}


def test_latest_mode_skips_to_the_newest(pub):
    with MaskSubscriber(pub.latest_endpoint, "mask.cam0.motion", latest=True) as sub:
        _first(pub, sub)
        for i in range(100, 160):
            pub.publish("cam0", "motion", _mask(i), i, 0, time.time_ns())
        time.sleep(0.3)
        frames = []
        while (got := sub.recv(0.5)) is not None:
            frames.append(got[0]["frame"])
        assert frames[-1] == 159 and len(frames) <= 5  # a viewer never works through a backlog
        assert sub.stats()["missed"] >= 50


def test_stalled_subscriber_never_blocks_publish():
    cfg = PublishConfig(endpoint=ANY, latest_endpoint=ANY, encoding="u8", sndhwm=4)
    with MaskPublisher(cfg) as pub:
        ctx = zmq.Context()
        stalled = []
        for ep in (pub.endpoint, pub.latest_endpoint):
            s = ctx.socket(zmq.SUB)  # subscribes, then never reads: its buffers fill within a few masks
            s.setsockopt(zmq.RCVHWM, 2)
            s.setsockopt(zmq.RCVBUF, 65536)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(ep)
            stalled.append(s)
        with MaskSubscriber(pub.endpoint) as reader:
            _first(pub, reader)
            mask = _mask(0, 480, 640)  # 300 kB each: 90 MB in all, far more than any buffer
            t0 = time.perf_counter()
            results = [pub.publish("cam0", "motion", mask, i, 0, time.time_ns()) for i in range(1000, 1300)]
            elapsed = time.perf_counter() - t0
            assert all(results)
            assert elapsed < 5.0, f"300 publishes took {elapsed:.1f} s"
            # the reader (which also paused) lost some of the burst, but keeps what it could queue,
            # and gets new masks as soon as it reads again, stalled peers or not
            frames = []
            while (got := reader.recv(0.3)) is not None:
                frames.append(got[0]["frame"])
            assert frames and frames == sorted(frames) and reader.stats()["missed"] > 0
            pub.publish("cam0", "motion", mask, 2000, 0, time.time_ns())
            header, _ = reader.recv(2.0)
            assert header["frame"] == 2000
        for s in stalled:
            s.close(0)
        ctx.term()
        assert pub.stats()["dropped"] == 0


def test_malformed_and_foreign_messages_are_skipped_with_one_warning_each(caplog):
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    good_hdr = protocol.make_header("cam0", "motion", 1, 0, 0, 1, 2, 160, 120, "u8")
    good = protocol.pack_multipart("mask.cam0.motion", protocol.header_bytes(good_hdr), _mask().tobytes())
    bad = [
        [b"mask.cam0.motion", b"only two parts"],
        [b"mask.cam0.motion", b"{broken json", b""],
        [b"mask.cam0.motion", protocol.header_bytes(dict(good_hdr, schema=99)), _mask().tobytes()],
        [b"mask.cam0.motion", good[1], b"\x00" * 10],  # payload size mismatch
        [b"mask.other.thing\x00garbage"],
    ]
    caplog.set_level(logging.WARNING, logger="motionmask.client")
    try:
        with MaskSubscriber(f"tcp://127.0.0.1:{port}") as sub:
            # join first: keep sending a valid probe until one arrives
            deadline = time.monotonic() + 5
            while sub.recv(0.05) is None:
                raw.send_multipart(good)
                assert time.monotonic() < deadline
            time.sleep(0.05)
            while sub.recv(0.05) is not None:
                pass
            caplog.clear()
            base = sub.stats()
            for parts in bad:
                raw.send_multipart(parts)
            raw.send_multipart(good)
            header, mask = sub.recv(2.0)
            assert header["frame"] == 1 and mask.shape == (120, 160)
            stats = sub.stats()
    finally:
        raw.close(0)
        ctx.term()
    assert stats["rejected"] - base["rejected"] == len(bad)
    lines = [r.getMessage() for r in caplog.records if "message_rejected" in r.getMessage()]
    assert len(lines) == len(bad)
    assert any("wrong part count 2" in ln for ln in lines)
    assert any("unknown schema version 99" in ln for ln in lines)
    assert any("payload size mismatch" in ln for ln in lines)


def test_curve_authorised_client_receives_and_others_do_not(tmp_path, caplog):
    server_pub, server_sec = create_keys(tmp_path / "server", "server")
    alice_pub, alice_sec = create_keys(tmp_path / "alice", "alice")
    _, mallory_sec = create_keys(tmp_path / "mallory", "mallory")
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "alice.key").write_bytes(alice_pub.read_bytes())
    cfg = PublishConfig(endpoint=ANY, curve_secret_file=str(server_sec), curve_clients_dir=str(clients))
    caplog.set_level(logging.INFO)
    with MaskPublisher(cfg) as pub:
        with (
            MaskSubscriber(pub.endpoint, curve_server_key=server_pub, curve_secret_file=alice_sec) as alice,
            MaskSubscriber(pub.endpoint, curve_server_key=server_pub, curve_secret_file=mallory_sec) as mallory,
            MaskSubscriber(pub.endpoint) as plain,
        ):
            header, _ = _first(pub, alice)
            for i in range(20):
                pub.publish("cam0", "motion", _mask(i), 100 + i, 0, time.time_ns())
                time.sleep(0.01)
            assert alice.recv(1.0) is not None
            assert mallory.recv(0.5) is None
            assert plain.recv(0.1) is None
            assert mallory.stats()["received"] == 0 and plain.stats()["received"] == 0
    text = caplog.text
    assert "event=curve_denied" in text  # mallory is told why, on her side
    assert "event=curve_client_denied" in text  # and the daemon logs it on its side


def test_curve_without_clients_dir_encrypts_for_any_client(tmp_path):
    server_pub, server_sec = create_keys(tmp_path, "server")
    with MaskPublisher(PublishConfig(endpoint=ANY, curve_secret_file=str(server_sec))) as pub:
        with MaskSubscriber(pub.endpoint, curve_server_key=server_pub) as sub:  # throwaway client key
            header, _ = _first(pub, sub)
    assert header["camera"] == "cam0"


def test_curve_config_mistakes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="curve_secret_file.*not found.*motionmask keys"):
        MaskPublisher(PublishConfig(endpoint=ANY, curve_secret_file=str(tmp_path / "nope.key_secret")))
    public, secret = create_keys(tmp_path, "server")
    with pytest.raises(UserError, match="no secret key"):
        MaskPublisher(PublishConfig(endpoint=ANY, curve_secret_file=str(public)))
    with pytest.raises(UserError, match="curve_clients_dir.*not a directory"):
        MaskPublisher(
            PublishConfig(endpoint=ANY, curve_secret_file=str(secret), curve_clients_dir=str(tmp_path / "missing"))
        )
    with pytest.raises(UserError, match="already exists"):
        create_keys(tmp_path, "server")


def test_port_in_use_is_a_user_error_naming_the_endpoint(pub):
    with pytest.raises(UserError) as e:
        MaskPublisher(PublishConfig(endpoint=pub.endpoint))
    assert pub.endpoint in str(e.value) and "already in use" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="publish.latest_endpoint"):
        MaskPublisher(PublishConfig(endpoint=ANY, latest_endpoint=pub.latest_endpoint))


def test_config_section_names_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("publish:\n  encoding: jpeg\n")
    with pytest.raises(ConfigError, match="publish.encoding"):
        load_config(p)
    p.write_text("publish:\n  endpoint: tcp://127.0.0.1:6000\n  latest_endpoint: tcp://127.0.0.1:6001\n")
    cfg = load_config(p)
    assert cfg.publish.latest_endpoint == "tcp://127.0.0.1:6001" and cfg.publish.encoding == "png"


def test_subscriber_survives_a_publisher_restart():
    with MaskPublisher(PublishConfig(endpoint=ANY)) as first:
        endpoint = first.endpoint  # a free port, reused below
        sub = MaskSubscriber(endpoint)
        old, _ = _first(first, sub)
    with sub, MaskPublisher(PublishConfig(endpoint=endpoint)) as second:  # the daemon restarted
        for i in range(old["seq"] + 50):  # sent before our reconnect lands: this instance's past
            second.publish("cam0", "motion", _mask(i), i, 0, time.time_ns())
        header, _ = _first(second, sub, timeout=10)
    assert header["publisher"] == second.publisher_id != old["publisher"]
    assert header["seq"] > old["seq"] + 1
    assert sub.stats()["missed"] == 0  # counting starts afresh with each publisher instance


def test_subscribe_iterator_stops_on_timeout_when_nobody_publishes():
    t0 = time.monotonic()
    assert list(subscribe("tcp://127.0.0.1:9", timeout=0.3)) == []  # port 9: nothing listens
    assert time.monotonic() - t0 < 3


def _publish_in_background(pub, stop):
    def loop():
        i = 0
        while not stop.is_set():
            pub.publish("cam0", "motion", _mask(i), i, 0, time.time_ns())
            pub.publish("cam0", "trimap", _mask(i), i, 0, time.time_ns())
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("encoding", ["png", "u8"])
def test_subscribe_cli_end_to_end(tmp_path, capsys, encoding):
    stop = threading.Event()
    with MaskPublisher(PublishConfig(endpoint=ANY, encoding=encoding)) as pub:
        t = _publish_in_background(pub, stop)
        try:
            rc = main(
                [
                    "subscribe",
                    "--endpoint",
                    pub.endpoint,
                    "--topic",
                    "mask.cam0.trimap",
                    "--count",
                    "5",
                    "--timeout",
                    "10",
                    "--out",
                    str(tmp_path / "saved"),
                ]
            )
        finally:
            stop.set()
            t.join()
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5
    assert all(ln.startswith("camera=cam0 kind=trimap frame=") and "latency_ms=" in ln for ln in lines)
    files = sorted((tmp_path / "saved" / "cam0" / "trimap").iterdir())
    assert len(files) == 5 and not (tmp_path / "saved" / "cam0" / "motion").exists()
    frame = int(files[0].stem)
    np.testing.assert_array_equal(cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED), _mask(frame))
    assert "received 5, rejected 0" in err


def test_subscribe_cli_timeout_without_publisher_exits_1(capsys):
    rc = main(["subscribe", "--endpoint", "tcp://127.0.0.1:9", "--timeout", "0.5", "--count", "3"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert "got 0 of 3 masks before --timeout" in err


def _doc_examples():
    text = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    section = text.split("## Subscriber example", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)[:2]


@pytest.mark.parametrize("which", [0, 1])
def test_protocol_doc_examples_run_as_written(which):
    """The copy-paste subscribers in docs/protocol.md, run in a real interpreter against a
    real publisher (only the endpoint and the endless loop are changed)."""
    code = _doc_examples()[which]
    assert "motionmask" not in code and code.count("\n") <= 16
    stop = threading.Event()
    with MaskPublisher(PublishConfig(endpoint=ANY, latest_endpoint=ANY)) as pub:
        ep = pub.latest_endpoint if which else pub.endpoint
        code = code.replace("while True:", "for _ in range(3):")
        code = re.sub(r"tcp://127\.0\.0\.1:555[57]", ep, code)
        t = _publish_in_background(pub, stop)
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        finally:
            stop.set()
            t.join()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[-1].endswith("(120, 160)")
