"""Config sections of `motionmask run`: `cameras:` (one streamer process each) and `daemon:`
(supervisor, control endpoint, restarts, shutdown). Composed into `motionmask.config.Config`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from common.config import check, from_dict, merge, to_dict
from streamer.config import StreamerConfig

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class CameraConfig:
    name: str = ""  # topic token (mask.<name>.motion) and ring-buffer camera id; "" = cam<index>
    source: str | int = ""  # path, folder, camera:N, /dev/videoN, rtsp://... (see streamer/sources/__init__.py)
    enabled: bool = True
    loop: bool = False  # files and folders start again at the end (same as streamer.source.loop)
    realtime: bool = True  # files and folders play at their frame rate, as a camera would; false = flat out
    # Per-camera overrides of the top-level `streamer:` section, same keys, e.g.
    # {source: {camera_width: 1280}, flow: {width: 240}}
    streamer: dict[str, Any] = field(default_factory=dict)


@dataclass
class DaemonConfig:
    control_endpoint: str = "tcp://127.0.0.1:5556"  # JSON requests (status, ping); `motionmask status` asks here
    shutdown_timeout_s: float = 5.0  # SIGINT/SIGTERM: children get this long to exit, then SIGKILL
    restart_backoff_s: float = 1.0  # first wait before restarting a crashed child; doubles up to the max
    restart_backoff_max_s: float = 30.0
    restart_reset_s: float = 30.0  # a child that ran this long counts as healthy: backoff starts over
    max_restarts: int = 0  # consecutive failed restarts before a camera is marked failed; 0 = never give up
    stats_interval_s: float = 10.0  # one camera_stats log line per camera this often; 0 = off

    def validate(self) -> None:
        checks = [
            ("control_endpoint", "://" in self.control_endpoint, "a ZeroMQ endpoint such as tcp://127.0.0.1:5556"),
            ("shutdown_timeout_s", self.shutdown_timeout_s > 0, "> 0"),
            ("restart_backoff_s", self.restart_backoff_s > 0, "> 0"),
            (
                "restart_backoff_max_s",
                self.restart_backoff_max_s >= self.restart_backoff_s,
                ">= daemon.restart_backoff_s",
            ),
            ("restart_reset_s", self.restart_reset_s > 0, "> 0"),
            ("max_restarts", self.max_restarts >= 0, ">= 0 (0 = never give up)"),
            ("stats_interval_s", self.stats_interval_s >= 0, ">= 0 (0 = off)"),
        ]
        check("daemon", checks)


def camera_streamer_config(base: StreamerConfig, cam: CameraConfig, index: int) -> StreamerConfig:
    """The top-level streamer section with this camera's overrides applied, validated; errors name
    `cameras[i].streamer.<key>`."""
    prefix = f"cameras[{index}].streamer"
    merged = from_dict(StreamerConfig, merge(to_dict(base), cam.streamer), prefix)
    if cam.loop:
        merged.source.loop = True
    try:
        merged.validate()
    except ValueError as e:
        raise ValueError(f"cameras[{index}].{e}") from None
    return merged


def validate_cameras(
    cameras: list[CameraConfig], base: StreamerConfig, daemon: DaemonConfig, publish_endpoints: tuple[str, ...]
) -> None:
    """Fill default names and check what no type check catches; messages name `cameras[i].key`."""
    seen: dict[str, int] = {}
    for i, cam in enumerate(cameras):
        key = f"cameras[{i}]"
        if not cam.name:
            cam.name = f"cam{i}"
        if not _NAME.fullmatch(cam.name):
            raise ValueError(
                f"{key}.name: {cam.name!r} must be 1-64 letters, digits, '_' or '-' "
                f"(it becomes the topic mask.<name>.motion)"
            )
        if cam.name in seen:
            raise ValueError(f"{key}.name: {cam.name!r} is already the name of cameras[{seen[cam.name]}]")
        seen[cam.name] = i
        if isinstance(cam.source, str) and not cam.source.strip():
            raise ValueError(f"{key}.source: required (a file, folder, camera:N, /dev/videoN or rtsp://... URL)")
        if isinstance(cam.source, int) and cam.source < 0:
            raise ValueError(f"{key}.source: camera index must be >= 0, got {cam.source}")
        camera_streamer_config(base, cam, i)
    ep = daemon.control_endpoint
    if ep in publish_endpoints:
        raise ValueError(f"daemon.control_endpoint {ep} must differ from publish.endpoint and publish.latest_endpoint")


__all__ = ["CameraConfig", "DaemonConfig", "camera_streamer_config", "validate_cameras"]
