"""What in a valid config deserves a word at start: settings that take effect but probably not
the way the user meant (a missing source file, masks or bundles open to the network without
their protection, a setting another one switches off). The loader rejects what cannot work
(unknown keys, bad values: motionmask.config); these can work, so they warn.

The daemon logs each once (`event=config_warning key=... warning=...`, or `event=source_missing`
for a camera file) and keeps them in its status (`warnings`), which is where the web console's
event list and `motionmask status` read them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from streamer.sources import redact_url

if TYPE_CHECKING:
    from motionmask.config import Config


def beyond_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ tcp:// bind endpoint listens beyond this machine."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[6:].rpartition(":")[0].strip("[]")
    if host in ("*", "0.0.0.0", "::", ""):
        return True
    from motionmask.web.config import is_loopback

    return not is_loopback(urlsplit(f"http://{host}").hostname or host)


def _missing_file(source: Any) -> bool:
    return (
        isinstance(source, str)
        and "://" not in source
        and not source.startswith(("camera:", "/dev/"))
        and not source.isdigit()
        and not os.path.exists(os.path.expanduser(source))
    )


def config_warnings(cfg: Config) -> list[dict[str, str]]:
    """[{"key", "event", "text"}] in config order; `key` names the setting to look at."""
    out: list[dict[str, str]] = []

    def warn(key: str, text: str, event: str = "config_warning") -> None:
        out.append({"key": key, "event": event, "text": text})

    for i, cam in enumerate(cfg.cameras):
        # not fatal (a mount, a recording being copied), but a typo deserves a word at startup
        if cam.enabled and _missing_file(cam.source):
            warn(
                f"cameras[{i}].source",
                f"camera {cam.name}: {redact_url(cam.source)} does not exist (yet); "
                f"the camera retries with backoff until it appears",
                "source_missing",
            )
    p, w, e = cfg.publish, cfg.web, cfg.export
    if w.enabled and not p.enabled:
        warn(
            "publish.enabled",
            "publish.enabled is false: the web console shows the numbers but no pictures "
            "(it reads masks and frames from the publish endpoint)",
        )
    if p.enabled and beyond_loopback(p.endpoint) and not p.curve_secret_file:
        frames = " and camera frames (web.frame_fps)" if w.enabled and w.frame_fps > 0 else ""
        warn(
            "publish.endpoint",
            f"publish.endpoint {p.endpoint} sends masks{frames} to anyone who can reach it; "
            "set publish.curve_secret_file (CurveZMQ) or bind 127.0.0.1",
        )
    if e.enabled and e.serve and beyond_loopback(e.endpoint) and not e.signing_key:
        warn(
            "export.signing_key",
            f"export.endpoint {e.endpoint} serves bundles beyond this machine unsigned: "
            "a device cannot tell them from a forged one; set export.signing_key (docs/signing.md)",
        )
    if e.enabled and e.student_every and not p.enabled:
        warn(
            "export.student_every",
            "export.student_every is ignored: cameras publish student masks only when publish.enabled is true",
        )
    return out


__all__ = ["config_warnings"]
