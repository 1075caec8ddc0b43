"""The PUB side of live masks: one `MaskPublisher` per streamer process, any number of cameras.

ZeroMQ PUB never blocks a sender: each subscriber has its own queue of at most `sndhwm`
messages, and a subscriber that is slow, stalled or gone loses messages once its queue is
full, while everyone else carries on. Subscribers see such losses as gaps in `seq`.
"""

from __future__ import annotations

import errno
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from common.config import check
from common.errors import UserError
from common.log import log_event
from streamer.live import protocol

log = logging.getLogger("streamer.live.publish")

FRAME_TOPIC = "frame."  # camera frames for web consoles (motionmask/web): frame.<camera>, JPEG


@dataclass
class PublishConfig:
    enabled: bool = True  # read by whoever runs the streamer: false = create no MaskPublisher
    endpoint: str = "tcp://127.0.0.1:5555"  # loopback unless you mean it; "tcp://*:5555" = all interfaces
    latest_endpoint: str = ""  # e.g. tcp://127.0.0.1:5557: single-frame framing for latest-only viewers
    encoding: str = "png"  # png | u8
    sndhwm: int = 32  # messages queued per subscriber before that subscriber starts losing masks
    heartbeat_s: float = 2.0  # ping peers this often; a peer silent for 5x is dropped; 0 = off
    curve_secret_file: str = ""  # server's secret certificate (motionmask keys); enables CurveZMQ
    curve_clients_dir: str = ""  # public certificates (*.key) of allowed clients; "" = any client

    def validate(self) -> None:
        """Raise ValueError naming the key for values no type check catches."""
        checks = [
            ("endpoint", "://" in self.endpoint, "a ZeroMQ endpoint such as tcp://127.0.0.1:5555"),
            (
                "latest_endpoint",
                not self.latest_endpoint or "://" in self.latest_endpoint,
                "empty or a ZeroMQ endpoint such as tcp://127.0.0.1:5557",
            ),
            (
                "latest_endpoint",
                self.latest_endpoint != self.endpoint or self.endpoint.endswith(":*"),
                "different from publish.endpoint",
            ),
            ("encoding", self.encoding in protocol.ENCODINGS, "png or u8"),
            ("sndhwm", self.sndhwm >= 1, ">= 1"),
            ("heartbeat_s", self.heartbeat_s >= 0, ">= 0"),
            (
                "curve_clients_dir",
                not self.curve_clients_dir or bool(self.curve_secret_file),
                "empty unless publish.curve_secret_file is set",
            ),
        ]
        check("publish", checks)


class ClientKeys:
    """Allowed client keys, re-read when the directory changes, so adding a client's public
    certificate takes effect without restarting the daemon."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stamp: tuple = ()
        self._keys: dict[bytes, bool] = {}
        self._denied_at: dict[bytes, float] = {}  # a refused client retries: one log line a minute

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in self.directory.glob("*.key")))
            if stamp != self._stamp:
                self._keys, self._stamp = zmq.auth.load_certificates(self.directory), stamp
        except (OSError, ValueError) as e:
            log_event(log, "curve_keys_unreadable", logging.WARNING, dir=self.directory, error=e)
        allowed = key in self._keys
        now = time.monotonic()
        if not allowed and now - self._denied_at.get(key, -1e9) > 60:
            self._denied_at[key] = now
            log_event(log, "curve_client_denied", logging.WARNING, key=key.decode(errors="replace"), dir=self.directory)
        return allowed


def _load_secret(path_s: str) -> tuple[bytes, bytes]:
    path = Path(path_s).expanduser()
    if not path.is_file():
        raise UserError(
            f"publish.curve_secret_file: {path} not found; create one with "
            f"`motionmask keys {path.parent} --name {path.name.split('.')[0]}`"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise UserError(f"publish.curve_secret_file: {path} is not a ZeroMQ certificate ({e})") from None
    if not secret:
        raise UserError(
            f"publish.curve_secret_file: {path} holds no secret key; name the .key_secret file, not the public .key"
        )
    return public, secret


class MaskPublisher:
    """Publishes masks; `publish()` never blocks on subscribers and costs one PNG encode
    plus a copy. Thread-safe."""

    def __init__(self, cfg: PublishConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self.publisher_id = secrets.token_hex(4)  # in every header: subscribers tell restarts from losses
        self._sent = 0
        self._dropped = 0
        self._closed = False
        self._auth: ThreadAuthenticator | None = None
        # A private context: the authenticator and the sockets live and die with this publisher.
        self._ctx = zmq.Context()
        self._latest: zmq.Socket | None = None
        try:
            curve = self._setup_curve()
            self._pub = self._bind(cfg.endpoint, "publish.endpoint", curve, conflate=False)
            self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.latest_endpoint = ""
            if cfg.latest_endpoint:
                self._latest = self._bind(cfg.latest_endpoint, "publish.latest_endpoint", curve, conflate=True)
                self.latest_endpoint = self._latest.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            self.close()
            raise
        log_event(
            log,
            "publisher_ready",
            endpoint=self.endpoint,
            latest_endpoint=self.latest_endpoint or "-",
            encoding=cfg.encoding,
            curve=bool(curve),
        )

    def _setup_curve(self) -> tuple[bytes, bytes] | None:
        if not self.cfg.curve_secret_file:
            return None
        keys = _load_secret(self.cfg.curve_secret_file)
        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("streamer.live.publish.auth"))
        self._auth.start()
        if self.cfg.curve_clients_dir:
            d = Path(self.cfg.curve_clients_dir).expanduser()
            if not d.is_dir():
                raise UserError(
                    f"publish.curve_clients_dir: {d} is not a directory; create it and "
                    f"copy each allowed client's public .key file into it"
                )
            self._auth.configure_curve_callback(domain="*", credentials_provider=ClientKeys(d))
        else:
            self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        return keys

    def _bind(self, endpoint: str, key: str, curve: tuple[bytes, bytes] | None, conflate: bool) -> zmq.Socket:
        s = self._ctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 0)  # never hang the daemon's exit on unsent masks
        s.setsockopt(zmq.SNDHWM, 1 if conflate else self.cfg.sndhwm)
        if conflate:
            # Each subscriber's queue holds only the newest message; with the viewer's own
            # CONFLATE this bounds staleness to what sits in the kernel's socket buffers.
            s.setsockopt(zmq.CONFLATE, 1)
        if self.cfg.heartbeat_s > 0:
            ivl = int(self.cfg.heartbeat_s * 1000)
            s.setsockopt(zmq.HEARTBEAT_IVL, ivl)
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5 * ivl)
        if curve:
            s.curve_publickey, s.curve_secretkey = curve
            s.curve_server = True
        try:
            s.bind(endpoint)
        except zmq.ZMQError as e:
            s.close(0)
            if e.errno == errno.EADDRINUSE:
                raise UserError(
                    f"{key} {endpoint} is already in use (another motionmask daemon?); "
                    f"stop that process or set {key} to a free port"
                ) from None
            raise UserError(
                f"{key} {endpoint} cannot be bound: {e.strerror}; use e.g. tcp://127.0.0.1:5555 or tcp://*:5555"
            ) from None
        return s

    def publish(
        self,
        camera: str,
        kind: str,
        mask_u8: np.ndarray,
        frame: int,
        shot: int,
        capture_ns: int,
        model_version: str = "",
    ) -> bool:
        """Send one H x W uint8 mask. `capture_ns` is the wall-clock time (time.time_ns()) the
        frame was captured, so subscribers on other processes can measure latency.
        Returns False when the mask was dropped here (publisher closed, encoding failed)."""
        if mask_u8.dtype != np.uint8 or mask_u8.ndim != 2 or mask_u8.size == 0:
            raise ValueError(f"mask must be H x W uint8, got shape {mask_u8.shape} {mask_u8.dtype}")
        if self._closed:
            self._dropped += 1
            return False
        h, w = mask_u8.shape
        try:
            payload = protocol.encode_payload(mask_u8, self.cfg.encoding)
        except protocol.ProtocolError as e:
            self._drop("encode_failed", camera, kind, frame, e)
            return False
        return self.publish_encoded(camera, kind, payload, w, h, frame, shot, capture_ns, model_version)

    def publish_encoded(
        self,
        camera: str,
        kind: str,
        payload: bytes,
        width: int,
        height: int,
        frame: int,
        shot: int,
        capture_ns: int,
        model_version: str = "",
    ) -> bool:
        """Send a mask that is already encoded with `protocol.encode_payload(mask, cfg.encoding)`:
        lets several processes (the daemon's cameras) encode in parallel and share one publisher."""
        topic = protocol.topic_for(camera, kind)
        w, h = width, height
        with self._lock:
            if self._closed:
                self._dropped += 1
                return False
            seq = self._seq.get(topic, 0)
            self._seq[topic] = seq + 1
            hdr = protocol.header_bytes(
                protocol.make_header(
                    camera,
                    kind,
                    frame,
                    shot,
                    seq,
                    capture_ns,
                    time.time_ns(),
                    w,
                    h,
                    self.cfg.encoding,
                    model_version,
                    self.publisher_id,
                )
            )
            try:
                # PUB drops for a subscriber whose queue is full, never blocks; NOBLOCK guards the
                # rare transient EAGAIN of a socket being torn down.
                self._pub.send_multipart(protocol.pack_multipart(topic, hdr, payload), zmq.NOBLOCK)
                if self._latest is not None:
                    self._latest.send(protocol.pack_single(topic, hdr, payload), zmq.NOBLOCK)
            except zmq.ZMQError as e:
                self._dropped += 1
                err = e
            else:
                self._sent += 1
                return True
        self._drop("send_failed", camera, kind, frame, err, counted=True)
        return False

    def publish_frame(
        self, camera: str, jpeg: bytes, width: int, height: int, frame: int, shot: int, capture_ns: int
    ) -> bool:
        """Send a camera frame (JPEG bytes) for web consoles on topic `frame.<camera>`: the mask
        header with kind "frame" and encoding "jpeg". A topic of its own, so `mask.` subscribers
        never see it; only the multipart endpoint carries it."""
        topic = FRAME_TOPIC + protocol.topic_token(camera)
        with self._lock:
            if self._closed:
                return False
            seq = self._seq.get(topic, 0)
            self._seq[topic] = seq + 1
            hdr = protocol.header_bytes(
                protocol.make_header(
                    camera,
                    "frame",
                    frame,
                    shot,
                    seq,
                    capture_ns,
                    time.time_ns(),
                    width,
                    height,
                    "jpeg",
                    "",
                    self.publisher_id,
                )
            )
            try:
                self._pub.send_multipart(protocol.pack_multipart(topic, hdr, jpeg), zmq.NOBLOCK)
            except zmq.ZMQError:
                return False
            return True

    def _drop(self, why: str, camera: str, kind: str, frame: int, err: Exception, counted: bool = False) -> None:
        if not counted:
            with self._lock:
                self._dropped += 1
        log_event(log, "mask_dropped", logging.WARNING, reason=why, camera=camera, kind=kind, frame=frame, error=err)

    def stats(self) -> dict[str, int]:
        """Masks handed to ZeroMQ and masks dropped by this publisher. Losses at a slow
        subscriber's queue are not visible here; subscribers see them as gaps in `seq`."""
        return {"sent": self._sent, "dropped": self._dropped}

    def close(self) -> None:
        """Idempotent; unsent masks are discarded (LINGER 0)."""
        with self._lock:
            if self._ctx.closed:
                return
            self._closed = True
            for s in (getattr(self, "_pub", None), self._latest):
                if s is not None:
                    s.close(0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()
        log_event(log, "publisher_closed", sent=self._sent, dropped=self._dropped)

    def __enter__(self) -> MaskPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["FRAME_TOPIC", "MaskPublisher", "PublishConfig"]
