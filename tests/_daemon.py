"""A real `motionmask run` for the tests that drive one, and its learner's status.

proc, log = start_daemon(tmp_path, cfg)     # cfg: the daemon's config as a dict
try:
    st = wait_learner(proc, control, lambda s: s["step"] >= 5, log)
    code, took = stop_daemon(proc, signal.SIGINT, timeout=10)
finally:
    reap(proc)                              # a test that failed before its stop leaves no daemon
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from motionmask.control import ControlUnavailable, request


def start_daemon(tmp_path: Path, cfg: dict) -> tuple[subprocess.Popen, Path]:
    """`motionmask run` with cfg, its log (the children's lines too) in tmp_path/daemon.log."""
    config = tmp_path / "daemon.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "motionmask.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def stop_daemon(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10.0) -> tuple[int, float]:
    """Send `sig` and wait for the daemon: (its exit status, seconds from the signal to its exit)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout)
    return code, time.monotonic() - t0


def reap(proc: subprocess.Popen) -> None:
    """Kill the daemon if it still runs (a test that failed before stopping it)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def learner_status(control: str) -> dict | None:
    """The learner's part of the daemon's status, or None while the daemon does not answer."""
    try:
        return request(control, "status", timeout=2.0).get("learner")
    except ControlUnavailable:
        return None


def wait_learner(
    proc: subprocess.Popen, control: str, what: Callable[[dict], bool], log: Path, timeout: float = 30.0
) -> dict:
    """The learner's status once `what(status)` holds; fails if the daemon exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"daemon exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        last = learner_status(control)
        if last is not None and what(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out; learner {json.dumps(last)}\n{log.read_text()[-3000:]}")
