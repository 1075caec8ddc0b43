"""Small real test media, written with PyAV and OpenCV. Shared by the tests of every package.

frames = moving_square(30, 64, 48)                  # list of RGB uint8 arrays
frames, masks = flat_box_clip()                     # a flat box over texture, and its masks
write_video(tmp_path / "a.mp4", frames, fps=25)     # H.264 MP4
write_video(tmp_path / "g.mkv", gray_frames, codec="ffv1", pix_fmt="gray")
write_video(tmp_path / "v.mkv", frames, timestamps=[0, 0.04, 0.5, ...])   # variable rate
write_images(tmp_path / "seq", frames, ext=".png")  # 0.png, 1.png, ...
data = encode_stream(frames, fps=25)                # MPEG-TS bytes
with StreamServer(data) as server:                  # serve them on tcp://127.0.0.1:PORT
    open_source(server.url, cfg)
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from bench.common import free_port  # noqa: F401  (the tests' one source of ports)

# Per-codec defaults: x264 prints its CPU capabilities on every encoder (keep test output
# readable); mpeg4's default 200 kb/s smears small motions away (keep frames recognisable).
_DEFAULTS = {"libx264": {"x264-params": "log-level=none"}, "mpeg4": {"b": "4000000"}}


def moving_square(
    n: int, width: int = 64, height: int = 48, size: int = 12, step: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """`n` RGB frames: a bright square moving right over a fixed textured background, so that
    flow, superpixels and codecs all have something real to chew on."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2.0)
    frames = []
    for i in range(n):
        img = background.copy()
        x = (i * step) % max(1, width - size)
        y = (height - size) // 2
        img[y : y + size, x : x + size] = (250, 40, 40)
        frames.append(img)
    return frames


def flat_box_clip(
    n: int = 16, size: int = 70, colour: tuple[int, int, int] = (90, 140, 90), background: np.ndarray | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A flat box (no texture inside: its flow is not measurable there) gliding 3 px per frame over
    a textured 240x180 background (default: sharp noise); frames and exact masks."""
    if background is None:
        rng = np.random.default_rng(3)
        background = cv2.GaussianBlur(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8), (0, 0), 1.2)
    frames, masks = [], []
    for t in range(n):
        img, m = background.copy(), np.zeros(background.shape[:2], bool)
        x, y = 40 + 3 * t, 55
        img[y : y + size, x : x + size] = colour
        m[y : y + size, x : x + size] = True
        frames.append(img)
        masks.append(m)
    return frames, masks


def _to_av(frame: np.ndarray) -> av.VideoFrame:
    frame = np.ascontiguousarray(frame)
    return av.VideoFrame.from_ndarray(frame, format="gray" if frame.ndim == 2 else "rgb24")


def _encode(
    container: av.container.OutputContainer,
    frames: Sequence[np.ndarray],
    fps: float,
    codec: str,
    pix_fmt: str | None,
    timestamps: Sequence[float] | None,
    options: dict | None,
    rotation: int | None,
) -> None:
    h, w = frames[0].shape[:2]
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height = w, h
    stream.pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
    stream.options = {**_DEFAULTS.get(codec, {}), **(options or {})}
    if rotation:
        stream.set_display_rotation(rotation)
    tb = Fraction(1, 1000)
    if timestamps is not None:
        stream.codec_context.time_base = tb
    for i, image in enumerate(frames):
        vf = _to_av(image)
        if timestamps is not None:
            vf.pts, vf.time_base = int(round(timestamps[i] * 1000)), tb
        for packet in stream.encode(vf):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_video(
    path: str | Path,
    frames: Sequence[np.ndarray],
    fps: float = 25,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    timestamps: Sequence[float] | None = None,
    format: str | None = None,
    options: dict | None = None,
    container_options: dict | None = None,
    rotation: int | None = None,
) -> Path:
    """Encode RGB (HxWx3) or gray (HxW) uint8 frames into a real video file and return its path.

    codec: any PyAV encoder (libx264, mpeg4, mjpeg, ffv1...); pix_fmt defaults to yuv420p
    (yuvj420p for mjpeg); odd sizes need a pix_fmt without chroma subsampling (yuv444p, gray).
    timestamps: seconds per frame for a variable frame rate (ms precision); default i/fps.
    format: container name when the suffix does not say it (e.g. "mpegts").
    container_options: e.g. {"movflags": "frag_keyframe+empty_moov"}.
    rotation: display rotation in degrees counter-clockwise, as phones store it.
    """
    path = Path(path)
    with av.open(str(path), "w", format=format, options=container_options or {}) as container:
        _encode(container, frames, fps, codec, pix_fmt, timestamps, options, rotation)
    return path


def write_empty_video(
    path: str | Path, width: int = 64, height: int = 48, codec: str = "mpeg4", format: str | None = None
) -> Path:
    """A container with a video stream header and no frames at all (use .avi: MP4 and MKV
    writers drop a stream that never got a packet)."""
    path = Path(path)
    container = av.open(str(path), "w", format=format)
    stream = container.add_stream(codec, rate=25)
    stream.width, stream.height = width, height
    container.start_encoding()
    container.close()
    return path


def encode_stream(
    frames: Sequence[np.ndarray], fps: float = 25, codec: str = "libx264", format: str = "mpegts", gop: int = 10
) -> bytes:
    """Frames encoded for live streaming (short GOP, no B-frames), as the bytes of a
    streamable container: what a camera or an encoder box sends."""
    buf = io.BytesIO()
    options = {"g": str(gop), "bf": "0"}
    if codec == "libx264":
        options.update(preset="ultrafast", tune="zerolatency")
    with av.open(buf, "w", format=format) as container:
        _encode(container, frames, fps, codec, None, None, options, None)
    return buf.getvalue()


def write_images(
    folder: str | Path, frames: Sequence[np.ndarray], ext: str = ".png", names: Sequence[str] | None = None
) -> list[Path]:
    """Write RGB or gray frames as image files (0.png, 1.png... or `names`); return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(frames):
        path = folder / (names[i] if names else f"{i}{ext}")
        bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(path.suffix, bgr)
        assert ok, path
        path.write_bytes(data.tobytes())
        paths.append(path)
    return paths


def process_gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether process `pid` is gone within `timeout` seconds (for children the test did not start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class StreamServer:
    """A live stream on tcp://127.0.0.1:PORT: every client that connects receives `data`
    (e.g. from encode_stream) paced over `seconds`, as a live encoder would send it, and
    is then disconnected. silent=True accepts clients and never sends a byte; stall_after=S
    sends S seconds' worth and then goes quiet with the connection left open (a hung encoder).

    stop() closes the listener and cuts every client (the camera "goes away"); start()
    listens again on the same port. Use as a context manager.
    """

    def __init__(
        self,
        data: bytes = b"",
        seconds: float = 2.0,
        silent: bool = False,
        stall_after: float | None = None,
        port: int = 0,
    ) -> None:
        self.data, self.seconds, self.silent, self.stall_after = data, seconds, silent, stall_after
        self.port = port
        self.connections = 0  # clients served so far
        self._listener: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> StreamServer:
        self._stop.clear()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(4)
        s.settimeout(0.1)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> StreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._clients.append(conn)
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.silent:
                self._stop.wait()
                return
            chunk = 188 * 7  # MPEG-TS packets, as a UDP/TCP streamer sends them
            pause = self.seconds * chunk / max(1, len(self.data))
            t0 = time.monotonic()
            for i in range(0, len(self.data), chunk):
                if self._stop.is_set():
                    return
                if self.stall_after is not None and time.monotonic() - t0 > self.stall_after:
                    self._stop.wait()
                    return
                conn.sendall(self.data[i : i + chunk])
                time.sleep(pause)
        except OSError:
            pass
        finally:
            with self._lock:
                if conn in self._clients:
                    self._clients.remove(conn)
            conn.close()


def stream_udp(port: int, frames: Sequence[np.ndarray], fps: float = 25, stop: threading.Event | None = None) -> None:
    """Send frames live to udp://127.0.0.1:PORT as MPEG-TS with PyAV itself, paced at `fps`,
    until they run out or `stop` is set. Run it in a thread; UDP needs no listener to send."""
    stop = stop or threading.Event()
    h, w = frames[0].shape[:2]
    with av.open(f"udp://127.0.0.1:{port}?pkt_size=1316", "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {**_DEFAULTS["libx264"], "g": "10", "bf": "0", "preset": "ultrafast", "tune": "zerolatency"}
        for image in frames:
            if stop.is_set():
                break
            for packet in stream.encode(_to_av(image)):
                container.mux(packet)
            time.sleep(1.0 / fps)
