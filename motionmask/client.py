"""Python API for subscribers of live masks.

    from motionmask.client import subscribe
    for header, mask in subscribe("tcp://127.0.0.1:5555", topic="mask.cam0.", count=100):
        print(header["frame"], mask.shape)

`MaskSubscriber` is the same thing as an object with `recv(timeout)`. Messages that are not
schema-1 masks are skipped with one warning line each; they never raise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from common.errors import UserError
from common.log import log_event
from streamer.live import protocol

log = logging.getLogger("motionmask.client")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"

# What a monitor event means to someone waiting for masks; each is said once per connection state.
_NOTES = {
    zmq.EVENT_CONNECT_RETRIED: (
        logging.WARNING,
        "endpoint_unreachable",
        "nothing answers there yet; still waiting (Ctrl-C or a timeout ends it)",
    ),
    zmq.EVENT_CONNECTED: (logging.INFO, "connected", ""),
    zmq.EVENT_DISCONNECTED: (logging.WARNING, "disconnected", "publisher went away; reconnecting"),
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: (
        logging.WARNING,
        "curve_denied",
        "the publisher refused this client's key; ask its operator to copy "
        "your public .key into publish.curve_clients_dir",
    ),
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: (
        logging.WARNING,
        "handshake_failed",
        "security mismatch: does the publisher use CURVE (then pass its public key) or not (then pass none)?",
    ),
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: (
        logging.WARNING,
        "handshake_failed",
        "wrong server key, or the publisher's security differs from ours",
    ),
}


def _load_cert(path: str | Path, what: str, need_secret: bool) -> tuple[bytes, bytes | None]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what}: {p} not found")
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as e:
        raise UserError(f"{what}: {p} is not a ZeroMQ certificate ({e})") from None
    if need_secret and not secret:
        raise UserError(f"{what}: {p} holds no secret key; name the .key_secret file")
    return public, secret


# The monitor events _NOTES speaks of.
_MONITORED = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _set_options(s: zmq.Socket, latest: bool, rcvhwm: int, max_msg_bytes: int) -> None:
    """Queue, size limit, reconnect and heartbeat settings; all before connect."""
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 1 if latest else rcvhwm)
    s.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)  # a rogue peer cannot make us buffer gigabytes
    s.setsockopt(zmq.RECONNECT_IVL, 200)
    s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    # A publisher that vanishes without closing (power cut, cable) is noticed within 10 s,
    # and the socket reconnects when it is back.
    s.setsockopt(zmq.HEARTBEAT_IVL, 2000)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
    if latest:
        s.setsockopt(zmq.CONFLATE, 1)  # must precede connect


def _set_curve(s: zmq.Socket, curve_server_key: str | Path | None, curve_secret_file: str | Path | None) -> None:
    """CURVE encryption when the publisher's public key is given: with this client's key, or an ephemeral one."""
    if curve_server_key:
        server_public, _ = _load_cert(curve_server_key, "curve server key", need_secret=False)
        if curve_secret_file:
            public, secret = _load_cert(curve_secret_file, "curve secret file", need_secret=True)
        else:
            public, secret = zmq.curve_keypair()
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_public, public, secret
    elif curve_secret_file:
        raise UserError("a curve secret file needs the publisher's public key too (curve server key)")


class MaskSubscriber:
    """A SUB socket that yields decoded masks.

    endpoint: the publisher's `publish.endpoint`, or with latest=True its `publish.latest_endpoint`.
    topic: prefix(es) to subscribe to: "mask." (all), "mask.cam0." (one camera), "mask.cam0.trimap".
    latest: keep only the newest message (ZeroMQ CONFLATE); the endpoint must speak the
        single-frame framing. One latest-only subscriber sees one stream well: subscribe to one
        full topic, or open one subscriber per stream.
    curve_server_key: the publisher's public certificate file (server.key) to encrypt with CURVE.
    curve_secret_file: this client's secret certificate; default an ephemeral key, which only a
        publisher without publish.curve_clients_dir accepts.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        topic: str | Sequence[str] = "mask.",
        *,
        latest: bool = False,
        curve_server_key: str | Path | None = None,
        curve_secret_file: str | Path | None = None,
        rcvhwm: int = 32,
        max_msg_bytes: int = 64 << 20,
    ) -> None:
        if "://" not in endpoint:
            raise UserError(f"endpoint {endpoint!r} is not a ZeroMQ endpoint; use e.g. {DEFAULT_ENDPOINT}")
        topics = [topic] if isinstance(topic, str) else list(topic)
        self.endpoint = endpoint
        self.latest = latest
        self._last_seq: dict[str, tuple[str, int]] = {}  # topic -> (publisher id, seq)
        self._received = self._rejected = self._missed = 0
        self._noted: set[str] = set()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        s = self._sock
        _set_options(s, latest, rcvhwm, max_msg_bytes)
        try:
            _set_curve(s, curve_server_key, curve_secret_file)
            self._monitor = s.get_monitor_socket(_MONITORED)
            for t in topics:
                s.setsockopt(zmq.SUBSCRIBE, t.encode())
            s.connect(endpoint)
        except zmq.ZMQError as e:
            self.close()
            raise UserError(f"endpoint {endpoint}: {e.strerror}; use e.g. {DEFAULT_ENDPOINT}") from None
        except BaseException:
            self.close()
            raise
        self._poller = zmq.Poller()
        self._poller.register(s, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def recv(self, timeout: float | None = None) -> tuple[dict[str, Any], np.ndarray] | None:
        """The next valid mask as (header, H x W uint8 array), or None after `timeout` seconds
        (None = wait forever). The header gains `recv_ns`, the wall-clock time of arrival."""
        out = self.recv_raw(timeout)
        return None if out is None else out[:2]

    def recv_raw(self, timeout: float | None = None) -> tuple[dict[str, Any], np.ndarray, bytes] | None:
        """Like recv, plus the payload as sent (PNG or raw bytes), e.g. to store it unchanged."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            events = dict(self._poller.poll(wait_ms))
            if self._monitor in events:
                self._drain_monitor()
            if self._sock in events:
                out = self._take(self._sock.recv_multipart())
                if out is not None:
                    return out
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _take(self, parts: list[bytes]) -> tuple[dict[str, Any], np.ndarray, bytes] | None:
        recv_ns = time.time_ns()
        try:
            msg = protocol.parse(parts)
            mask = protocol.decode_mask(msg)
        except protocol.ProtocolError as e:
            self._rejected += 1
            topic = parts[0][:64].decode("ascii", "replace") if parts else ""
            log_event(log, "message_rejected", logging.WARNING, endpoint=self.endpoint, topic=topic, reason=e)
            return None
        self._received += 1
        seq, pid = msg.header["seq"], str(msg.header.get("publisher", ""))
        last_pid, last = self._last_seq.get(msg.topic, (pid, None))
        # A new publisher id, or seq going back, is a restart: count afresh, lose nothing.
        if last is not None and last_pid == pid and seq > last + 1:
            self._missed += seq - last - 1
        self._last_seq[msg.topic] = (pid, seq)
        header = dict(msg.header, recv_ns=recv_ns)
        return header, mask, msg.payload

    def _drain_monitor(self) -> None:
        while self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            note = _NOTES.get(ev["event"])
            if note is None:
                continue
            level, name, text = note
            # Say each thing once until the state changes: retries come every RECONNECT_IVL.
            if name in self._noted:
                continue
            if name == "connected":
                self._noted = {"connected"}
            else:
                self._noted.discard("connected")
                self._noted.add(name)
            fields = {"endpoint": self.endpoint}
            if text:
                fields["note"] = text
            log_event(log, name, level, **fields)

    def stats(self) -> dict[str, int]:
        """received: valid masks; rejected: malformed or foreign messages; missed: masks the
        publisher sent on our topics that never arrived (gaps in seq: a full queue, or
        conflation in latest mode)."""
        return {"received": self._received, "rejected": self._rejected, "missed": self._missed}

    def close(self) -> None:
        if self._ctx.closed:
            return
        mon = getattr(self, "_monitor", None)
        if mon is not None:
            self._sock.disable_monitor()
            mon.close(0)
        self._sock.close(0)
        self._ctx.term()

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        while True:
            out = self.recv()
            if out is not None:
                yield out

    def __enter__(self) -> MaskSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(
    endpoint: str = DEFAULT_ENDPOINT,
    topic: str | Sequence[str] = "mask.",
    *,
    count: int = 0,
    timeout: float | None = None,
    **options: Any,
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Yield (header, mask) until `count` masks (0 = no limit) or until no mask has come for
    `timeout` seconds (None = wait forever). `options` go to MaskSubscriber."""
    with MaskSubscriber(endpoint, topic, **options) as sub:
        n = 0
        while not count or n < count:
            out = sub.recv(timeout)
            if out is None:
                return
            n += 1
            yield out


__all__ = ["DEFAULT_ENDPOINT", "MaskSubscriber", "subscribe"]
