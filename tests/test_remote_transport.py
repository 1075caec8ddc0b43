"""The sample transport between a rig and a remote learner, piece by piece on real sockets and
real processes: the wire format (motionmask/sample_wire.py), the learner's receiver
(motionmask/remote_learn.py) fed junk and good samples, its appetite, and a rig's sender
(motionmask/remote_send.py) following a ring buffer with and without a learner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest
import zmq
from _media import free_port

from learner.appetite import Appetite
from learner.transport_config import TransportConfig
from motionmask.sample_wire import WireError, decode_sample, encode_sample, parse_header
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, Sample

W, H = 64, 48


def _sample(i: int, camera: str = "cam0", flow: bool = False) -> Sample:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([(xx * 4 + i) % 256, (yy * 5) % 256, np.full_like(xx, 40 + i)], -1).astype(np.uint8)
    trimap = np.full((H, W), 0, np.uint8)
    trimap[10:30, 20:40] = 255
    trimap[8:10, 20:40] = 128
    prob = (rng.random((H, W)) * 255).astype(np.uint8)
    f = rng.normal(size=(H, W, 2)).astype(np.float16) if flow else None
    return Sample(camera, i, i // 10, 1000.0 + i, img, trimap, prob, f, (0, 0, H, W - 4), (480, 640))


def _parts(s: Sample, seq: int = 0, rig: str = "rig1") -> list[bytes]:
    return encode_sample(
        rig=rig,
        camera=s.camera,
        seq=seq,
        frame=s.frame_index,
        shot=s.shot,
        capture_time=s.capture_time,
        image=s.image,
        trimap=s.trimap,
        prob=s.prob,
        flow=s.flow,
        valid=s.valid,
        source_hw=s.source_hw,
    )


def test_wire_round_trip_is_exact_for_labels_and_close_for_the_frame():
    s = _sample(3, flow=True)
    parts = _parts(s, seq=7)
    hdr = parse_header(parts)
    got = decode_sample(hdr, parts, (H, W))
    assert hdr["seq"] == 7 and hdr["rig"] == "rig1" and hdr["valid"] == [0, 0, H, W - 4]
    assert np.array_equal(got.trimap, s.trimap) and np.array_equal(got.prob, s.prob)
    assert np.array_equal(got.flow, s.flow)
    assert np.abs(got.image.astype(int) - s.image).mean() < 3  # JPEG, RGB order kept
    assert sum(map(len, parts)) < s.image.nbytes + s.prob.nbytes + s.trimap.nbytes + s.flow.nbytes


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda p: [b"not json", *p[1:]], "header"),
        (lambda p: [json.dumps({"schema": "other"}).encode(), *p[1:]], "foreign"),
        (lambda p: [p[0].replace(b'"version":1', b'"version":2'), *p[1:]], "version"),
        (lambda p: p[:3], "header"),
        (lambda p: [p[0].replace(b'"seq":0', b'"seq":"0"'), *p[1:]], "header"),
        (lambda p: [p[0].replace(b'"rig":"rig1"', b'"rig":"a/b"'), *p[1:]], "header"),
        (lambda p: [p[0], p[1][:40], *p[2:]], "payload"),  # a truncated JPEG
        (lambda p: [p[0], p[2], p[2], p[3]], "payload"),  # a PNG where the JPEG belongs
        (lambda p: [p[0].replace(b'"width":64', b'"width":640'), *p[1:]], "slot_size"),
    ],
)
def test_wire_refuses_bad_messages_with_a_reason(mutate, reason):
    parts = mutate(_parts(_sample(1)))
    with pytest.raises(WireError) as e:
        decode_sample(parse_header(parts), parts, (H, W))
    assert e.value.reason == reason


def test_forged_jpeg_size_is_refused_before_decoding():
    parts = _parts(_sample(1))
    jpeg = bytearray(parts[1])
    i = jpeg.find(b"\xff\xc0")  # baseline SOF0: height, width at +5
    jpeg[i + 5 : i + 9] = (60000).to_bytes(2, "big") * 2
    with pytest.raises(WireError, match="JPEG is"):
        decode_sample(parse_header(parts), [parts[0], bytes(jpeg), *parts[2:]], (H, W))


def test_appetite_keeps_the_ratio_within_the_tolerance():
    a = Appetite(samples_per_insert=4, tolerance=8)
    assert a.can_insert(0, 0) and a.can_insert(1, 0) and not a.can_insert(2, 0)  # 3 x 4 - 0 > 8
    assert a.can_sample(2, 0, 8) and a.can_sample(2, 8, 8) and a.can_sample(2, 16, 0) and not a.can_sample(2, 16, 1)
    assert Appetite(0, 1).can_insert(10**6, 0) and Appetite(0, 1).can_sample(0, 10**6, 100)
    assert Appetite.ratio(0, 5) is None and Appetite.ratio(4, 10) == 2.5


# ---- the learner's receiver, a real process on a real socket ---------------------------------


class _Child:
    """A daemon child (`python -m MODULE`) with its spec on stdin; its reports on our PULL."""

    def __init__(self, module: str, spec: dict, ctx: zmq.Context) -> None:
        self.reports = ctx.socket(zmq.PULL)
        self.reports.setsockopt(zmq.LINGER, 0)
        port = self.reports.bind_to_random_port("tcp://127.0.0.1")
        spec = dict(spec, forward_endpoint=f"tcp://127.0.0.1:{port}", parent_pid=os.getpid(), log_level="INFO")
        self.proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self.proc.stdin.write(json.dumps(spec).encode())
        self.proc.stdin.close()
        self.last: dict = {}

    def wait_for(self, ok, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()[-3000:]
            if self.reports.poll(100):
                self.last = json.loads(self.reports.recv_multipart()[1])
                if ok(self.last):
                    return self.last
        raise AssertionError(f"no report like that within {timeout} s; last: {self.last}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.reports.close(0)
        return self.proc.stderr.read().decode()


@pytest.fixture
def ring():
    with RingBuffer.create(BufferConfig(train_width=W, train_height=H, memory_mb=2, per_shot_cap=64)) as rb:
        yield rb


def _receiver(ring: RingBuffer, ctx: zmq.Context, **transport) -> tuple[_Child, str]:
    listen = f"tcp://127.0.0.1:{free_port()}"
    cfg = asdict(TransportConfig(**{"samples_per_insert": 0, "max_message_kb": 256, **transport}))
    child = _Child(
        "motionmask.remote_learn",
        {"name": "receiver", "listen": listen, "transport": cfg, "buffer_name": ring.name, "buffer": asdict(ring._cfg)},
        ctx,
    )
    child.wait_for(lambda r: r["phase"] == "running")
    return child, listen


def _push(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 2000)
    s.connect(endpoint)
    return s


def test_receiver_counts_and_drops_junk_and_stores_good_samples(ring):
    ctx = zmq.Context()
    child, listen = _receiver(ring, ctx)
    try:
        push = _push(ctx, listen)
        good = _parts(_sample(5))
        junk = [
            [b"hello"],
            [os.urandom(300), os.urandom(10)],
            [json.dumps({"schema": "other"}).encode()],
            [good[0].replace(b'"version":1', b'"version":9'), *good[1:]],
            [good[0], good[1][:50], *good[2:]],
            [good[0].replace(b'"width":64', b'"width":32'), *good[1:]],
        ]
        for parts in junk:
            push.send_multipart(parts)
        push.send_multipart(good)
        r = child.wait_for(lambda r: r["rigs"].get("rig1", {}).get("inserted") == 1 and r["bad_total"] == 6)
        assert r["bad"] == {"header": 2, "foreign": 1, "version": 1, "payload": 1, "slot_size": 1}
        assert r["rigs"]["rig1"]["bad"] == 2  # those whose header named it
        # a message over max_message_kb costs its sender the connection, not the receiver anything
        big = ctx.socket(zmq.PUSH)
        big.connect(listen)
        big.send_multipart([good[0], os.urandom(300 * 1024)])
        push.send_multipart(_parts(_sample(6), seq=1))
        r = child.wait_for(lambda r: r["rigs"]["rig1"]["inserted"] == 2)
        batch = ring.read(ring.ready_slots())
        assert sorted(batch.cameras) == ["rig1/cam0", "rig1/cam0"] and sorted(batch.frame_index) == [5, 6]
        k = list(batch.frame_index).index(5)
        assert np.array_equal(batch.trimaps[k], _sample(5).trimap) and tuple(batch.valid[k]) == (0, 0, H, W - 4)
        assert r["rigs"]["rig1"]["received"] == 4 and r["rigs"]["rig1"]["bytes_per_sample"] > 1000
        big.close(0)
        push.close(0)
    finally:
        err = child.stop()
        ctx.destroy(linger=0)
    assert "Traceback" not in err and "event=sample_refused" in err


def test_receiver_drops_what_a_lagging_learner_cannot_eat(ring):
    ctx = zmq.Context()
    child, listen = _receiver(ring, ctx, samples_per_insert=4, tolerance=8)
    try:
        push = _push(ctx, listen)
        for i in range(6):
            push.send_multipart(_parts(_sample(i), seq=i))
        # received counts a message as it arrives, inserted once a decoder thread has put it: wait for both
        settled = lambda n: (  # noqa: E731
            lambda r: (
                r["rigs"].get("rig1", {}).get("received") == n
                and r["rigs"]["rig1"]["inserted"] + r["rigs"]["rig1"]["dropped_by"]["appetite"] == n
            )
        )
        r = child.wait_for(settled(6))
        assert r["rigs"]["rig1"]["inserted"] == 2 and r["rigs"]["rig1"]["dropped_by"]["appetite"] == 4
        ring.sample(8, np.random.default_rng(0))  # the learner eats: two more inserts fit
        for i in range(6, 9):
            push.send_multipart(_parts(_sample(i), seq=i))
        r = child.wait_for(settled(9))
        assert r["rigs"]["rig1"]["inserted"] == 4 and ring.totals()["puts"] == 4
        push.close(0)
    finally:
        child.stop()
        ctx.destroy(linger=0)


# ---- a rig's sender ---------------------------------------------------------------------------


def test_sender_follows_the_buffer_and_drops_past_its_high_water_mark(ring):
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    before = _sample(0)
    assert ring.put(before)  # already there when the sender starts: not sent (a restart would repeat it)
    cfg = asdict(TransportConfig(rig="rigX", sndhwm=16, heartbeat_s=0.5))
    child = _Child(
        "motionmask.remote_send",
        {
            "name": "sender",
            "remote": f"tcp://127.0.0.1:{port}",
            "transport": cfg,
            "buffer_name": ring.name,
            "buffer": asdict(ring._cfg),
        },
        ctx,
    )
    try:
        child.wait_for(lambda r: r["phase"] == "running" and r["connected"])
        for i in range(1, 11):
            assert ring.put(_sample(i, camera=f"cam{i % 2}"))
        got = []
        while len(got) < 10 and pull.poll(10_000):
            parts = pull.recv_multipart()
            got.append(decode_sample(parse_header(parts), parts, (H, W)))
        assert sorted(g.header["frame"] for g in got) == list(range(1, 11))
        assert {g.header["rig"] for g in got} == {"rigX"} and {g.header["camera"] for g in got} == {"cam0", "cam1"}
        g = next(g for g in got if g.header["frame"] == 3)
        assert np.array_equal(g.trimap, _sample(3).trimap) and np.array_equal(g.prob, _sample(3).prob)
        child.wait_for(lambda r: r["sent"] == 10 and r["dropped"] == 0)

        pull.close(0)  # the learner goes away: the sender queues sndhwm samples, then drops and counts
        child.wait_for(lambda r: not r["connected"])
        t0 = time.perf_counter()
        for i in range(11, 71):
            assert ring.put(_sample(i))
        assert time.perf_counter() - t0 < 1.0  # the cameras' puts never wait for the network
        r = child.wait_for(lambda r: r["sent"] + r["dropped"] == 70)
        assert r["dropped"] >= 60 - 2 * 16  # the queue for the absent learner (sndhwm) holds the rest
    finally:
        err = child.stop()
        ctx.destroy(linger=0)
    assert "Traceback" not in err and "event=learner_disconnected" in err


def test_curve_admits_a_rig_with_keys_and_refuses_one_without(ring, tmp_path):
    from motionmask.commands.keys import create_keys

    _, server_secret = create_keys(tmp_path / "learner", "learner")
    rig_public, rig_secret = create_keys(tmp_path / "rig", "rig")
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "rig.key").write_bytes(rig_public.read_bytes())
    ctx = zmq.Context()
    rig_ring = RingBuffer.create(BufferConfig(train_width=W, train_height=H, memory_mb=2))  # the rig's own
    child, listen = _receiver(
        ring, ctx, curve_secret_file=str(server_secret), curve_clients_dir=str(tmp_path / "clients")
    )
    sender = None
    try:
        assert child.last["curve"]
        plain = _push(ctx, listen)  # no keys: the handshake fails, nothing gets through
        plain.send_multipart(_parts(_sample(1), rig="intruder"))
        cfg = asdict(
            TransportConfig(
                rig="rigK",
                curve_secret_file=str(rig_secret),
                curve_server_key=str(tmp_path / "learner" / "learner.key"),
            )
        )
        sender = _Child(
            "motionmask.remote_send",
            {
                "name": "sender",
                "remote": listen,
                "transport": cfg,
                "buffer_name": rig_ring.name,
                "buffer": asdict(rig_ring._cfg),
            },
            ctx,
        )
        sender.wait_for(lambda r: r["phase"] == "running" and r["connected"] and r["curve"])
        rig_ring.put(_sample(2))
        r = child.wait_for(lambda r: r["rigs"].get("rigK", {}).get("received") == 1)
        time.sleep(0.5)
        r = child.wait_for(lambda r: True)
        assert set(r["rigs"]) == {"rigK"} and r["bad_total"] == 0 and ring.totals()["puts"] == 1
        plain.close(0)
    finally:
        if sender is not None:
            sender.stop()
        child.stop()
        ctx.destroy(linger=0)
        rig_ring.close()


def test_tracked_pairs_travel_from_a_rigs_store_to_the_learners(ring):
    """A rig's sender follows its pair store too; the learner's receiver puts them into its own."""
    from streamer.motion.patches import PatchPair
    from streamer.shm.pairbuffer import PairBuffer

    def pair(i: int) -> PatchPair:
        q = np.full((32, 32, 3), 10 * i, np.uint8)
        q[8:24, 8:24] = 200
        return PatchPair(q, np.roll(q, 2, axis=1), "cam0", shot=i // 3, t0=i, t1=i + 2, track=i % 3)

    ctx = zmq.Context()
    rig_ring = RingBuffer.create(BufferConfig(train_width=W, train_height=H, memory_mb=2))
    with PairBuffer.create(32, 1) as rig_pairs, PairBuffer.create(32, 1) as learner_pairs:
        # read_after: oldest first from the cursor, and the cursor moves past what was read
        for i in range(3):
            rig_pairs.put(pair(i))
        rows, tracks, cursor = rig_pairs.read_after(1, 10)
        assert list(rows.t0) == [1, 2] and list(tracks) == [1, 2] and cursor == 3
        assert rig_pairs.read_after(cursor, 10)[2] == 3 and not len(rig_pairs.read_after(cursor, 10)[0])

        listen = f"tcp://127.0.0.1:{free_port()}"
        receiver = _Child(
            "motionmask.remote_learn",
            {
                "name": "receiver",
                "listen": listen,
                "transport": asdict(TransportConfig(samples_per_insert=0)),
                "buffer_name": ring.name,
                "buffer": asdict(ring._cfg),
                "pairs_name": learner_pairs.name,
            },
            ctx,
        )
        sender = _Child(
            "motionmask.remote_send",
            {
                "name": "sender",
                "remote": listen,
                "transport": asdict(TransportConfig(rig="rigP")),
                "buffer_name": rig_ring.name,
                "buffer": asdict(rig_ring._cfg),
                "pairs_name": rig_pairs.name,
            },
            ctx,
        )
        try:
            sender.wait_for(lambda r: r["phase"] == "running" and r["connected"])
            for i in range(3, 8):
                rig_pairs.put(pair(i))
            receiver.wait_for(lambda r: r["rigs"].get("rigP", {}).get("pairs") == 5)
            got = learner_pairs.read_after(0, 10)[0]
            assert sorted(got.t0) == [3, 4, 5, 6, 7] and set(got.cameras) == {"rigP/cam0"}
            k = list(got.t0).index(4)
            assert np.abs(got.query[k].astype(int) - pair(4).query).mean() < 3  # JPEG
            assert list(got.t1 - got.t0) == [2] * 5
        finally:
            sender.stop()
            receiver.stop()
            ctx.destroy(linger=0)
            rig_ring.close()


def test_config_errors_name_the_key(tmp_path):
    from motionmask.config import ConfigError, load_config

    cases = [
        ({"learner": {"enabled": True, "remote": "tcp://gpu:5562"}}, "learner.remote"),
        ({"learner": {"remote": "gpu:5562"}}, "learner.remote"),
        ({"learner": {"transport": {"samples_per_insert": 8, "tolerance": 4}}}, "learner.transport.tolerance"),
        ({"learner": {"transport": {"sndhwm": 0}}}, "learner.transport.sndhwm"),
        ({"learner": {"transport": {"curve_server_key": "k.key"}}}, "learner.transport.curve_server_key"),
        ({"learner": {"transport": {"samples_per_inset": 8}}}, "learner.transport.samples_per_inset"),
    ]
    for data, key in cases:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, data)
    from common.errors import UserError
    from motionmask.commands.learn import learn_config

    cfg = load_config(None, {"learner": {"listen": "tcp://127.0.0.1:5560"}, "export": {"enabled": True}})
    with pytest.raises(UserError, match="learner.listen .* is also export.endpoint"):
        learn_config(cfg)


def test_a_missing_key_file_stops_the_rig_at_start_in_one_line(tmp_path):
    cfg = tmp_path / "rig.yaml"
    cfg.write_text(f"""
cameras: [{{name: cam, source: {tmp_path / "none.mp4"}}}]
daemon: {{control_endpoint: tcp://127.0.0.1:{free_port()}}}
publish: {{endpoint: tcp://127.0.0.1:{free_port()}}}
web: {{enabled: false}}
learner: {{enabled: false, remote: tcp://127.0.0.1:{free_port()},
          transport: {{curve_secret_file: {tmp_path / "rig.key_secret"}, curve_server_key: x.key}}}}
""")
    r = subprocess.run(
        [sys.executable, "-m", "motionmask.cli", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "learner.transport.curve_secret_file" in r.stderr and "motionmask keys" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_learner_waits_when_ahead_of_its_appetite(ring):
    from learner.samples import RingFeed
    from motionmask.learner_process import Rationed as _Rationed

    counters = {"appetite_waits": 0, "appetite_waiting": False}
    feed = _Rationed(RingFeed(ring), ring, {"samples_per_insert": 2, "tolerance": 4}, counters)
    rng, out = np.random.default_rng(0), ring.new_batch(4)
    for i in range(2):
        ring.put(_sample(i))
    # drawn + n - inserts x 2 <= 4: 0 + 4 - 4, then 4 + 4 - 4, then 8 + 4 - 4 is too many
    assert len(feed.sample(4, rng, out)) == 4 and not counters["appetite_waiting"]
    assert len(feed.sample(4, rng, out)) == 4
    assert len(feed.sample(4, rng, out)) == 0 and counters["appetite_waiting"] and counters["appetite_waits"] == 1
    ring.put(_sample(2))
    ring.put(_sample(3))  # 8 + 4 - 4 x 2 = 4: one more batch
    assert len(feed.sample(4, rng, out)) == 4 and not counters["appetite_waiting"]
