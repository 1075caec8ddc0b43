"""The soak's two subscribers to the daemon's masks: one reads every message, one never reads."""

from __future__ import annotations

import threading
from collections import Counter

import zmq

from streamer.live import protocol


class Subscribers:
    """One SUB that reads every mask (counts per camera and kind, gaps in seq, a decode of every
    50th), one that connects, subscribes and never reads."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.endpoint = endpoint
        self.received: Counter = Counter()  # (camera, kind) -> masks
        self.gaps: Counter = Counter()  # (camera, kind) -> masks missing by seq
        self.decode_errors = 0
        self._last_seq: dict[tuple, int] = {}
        self._stop = threading.Event()
        self.idle = self.ctx.socket(zmq.SUB)
        self.idle.setsockopt(zmq.SUBSCRIBE, b"")
        self.idle.connect(endpoint)
        self._thread = threading.Thread(target=self._read, daemon=True, name="subscriber")
        self._thread.start()

    def _read(self) -> None:
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, b"mask.")
        s.setsockopt(zmq.RCVHWM, 10000)
        s.connect(self.endpoint)
        n = 0
        while not self._stop.is_set():
            if not s.poll(200):
                continue
            parts = s.recv_multipart()
            try:
                msg = protocol.parse(parts)
                h = msg.header
                key = (h["camera"], h["kind"])
                self.received[key] += 1
                topic = (key, h.get("publisher", ""))
                last = self._last_seq.get(topic)
                if last is not None and h["seq"] > last + 1:
                    self.gaps[key] += h["seq"] - last - 1
                self._last_seq[topic] = h["seq"]
                n += 1
                if n % 50 == 0:
                    protocol.decode_mask(msg)
            except (protocol.ProtocolError, KeyError, ValueError):
                self.decode_errors += 1
        s.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.idle.close(0)
        self.ctx.term()
