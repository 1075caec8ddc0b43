"""The processes under test (a daemon, a network camera, a device behind a proxy) and what the
soak knows about them: their ports, config, logs and every daemon pid it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.common import ROOT, free_port
from bench.soak.checks import FileChecks
from bench.soak.proxy import BundleProxy
from bench.soak.settings import CLIP, TMPFS_MB, log
from exporter.signing import TrustedKey, create_signing_keys
from motionmask.control import ControlUnavailable, request


class Rig:
    """The processes under test and what the soak knows about them."""

    def __init__(self, work: Path, seed: int) -> None:
        self.work = work
        self.run_dir = work / "run"  # learner run dir and exports: the file system the disk fault fills
        self.run_dir.mkdir(parents=True)
        self.tmpfs = False
        if os.geteuid() == 0:
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0755", "tmpfs", str(self.run_dir)],
                capture_output=True,
                text=True,
            )
            self.tmpfs = r.returncode == 0
            if not self.tmpfs:
                log(f"no tmpfs ({r.stderr.strip()}): disk_full is skipped")
        self.learner_dir = self.run_dir / "learner"
        self.exports = self.run_dir / "exports"
        self.device_dir = work / "device"
        self.logs = work / "logs"
        self.logs.mkdir()
        private, public = create_signing_keys(work / "keys", "soak")
        self.public = public
        self.trusted = TrustedKey.from_file(public)
        self.checks = FileChecks(self.trusted)  # the recovery probes' own, apart from the monitor's counts
        self.ports = {k: free_port() for k in ("publish", "control", "bundles", "announce", "web", "stream")}
        self.cfg = self._config(private)
        self.config_path = work / "daemon.yaml"
        self.config_path.write_text(yaml.safe_dump(self.cfg))
        self.proxy = BundleProxy(("127.0.0.1", self.ports["bundles"]), seed=seed).up()
        self.daemon: subprocess.Popen | None = None
        self.daemon_pids: set[int] = set()  # every daemon started: their shm names carry the pid
        self.device: subprocess.Popen | None = None
        self.stream: subprocess.Popen | None = None
        self.daemon_starts = self.device_starts = self.stream_starts = 0
        self.tmp_dirs: set[str] = set()
        self._files: list = []

    def _config(self, signing_key: Path) -> dict[str, Any]:
        p = self.ports
        return {
            "streamer": {
                "flow": {"width": 64},
                "motion": {"num_superpixels": 60},
                "prune": {"min_fg": 0.0, "max_border_fg": 1.0},
            },
            "buffer": {"train_width": 64, "train_height": 48, "memory_mb": 4},
            "publish": {"endpoint": f"tcp://127.0.0.1:{p['publish']}"},
            "daemon": {"control_endpoint": f"tcp://127.0.0.1:{p['control']}", "stats_interval_s": 30.0},
            "cameras": [
                {"name": "clip", "source": str(CLIP), "loop": True},
                {
                    "name": "net",
                    "source": f"tcp://127.0.0.1:{p['stream']}",
                    "streamer": {"source": {"open_timeout_s": 3.0, "read_timeout_s": 3.0}},
                },
            ],
            "learner": {
                "enabled": True,
                "run_dir": str(self.learner_dir),
                "model": {"width": 8, "blocks": [1, 1, 1, 1]},
                "crops": {"size": 32},
                "train": {"batch": 4, "device": "cpu", "warmup_steps": 0, "threads": 1},
                "checkpoint": {"every_steps": 25, "every_minutes": 0, "keep": 3},
                "bootstrap": {"every_steps": 150},
            },
            "export": {
                "enabled": True,
                "dir": str(self.exports),
                "every_steps": 40,
                "every_minutes": 0,
                "holdout_samples": 4,
                "parity_frames": 2,
                "latency_runs": 2,
                "keep": 3,
                "student_every": 5,
                "endpoint": f"tcp://127.0.0.1:{p['bundles']}",
                "announce_endpoint": f"tcp://127.0.0.1:{p['announce']}",
                "announce_interval_s": 2.0,
                "signing_key": str(signing_key),
            },
            "web": {"enabled": True, "host": "127.0.0.1", "port": p["web"], "frame_fps": 1.0},
        }

    @property
    def control(self) -> str:
        return self.cfg["daemon"]["control_endpoint"]

    def endpoints(self) -> dict[str, str]:
        p = self.ports
        return {
            "control": self.control,
            "publish": self.cfg["publish"]["endpoint"],
            "bundles": self.cfg["export"]["endpoint"],
            "announce": self.cfg["export"]["announce_endpoint"],
            "web": f"http://127.0.0.1:{p['web']}",
        }

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "ab")
        self._files.append(out)
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    # -- components
    def start_stream(self) -> None:
        self.stream = self._spawn(
            "stream",
            [sys.executable, "-m", "bench.soak.stream", "--port", str(self.ports["stream"]), "--clip", str(CLIP)],
        )
        self.stream_starts += 1

    def stop_stream(self) -> None:
        if self.stream is not None and self.stream.poll() is None:
            self.stream.kill()
            self.stream.wait(10)

    def start_daemon(self) -> None:
        self.daemon = self._spawn(
            "daemon", [sys.executable, "-m", "motionmask.cli", "run", "--config", str(self.config_path)]
        )
        self.daemon_pids.add(self.daemon.pid)
        self.daemon_starts += 1

    def start_device(self) -> None:
        self.device = self._spawn(
            "device",
            [
                sys.executable,
                "-m",
                "motionmask.cli",
                "device",
                "--endpoint",
                self.proxy.endpoint,
                "--dir",
                str(self.device_dir),
                "--trusted-key",
                str(self.public),
                "--timeout",
                "2",
                "--poll",
                "5",
            ],
        )
        self.device_starts += 1

    def device_log(self) -> str:
        try:
            return (self.logs / "device.log").read_text(errors="replace")
        except OSError:
            return ""

    def note_tmp_dir(self) -> None:
        """The daemon's private folder (its children's ipc socket), found from its bound unix
        sockets: whether a killed daemon leaves it behind is checked at the end."""
        d = self.daemon
        if d is None or d.poll() is not None:
            return
        try:
            inodes = {
                os.readlink(f"/proc/{d.pid}/fd/{fd}")[8:-1]
                for fd in os.listdir(f"/proc/{d.pid}/fd")
                if os.readlink(f"/proc/{d.pid}/fd/{fd}").startswith("socket:")
            }
            with open("/proc/net/unix") as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if len(parts) >= 8 and parts[6] in inodes and "/motionmask-" in parts[7]:
                        self.tmp_dirs.add(os.path.dirname(parts[7]))
        except OSError:
            pass

    def status(self, timeout: float = 3.0) -> dict | None:
        try:
            st = request(self.control, "status", timeout=timeout)
        except ControlUnavailable:
            return None
        return st if st.get("ok") else None

    def close(self) -> None:
        for f in self._files:
            f.close()
        self.proxy.down()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.run_dir)], capture_output=True)
