"""The `web:` config section: the console that `motionmask run` serves (motionmask/web/)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from common.config import check


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the console on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or an interface name: assume it reaches the network


@dataclass
class WebConfig:
    enabled: bool = True  # `motionmask run` serves the console (a process of its own, nice 5)
    host: str = "127.0.0.1"  # loopback only unless you mean it; anything else needs web.token
    port: int = 8080
    token: str = ""  # required to bind beyond loopback; browsers open http://HOST:PORT/?token=..., scripts send
    #                  `Authorization: Bearer ...`
    frame_fps: float = 5.0  # camera frames (JPEG, topic frame.<camera>) published for consoles; 0 = masks only
    frame_width: int = 640  # frames wider than this are scaled down before JPEG encoding
    jpeg_quality: int = 70
    status_interval_s: float = 1.0  # how often the console asks the daemon for its status

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def validate(self) -> None:
        """Raise ValueError naming the key; the loopback rule is here so that a daemon with an
        open console refuses to start before any camera does."""
        checks = [
            ("port", 0 <= self.port <= 65535, "a TCP port, 0-65535 (0 = any free port)"),
            ("frame_fps", self.frame_fps >= 0, ">= 0 (0 = no frames, masks only)"),
            ("frame_width", self.frame_width >= 16, ">= 16"),
            ("jpeg_quality", 1 <= self.jpeg_quality <= 100, "1-100"),
            ("status_interval_s", self.status_interval_s > 0, "> 0"),
        ]
        check("web", checks)
        if self.enabled and not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"web.host {self.host} would open the console beyond this machine without a token: "
                f"set web.token (a long random string) or keep web.host: 127.0.0.1"
            )


__all__ = ["WebConfig", "is_loopback"]
