"""The soak's monitor thread: what the rig's processes use over time, and every file it writes."""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.soak.checks import FileChecks, children_of, device_model, proc_usage, shm_segments
from bench.soak.rig import Rig
from bench.soak.settings import SAMPLE_S, log


class Monitor(threading.Thread):
    """Every SAMPLE_S: the daemon's status, its process tree's RSS, files, threads and shm segments,
    the device's model (verified?); every 20 s the checkpoints and bundles not checked yet."""

    def __init__(self, rig: Rig) -> None:
        super().__init__(daemon=True, name="monitor")
        self.rig = rig
        self.checks = FileChecks(rig.trusted)
        self.samples: list[dict] = []
        self.procs: dict[int, dict] = {}  # pid -> role and its samples (t, rss, fds, threads)
        self.last_status: dict[int, dict] = {}  # daemon pid -> its newest status
        self.device_checks = 0
        self.device_bad: list[str] = []
        self.t0 = time.monotonic()
        self._halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        next_files = 0.0
        while not self._halt.wait(SAMPLE_S):
            try:
                self.sample()
                if time.monotonic() >= next_files:
                    self.scan_files()
                    next_files = time.monotonic() + 20.0
            except Exception as e:  # noqa: BLE001 - a monitor bug must show, not end the soak silently
                log(f"monitor error: {type(e).__name__}: {e}")

    def sample(self) -> None:
        rig = self.rig
        st = rig.status()
        d = rig.daemon
        row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 1)}
        if st is not None and d is not None and st.get("pid") == d.pid:
            with self.lock:
                self.last_status[d.pid] = st
        if d is not None and d.poll() is None:
            tree = [d.pid] + children_of(d.pid)
            use = [u for u in (proc_usage(p) for p in tree) if u]
            main = proc_usage(d.pid)
            if main:
                row.update(daemon_rss_mb=round(main[0], 1), daemon_fds=main[1], daemon_threads=main[2])
            row.update(
                tree_rss_mb=round(sum(u[0] for u in use), 1),
                tree_fds=sum(u[1] for u in use),
                tree_threads=sum(u[2] for u in use),
                processes=len(use),
            )
            dev = [rig.device.pid] if rig.device is not None and rig.device.poll() is None else []
            for pid in tree + dev:
                u = proc_usage(pid)
                if u:
                    p = self.procs.setdefault(pid, {"role": role_of(pid), "t": [], "rss": [], "fds": [], "threads": []})
                    for k, v in zip(("t", "rss", "fds", "threads"), (row["t"], *u)):
                        p[k].append(v)
        row["shm"] = len(shm_segments(rig.daemon_pids))
        version, why = self.check_device()
        row["device_version"] = version
        with self.lock:
            self.samples.append(row)

    def check_device(self) -> tuple[str | None, str]:
        version, why = device_model(self.rig.device_dir, self.checks)
        if why:  # an install may have swapped LATEST while we read: look once more
            time.sleep(0.5)
            version, why = device_model(self.rig.device_dir, self.checks)
        if version is not None:
            self.device_checks += 1
            if why:
                self.device_bad.append(f"{version}: {why}")
                log(f"DEVICE MODEL NOT VERIFIED: {version}: {why}")
        return version, why

    def scan_files(self) -> None:
        self.checks.scan_checkpoints(self.rig.learner_dir)
        self.checks.scan_bundles(self.rig.exports)
        self.checks.scan_bundles(self.rig.device_dir)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def role_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
    for needle, role in (
        ("camera_process", "camera"),
        ("learner_process", "learner"),
        ("web.process", "web"),
        ("resource_tracker", "tracker"),
        (" device ", "device"),
        (" run ", "daemon"),
    ):
        if needle in cmd:
            return role
    return "other"
