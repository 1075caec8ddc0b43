"""A live camera on loopback for bench.soak: a clip's frames, looped forever, encoded as H.264 in
MPEG-TS and sent to every client of tcp://127.0.0.1:PORT, paced at the clip's frame rate with
monotonic timestamps (what an encoder box sends; a new client joins mid-stream at the next
keyframe). The soak stops the camera by killing this process and brings it back on the same port.

    python -m bench.soak.stream --port 8554 --clip tests/data/sample.mp4
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from fractions import Fraction

import av
import cv2
import numpy as np


class Broadcast:
    """A file-like sink for PyAV's muxer: what it writes goes to every connected client; a client
    that cannot keep up (its send buffer full) or went away is dropped."""

    def __init__(self) -> None:
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()

    def write(self, data: bytes) -> int:
        with self.lock:
            for c in list(self.clients):
                try:
                    c.sendall(data)
                except OSError:
                    self.clients.remove(c)
                    c.close()
        return len(data)

    def add(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        with self.lock:
            self.clients.append(conn)


def load_frames(clip: str, width: int) -> tuple[list[np.ndarray], float]:
    with av.open(clip) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or 10)
        frames = []
        for f in c.decode(s):
            img = f.to_ndarray(format="rgb24")
            h = int(round(img.shape[0] * width / img.shape[1] / 2)) * 2
            frames.append(np.ascontiguousarray(cv2.resize(img[:, ::-1], (width, h), interpolation=cv2.INTER_AREA)))
    return frames, fps


def serve(port: int, clip: str, width: int) -> None:
    frames, fps = load_frames(clip, width)
    out = Broadcast()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            out.add(conn)

    threading.Thread(target=accept, daemon=True).start()
    container = av.open(out, "w", format="mpegts")
    rate = Fraction(fps).limit_denominator(1001)
    stream = container.add_stream("libx264", rate=rate)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    stream.options = {
        "x264-params": "log-level=none",
        "g": "10",
        "bf": "0",
        "preset": "ultrafast",
        "tune": "zerolatency",
    }
    t0, i = time.monotonic(), 0
    while True:
        vf = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
        vf.pts = i
        vf.time_base = 1 / rate
        for packet in stream.encode(vf):
            container.mux(packet)
        i += 1
        wait = t0 + i / fps - time.monotonic()
        if wait > 0:
            time.sleep(wait)


def main() -> int:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description="Serve a clip, looped, as a live MPEG-TS stream on loopback TCP (the soak's network camera).",
        epilog="example: python -m bench.soak.stream --port 8554 --clip tests/data/sample.mp4",
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clip", required=True)
    p.add_argument("--width", type=int, default=320)
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(a.port, a.clip, a.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
