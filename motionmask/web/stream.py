"""Live images for the console: the newest frame and masks of each camera, handed to every viewer
with a latest-frame-wins queue of one.

The SUB thread (motionmask.web.feed) puts what the daemon publishes here; each viewer's coroutine
waits on its own asyncio.Event, which the thread sets (thread-safely) when its camera has
something new. A viewer that is slow or stalled (a tablet, a socket nobody reads) is still
awaiting its previous send when newer images arrive: the event merely stays set, and the next
send takes whatever is newest then. Nothing queues behind a slow viewer, so it slows neither the
camera (a separate process that never waits for the console) nor another viewer; the images it
never got are counted as its drops.

A unit on the wire (one WebSocket binary message, or the body of a still image request):

    uint32 BE n | n bytes of JSON header | uint32 BE m | m bytes of JPEG frame | PNG or u8 mask

The header says which frame and mask it holds ({"frame": frame header or null, "mask": mask
header or null, ...}, the headers as published: docs/protocol.md), so the page can draw the mask
over the frame it belongs to and measure latency from `capture_ns`.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

FRAMES_FRESH_S = 5.0  # a camera whose last frame is older than this is shown from its masks alone
_RECENT = 32  # masks kept per stream to find the one matching a frame (a frame follows its masks)


@dataclass
class _Camera:
    frame: tuple[dict[str, Any], bytes] | None = None
    frame_at: float = 0.0
    masks: dict[str, tuple[dict[str, Any], bytes]] = field(default_factory=dict)  # kind -> newest
    recent: dict[str, OrderedDict[int, tuple[dict[str, Any], bytes]]] = field(default_factory=dict)
    tick: int = 0  # advances once per new picture: a frame, or a motion mask when no frames come
    waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)


class LiveStore:
    """Newest frame and masks per camera; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cams: dict[str, _Camera] = {}
        self.received = 0

    def _cam(self, name: str) -> _Camera:
        cam = self._cams.get(name)
        if cam is None:
            cam = self._cams[name] = _Camera()
        return cam

    def put_mask(self, header: dict[str, Any], payload: bytes) -> None:
        kind, name = str(header["kind"]), str(header["camera"])
        with self._lock:
            self.received += 1
            cam = self._cam(name)
            cam.masks[kind] = (header, payload)
            recent = cam.recent.setdefault(kind, OrderedDict())
            recent[int(header["frame"])] = (header, payload)
            while len(recent) > _RECENT:
                recent.popitem(last=False)
            if kind == "motion" and not self._frames_on(cam):
                self._advance(cam)

    def put_frame(self, header: dict[str, Any], jpeg: bytes) -> None:
        with self._lock:
            self.received += 1
            cam = self._cam(str(header["camera"]))
            cam.frame, cam.frame_at = (header, jpeg), time.monotonic()
            self._advance(cam)

    @staticmethod
    def _frames_on(cam: _Camera) -> bool:
        return cam.frame is not None and time.monotonic() - cam.frame_at < FRAMES_FRESH_S

    @staticmethod
    def _advance(cam: _Camera) -> None:
        cam.tick += 1
        for loop, event in list(cam.waiters):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that viewer's loop is closed: it is gone
                cam.waiters.discard((loop, event))

    def cameras(self) -> list[str]:
        with self._lock:
            return sorted(self._cams)

    def kinds(self, name: str) -> list[str]:
        with self._lock:
            cam = self._cams.get(name)
            return sorted(cam.masks) if cam else []

    def watch(self, name: str, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._lock:
            self._cam(name).waiters.add((loop, event))
            if self._cams[name].tick:
                event.set()  # something to show at once

    def unwatch(self, name: str, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._lock:
            cam = self._cams.get(name)
            if cam is not None:
                cam.waiters.discard((loop, event))

    def latest(self, name: str, kind: str) -> tuple[int, dict[str, Any] | None, bytes, dict[str, Any] | None, bytes]:
        """(tick, frame header, jpeg, mask header, mask payload) of the newest picture: the frame
        with its own mask of `kind` when there is one, else the newest mask of that kind."""
        with self._lock:
            cam = self._cams.get(name)
            if cam is None:
                return 0, None, b"", None, b""
            fh, jpeg, mh, mask = None, b"", None, b""
            if self._frames_on(cam):
                fh, jpeg = cam.frame
                match = cam.recent.get(kind, {}).get(int(fh["frame"]))
                if match is not None:
                    mh, mask = match
            if mh is None and kind in cam.masks:
                mh, mask = cam.masks[kind]
            return cam.tick, fh, jpeg, mh, mask


def pack_unit(
    camera: str,
    kind: str,
    frame_header: dict[str, Any] | None,
    jpeg: bytes,
    mask_header: dict[str, Any] | None,
    mask: bytes,
    **extra: Any,
) -> bytes:
    head = json.dumps(
        {
            "camera": camera,
            "kind": kind,
            "frame": frame_header,
            "mask": mask_header,
            "sent_ns": time.time_ns(),
            **extra,
        },
        separators=(",", ":"),
    ).encode()
    return b"".join((struct.pack(">I", len(head)), head, struct.pack(">I", len(jpeg)), jpeg, mask))


__all__ = ["LiveStore", "pack_unit"]
