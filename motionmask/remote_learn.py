"""The learner machine's receiver: the child of `motionmask learn` that takes training samples in
from any number of rigs (motionmask/remote_send.py) and puts them into the learn command's own
ring buffer, where the unchanged learner process (motionmask/learner_process.py) trains on them.

    rig, rig, ... --PUSH--> PULL learner.listen --> decode, check --> ring buffer --> learner
                                                 \\-> pair store (tracked-patch pairs)

Anything that is not a schema-1 sample of this learner's slot size (docs/protocol.md) is counted
by reason and dropped with at most one log line a minute per reason; nothing a rig sends can stop
this process. ZeroMQ refuses messages over learner.transport.max_message_kb before they are read.

The appetite (learner/appetite.py): a received sample is inserted only while the learner keeps up
with learner.transport.samples_per_insert; past the tolerance it is dropped and counted, since a
rig must never wait. The learner process waits on the same counts when it runs ahead.

Per rig, status shows samples received, inserted, dropped (by the rig past its high-water mark,
lost on the way, refused by the appetite or by a full buffer), bad messages, last seen and bytes/s.

Run as `python -m motionmask.remote_learn` with its spec as JSON on stdin, like a camera.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import sys
import threading
import time
from collections import Counter, deque
from types import SimpleNamespace
from typing import Any

import cv2
import zmq

from common.config import from_dict
from common.errors import UserError
from common.log import log_event
from learner.appetite import Appetite
from learner.transport_config import TransportConfig
from motionmask.camera_process import MSG_STATS
from motionmask.child import EXIT_CRASH, Reporter, Stopped, push_socket, run_child, run_reported
from motionmask.remote_curve import server_curve
from motionmask.sample_wire import WireError, decode_pair, decode_sample, parse_header
from streamer.shm.ringbuffer import BufferConfig, Sample

log = logging.getLogger("motionmask.remote_learn")

NAME = "receiver"  # the child's name in the daemon
RCVHWM = 1024  # messages queued here (the rigs queue more, up to their own sndhwm)
DRAIN = 256  # messages handled per turn before counters are looked at again
_RATE_WINDOW_S = 5.0
_LOG_EVERY_S = 60.0  # one log line per bad-message reason this often


class RigStats:
    """What one rig sent and what became of it."""

    def __init__(self) -> None:
        self.received = self.inserted = self.bytes = self.pairs = 0
        self.appetite_dropped = self.buffer_dropped = self.lost = self.bad = 0
        self.rig_dropped = self.rig_sent = 0  # the rig's own totals, from its latest header
        self.last_seq = -1
        self.last_seen = 0.0  # wall clock
        self.rate: deque[tuple[float, int, int]] = deque()

    def seen(self, hdr: dict[str, Any], nbytes: int, now: float) -> None:
        seq = int(hdr["seq"])
        if hdr["kind"] == "sample":
            # a jump in seq is what the network lost (or the rig dropped: it counts those itself,
            # and they take a seq too); going back means the rig's sender restarted
            if self.last_seq >= 0 and seq > self.last_seq + 1:
                self.lost += seq - self.last_seq - 1 - max(0, int(hdr["rig_dropped"]) - self.rig_dropped)
            self.last_seq = seq
            self.received += 1
            self.rig_dropped, self.rig_sent = int(hdr["rig_dropped"]), int(hdr["rig_sent"])
        else:
            self.pairs += 1
        self.bytes += nbytes
        self.last_seen = time.time()
        if not self.rate or now - self.rate[-1][0] >= 0.25:
            self.rate.append((now, self.received, self.bytes))
            while len(self.rate) > 2 and now - self.rate[0][0] > _RATE_WINDOW_S:
                self.rate.popleft()

    def snapshot(self, now: float) -> dict[str, Any]:
        sps = bps = 0.0
        if len(self.rate) >= 2:
            (t0, n0, b0), (t1, n1, b1) = self.rate[0], self.rate[-1]
            if now - t1 < _RATE_WINDOW_S and t1 > t0:
                sps, bps = (n1 - n0) / (t1 - t0), (b1 - b0) / (t1 - t0)
        return {
            "received": self.received,
            "inserted": self.inserted,
            "pairs": self.pairs,
            "dropped": self.rig_dropped + max(0, self.lost) + self.appetite_dropped + self.buffer_dropped,
            "dropped_by": {
                "rig_hwm": self.rig_dropped,
                "lost": max(0, self.lost),
                "appetite": self.appetite_dropped,
                "buffer": self.buffer_dropped,
            },
            "bad": self.bad,
            "bytes": self.bytes,
            "bytes_per_s": round(bps, 1),
            "samples_per_s": round(sps, 2),
            "bytes_per_sample": round(self.bytes / max(1, self.received + self.pairs), 1),
            "last_seen": round(self.last_seen, 3),
        }


class ReceiverProcess:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.cfg: TransportConfig = from_dict(TransportConfig, spec["transport"], "learner.transport")
        self.appetite = Appetite(self.cfg.samples_per_insert, self.cfg.tolerance)
        self.stop = threading.Event()
        self.signum = 0
        self.phase = "starting"
        self.error = ""
        self.ring = self.pairs = None
        self.auth = None
        self.rigs: dict[str, RigStats] = {}
        self.bad: Counter[str] = Counter()
        self.foreign_rigs = 0
        self._bad_logged: dict[str, float] = {}
        self.lock = threading.Lock()
        # samples the appetite admitted that a decoder thread has not put yet: counted as inserts,
        # or two threads that both checked before either put would pass the limit together. The
        # put (a copy into shared memory; decoding stays outside) and its end share the lock
        self.admitted = 0
        self.queue: queue.Queue = queue.Queue(maxsize=RCVHWM)  # to the decoder threads
        self.ctx = zmq.Context()
        self.reporter = Reporter(
            NAME,
            self.snapshot,
            push_socket(self.ctx, spec["forward_endpoint"], 64),
            MSG_STATS,
            int(spec["parent_pid"]),
            grace_s=5.0,
            orphan_exit=EXIT_CRASH,
        )
        self.pull: zmq.Socket | None = None
        self.endpoint = ""

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signum = signum
        self.stop.set()
        if self.phase == "starting":
            raise Stopped()

    def run(self) -> int:
        return run_reported(self, self._run, "receiver", log)

    def bind(self) -> None:
        s = self.ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, RCVHWM)
        s.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_message_kb * 1024)  # a larger one costs its peer the connection
        if self.cfg.heartbeat_s > 0:
            ivl = int(self.cfg.heartbeat_s * 1000)
            s.setsockopt(zmq.HEARTBEAT_IVL, ivl)
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5 * ivl)
        self.pull = s
        self.auth = server_curve(self.ctx, s, self.cfg)
        try:
            s.bind(self.spec["listen"])
        except zmq.ZMQError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(
                    f"learner.listen {self.spec['listen']} is already in use (another motionmask "
                    f"learn?); stop that process or set learner.listen to a free port"
                ) from None
            raise UserError(
                f"learner.listen {self.spec['listen']} cannot be bound: {e.strerror}; use e.g. "
                f"tcp://127.0.0.1:5562 or tcp://*:5562"
            ) from None
        self.endpoint = s.getsockopt_string(zmq.LAST_ENDPOINT)

    def _run(self) -> None:
        from streamer.shm.ringbuffer import RingBuffer

        cv2.setNumThreads(1)
        self.ring = RingBuffer.attach(self.spec["buffer_name"], from_dict(BufferConfig, self.spec["buffer"], "buffer"))
        if self.spec.get("pairs_name"):
            from streamer.shm.pairbuffer import PairBuffer

            self.pairs = PairBuffer.attach(self.spec["pairs_name"])
        self.bind()
        self.phase = "running"
        log_event(
            log,
            "receiver_running",
            listen=self.endpoint,
            curve=self.auth is not None,
            samples_per_insert=self.cfg.samples_per_insert or "off",
            tolerance=self.cfg.tolerance,
            slot=f"{self.ring.width}x{self.ring.height}",
            pairs=self.pairs is not None,
        )
        # decoders > 1: threads decode in parallel (cv2.imdecode releases the GIL); a full queue
        # holds this loop, then ZeroMQ's queues, then the rigs drop: nothing here grows unbounded
        workers = [
            threading.Thread(target=self._work, name=f"decoder-{i}", daemon=True)
            for i in range(self.cfg.decoders if self.cfg.decoders > 1 else 0)
        ]
        for w in workers:
            w.start()
        while not self.stop.is_set():
            if not self.pull.poll(100):
                continue
            for _ in range(DRAIN):
                try:
                    parts = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if not workers:
                    self.handle([p.buffer for p in parts])
                    continue
                while not self.stop.is_set():
                    try:
                        self.queue.put([p.buffer for p in parts], timeout=0.1)
                        break
                    except queue.Full:
                        pass
        while True:  # stopping: what is queued is dropped, the threads finish the sample in hand
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        for _ in workers:
            self.queue.put(None)
        for w in workers:
            w.join(timeout=10.0)

    def _work(self) -> None:
        while True:
            parts = self.queue.get()
            if parts is None:
                return
            try:
                self.handle(parts)
            except Exception as e:  # a bug shows in the log and the counters, the receiver goes on
                with self.lock:
                    self._bad("error", f"{type(e).__name__}: {e}", None)

    def handle(self, parts: list) -> None:
        """One received message: checked, decoded and put, or counted and dropped."""
        nbytes = sum(len(p) for p in parts)
        rig = None
        try:
            hdr = parse_header(parts)
            with self.lock:  # bookkeeping only: decoding, which releases the GIL, runs outside it
                rig = self._rig(hdr["rig"])
                if rig is None:
                    raise WireError("too_many_rigs", f"more than learner.transport.max_rigs={self.cfg.max_rigs} rigs")
                rig.seen(hdr, nbytes, time.monotonic())
                if hdr["kind"] == "sample":
                    t = self.ring.totals()
                    if not self.appetite.can_insert(t["puts"] + self.admitted, t["samples"]):
                        rig.appetite_dropped += 1  # the learner is behind: it trains on a subsample
                        return
                    self.admitted += 1
            if hdr["kind"] == "pair":
                self._put_pair(hdr, parts)
                return
            try:
                s = decode_sample(hdr, parts, (self.ring.height, self.ring.width))
            except WireError:
                with self.lock:
                    self.admitted -= 1
                raise
        except WireError as e:
            with self.lock:
                self._bad(e.reason, str(e), rig)
            return
        h = s.header
        sample = Sample(
            camera=f"{h['rig']}/{h['camera']}",
            frame_index=h["frame"],
            shot=h["shot"],
            capture_time=float(h["capture_time"]),
            image=s.image,
            trimap=s.trimap,
            prob=s.prob,
            flow=s.flow,
            valid=tuple(h["valid"]),
            source_hw=tuple(h["source_hw"]),
        )
        with self.lock:  # the put and the end of its admission at once, as the appetite sees them
            try:
                ok = self.ring.put(sample)
            finally:
                self.admitted -= 1
            if ok:
                rig.inserted += 1
            else:
                rig.buffer_dropped += 1

    def _put_pair(self, hdr: dict[str, Any], parts: list) -> None:
        if self.pairs is None:
            return  # this learner trains no embedding head: pairs are not wanted (not an error)
        p = decode_pair(hdr, parts, self.pairs.patch)
        self.pairs.put(
            SimpleNamespace(
                camera=f"{hdr['rig']}/{hdr['camera']}",
                query=p.query,
                tracked=p.tracked,
                shot=hdr["shot"],
                t0=hdr["t0"],
                t1=hdr["t1"],
                track=hdr["track"],
            )
        )

    def _rig(self, name: str) -> RigStats | None:
        rig = self.rigs.get(name)
        if rig is None:
            if len(self.rigs) >= self.cfg.max_rigs:
                self.foreign_rigs += 1
                return None
            rig = self.rigs[name] = RigStats()
            log_event(log, "rig_first_seen", rig=name)
        return rig

    def _bad(self, reason: str, text: str, rig: RigStats | None) -> None:
        self.bad[reason] += 1
        if rig is not None:
            rig.bad += 1
        now = time.monotonic()
        if now - self._bad_logged.get(reason, -1e9) >= _LOG_EVERY_S:
            self._bad_logged[reason] = now
            log_event(log, "sample_refused", logging.WARNING, reason=reason, error=text, count=self.bad[reason])

    # -- reports ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:  # the decoder threads count meanwhile
            return {
                "child": self.name,
                "pid": os.getpid(),
                "phase": self.phase,
                "error": self.error,
                "listen": self.endpoint,
                "curve": self.auth is not None,
                "decoders": self.cfg.decoders,
                "bad": dict(self.bad),
                "bad_total": sum(self.bad.values()),
                "foreign_rigs": self.foreign_rigs,
                "rigs": {name: r.snapshot(now) for name, r in self.rigs.items()},
            }

    def close(self) -> None:
        self.reporter.stop_and_send_last()
        if self.pull is not None:
            self.pull.close(0)
        if self.auth is not None:
            self.auth.stop()
        if self.ring is not None:
            self.ring.close()
        if self.pairs is not None:
            self.pairs.close()
        self.reporter.sock.close()
        self.ctx.term()


def main() -> int:
    return run_child(ReceiverProcess)


if __name__ == "__main__":
    sys.exit(main())
