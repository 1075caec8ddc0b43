"""Live sources: a camera (OpenCV) or a network stream (PyAV), read by a background thread that
keeps only the newest frame, watched for silence, and reconnected with exponential backoff.

Threads: one *connection* thread per attempt opens the device and reads until it fails; a
*supervisor* thread watches it and starts the next attempt. A connection stuck inside a driver
or library call that ignores its timeout is abandoned (it closes its handle if the call ever
returns) rather than waited for, so nothing here blocks longer than the configured timeouts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import av

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2
import numpy as np
from av.error import ExitError, FFmpegError

from common.errors import SourceError
from common.log import log_event
from streamer.config import SourceConfig
from streamer.frames import Frame
from streamer.sources.base import Source, logger, rgb, why

# Beyond the library's own timeouts, before the watchdog gives up on a silent connection; the
# library's error (with its better reason) normally arrives first.
_GRACE_S = 0.5
# drop_stale=False: frames held for a slow consumer before the reader waits (and the stream lags)
_QUEUE_FRAMES = 64


CorruptHook = Callable[[av.Packet, BaseException], None]  # counts and logs one undecodable packet


class Backend(Protocol):
    """One connection attempt to a device. Created fresh for every attempt."""

    fps: float | None

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None:
        """The next RGB frame, or None when the stream ended."""

    def close(self) -> None: ...


class CameraBackend:
    def __init__(self, device: int | str, label: str, cfg: SourceConfig) -> None:
        self.device, self.label, self.cfg = device, label, cfg
        self.cap: cv2.VideoCapture | None = None
        self.fps: float | None = None

    def open(self) -> None:
        # OpenCV logs its own multi-line warnings for a missing device; our one-line SourceError
        # says it better, so silence them for the open only.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            if isinstance(self.device, int):
                cap = cv2.VideoCapture(self.device)
            else:
                cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        finally:
            cv2.utils.logging.setLogLevel(level)
        self.cap = cap
        if not cap.isOpened():
            raise SourceError(f"{self.label}: cannot open (unplugged? check /dev/video*)")
        if self.cfg.camera_width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.camera_width)
        if self.cfg.camera_height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.camera_height)
        if self.cfg.camera_fps:
            cap.set(cv2.CAP_PROP_FPS, self.cfg.camera_fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue is latency too; not every backend obeys
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None

    def read(self) -> np.ndarray | None:
        assert self.cap is not None
        ok, image = self.cap.read()
        if not ok or image is None:
            return None
        if image.ndim == 2:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        if image.shape[2] == 4:
            return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


def network_options(url: str) -> dict[str, str]:
    """FFmpeg options for a live stream: a short stream analysis, so that opening takes a few
    frames rather than a second or more. Not fflags=nobuffer: it throws the analysed packets
    away, and the first frame then waits for the next keyframe (seconds on IP cameras)."""
    scheme = urlsplit(url).scheme.lower()
    opts = {"fpsprobesize": "5", "analyzeduration": "1000000"}
    if scheme in ("rtsp", "rtsps"):
        opts["rtsp_transport"] = "tcp"  # UDP loses packets behind NAT/Wi-Fi and smears frames
    if scheme == "udp":
        opts["overrun_nonfatal"] = "1"
        opts["fifo_size"] = "50000"  # in 188-byte packets: about 9 MB of slack
    return opts


class NetworkBackend:
    def __init__(self, url: str, label: str, cfg: SourceConfig, on_corrupt: CorruptHook) -> None:
        self.url, self.label, self.cfg, self.on_corrupt = url, label, cfg, on_corrupt
        self.container = None
        self.fps: float | None = None
        self.pending: deque = deque()

    def open(self) -> None:
        try:
            self.container = av.open(
                self.url, timeout=(self.cfg.open_timeout_s, self.cfg.read_timeout_s), options=network_options(self.url)
            )
        except ExitError:
            raise SourceError(
                f"{self.label}: no stream within {self.cfg.open_timeout_s:g} s (open_timeout_s)"
            ) from None
        except av.error.ProtocolNotFoundError:
            raise SourceError(f"{self.label}: this FFmpeg build cannot speak {urlsplit(self.url).scheme}://") from None
        except (FFmpegError, OSError) as e:
            raise SourceError(f"{self.label}: cannot open stream ({why(e)})") from None
        if not self.container.streams.video:
            raise SourceError(f"{self.label}: the stream has no video")
        stream = self.container.streams.video[0]
        # slice threads only: frame threads add one frame of latency per thread
        stream.thread_type = "SLICE"
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate and 0 < float(rate) < 1000 else None
        self.demux = self.container.demux(stream)

    def read(self) -> np.ndarray | None:
        while not self.pending:
            try:
                packet = next(self.demux)
            except StopIteration:
                return None
            except ExitError:
                raise SourceError(f"{self.label}: no data for {self.cfg.read_timeout_s:g} s (read_timeout_s)") from None
            try:
                self.pending.extend(packet.decode())
            except (FFmpegError, ValueError) as e:
                self.on_corrupt(packet, e)
        return rgb(self.pending.popleft())

    def close(self) -> None:
        if self.container is not None:
            self.container.close()


class _Connection:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.state = "opening"  # -> open -> done
        self.reason = ""  # why it ended, a full one-line message
        self.frames = 0
        self.last_frame = time.monotonic()
        self.abandoned = False


class LiveSource(Source):
    """Frames from a background reader; `next()` returns the newest one.

    When the device goes silent (nothing for read_timeout_s) or the stream ends, the source
    reconnects with exponential backoff, one log line per attempt, and `next()` waits
    meanwhile. It raises SourceError once reconnecting is off or max_reconnects consecutive
    attempts failed. The decode index never resets; frames replaced before the consumer took
    them are counted in stats["dropped_stale"] and leave gaps in the index.
    """

    live = True

    def __init__(
        self, kind: str, source_id: str, label: str, cfg: SourceConfig, make_backend: Callable[[CorruptHook], Backend]
    ) -> None:
        super().__init__(source_id, cfg)
        self.kind = kind
        self.label = label
        self._make_backend = make_backend
        self._cond = threading.Condition()  # an RLock: close() from a signal handler cannot deadlock
        self._stop = threading.Event()
        self._buf: deque[Frame] = deque()
        self._error: SourceError | None = None
        self._next_index = 0
        # the connection as a person reads it (the daemon's status, the web console): state
        # running | reconnecting | failed, the last drop's or failure's reason, and since when
        self.link: dict[str, Any] = {"state": "opening", "error": "", "since": time.time()}
        # The first attempt is not retried: a wrong URL or an unplugged camera fails here, fast.
        conn = self._connect()
        self._wait(lambda: conn.state != "opening", self._open_budget())
        if conn.state == "open":
            self._wait(lambda: conn.frames > 0 or conn.state == "done", cfg.read_timeout_s + _GRACE_S)
        if conn.frames == 0:
            conn.abandoned = True
            self._stop.set()
            reason = conn.reason or (
                f"{label}: no frame within {cfg.read_timeout_s:g} s (read_timeout_s)"
                if conn.state == "open"
                else f"{label}: no answer within {cfg.open_timeout_s:g} s (open_timeout_s)"
            )
            raise SourceError(reason)
        with self._cond:
            self.height, self.width = self._buf[-1].image.shape[:2]
        self.fps = conn.backend.fps
        log_event(
            logger,
            "source_open",
            source=source_id,
            kind=kind,
            width=self.width,
            height=self.height,
            fps=self.fps or 0.0,
        )
        self.link = {"state": "running", "error": "", "since": time.time()}
        self._supervisor = threading.Thread(
            target=self._supervise, args=(conn,), daemon=True, name=f"source-{source_id}"
        )
        self._supervisor.start()

    # -- consumer side

    def __next__(self) -> Frame:
        with self._cond:
            while True:
                if self._buf:
                    frame = self._buf.popleft()
                    self._cond.notify_all()  # a reader waiting for room (drop_stale off)
                    return frame
                if self._error is not None:
                    raise self._error
                if self._stop.is_set():
                    raise StopIteration
                # short waits: a flag set by a signal handler is seen promptly
                self._cond.wait(0.25)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self._stop.set()
        with self._cond:
            self._buf.clear()
            self._cond.notify_all()
        sup = getattr(self, "_supervisor", None)
        if sup is not None and sup is not threading.current_thread():
            sup.join(timeout=1.0)

    # -- reader side

    def _open_budget(self) -> float:
        # PyAV bounds avformat_open_input and find_stream_info by open_timeout_s each
        return 2 * self.cfg.open_timeout_s + _GRACE_S

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: done() or self._stop.is_set(), timeout)

    def _connect(self) -> _Connection:
        conn = _Connection(self._make_backend(self.corrupt))
        threading.Thread(
            target=self._read_loop, args=(conn,), daemon=True, name=f"source-{self.source_id}-reader"
        ).start()
        return conn

    def _read_loop(self, conn: _Connection) -> None:
        reason = ""
        backend = conn.backend
        try:
            backend.open()
            with self._cond:
                if conn.abandoned:
                    return
                conn.state = "open"
                conn.last_frame = time.monotonic()
                self._cond.notify_all()
            while not (conn.abandoned or self._stop.is_set()):
                image = backend.read()
                if image is None:
                    reason = f"{self.label}: " + (
                        "stream ended" if self.kind == "network" else "no frame from the device (unplugged?)"
                    )
                    break
                if not self._publish(conn, image):
                    break
        except SourceError as e:
            reason = str(e)
        except Exception as e:  # a reader thread must always report, never die silently
            reason = f"{self.label}: {why(e)}"
        finally:
            try:
                backend.close()
            except Exception:
                pass
            with self._cond:
                conn.state = "done"
                conn.reason = conn.reason or reason or f"{self.label}: reader stopped"
                self._cond.notify_all()

    def _publish(self, conn: _Connection, image: np.ndarray) -> bool:
        ts = time.time()  # wall clock at capture: what a robot correlates with its other sensors
        with self._cond:
            if self.cfg.drop_stale:
                if self._buf:
                    self.stats["dropped_stale"] += len(self._buf)
                    self._buf.clear()
            else:
                while len(self._buf) >= _QUEUE_FRAMES and not (conn.abandoned or self._stop.is_set()):
                    self._cond.wait(0.1)
                    conn.last_frame = time.monotonic()  # the consumer is slow, the device is not silent
            if conn.abandoned or self._stop.is_set():
                return False
            self._buf.append(Frame(image, self.source_id, self._next_index, ts))
            self._next_index += 1
            self.stats["decoded"] += 1
            conn.frames += 1
            conn.last_frame = time.monotonic()
            self._cond.notify_all()
        return True

    def corrupt(self, packet: av.Packet, e: BaseException) -> None:
        with self._cond:
            self.stats["skipped_corrupt"] += 1
            n = self.stats["skipped_corrupt"]
        log_event(
            logger,
            "corrupt_packet",
            level=logging.WARNING,
            source=self.source_id,
            stage="decode",
            pts=packet.pts if packet.pts is not None else "?",
            error=why(e),
            skipped=n,
        )

    def _watch(self, conn: _Connection) -> str:
        """Block until the connection ends or goes silent; return why ("" when closing)."""
        limit = self.cfg.read_timeout_s + _GRACE_S
        with self._cond:
            while True:
                if self._stop.is_set():
                    return ""
                if conn.state == "done":
                    return conn.reason
                silent = time.monotonic() - conn.last_frame
                if silent > limit:
                    conn.abandoned = True
                    return f"{self.label}: no frame for {silent:.1f} s (read_timeout_s)"
                self._cond.wait(min(0.25, limit - silent + 0.01))

    def _await_open(self, conn: _Connection) -> str:
        """ "" once open, else why not."""
        if not self._wait(lambda: conn.state != "opening", self._open_budget()):
            conn.abandoned = True
            return f"{self.label}: no answer within {self.cfg.open_timeout_s:g} s (open_timeout_s)"
        return "" if conn.state == "open" else conn.reason

    def _fail(self, message: str) -> None:
        log_event(logger, "source_failed", level=logging.ERROR, source=self.source_id, reason=message)
        self.link = {"state": "failed", "error": message, "since": time.time()}
        with self._cond:
            self._error = SourceError(message)
            self._cond.notify_all()

    def _supervise(self, conn: _Connection) -> None:
        cfg = self.cfg
        failures = 0  # consecutive attempts without a frame; a delivering connection resets it
        backoff = cfg.reconnect_backoff_s
        try:
            while not self._stop.is_set():
                reason = self._watch(conn)
                if self._stop.is_set():
                    return
                if conn.frames > 0:
                    failures, backoff = 0, cfg.reconnect_backoff_s
                log_event(
                    logger,
                    "source_dropped",
                    level=logging.WARNING,
                    source=self.source_id,
                    reason=reason,
                    frames=conn.frames,
                )
                self.link = {"state": "reconnecting", "error": reason, "since": time.time()}
                dropped = reason
                while True:
                    if not cfg.reconnect:
                        self._fail(f"{reason}; reconnect is off")
                        return
                    if cfg.max_reconnects and failures >= cfg.max_reconnects:
                        self._fail(f"{reason}; gave up after {failures} reconnect attempts")
                        return
                    failures += 1
                    with self._cond:
                        self.stats["reconnects"] += 1
                    log_event(
                        logger,
                        "reconnect",
                        level=logging.WARNING,
                        source=self.source_id,
                        attempt=failures,
                        in_s=backoff,
                        after=reason,
                    )
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, max(cfg.reconnect_backoff_max_s, cfg.reconnect_backoff_s))
                    conn = self._connect()
                    reason = self._await_open(conn)
                    if self._stop.is_set():
                        return
                    if not reason:
                        log_event(logger, "reconnected", source=self.source_id, attempt=failures)
                        self.link = {"state": "running", "error": dropped, "since": time.time()}  # the last drop
                        break
        except Exception as e:  # never leave the consumer waiting on a dead supervisor
            self._fail(f"{self.label}: reader failed ({why(e)})")
