"""The soak's plan: the faults it knows, the bound on each one's recovery, the clocks it keeps,
and the two things every part of it does (log a line, wait for a condition)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from bench.common import ROOT

CLIP = ROOT / "tests" / "data" / "sample.mp4"
KINDS = (
    "camera_kill",
    "learner_kill",
    "device_kill",
    "daemon_kill",
    "stream_stop",
    "disk_full",
    "junk",
    "bundle_link_down",
    "bundle_flip",
    "bundle_truncate",
)
# seconds from the end of a fault to a recovered rig, per kind (a loaded 2-core machine: a learner
# imports torch in 10-20 s there; a camera waits up to its restart backoff)
BOUND_S = {
    "camera_kill": 45,
    "learner_kill": 120,
    "device_kill": 60,
    "daemon_kill": 150,
    "stream_stop": 60,
    "disk_full": 150,
    "junk": 30,
    "bundle_link_down": 60,
    "bundle_flip": 90,
    "bundle_truncate": 90,
}
SYSTEMD_STOP_S = 30.0  # docs/motionmask.service: TimeoutStopSec
SYSTEMD_RESTART_S = 2.0  # RestartSec (5 in the unit; shorter here, to spend the soak on faults)
SAMPLE_S = 2.0
TMPFS_MB = 48
WARMUP_S = 60.0  # a process's first minute (imports, torch's allocator, buffers filling) is not growth


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SoakFailure(Exception):
    pass


def wait_until(what: Callable[[], bool], bound_s: float, step: float = 0.5) -> float | None:
    """Seconds until what() held, or None when it did not within bound_s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound_s:
        try:
            if what():
                return time.monotonic() - t0
        except Exception as e:  # noqa: BLE001 - a probe that raises has simply not seen recovery yet
            log(f"probe: {type(e).__name__}: {e}")
        time.sleep(step)
    return None
