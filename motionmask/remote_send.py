"""A rig's sender: the daemon child that sends this rig's training samples to a remote learner
(`motionmask run` with `learner.enabled: false` and `learner.remote: tcp://host:5562`).

    cameras --kept samples--> shared ring buffer --(this process follows it)--> PUSH --> learner
            --tracked pairs-> pair store ---------/
    learner's BundleServer --bundles--> export.dir <-- the cameras hot-load it (student masks)

The cameras are unchanged: they put into the ring buffer as on a single machine, and this
process reads what they put (RingBuffer.slots_after, a cursor on put_seq), encodes it
(motionmask/sample_wire.py: JPEG frame, PNG trimap and motion probability) and PUSHes it without
ever waiting: past learner.transport.sndhwm queued samples (a slow, absent or restarting learner)
a sample is dropped and counted. It runs at nice 10, so on a small rig its encoding takes only
the CPU the cameras leave. ZeroMQ reconnects by itself when the learner comes back.

With export.enabled, a thread also follows the learner's bundle server (exporter.transfer's
DeviceAgent) into export.dir, where the cameras' student masks pick each new bundle up.

Run as `python -m motionmask.remote_send` with its spec as JSON on stdin, like a camera.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.config import from_dict
from common.log import log_event
from learner.transport_config import TransportConfig
from motionmask.camera_process import MSG_STATS
from motionmask.child import EXIT_CRASH, Reporter, Stopped, push_socket, run_child, run_reported
from motionmask.remote_curve import client_curve
from motionmask.sample_wire import WireError, encode_pair, encode_sample
from streamer.shm.ringbuffer import BufferConfig

log = logging.getLogger("motionmask.remote_send")

NAME = "sender"  # the child's name in the daemon
POLL_S = 0.02  # the ring buffer is looked at this often when it had nothing new
READ_BATCH = 32  # samples copied out of the buffer at once
NICE = 10
_RATE_WINDOW_S = 5.0


def rig_name(cfg: TransportConfig) -> str:
    return cfg.rig or socket.gethostname().split(".")[0][:64] or "rig"


def bundles_endpoint(remote: str, cfg: TransportConfig) -> str:
    """learner.transport.bundles, or the learner's host with the bundle server's default port."""
    if cfg.bundles:
        return cfg.bundles
    host = urlsplit(remote).hostname or "127.0.0.1"
    return f"tcp://{host}:5560"


class SenderProcess:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.cfg: TransportConfig = from_dict(TransportConfig, spec["transport"], "learner.transport")
        self.remote: str = spec["remote"]
        self.rig = rig_name(self.cfg)
        self.send_flow = bool(spec.get("send_flow"))
        self.stop = threading.Event()
        self.signum = 0
        self.phase = "starting"
        self.error = ""
        self.ring = self.pairs = None
        self.agent_thread: threading.Thread | None = None
        self.counters: dict[str, Any] = {
            "sent": 0,
            "dropped": 0,
            "bytes": 0,
            "pairs_sent": 0,
            "pairs_dropped": 0,
            "encode_ms": 0.0,
            "bytes_per_s": 0.0,
            "samples_per_s": 0.0,
            "connected": False,
            "connects": 0,
            "bundle": "",
            "bundle_error": "",
        }
        self._rate: deque[tuple[float, int, int]] = deque()
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
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, self.cfg.sndhwm)
        self.push.setsockopt(zmq.LINGER, 0)  # a stopping rig never waits for a learner that is away
        self.push.setsockopt(zmq.RECONNECT_IVL, 200)
        self.push.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self.cfg.heartbeat_s > 0:
            ivl = int(self.cfg.heartbeat_s * 1000)
            self.push.setsockopt(zmq.HEARTBEAT_IVL, ivl)
            self.push.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5 * ivl)
        self.curve = client_curve(self.push, self.cfg)
        self.monitor = self.push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signum = signum
        self.stop.set()
        if self.phase == "starting":
            raise Stopped()

    def run(self) -> int:
        return run_reported(self, self._run, "sender", log)

    def _run(self) -> None:
        from streamer.shm.ringbuffer import RingBuffer

        try:
            os.nice(NICE)
        except OSError:
            pass
        self.ring = RingBuffer.attach(self.spec["buffer_name"], from_dict(BufferConfig, self.spec["buffer"], "buffer"))
        if self.spec.get("pairs_name"):
            from streamer.shm.pairbuffer import PairBuffer

            self.pairs = PairBuffer.attach(self.spec["pairs_name"])
        if self.spec.get("export_dir"):
            self._start_bundles(bundles_endpoint(self.remote, self.cfg), self.spec["export_dir"])
        self.push.connect(self.remote)
        # only what the cameras put from now on: a restarted sender does not send the buffer twice
        cursor = self.ring.put_seq()
        pair_cursor = self.pairs.put_seq() if self.pairs is not None else 0
        self.phase = "running"
        log_event(
            log,
            "sender_running",
            remote=self.remote,
            rig=self.rig,
            curve=self.curve,
            sndhwm=self.cfg.sndhwm,
            flow=self.send_flow,
            pairs=self.pairs is not None,
        )
        out = self.ring.new_batch(READ_BATCH)
        while not self.stop.is_set():
            self._watch_connection()
            busy = False
            slots = self.ring.slots_after(cursor)
            if len(slots):
                busy = True
                batch = self.ring.read(slots[:READ_BATCH], out)
                # a slot torn while read was being rewritten: its new sample comes with a newer put_seq
                if len(batch):
                    cursor = max(cursor, int(batch.put_seq.max()))
                for k in range(len(batch)):
                    self._send_sample(batch, k)
            if self.pairs is not None:
                rows, tracks, pair_cursor = self.pairs.read_after(pair_cursor, READ_BATCH)
                busy = busy or len(rows) > 0
                for k in range(len(rows)):
                    self._send_pair(rows, tracks, k)
            self._update_rate()
            if not busy:
                self.stop.wait(POLL_S)

    def _room(self, dropped: str) -> bool:
        """Whether a send would go through now; if not, the drop is counted before any encoding
        (a rig whose learner is away spends nothing on its samples)."""
        if self.push.poll(0, zmq.POLLOUT):
            return True
        self.counters[dropped] += 1
        return False

    def _send(self, parts: list[bytes], sent: str, dropped: str) -> None:
        c = self.counters
        try:
            self.push.send_multipart(parts, zmq.NOBLOCK, copy=False)
        except zmq.Again:  # past the high-water mark: the learner is slow, away or restarting
            c[dropped] += 1
            return
        c[sent] += 1
        c["bytes"] += sum(len(p) for p in parts)

    def _send_sample(self, batch, k: int) -> None:
        c = self.counters
        if not self._room("dropped"):
            return
        t0 = time.perf_counter()
        try:
            parts = encode_sample(
                rig=self.rig,
                camera=batch.cameras[k],
                seq=c["sent"] + c["dropped"],
                frame=int(batch.frame_index[k]),
                shot=int(batch.shot[k]),
                capture_time=float(batch.capture_time[k]),
                image=batch.frames[k],
                trimap=batch.trimaps[k],
                prob=batch.probs[k],
                flow=batch.flows[k] if self.send_flow and batch.has_flow[k] else None,
                valid=tuple(int(v) for v in batch.valid[k]),
                source_hw=tuple(int(v) for v in batch.source_hw[k]),
                quality=self.cfg.jpeg_quality,
                rig_sent=c["sent"],
                rig_dropped=c["dropped"],
            )
        except WireError as e:
            c["dropped"] += 1
            log_event(log, "sample_encode_failed", logging.WARNING, error=e)
            return
        ms = (time.perf_counter() - t0) * 1e3
        c["encode_ms"] = ms if not c["encode_ms"] else 0.9 * c["encode_ms"] + 0.1 * ms
        self._send(parts, "sent", "dropped")

    def _send_pair(self, rows, tracks, k: int) -> None:
        c = self.counters
        if not self._room("pairs_dropped"):
            return
        try:
            parts = encode_pair(
                rig=self.rig,
                camera=rows.cameras[k],
                seq=c["pairs_sent"] + c["pairs_dropped"],
                shot=int(rows.shot[k]),
                t0=int(rows.t0[k]),
                t1=int(rows.t1[k]),
                track=int(tracks[k]),
                query=rows.query[k],
                tracked=rows.tracked[k],
                quality=self.cfg.jpeg_quality,
                rig_sent=c["sent"],
                rig_dropped=c["dropped"],
            )
        except WireError:
            c["pairs_dropped"] += 1
            return
        self._send(parts, "pairs_sent", "pairs_dropped")

    def _watch_connection(self) -> None:
        while self.monitor.poll(0):
            try:
                event = recv_monitor_message(self.monitor)["event"]
            except (zmq.ZMQError, ValueError):
                return
            up = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
            if up != self.counters["connected"]:
                self.counters["connected"] = up
                self.counters["connects"] += int(up)
                log_event(
                    log,
                    "learner_connected" if up else "learner_disconnected",
                    logging.INFO if up else logging.WARNING,
                    remote=self.remote,
                    sent=self.counters["sent"],
                    dropped=self.counters["dropped"],
                )

    def _update_rate(self) -> None:
        c, now = self.counters, time.monotonic()
        if self._rate and now - self._rate[-1][0] < 0.25:
            return
        self._rate.append((now, c["sent"], c["bytes"]))
        while len(self._rate) > 2 and now - self._rate[0][0] > _RATE_WINDOW_S:
            self._rate.popleft()
        (t0, n0, b0), (t1, n1, b1) = self._rate[0], self._rate[-1]
        if t1 > t0:
            c["samples_per_s"], c["bytes_per_s"] = (n1 - n0) / (t1 - t0), (b1 - b0) / (t1 - t0)

    # -- bundles from the learner -----------------------------------------------------------
    def _start_bundles(self, endpoint: str, dest: str) -> None:
        from exporter.signing import TrustedKey
        from exporter.transfer import DeviceAgent, PullConfig

        def installed(done) -> None:
            self.counters["bundle"] = done.version

        key = self.cfg.trusted_key
        trusted = TrustedKey.from_file(key, "learner.transport.trusted_key") if key else None
        agent = DeviceAgent(
            endpoint, dest, PullConfig(poll_s=10.0, backoff_max_s=10.0), on_install=installed, trusted=trusted
        )

        def follow() -> None:
            while not self.stop.is_set():
                try:
                    agent.run(self.stop)
                except Exception as e:  # a bundle is never worth the samples
                    self.counters["bundle_error"] = f"{type(e).__name__}: {e}"
                    log_event(log, "bundle_follow_failed", logging.WARNING, endpoint=endpoint, error=e)
                    self.stop.wait(5.0)

        self.agent_thread = threading.Thread(target=follow, name="bundles", daemon=True)
        self.agent_thread.start()
        log_event(log, "bundles_follow", endpoint=endpoint, dir=dest)

    # -- reports ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        c = dict(self.counters)
        c["encode_ms"] = round(c["encode_ms"], 2)
        return {
            "child": self.name,
            "pid": os.getpid(),
            "phase": self.phase,
            "error": self.error,
            "rig": self.rig,
            "remote": self.remote,
            "curve": self.curve,
            **c,
        }

    def close(self) -> None:
        self.stop.set()
        if self.agent_thread is not None:
            self.agent_thread.join(timeout=3.0)
        self.reporter.stop_and_send_last()
        if self.ring is not None:
            self.ring.close()
        if self.pairs is not None:
            self.pairs.close()
        self.push.disable_monitor()
        self.monitor.close(0)
        self.push.close(0)
        self.reporter.sock.close()
        self.ctx.term()


def main() -> int:
    return run_child(SenderProcess)


if __name__ == "__main__":
    sys.exit(main())
