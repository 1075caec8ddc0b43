"""Which devices pulled which bundle and when, as the bundle server saw it (exporter.transfer).

The protocol carries no device id, so a device is its peer address (the IP ZeroMQ reports for
the TCP connection; devices behind one NAT share it). A pull is complete when every byte of
every file of the version was served to that peer: chunks may come in any order and twice (a
device that timed out asks again), so the served ranges are counted by offset. A pull that
stops half-way (a refused bundle, a device gone) is dropped after STALE_S without counting.

Thread-safe: the server's thread records, the daemon's status handler reads.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

KEPT = 50  # completed pulls the status lists (newest first); the counters cover all of them
STALE_S = 3600.0  # an unfinished pull forgotten after this long without a chunk


class PullLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], dict[str, Any]] = {}  # (peer, version) -> pull in progress
        self._done: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEPT)
        self._devices: dict[str, dict[str, Any]] = {}  # peer -> its last completed pull
        self.completed = 0
        self.bytes = 0

    def chunk(self, peer: str, version: str, name: str, offset: int, size: int, sizes: dict[str, int]) -> None:
        """`size` bytes at `offset` of file `name` of `version` (whose files are `sizes`) went to `peer`."""
        now = time.time()
        with self._lock:
            self.bytes += size
            key = (peer, version)
            p = self._open.get(key)
            if p is None:
                p = self._open[key] = {"started": now, "ranges": {}, "bytes": 0}
            p["last"] = now
            p["bytes"] += size
            p["ranges"].setdefault(name, {})[offset] = size
            if all(sum(p["ranges"].get(n, {}).values()) >= b for n, b in sizes.items()):
                del self._open[key]
                rec = {
                    "device": peer,
                    "version": version,
                    "time": round(now, 3),
                    "seconds": round(now - p["started"], 3),
                    "bytes": p["bytes"],
                }
                self._done.appendleft(rec)
                self._devices[peer] = rec
                self.completed += 1
            for k in [k for k, v in self._open.items() if now - v["last"] > STALE_S]:
                del self._open[k]

    def status(self) -> dict[str, Any]:
        """pulls_total, bytes_served, pulls (newest first), devices (each with its last pull),
        in_progress."""
        with self._lock:
            return {
                "pulls_total": self.completed,
                "bytes_served": self.bytes,
                "pulls": list(self._done),
                "devices": sorted(self._devices.values(), key=lambda r: -r["time"]),
                "in_progress": [
                    {"device": peer, "version": v, "started": round(p["started"], 3), "bytes": p["bytes"]}
                    for (peer, v), p in self._open.items()
                ],
            }


__all__ = ["PullLog"]
