"""Sources that read at their own pace and never drop: a video file (PyAV) and a folder of
images (OpenCV). Both can loop; the decode index and the timestamps keep increasing."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import av

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2
import numpy as np
from av.error import FFmpegError

from common.errors import SourceError
from common.log import log_event
from streamer.config import SourceConfig
from streamer.frames import Frame
from streamer.sources.base import Source, logger, rgb, why

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# A demuxer that keeps failing without handing out a packet is at a dead end (a torn tail).
_MAX_DEMUX_ERRORS = 20


class _Iterating(Source):
    """A source driven by one generator, started at open so that a source that cannot yield a
    single frame fails in open_source, not halfway down the consumer's pipeline."""

    def _start(self, frames: Iterator[Frame]) -> None:
        self._frames = frames
        try:
            self._first: Frame | None = next(frames)
        except StopIteration:  # pragma: no cover - the generators raise SourceError instead
            raise SourceError(f"{self.source_id}: no frames") from None
        self.height, self.width = self._first.image.shape[:2]

    def __next__(self) -> Frame:
        if self.closed:
            raise StopIteration
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return next(self._frames)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._frames.close()  # runs the generator's finally: the container is closed


def open_container(path: Path) -> av.container.InputContainer:
    """av.open with errors a user can act on."""
    try:
        if path.stat().st_size == 0:
            raise SourceError(f"{path}: not a video file PyAV can decode (the file is empty)")
        return av.open(str(path))
    except SourceError:
        raise
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file or folder") from None
    except PermissionError:
        raise SourceError(f"{path}: cannot read (permission denied)") from None
    except (FFmpegError, OSError, ValueError, IndexError) as e:
        hint = ""
        try:
            with open(path, "rb") as f:
                head = f.read(12)
            if head[4:8] == b"ftyp":
                hint = "; an MP4/MOV without its index: a recording that was cut short?"
        except OSError:
            pass
        raise SourceError(f"{path}: not a video file PyAV can decode ({why(e)}{hint})") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    streams = [s for s in container.streams.video if s.codec_context is not None]
    if not streams:
        what = "no video stream" if not container.streams.video else "no decoder for its video codec"
        container.close()
        raise SourceError(f"{path}: not a video file PyAV can decode ({what})")
    return streams[0]


def _rate(stream: av.video.stream.VideoStream) -> float | None:
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r:
            rate = float(r)
            if 0.1 < rate < 1000:  # some muxers store 90000 or 1/0 as the "rate"
                return rate
    return None


class FileSource(_Iterating):
    kind = "file"
    live = False

    def __init__(self, path: Path, cfg: SourceConfig, source_id: str) -> None:
        super().__init__(source_id, cfg)
        self.path = path
        container = open_container(path)
        stream = _video_stream(container, path)
        self.fps = _rate(stream)
        self.codec = stream.codec_context.name
        if stream.frames > 0:
            # AVI counts its empty "drop" chunks as frames; its index lists only the real ones
            entries = len(stream.index_entries)
            self.frame_count = int(min(stream.frames, entries) if entries else stream.frames)
        elif container.duration and self.fps:
            self.frame_count = int(round(container.duration / 1e6 * self.fps))
        if cfg.loop:
            self.frame_count = None  # endless: a progress bar should not pretend otherwise
        self._start(self._passes(container))
        log_event(
            logger,
            "source_open",
            source=source_id,
            kind=self.kind,
            codec=self.codec,
            width=self.width,
            height=self.height,
            fps=self.fps or 0.0,
            frames=self.frame_count or "?",
        )

    def _passes(self, container: av.container.InputContainer) -> Iterator[Frame]:
        index = 0
        offset = 0.0  # added to every timestamp of the current pass
        passes = 0
        try:
            while True:
                if container is None:
                    container = open_container(self.path)
                stream = _video_stream(container, self.path)
                stream.thread_type = "AUTO"  # frame + slice threads: files are about throughput
                n, first_ts, last_ts, last_dur = 0, 0.0, 0.0, 0.0
                for vf in self._decode(container, stream):
                    t = vf.time
                    if t is None:
                        t = n / (self.fps or 25.0)
                    if n == 0:
                        first_ts = t
                    dur = float(vf.duration * vf.time_base) if vf.duration and vf.time_base else 0.0
                    last_ts, last_dur = t, dur or (1.0 / self.fps if self.fps else t - last_ts)
                    self.stats["decoded"] += 1
                    yield Frame(rgb(vf), self.source_id, index, t + offset)
                    index += 1
                    n += 1
                if n == 0:
                    raise SourceError(f"{self.path}: contains no decodable video frames")
                if passes == 0:
                    self._check_complete(container, stream, first_ts, last_ts + last_dur)
                container.close()
                container = None
                passes += 1
                if not self.cfg.loop:
                    return
                # the next pass starts one frame after this one ended
                offset += max(last_ts + last_dur - first_ts, 1e-3)
                log_event(logger, "source_loop", level=logging.DEBUG, source=self.source_id, passes=passes)
        finally:
            if container is not None:
                container.close()

    def _decode(self, container: av.container.InputContainer, stream) -> Iterator[av.VideoFrame]:
        """Decode, skipping what cannot be decoded: one warning line per bad packet."""
        demux = container.demux(stream)
        failures = 0
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except (FFmpegError, OSError) as e:
                self._corrupt(None, e, "demux")
                failures += 1
                if failures >= _MAX_DEMUX_ERRORS:
                    log_event(
                        logger,
                        "read_stopped",
                        level=logging.WARNING,
                        source=self.source_id,
                        reason=why(e),
                        errors=failures,
                    )
                    return
                demux = container.demux(stream)  # av_read_frame carries on after the bad spot
                continue
            failures = 0
            try:
                frames = packet.decode()
            except (FFmpegError, ValueError) as e:
                self._corrupt(packet, e, "decode")
                continue
            yield from frames

    def _corrupt(self, packet: av.Packet | None, e: BaseException, stage: str) -> None:
        self.stats["skipped_corrupt"] += 1
        where = {}
        if packet is not None:
            where = {k: "?" if v is None else v for k, v in (("pts", packet.pts), ("pos", packet.pos))}
        log_event(
            logger,
            "corrupt_packet",
            level=logging.WARNING,
            source=self.source_id,
            stage=stage,
            **where,
            error=why(e),
            skipped=self.stats["skipped_corrupt"],
        )

    def _check_complete(self, container, stream, first_ts: float, end_ts: float) -> None:
        """Warn when the file ends well before the length its header states: a truncated
        download, a recording cut by a power loss. Streaming formats (MPEG-TS...) state no
        length, and their estimates from the bitrate would cry wolf, so only these three."""
        if not any(f in container.format.name for f in ("matroska", "mov", "avi")):
            return
        if stream.duration and stream.time_base:
            start = float((stream.start_time or 0) * stream.time_base)
            expected = start + float(stream.duration * stream.time_base)
        elif container.duration:
            start = (container.start_time or 0) / 1e6
            expected = start + container.duration / 1e6
        else:
            return
        frame = 1.0 / self.fps if self.fps else 0.04
        if expected - end_ts > max(2 * frame, 0.01 * (expected - start)):
            log_event(
                logger,
                "ended_early",
                level=logging.WARNING,
                source=self.source_id,
                decoded_s=end_ts - first_ts,
                declared_s=expected - start,
            )


def natural_key(name: str) -> list[object]:
    """Sort key where 2.png comes before 10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    try:
        entries = list(os.scandir(folder))
    except PermissionError:
        raise SourceError(f"{folder}: cannot list folder (permission denied)") from None
    # dotfiles: macOS leaves ._name.png resource forks next to the real images
    names = [
        e.name
        for e in entries
        if not e.name.startswith(".") and e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
    ]
    return [folder / n for n in sorted(names, key=natural_key)]


def read_image(path: Path) -> np.ndarray | None:
    """An image file as RGB uint8 (8-bit from 16-bit, alpha dropped, gray expanded), or None."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class FolderSource(_Iterating):
    kind = "folder"
    live = False

    def __init__(self, folder: Path, cfg: SourceConfig, source_id: str) -> None:
        super().__init__(source_id, cfg)
        self.path = folder
        self.files = list_images(folder)
        if not self.files:
            raise SourceError(f"{folder}: folder has no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
        if cfg.folder_fps <= 0:
            raise SourceError(f"{folder}: streamer.source.folder_fps must be > 0, got {cfg.folder_fps}")
        self.fps = float(cfg.folder_fps)
        self.frame_count = None if cfg.loop else len(self.files)
        self._start(self._passes())
        log_event(
            logger,
            "source_open",
            source=source_id,
            kind=self.kind,
            images=len(self.files),
            width=self.width,
            height=self.height,
            fps=self.fps,
        )

    def _passes(self) -> Iterator[Frame]:
        index = 0
        passes = 0
        size: tuple[int, int] | None = None
        while True:
            offset = passes * len(self.files) / self.fps
            start = index
            for pos, path in enumerate(self.files):
                image = read_image(path)
                if image is None:
                    self.stats["skipped_corrupt"] += 1
                    log_event(
                        logger,
                        "unreadable_image",
                        level=logging.WARNING,
                        source=self.source_id,
                        file=path.name,
                        skipped=self.stats["skipped_corrupt"],
                    )
                    continue
                if size is not None and image.shape[:2] != size:
                    log_event(
                        logger,
                        "image_size_changed",
                        level=logging.WARNING,
                        source=self.source_id,
                        file=path.name,
                        size=f"{image.shape[1]}x{image.shape[0]}",
                        was=f"{size[1]}x{size[0]}",
                    )
                size = image.shape[:2]
                self.stats["decoded"] += 1
                # the position, not the decode index, keeps the timing of a sequence with holes
                yield Frame(image, self.source_id, index, offset + pos / self.fps)
                index += 1
            if index == start:  # also on a later pass: images deleted under a looping source
                raise SourceError(f"{self.path}: none of its {len(self.files)} images can be read")
            passes += 1
            if not self.cfg.loop:
                return
