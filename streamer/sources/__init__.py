"""Video sources: one call, `open_source(spec, cfg)`, for files, folders of images, cameras and
network streams. Each returns a `Source`: an iterator of RGB `Frame`s and a context manager.

    with open_source("clip.mp4", cfg.streamer.source) as source:
        for frame in source:
            ...

spec resolution, in order:
  int, "camera:N", "/dev/videoN", a character device  -> camera (OpenCV)
  rtsp:// rtsps:// http:// https:// udp:// tcp:// rtmp:// srt://  -> network stream (PyAV)
  an existing folder  -> its images in natural order (2.png before 10.png)
  an existing file    -> a video file (PyAV: any codec FFmpeg decodes)
  "N" (digits) with no such file -> camera N, as OpenCV users expect
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common.errors import SourceError
from streamer.config import SourceConfig
from streamer.sources.base import Source
from streamer.sources.file import FileSource, FolderSource
from streamer.sources.live import CameraBackend, LiveSource, NetworkBackend

__all__ = ["NETWORK_SCHEMES", "Source", "open_source", "redact_url"]

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp", "rtmp", "srt")


def redact_url(url: str) -> str:
    """The URL without user:password, fit for ids and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def open_source(spec: str | int | os.PathLike, cfg: SourceConfig, source_id: str | None = None) -> Source:
    """Open a video source; see the module docstring for what `spec` may be.

    Raises SourceError (a UserError) with a one-line message naming the source when it is
    missing, not video, unreachable or yields no frame. Live sources are connected and have
    delivered their first frame when this returns; files have decoded their first frame.
    """
    if isinstance(spec, bool):
        raise SourceError(f"{spec!r}: not a video source (expected a path, a URL or a camera index)")
    if isinstance(spec, int):
        return _camera(spec, cfg, source_id)
    text = os.fspath(spec)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    m = re.fullmatch(r"camera:(\d+)|/dev/video(\d+)", text.strip())
    if m:
        return _camera(int(m.group(1) or m.group(2)), cfg, source_id)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme in NETWORK_SCHEMES:
            url = redact_url(text)
            return LiveSource("network", source_id or url, url, cfg, lambda hook: NetworkBackend(text, url, cfg, hook))
        if scheme == "file":
            text = urlsplit(text).path
        else:
            raise SourceError(
                f"{redact_url(text)}: unsupported scheme {scheme}:// "
                f"(use {', '.join(s + '://' for s in NETWORK_SCHEMES)}, a path or camera:N)"
            )
    path = Path(text).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        if text.isdigit():
            return _camera(int(text), cfg, source_id)
        raise SourceError(f"{text}: no such file or folder") from None
    except PermissionError:
        raise SourceError(f"{text}: cannot read (permission denied)") from None
    except OSError as e:
        raise SourceError(f"{text}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        return FolderSource(path, cfg, source_id or path.resolve().name or str(path))
    if stat.S_ISCHR(st.st_mode):  # /dev/v4l/by-id/... links: a camera that keeps its name across USB ports
        real = os.path.realpath(path)
        m = re.fullmatch(r"/dev/video(\d+)", real)
        if m:  # keep the stable link name as the id: video numbers change across boots
            return _camera(int(m.group(1)), cfg, source_id or path.name)
        return LiveSource(
            "camera",
            source_id or path.name,
            f"camera {text}",
            cfg,
            lambda hook: CameraBackend(str(path), f"camera {text}", cfg),
        )
    return FileSource(path, cfg, source_id or path.name)


def _camera(index: int, cfg: SourceConfig, source_id: str | None) -> Source:
    label = f"camera {index}"
    return LiveSource(
        "camera", source_id or f"camera{index}", label, cfg, lambda hook: CameraBackend(index, label, cfg)
    )
