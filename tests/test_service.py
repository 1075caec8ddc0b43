"""`motionmask run` as a systemd service, with real daemons on the bundled clip: READY=1, then
WATCHDOG=1 only once frames flow, then STOPPING=1 arrive at a NOTIFY_SOCKET the test binds (a
path, and '@' abstract); a daemon whose cameras make no progress sends no WATCHDOG=1; a second
daemon on the same learner run dir or control endpoint exits 2 with one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml
from _media import free_port

from motionmask.control import ControlUnavailable, request
from motionmask.sdnotify import Notifier


def config(tmp_path: Path, source: str, name: str = "daemon.yaml", **sections) -> tuple[Path, dict]:
    cfg = {
        "streamer": {
            "flow": {"width": 64},
            "motion": {"num_superpixels": 60},
            "prune": {"min_fg": 0.0, "max_border_fg": 1.0, "max_unsure": 1.0},
        },
        "buffer": {"train_width": 64, "train_height": 48, "memory_mb": 2},
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "daemon": {
            "control_endpoint": f"tcp://127.0.0.1:{free_port()}",
            "shutdown_timeout_s": 5.0,
            "restart_backoff_s": 0.3,
            "restart_backoff_max_s": 1.0,
            "stats_interval_s": 1.0,
        },
        "cameras": [{"name": "a", "source": source, "loop": True}],
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def start(path: Path, log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "motionmask.cli", "run", "--config", str(path)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )


def wait_ping(proc: subprocess.Popen, endpoint: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if request(endpoint, "ping", timeout=1.0)["ok"]:
                return
        except ControlUnavailable:
            pass
        time.sleep(0.2)
    raise AssertionError(log.read_text()[-3000:])


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


class NotifySocket:
    """What systemd listens on: a Unix datagram socket; collects what arrives."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.got: list[str] = []

    def wait_for(self, state: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(state in m.splitlines() for m in self.got):
                return True
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                self.got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass
        return any(state in m.splitlines() for m in self.got)

    def first(self, state: str) -> int:
        return next(i for i, m in enumerate(self.got) if state in m.splitlines())

    def close(self) -> None:
        self.sock.close()


def test_notifier_reads_systemds_environment():
    n = Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_s == 4.0
    assert (
        Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    )
    assert not Notifier.from_env({}).enabled and not Notifier.from_env({}).send("READY=1")
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    gone = Notifier.from_env({"NOTIFY_SOCKET": "@motionmask-nobody-listens-" + uuid.uuid4().hex})
    assert gone.send("READY=1") is False and gone.send("WATCHDOG=1") is False  # never raises


def test_ready_then_watchdog_once_frames_flow_then_stopping(tmp_path, clip):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    path, cfg = config(tmp_path, str(clip))
    log = tmp_path / "daemon.log"
    proc = start(path, log, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="1000000")
    try:
        assert notify.wait_for("READY=1", 30), log.read_text()
        assert notify.wait_for("WATCHDOG=1", 30), (notify.got, log.read_text()[-3000:])
        st = request(cfg["daemon"]["control_endpoint"], "status", timeout=2.0)
        assert st["cameras"]["a"]["frames"] > 0
        notify.wait_for("never", 1.2)  # collect: pings go on at half the interval while frames flow
        assert sum(m == "WATCHDOG=1" for m in notify.got) >= 2, notify.got
        assert stop(proc) == 0
        assert notify.wait_for("STOPPING=1", 5), notify.got
    finally:
        stop(proc)
        notify.close()
    assert notify.first("READY=1") < notify.first("WATCHDOG=1") < notify.first("STOPPING=1"), notify.got
    assert notify.got[notify.first("READY=1")].startswith("READY=1\nSTATUS=")
    assert "Traceback" not in log.read_text()


def test_no_watchdog_while_no_camera_makes_progress(tmp_path):
    """Abstract namespace ('@'): the camera's file never appears, so the loop turns but proves
    nothing: READY=1 and STOPPING=1, never WATCHDOG=1 (systemd would restart the daemon)."""
    notify = NotifySocket(f"@motionmask-test-{uuid.uuid4().hex}")
    path, cfg = config(tmp_path, str(tmp_path / "never.mp4"))
    log = tmp_path / "daemon.log"
    proc = start(path, log, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="1000000")
    try:
        assert notify.wait_for("READY=1", 30), log.read_text()
        assert not notify.wait_for("WATCHDOG=1", 3.0), notify.got
        assert request(cfg["daemon"]["control_endpoint"], "ping", timeout=2.0)["ok"]  # alive, just no progress
        assert stop(proc) == 0
        assert notify.wait_for("STOPPING=1", 5), notify.got
    finally:
        stop(proc)
        notify.close()


def one_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "child_started" not in out.stderr, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.startswith("motionmask run: error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def run_once(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "motionmask.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_second_daemon_on_the_same_run_dir_or_control_endpoint_exits_2(tmp_path, clip, learner_daemon_config):
    first = learner_daemon_config(5.0)
    path = tmp_path / "first.yaml"
    path.write_text(yaml.safe_dump(first))
    log = tmp_path / "first.log"
    proc = start(path, log)
    try:
        wait_ping(proc, first["daemon"]["control_endpoint"], log)
        run_dir = first["learner"]["run_dir"]

        # same run dir, other ports: refused before anything is bound or started
        second = {
            **first,
            "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
            "daemon": {**first["daemon"], "control_endpoint": f"tcp://127.0.0.1:{free_port()}"},
        }
        (tmp_path / "second.yaml").write_text(yaml.safe_dump(second))
        line = one_error(run_once(tmp_path / "second.yaml"))
        assert f"learner.run_dir {run_dir} is in use by another motionmask daemon (pid {proc.pid})" in line

        # same control endpoint, another run dir
        third = {
            **second,
            "daemon": first["daemon"],
            "learner": {**first["learner"], "run_dir": str(tmp_path / "other-run")},
        }
        (tmp_path / "third.yaml").write_text(yaml.safe_dump(third))
        line = one_error(run_once(tmp_path / "third.yaml"))
        assert first["daemon"]["control_endpoint"] in line and "already in use" in line

        assert request(first["daemon"]["control_endpoint"], "ping", timeout=2.0)["pid"] == proc.pid
        assert stop(proc) == 0
    finally:
        stop(proc)
    # the first one gone (even SIGKILLed, the kernel drops its lock): the run dir is free again
    assert "Traceback" not in log.read_text()


def test_a_second_daemon_on_the_same_ipc_control_endpoint_exits_2(tmp_path, clip):
    ipc = f"ipc://{tmp_path}/control.sock"
    path, cfg = config(tmp_path, str(clip), daemon={"control_endpoint": ipc})
    log = tmp_path / "first.log"
    proc = start(path, log)
    try:
        wait_ping(proc, ipc, log)
        path2, _ = config(tmp_path, str(clip), name="second.yaml", daemon={"control_endpoint": ipc})
        line = one_error(run_once(path2))
        assert f"daemon.control_endpoint {ipc} is in use by another motionmask daemon (pid {proc.pid})" in line
        # the first daemon still owns its endpoint (ZeroMQ would have let the second take the path)
        assert request(ipc, "ping", timeout=2.0)["pid"] == proc.pid
        proc.kill()  # SIGKILL: the lock goes with the process
        proc.wait(5)
    finally:
        stop(proc)
    path3, cfg3 = config(tmp_path, str(clip), name="third.yaml", daemon={"control_endpoint": ipc})
    again = start(path3, tmp_path / "third.log")
    try:
        wait_ping(again, ipc, tmp_path / "third.log")
    finally:
        assert stop(again) == 0


def test_log_lines_under_journald_carry_priorities_and_no_timestamp(tmp_path):
    code = (
        "import logging; from motionmask.journald import setup_logging; setup_logging('INFO'); "
        "logging.getLogger('motionmask.daemon').warning('event=child_restart child=a'); "
        "logging.getLogger('motionmask.daemon').info('event=daemon_started')"
    )
    out = tmp_path / "stderr"
    with open(out, "wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True, timeout=30)
        subprocess.run(
            [sys.executable, "-c", code], stderr=f, env={**env, "JOURNAL_STREAM": "1:2"}, check=True, timeout=30
        )
    lines = out.read_text().splitlines()
    assert lines[:2] == [
        "<4>WARNING motionmask.daemon event=child_restart child=a",
        "<6>INFO motionmask.daemon event=daemon_started",
    ]
    assert lines[2][:4].isdigit() and lines[2].endswith("WARNING motionmask.daemon event=child_restart child=a")
