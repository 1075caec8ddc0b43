"""Fan-in: how many training samples one learner takes in from 1, 4 and 16 rigs on loopback.

Real pieces throughout: the samples are the streamer's kept results on the bundled clip
(tests/data/sample.mp4) fitted into 320x240 slots (sample_from_result), encoded as a rig's sender
encodes them (motionmask/sample_wire.py: JPEG frame, PNG trimap and motion probability); the
learner is the real receiver process (motionmask/remote_learn.py, `motionmask learn`'s child)
decoding, checking and putting them into a real shared-memory ring buffer. The simulated rigs are
N PUSH sockets (each its own rig name, sndhwm 256) in one process, sending pre-encoded samples
flat out, round-robin: what a rig's own CPU pays is measured apart, below.

Per rig count: samples/s inserted into the learner's buffer, what the rigs dropped past their
high-water mark (the learner could not keep up: by design, a rig never waits), bytes per sample,
and the receiver's CPU per sample (from /proc: it does not swing with other load the way wall
rates do). Then the rig's cost per sample sent, on one thread: ring read + encode + send (CPU
time, median), and the receiver's decode alone.

    python -m bench.fanin                  # about 30 s; table + bench/out/fanin.json
    python -m bench.fanin --rigs 1 4 16 --seconds 4
Target: the learner takes in >= 2,000 samples/s (about 60 cameras at 30 fps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import zmq

from bench.common import OUT, ROOT, cpu_model, free_port, git_revision, save_json

TARGET = 2000.0
CLIP = ROOT / "tests" / "data" / "sample.mp4"


def real_samples(n: int, width: int, height: int) -> list:
    """Up to n kept samples of the bundled clip in slot form (the streamer's own output)."""
    from streamer.config import StreamerConfig
    from streamer.motion.pipeline import MotionSegmenter
    from streamer.shm.ringbuffer import BufferConfig, sample_from_result
    from streamer.sources import open_source

    cfg = StreamerConfig()
    cfg.prune.min_fg = 0.005  # far walkers: 1-5% of the frame (configs/default.yaml keeps 0.02)
    bcfg = BufferConfig(train_width=width, train_height=height)
    seg, out = MotionSegmenter(cfg), []
    with open_source(str(CLIP), cfg.source) as source:
        for frame in source:
            out += [sample_from_result(r, "cam0", bcfg) for r in seg.push(frame) if r.kept]
            if len(out) >= n:
                break
    if not out:
        raise SystemExit(f"{CLIP}: no kept frame to send")
    return out[:n]


def encode(s, rig: str, seq: int) -> list[bytes]:
    from motionmask.sample_wire import encode_sample

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
        flow=None,
        valid=s.valid,
        source_hw=s.source_hw,
    )


def _rigs(endpoint: str, n: int, messages: list[list[list[bytes]]], stop, counts) -> None:
    """The simulated rigs (a spawned process): n PUSH sockets, flat out, never waiting."""
    ctx = zmq.Context()
    socks = []
    for _ in range(n):
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, 256)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
    sent = dropped = i = 0
    while not stop.is_set():
        for r, s in enumerate(socks):
            try:
                s.send_multipart(messages[r][i % len(messages[r])], zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                dropped += 1
        i += 1
        if i % 64 == 0:
            counts[0], counts[1] = sent, dropped
            if all(not s.poll(0, zmq.POLLOUT) for s in socks):
                time.sleep(0.0005)  # every queue full: let the learner's core work
    counts[0], counts[1] = sent, dropped
    for s in socks:
        s.close(0)
    ctx.term()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_fanin(n_rigs: int, samples: list, seconds: float, width: int, height: int, decoders: int) -> dict:
    from streamer.shm.ringbuffer import BufferConfig, RingBuffer

    msgs = [[encode(s, f"rig{r:02d}", k) for k, s in enumerate(samples)] for r in range(n_rigs)]
    nbytes = float(np.mean([sum(map(len, m)) for m in msgs[0]]))
    ctx = zmq.Context()
    reports = ctx.socket(zmq.PULL)
    reports.setsockopt(zmq.LINGER, 0)
    rport = reports.bind_to_random_port("tcp://127.0.0.1")
    sink = threading.Event()

    def drain() -> None:  # the receiver's twice-a-second reports, read and dropped
        while not sink.is_set():
            if reports.poll(100):
                reports.recv_multipart()

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    bcfg = BufferConfig(train_width=width, train_height=height, memory_mb=64)
    with RingBuffer.create(bcfg) as ring:
        listen = f"tcp://127.0.0.1:{free_port()}"
        proc = start_receiver(ring.name, bcfg, listen, f"tcp://127.0.0.1:{rport}", decoders)
        spawn = mp.get_context("spawn")
        stop, counts = spawn.Event(), spawn.Array("q", 2)
        rigs = spawn.Process(target=_rigs, args=(listen, n_rigs, msgs, stop, counts), daemon=True)
        try:
            time.sleep(1.5)  # the receiver binds (python + cv2 import)
            rigs.start()
            time.sleep(1.5)  # warm-up: connections, queues filling
            p0, c0, (s0, d0), t0 = ring.totals()["puts"], _cpu_s(proc.pid), tuple(counts), time.monotonic()
            time.sleep(seconds)
            p1, c1, (s1, d1), t1 = ring.totals()["puts"], _cpu_s(proc.pid), tuple(counts), time.monotonic()
        finally:
            stop.set()
            rigs.join(10)
            proc.terminate()
            proc.wait(10)
            sink.set()
            drainer.join(2)
            reports.close(0)
            ctx.term()
    inserted = p1 - p0
    return {
        "rigs": n_rigs,
        "decoders": decoders,
        "seconds": round(t1 - t0, 2),
        "samples_per_s": round(inserted / (t1 - t0), 1),
        "rig_sent_per_s": round((s1 - s0) / (t1 - t0), 1),
        "rig_dropped_per_s": round((d1 - d0) / (t1 - t0), 1),
        "bytes_per_sample": round(nbytes),
        "learner_cpu_ms_per_sample": round(1e3 * (c1 - c0) / max(1, inserted), 3),
        "learner_cpu_share": round((c1 - c0) / (t1 - t0), 2),
        "exit": {"learner": proc.returncode, "rigs": rigs.exitcode},
    }


def start_receiver(buffer_name: str, bcfg, listen: str, forward_endpoint: str, decoders: int) -> subprocess.Popen:
    """The real receiver process (`motionmask learn`'s child) on `listen`, putting into the ring."""
    from learner.transport_config import TransportConfig

    spec = {
        "name": "receiver",
        "listen": listen,
        "transport": asdict(TransportConfig(samples_per_insert=0, decoders=decoders)),
        "buffer_name": buffer_name,
        "buffer": asdict(dataclasses.replace(bcfg, name=buffer_name)),
        "forward_endpoint": forward_endpoint,
        "parent_pid": os.getpid(),
        "log_level": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "motionmask.remote_learn"], stdin=subprocess.PIPE)
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    return proc


def rig_cost(samples: list, width: int, height: int, n: int = 300) -> dict:
    """A rig's sender, per sample, on one thread: ring read + encode + send (CPU ms, median);
    and the learner's decode of the same message."""
    from motionmask.sample_wire import decode_sample, parse_header
    from streamer.shm.ringbuffer import BufferConfig, RingBuffer

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    got: list = []
    done = threading.Event()

    def drain() -> None:
        while not done.is_set() or pull.poll(0):
            if pull.poll(100):
                got.append(pull.recv_multipart())

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    cost, encode_ms, decode_ms = [], [], []
    with RingBuffer.create(BufferConfig(train_width=width, train_height=height, memory_mb=64)) as ring:
        out = ring.new_batch(1)
        for k in range(n):
            ring.put(samples[k % len(samples)])
            c0 = time.thread_time()
            slot = ring.slots_after(ring.put_seq() - 1)
            b = ring.read(slot, out)
            e0 = time.thread_time()
            parts = encode(SimpleSample(b), "rig", k)
            e1 = time.thread_time()
            push.send_multipart(parts, zmq.NOBLOCK, copy=False)
            c1 = time.thread_time()
            cost.append(c1 - c0)
            encode_ms.append(e1 - e0)
    done.set()
    t.join(5)
    for parts in got[:100]:
        d0 = time.thread_time()
        decode_sample(parse_header(parts), parts, (height, width))
        decode_ms.append(time.thread_time() - d0)
    for s in (pull, push):
        s.close(0)
    ctx.term()
    med = lambda xs: round(1e3 * float(np.median(xs)), 3)  # noqa: E731
    return {
        "rig_cpu_ms_per_sample": med(cost),
        "rig_encode_ms": med(encode_ms),
        "learner_decode_ms": med(decode_ms),
        "received": len(got),
    }


class SimpleSample:
    """Row 0 of a ring Batch in the shape encode() reads."""

    def __init__(self, b) -> None:
        self.camera, self.frame_index, self.shot = b.cameras[0], int(b.frame_index[0]), int(b.shot[0])
        self.capture_time, self.image = float(b.capture_time[0]), b.frames[0]
        self.trimap, self.prob = b.trimaps[0], b.probs[0]
        self.valid, self.source_hw = tuple(int(v) for v in b.valid[0]), tuple(int(v) for v in b.source_hw[0])


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rigs", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per rig count (after warm-up)")
    ap.add_argument("--size", default="320x240", help="slot WxH (default 320x240)")
    ap.add_argument(
        "--decoders", type=int, default=2, help="the receiver's decoder threads (learner.transport.decoders)"
    )
    ap.add_argument("--samples", type=int, default=32, help="distinct real samples each rig cycles through")
    ap.add_argument("--out", type=Path, default=OUT / "fanin.json")
    return ap.parse_args()


def print_table(rows: list[dict], w: int, h: int, n_samples: int, decoders: int) -> None:
    print(
        f"fan-in on loopback, {w}x{h} samples ({n_samples} real kept frames of {CLIP.name}), "
        f"{os.cpu_count()} cores ({cpu_model()}), {decoders} decoder threads, load average "
        f"{os.getloadavg()[0]:.1f} at the end, target >= {TARGET:.0f} samples/s"
    )
    print(
        "| rigs | samples/s taken in | rigs sent/s | rigs dropped/s | bytes/sample | learner CPU ms/sample "
        "| learner CPU share |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['rigs']} | {r['samples_per_s']:.0f} | {r['rig_sent_per_s']:.0f} | {r['rig_dropped_per_s']:.0f} | "
            f"{r['bytes_per_sample']} | {r['learner_cpu_ms_per_sample']:.3f} | {r['learner_cpu_share']:.2f} |"
        )


def print_costs(rows: list[dict], cost: dict) -> None:
    print(
        "rig's cost per sample sent (one thread: ring read + encode + send): "
        f"{cost['rig_cpu_ms_per_sample']:.2f} ms CPU "
        f"(encode {cost['rig_encode_ms']:.2f} ms); learner's decode alone: {cost['learner_decode_ms']:.2f} ms"
    )
    best = max(r["samples_per_s"] for r in rows)
    cpu_ms = min(r["learner_cpu_ms_per_sample"] for r in rows)
    if best < TARGET:
        print(
            f"below target: the learner pays {cpu_ms:.2f} ms of CPU per sample taken in (decoding, mostly), so "
            f"{TARGET:.0f} samples/s need {TARGET * cpu_ms / 1e3:.1f} free cores: about "
            f"{1e3 / max(1e-6, cpu_ms):.0f} samples/s per core it is given"
        )


def main() -> int:
    args = parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    samples = real_samples(args.samples, w, h)
    rows = [run_fanin(n, samples, args.seconds, w, h, args.decoders) for n in args.rigs]
    cost = rig_cost(samples, w, h)
    print_table(rows, w, h, len(samples), args.decoders)
    load = os.getloadavg()[0]
    print_costs(rows, cost)
    save_json(
        args.out,
        {
            "size": [w, h],
            "samples": len(samples),
            "rows": rows,
            "rig_cost": cost,
            "target": TARGET,
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average": round(load, 2),
            "decoders": args.decoders,
            "git": git_revision(),
            "command": "python -m bench.fanin " + " ".join(sys.argv[1:]),
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
