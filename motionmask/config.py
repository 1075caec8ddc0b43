"""Top-level configuration: typed dataclasses filled from YAML, with errors that name the key.

Each package owns the dataclasses of its own part (streamer.config, ...); this module composes
them. The loader's rules (unknown keys, types, defaults) are common.config's, the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError, from_dict, merge, read_yaml
from exporter.config import ExportConfig
from learner.config import LearnerConfig
from motionmask.daemon_config import CameraConfig, DaemonConfig, validate_cameras
from motionmask.web.config import WebConfig
from streamer.config import StreamerConfig
from streamer.live.publish import PublishConfig
from streamer.shm.ringbuffer import BufferConfig


@dataclass
class Config:
    streamer: StreamerConfig = field(default_factory=StreamerConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    cameras: list[CameraConfig] = field(default_factory=list)  # `motionmask run`: one streamer process each
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    web: WebConfig = field(default_factory=WebConfig)  # the console `motionmask run` serves (motionmask/web)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Load a YAML config (or the defaults when path is None) and validate it.

    Every error is a ConfigError whose message starts with the file name and names the key.
    """
    where = str(path) if path is not None else "<defaults>"
    data: dict = read_yaml(path) if path is not None else {}
    if overrides:
        data = merge(data, overrides)
    try:
        cfg = from_dict(Config, data)
        cfg.streamer.validate()
        cfg.buffer.validate()
        cfg.publish.validate()
        cfg.daemon.validate()
        cfg.learner.validate()
        cfg.export.validate()
        cfg.web.validate()
        validate_cameras(cfg.cameras, cfg.streamer, cfg.daemon, (cfg.publish.endpoint, cfg.publish.latest_endpoint))
    except (ConfigError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


__all__ = ["Config", "ConfigError", "load_config"]
