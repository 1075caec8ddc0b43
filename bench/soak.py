"""A soak of a real `motionmask run` under a seeded, logged fault schedule (issue 22).

One daemon with two cameras (the bundled clip looping; a live H.264/MPEG-TS stream on loopback
served by a process this script controls), the learner with signed exports every few steps, a
`motionmask device` that pins the signing key and pulls bundles through a TCP proxy, and two
subscribers (one reads every mask, one never reads). Then, until --minutes are up, one fault at a
time, drawn with --seed, each followed by a check that the rig recovered within a bound:

  camera_kill        SIGKILL a camera process      its camera runs again, frames counting
  learner_kill       SIGKILL the learner           it resumes from a checkpoint and trains
  device_kill        SIGKILL the device            restarted (as systemd would), back on the latest bundle
  daemon_kill        SIGKILL the daemon            its children exit (they watch it), a new one starts
                                                   (as systemd would: cgroup emptied, RestartSec), all runs
  stream_stop        the network camera off 5-60 s its camera decodes again after it returns
  disk_full          the run dir's file system     training goes on, a new checkpoint once it is freed
                     filled for 5-20 s, then freed
  junk               malformed and oversized       every endpoint still answers, masks still flow
                     messages to every socket the
                     daemon binds (control, publish, bundles, announce, web)
  bundle_link_down   the device's link to the      the device is back on the latest bundle
                     bundle server cut 5-20 s
  bundle_flip /      a byte flipped in / a cut of  the torn transfer is rejected, the device ends on
  bundle_truncate    a bundle chunk in transit     a whole, verified bundle

The bundle server is a thread of the daemon, so its SIGKILL is the daemon's (daemon_kill);
bundle_link_down is the server vanishing from the device's side. The disk fault mounts a tmpfs
over the run dir (learner checkpoints, exports) when running as root; otherwise it is skipped and
the JSON says so.

Asserted, not just logged: every fault recovered within its bound; every checkpoint loads with the
learner's loader and every bundle (exports and the device's) passes the device's checks (sha256,
signature, onnx.checker, an ONNX Runtime run); the device's model in service is verified at every
sample; no shared memory of the soak's daemons is left after the final stop. Also measured: time
to recover (p50/p99) per kind, masks received vs frames decoded per camera, RSS, open files,
threads and shared-memory segments of the daemon's process tree over time (least-squares slope).

    python -m bench.soak --minutes 20 --seed 0          # the issue's run, ~22 min
    python -m bench.soak --minutes 2 --seed 1 --out /tmp/soak.json

Prints a table and writes bench/out/soak.json (--out); exit 1 when an assertion failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

from bench.common import OUT, ROOT

CLIP = ROOT / "tests" / "data" / "sample.mp4"
KINDS = ("camera_kill", "learner_kill", "device_kill", "daemon_kill", "stream_stop", "disk_full", "junk",
         "bundle_link_down", "bundle_flip", "bundle_truncate")
# seconds from the end of a fault to a recovered rig, per kind (a loaded 2-core machine: a learner
# imports torch in 10-20 s there; a camera waits up to its restart backoff)
BOUND_S = {"camera_kill": 45, "learner_kill": 120, "device_kill": 60, "daemon_kill": 150, "stream_stop": 60,
           "disk_full": 150, "junk": 30, "bundle_link_down": 60, "bundle_flip": 90, "bundle_truncate": 90}
SYSTEMD_STOP_S = 30.0  # docs/motionmask.service: TimeoutStopSec
SYSTEMD_RESTART_S = 2.0  # RestartSec (5 in the unit; shorter here, to spend the soak on faults)
SAMPLE_S = 2.0
TMPFS_MB = 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SoakFailure(Exception):
    pass


# ---- the rig ---------------------------------------------------------------------------------


class Rig:
    """The processes under test and what the soak knows about them."""

    def __init__(self, work: Path, seed: int) -> None:
        from bench._soak_proxy import BundleProxy
        from exporter.signing import TrustedKey, create_signing_keys

        self.work = work
        self.run_dir = work / "run"  # learner run dir and exports: the file system the disk fault fills
        self.run_dir.mkdir(parents=True)
        self.tmpfs = False
        if os.geteuid() == 0:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0755", "tmpfs", str(self.run_dir)],
                               capture_output=True, text=True)
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
        self.ports = {k: free_port() for k in ("publish", "control", "bundles", "announce", "web", "stream")}
        self.cfg = self._config(private)
        self.config_path = work / "daemon.yaml"
        import yaml

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
            "streamer": {"flow": {"width": 64}, "motion": {"num_superpixels": 60},
                         "prune": {"min_fg": 0.0, "max_border_fg": 1.0}},
            "buffer": {"train_width": 64, "train_height": 48, "memory_mb": 4},
            "publish": {"endpoint": f"tcp://127.0.0.1:{p['publish']}"},
            "daemon": {"control_endpoint": f"tcp://127.0.0.1:{p['control']}", "stats_interval_s": 30.0},
            "cameras": [
                {"name": "clip", "source": str(CLIP), "loop": True},
                {"name": "net", "source": f"tcp://127.0.0.1:{p['stream']}",
                 "streamer": {"source": {"open_timeout_s": 3.0, "read_timeout_s": 3.0}}},
            ],
            "learner": {
                "enabled": True, "run_dir": str(self.learner_dir),
                "model": {"width": 8, "blocks": [1, 1, 1, 1]}, "crops": {"size": 32},
                "train": {"batch": 4, "device": "cpu", "warmup_steps": 0, "threads": 1},
                "checkpoint": {"every_steps": 25, "every_minutes": 0, "keep": 3},
                "bootstrap": {"every_steps": 150},
            },
            "export": {"enabled": True, "dir": str(self.exports), "every_steps": 40, "every_minutes": 0,
                       "holdout_samples": 4, "parity_frames": 2, "latency_runs": 2, "keep": 3, "student_every": 5,
                       "endpoint": f"tcp://127.0.0.1:{p['bundles']}",
                       "announce_endpoint": f"tcp://127.0.0.1:{p['announce']}", "announce_interval_s": 2.0,
                       "signing_key": str(signing_key)},
            "web": {"enabled": True, "host": "127.0.0.1", "port": p["web"], "frame_fps": 1.0},
        }

    @property
    def control(self) -> str:
        return self.cfg["daemon"]["control_endpoint"]

    def endpoints(self) -> dict[str, str]:
        p = self.ports
        return {"control": self.control, "publish": self.cfg["publish"]["endpoint"],
                "bundles": self.cfg["export"]["endpoint"], "announce": self.cfg["export"]["announce_endpoint"],
                "web": f"http://127.0.0.1:{p['web']}"}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "ab")
        self._files.append(out)
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    # -- components
    def start_stream(self) -> None:
        self.stream = self._spawn("stream", [sys.executable, "-m", "bench._soak_stream",
                                             "--port", str(self.ports["stream"]), "--clip", str(CLIP)])
        self.stream_starts += 1

    def stop_stream(self) -> None:
        if self.stream is not None and self.stream.poll() is None:
            self.stream.kill()
            self.stream.wait(10)

    def start_daemon(self) -> None:
        self.daemon = self._spawn("daemon", [sys.executable, "-m", "motionmask.cli", "run", "--config",
                                             str(self.config_path)])
        self.daemon_pids.add(self.daemon.pid)
        self.daemon_starts += 1

    def start_device(self) -> None:
        self.device = self._spawn("device", [sys.executable, "-m", "motionmask.cli", "device", "--endpoint",
                                             self.proxy.endpoint, "--dir", str(self.device_dir), "--trusted-key",
                                             str(self.public), "--timeout", "2", "--poll", "5"])
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
            inodes = {os.readlink(f"/proc/{d.pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{d.pid}/fd")
                      if os.readlink(f"/proc/{d.pid}/fd/{fd}").startswith("socket:")}
            with open("/proc/net/unix") as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if len(parts) >= 8 and parts[6] in inodes and "/motionmask-" in parts[7]:
                        self.tmp_dirs.add(os.path.dirname(parts[7]))
        except OSError:
            pass

    def status(self, timeout: float = 3.0) -> dict | None:
        from motionmask.control import ControlUnavailable, request

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


# ---- subscribers -----------------------------------------------------------------------------


class Subscribers:
    """One SUB that reads every mask (counts per camera and kind, gaps in seq, a decode of every
    50th), one that connects, subscribes and never reads."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.endpoint = endpoint
        self.received: Counter = Counter()  # (camera, kind) -> masks
        self.gaps: Counter = Counter()  # (camera, kind) -> masks missing by seq
        self.decode_errors = 0
        self._last_seq: dict[tuple, int] = {}
        self._stop = threading.Event()
        self.idle = self.ctx.socket(zmq.SUB)
        self.idle.setsockopt(zmq.SUBSCRIBE, b"")
        self.idle.connect(endpoint)
        self._thread = threading.Thread(target=self._read, daemon=True, name="subscriber")
        self._thread.start()

    def _read(self) -> None:
        import zmq

        from streamer.live import protocol

        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, b"mask.")
        s.setsockopt(zmq.RCVHWM, 10000)
        s.connect(self.endpoint)
        n = 0
        while not self._stop.is_set():
            if not s.poll(200):
                continue
            parts = s.recv_multipart()
            try:
                msg = protocol.parse(parts)
                h = msg.header
                key = (h["camera"], h["kind"])
                self.received[key] += 1
                topic = (key, h.get("publisher", ""))
                last = self._last_seq.get(topic)
                if last is not None and h["seq"] > last + 1:
                    self.gaps[key] += h["seq"] - last - 1
                self._last_seq[topic] = h["seq"]
                n += 1
                if n % 50 == 0:
                    protocol.decode_mask(msg)
            except (protocol.ProtocolError, KeyError, ValueError):
                self.decode_errors += 1
        s.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.idle.close(0)
        self.ctx.term()


# ---- the monitor -----------------------------------------------------------------------------


class Monitor(threading.Thread):
    """Every SAMPLE_S: the daemon's status, its process tree's RSS, files, threads and shm segments,
    the device's model (verified?); every 20 s the checkpoints and bundles not checked yet."""

    def __init__(self, rig: Rig) -> None:
        super().__init__(daemon=True, name="monitor")
        from bench._soak_checks import FileChecks

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
        from bench._soak_checks import children_of, proc_usage, shm_segments

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
            row.update(tree_rss_mb=round(sum(u[0] for u in use), 1), tree_fds=sum(u[1] for u in use),
                       tree_threads=sum(u[2] for u in use), processes=len(use))
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
        from bench._soak_checks import device_model

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


# ---- waiting ---------------------------------------------------------------------------------


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


def healthy(rig: Rig, since: dict | None = None, learner: bool = True) -> bool:
    """The daemon answers; both cameras run and count frames beyond `since`'s; the learner trains
    (its step beyond where it resumed)."""
    st = rig.status()
    if st is None or rig.daemon is None or st.get("pid") != rig.daemon.pid:
        return False
    rig.note_tmp_dir()
    for name, cam in st["cameras"].items():
        if cam["state"] != "running":
            return False
        before = (since or {}).get("cameras", {}).get(name, {}).get("frames", -1) if since and since.get("pid") == st["pid"] else -1
        if cam["frames"] <= max(before, 0):
            return False
    if learner:
        lr = st.get("learner") or {}
        if lr.get("state") != "running" or (lr.get("step") or 0) <= (lr.get("resumed_from") or 0):
            return False
    return True


def exports_latest(rig: Rig) -> str | None:
    from exporter.bundle import read_pointer

    return read_pointer(rig.exports)


def device_current(rig: Rig) -> bool:
    """The device runs and has in service the exporter's latest bundle, verified."""
    from bench._soak_checks import device_model

    if rig.device is None or rig.device.poll() is not None:
        return False
    latest = exports_latest(rig)
    version, why = device_model(rig.device_dir, _checks(rig))
    return latest is not None and version == latest and not why


_CHECKS: dict[int, Any] = {}


def _checks(rig: Rig):
    from bench._soak_checks import FileChecks

    return _CHECKS.setdefault(id(rig), FileChecks(rig.trusted))


# ---- faults ----------------------------------------------------------------------------------


class Faults:
    def __init__(self, rig: Rig, rng: random.Random) -> None:
        self.rig = rig
        self.rng = rng
        self.events: list[dict] = []

    def record(self, kind: str, detail: str, took: float | None, bound: float, injected: bool = True) -> dict:
        ev = {"kind": kind, "t": time.strftime("%H:%M:%S"), "detail": detail, "injected": injected,
              "recovered": took is not None, "recover_s": None if took is None else round(took, 1), "bound_s": bound}
        self.events.append(ev)
        log(f"fault {kind}: {detail}; " + ("not injected" if not injected else
                                           f"recovered in {took:.1f} s" if took is not None else
                                           f"NOT RECOVERED within {bound} s"))
        return ev

    def run(self, kind: str) -> dict:
        return getattr(self, kind)()

    # each returns the recorded event
    def camera_kill(self) -> dict:
        rig = self.rig
        st = rig.status()
        name = self.rng.choice(["clip", "net"])
        pid = st["cameras"][name]["pid"] if st else None
        if not pid:
            return self.record("camera_kill", f"{name} had no process", None, 0, injected=False)
        os.kill(pid, signal.SIGKILL)
        took = wait_until(lambda: _camera_back(rig, name, pid, st), BOUND_S["camera_kill"])
        return self.record("camera_kill", f"{name} pid {pid}", took, BOUND_S["camera_kill"])

    def learner_kill(self) -> dict:
        rig = self.rig
        st = rig.status()
        lr = (st or {}).get("learner") or {}
        pid = lr.get("pid")
        if not pid:
            return self.record("learner_kill", "no learner process", None, 0, injected=False)
        os.kill(pid, signal.SIGKILL)

        def back() -> bool:
            s = rig.status()
            l2 = (s or {}).get("learner") or {}
            return bool(l2.get("pid")) and l2["pid"] != pid and l2.get("state") == "running" \
                and (l2.get("step") or 0) > (l2.get("resumed_from") or 0)

        took = wait_until(back, BOUND_S["learner_kill"])
        return self.record("learner_kill", f"pid {pid} at step {lr.get('step')}", took, BOUND_S["learner_kill"])

    def device_kill(self) -> dict:
        rig = self.rig
        pid = rig.device.pid
        rig.device.kill()
        rig.device.wait(10)
        time.sleep(SYSTEMD_RESTART_S)
        connected = rig.device_log().count("event=device_connected")
        rig.start_device()
        took = wait_until(lambda: rig.device_log().count("event=device_connected") > connected
                          and device_current(rig), BOUND_S["device_kill"])
        return self.record("device_kill", f"pid {pid}", took, BOUND_S["device_kill"])

    def daemon_kill(self) -> dict:
        """SIGKILL the daemon; then what systemd does for Restart=on-failure with KillMode=mixed:
        wait for the unit's remaining processes (the children stop themselves once they see their
        parent gone) up to TimeoutStopSec, SIGKILL what is left, wait RestartSec, start again."""
        from bench._soak_checks import alive, children_of

        rig = self.rig
        old = rig.daemon
        kids = children_of(old.pid)
        old.kill()
        old.wait(10)
        t0 = time.monotonic()
        while any(alive(k) for k in kids) and time.monotonic() - t0 < SYSTEMD_STOP_S:
            time.sleep(0.2)
        left = [k for k in kids if alive(k)]
        for k in left:
            os.kill(k, signal.SIGKILL)
        orphans_s = time.monotonic() - t0
        time.sleep(SYSTEMD_RESTART_S)
        rig.start_daemon()
        took = wait_until(lambda: healthy(rig), BOUND_S["daemon_kill"])
        ev = self.record("daemon_kill", f"pid {old.pid}; {len(kids)} children exited in {orphans_s:.1f} s"
                         + (f", {len(left)} SIGKILLed by the 'unit'" if left else ""), took, BOUND_S["daemon_kill"])
        ev["children_left_after_stop_s"] = len(left)
        if left:
            ev["recovered"] = False  # a child that outlives TimeoutStopSec is a failure of its own
        return ev

    def stream_stop(self, minutes_left: float | None = None) -> dict:
        rig = self.rig
        off = self.rng.uniform(5, 60)
        rig.stop_stream()
        time.sleep(off)
        st = rig.status()
        rig.start_stream()
        took = wait_until(lambda: _camera_frames_beyond(rig, "net", st), BOUND_S["stream_stop"])
        return self.record("stream_stop", f"off {off:.0f} s", took, BOUND_S["stream_stop"])

    def disk_full(self) -> dict:
        rig = self.rig
        if not rig.tmpfs:
            return self.record("disk_full", "skipped: no tmpfs (not root)", None, 0, injected=False)
        hold = self.rng.uniform(5, 20)
        filler = rig.run_dir / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        free = shutil.disk_usage(rig.run_dir).free
        time.sleep(hold)
        before = (rig.status() or {}).get("learner") or {}
        filler.unlink()
        freed = time.monotonic()
        from learner.checkpoint import step_files

        def back() -> bool:
            files = step_files(rig.learner_dir)
            new_ckpt = bool(files) and files[-1].stat().st_mtime > time.time() - (time.monotonic() - freed)
            return new_ckpt and healthy(rig)

        took = wait_until(back, BOUND_S["disk_full"])
        return self.record("disk_full", f"{free} bytes free for {hold:.0f} s (learner step {before.get('step')})",
                           took, BOUND_S["disk_full"])

    def junk(self) -> dict:
        rig = self.rig
        st = rig.status()
        # a process of its own: a junk client may crash itself (bench._soak_junk says how)
        proc = subprocess.run([sys.executable, "-m", "bench._soak_junk", json.dumps(rig.endpoints()),
                               str(self.rng.randrange(1 << 30))], capture_output=True, text=True, timeout=120, cwd=ROOT)
        try:
            sent = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            sent = {"client exit": proc.returncode}

        def back() -> bool:
            from exporter.transfer import Channel

            if not healthy(rig, since=st):
                return False
            ch = Channel(rig.cfg["export"]["endpoint"])
            try:
                hdr, _ = ch.request({"op": "hello"}, 2.0, 0)
            finally:
                ch.close()
            if not hdr.get("ok"):
                return False
            import urllib.request

            with urllib.request.urlopen(rig.endpoints()["web"] + "/api/status", timeout=3) as r:
                return r.status == 200

        took = wait_until(back, BOUND_S["junk"])
        return self.record("junk", ", ".join(f"{k} {v}" for k, v in sent.items()), took, BOUND_S["junk"])

    def bundle_link_down(self) -> dict:
        rig = self.rig
        off = self.rng.uniform(5, 20)
        rig.proxy.down()
        time.sleep(off)
        rig.proxy.up()
        conns = rig.proxy.connections
        # recovered: the device came back through the link (ZeroMQ reconnects) and is on the latest bundle
        took = wait_until(lambda: rig.proxy.connections > conns and device_current(rig), BOUND_S["bundle_link_down"])
        return self.record("bundle_link_down", f"off {off:.0f} s", took, BOUND_S["bundle_link_down"])

    def _bundle_damage(self, how: str) -> dict:
        """Arm the proxy; the next bundle chunk through it is damaged: the main device's when it
        pulls within 15 s, else that of a one-off device (a fresh folder, --once) started for it.
        Recovered: the damaged transfer is retried into a verified bundle in service."""
        rig = self.rig
        kind = f"bundle_{how}"
        hits = len(rig.proxy.hits)
        noticed = rig.device_log().count
        before = noticed("event=bundle_rejected") + noticed("event=pull_retry") + noticed("event=pull_failed")
        rig.proxy.arm(how)
        hit = wait_until(lambda: len(rig.proxy.hits) > hits, 15.0)
        extra = None
        if hit is None:
            fresh = rig.work / f"device-once-{len(self.events)}"
            extra = rig._spawn(f"device-once-{len(self.events)}",
                               [sys.executable, "-m", "motionmask.cli", "device", "--endpoint", rig.proxy.endpoint,
                                "--dir", str(fresh), "--trusted-key", str(rig.public), "--timeout", "2", "--once"])
            hit = wait_until(lambda: len(rig.proxy.hits) > hits, 60.0)
        rig.proxy.arm("")
        if hit is None:
            if extra is not None:
                extra.kill()
                extra.wait(10)
            return self.record(kind, "no transfer went through the proxy", None, 0, injected=False)
        what = rig.proxy.hits[-1]
        if extra is not None:
            def done() -> bool:
                if extra.poll() is None:
                    return False
                from bench._soak_checks import device_model

                version, why = device_model(fresh, _checks(rig))
                text = (rig.logs / f"{fresh.name}.log").read_text(errors="replace")
                noticed = any(e in text for e in ("event=bundle_rejected", "event=pull_retry", "event=pull_failed"))
                return extra.returncode == 0 and noticed and version is not None and not why

            took = wait_until(done, BOUND_S[kind])
            if extra.poll() is None:
                extra.kill()
                extra.wait(10)
            return self.record(kind, f"{what} (one-off device, exit {extra.returncode})", took, BOUND_S[kind])
        # the device must have noticed (a rejected file, or a torn ZMTP stream it retried), then be whole again
        took = wait_until(lambda: sum(rig.device_log().count(e) for e in ("event=bundle_rejected", "event=pull_retry",
                                                                           "event=pull_failed")) > before
                          and device_current(rig), BOUND_S[kind])
        return self.record(kind, f"{what} (the device)", took, BOUND_S[kind])

    def bundle_flip(self) -> dict:
        return self._bundle_damage("flip")

    def bundle_truncate(self) -> dict:
        return self._bundle_damage("truncate")


def _camera_back(rig: Rig, name: str, pid: int, before: dict) -> bool:
    st = rig.status()
    if st is None:
        return False
    cam = st["cameras"][name]
    return bool(cam["pid"]) and cam["pid"] != pid and cam["state"] == "running" \
        and cam["frames"] > before["cameras"][name]["frames"]


def _camera_frames_beyond(rig: Rig, name: str, before: dict | None) -> bool:
    st = rig.status()
    if st is None or st["cameras"][name]["state"] != "running":
        return False
    if before is None or before.get("pid") != st.get("pid"):
        return st["cameras"][name]["frames"] > 0
    return st["cameras"][name]["frames"] > before["cameras"][name]["frames"] + 5


# ---- the run ---------------------------------------------------------------------------------


WARMUP_S = 60.0  # a process's first minute (imports, torch's allocator, buffers filling) is not growth


def role_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
    for needle, role in (("camera_process", "camera"), ("learner_process", "learner"), ("web.process", "web"),
                         ("resource_tracker", "tracker"), (" device ", "device"), (" run ", "daemon")):
        if needle in cmd:
            return role
    return "other"


def growth_rates(procs: dict[int, dict], span_s: float) -> dict[str, dict[str, float]]:
    """How fast the rig's RSS, open files and threads grow while it runs: each process's
    least-squares slope after its warm-up, weighted by the share of the soak it ran for, summed
    (restarts reset a process's memory, so one slope over the whole tree would measure the fault
    schedule, not a leak). Per role and "all"."""
    from bench._soak_checks import slope_per_hour

    out: dict[str, dict[str, float]] = {k: defaultdict(float) for k in ("rss", "fds", "threads")}
    for p in procs.values():
        keep = [i for i, t in enumerate(p["t"]) if t - p["t"][0] >= WARMUP_S]
        if len(keep) < 10 or span_s <= 0:
            continue
        t = [p["t"][i] for i in keep]
        weight = (t[-1] - t[0]) / span_s
        for k in out:
            rate = slope_per_hour(t, [p[k][i] for i in keep]) * weight
            out[k][p["role"]] += rate
            out[k]["all"] += rate
    return {k: {r: round(v, 2) for r, v in sorted(d.items())} | {"all": round(d.get("all", 0.0), 2)}
            for k, d in out.items()}


def percentile(xs: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(xs, q)), 1) if xs else None


def schedule(rng: random.Random, kinds: list[str]) -> list[str]:
    """Faults in a seeded order: every kind once per round, each round shuffled."""
    out: list[str] = []
    for _ in range(200):
        r = list(kinds)
        rng.shuffle(r)
        out += r
    return out


def soak(minutes: float, seed: int, work: Path, only: list[str] | None = None,
         quiet_minutes: float = 0.0) -> dict[str, Any]:
    from bench._soak_checks import alive, children_of, shm_segments, slope_per_hour

    rng = random.Random(seed)
    rig = Rig(work, seed)
    log(f"work dir {work}; tmpfs run dir: {rig.tmpfs}; ports {rig.ports}")
    subs = monitor = None
    faults = Faults(rig, rng)
    t_start = time.monotonic()
    problems: list[str] = []
    try:
        rig.start_stream()
        rig.start_daemon()
        subs = Subscribers(rig.cfg["publish"]["endpoint"])
        took = wait_until(lambda: healthy(rig), 180)
        if took is None:
            raise SoakFailure(f"the rig never came up; see {rig.logs}/daemon.log")
        wait_until(lambda: exports_latest(rig) is not None, 180)
        rig.start_device()
        if wait_until(lambda: device_current(rig), 120) is None:
            raise SoakFailure(f"the device never installed a bundle; see {rig.logs}/device.log")
        log(f"rig up in {time.monotonic() - t_start:.0f} s; faults for {minutes:g} min")
        monitor = Monitor(rig)
        monitor.start()
        kinds = [k for k in (only or KINDS) if k != "disk_full" or rig.tmpfs]
        order = schedule(rng, kinds)
        log(f"seed {seed}: fault order starts {', '.join(order[:len(kinds)])}")
        t_faults = time.monotonic()
        end = t_faults + minutes * 60
        i = 0
        while time.monotonic() < end:
            kind = order[i]
            i += 1
            faults.run(kind)
            if rig.daemon.poll() is not None and kind != "daemon_kill":
                problems.append(f"the daemon exited {rig.daemon.returncode} after {kind}")
                log(problems[-1])
                rig.start_daemon()
                wait_until(lambda: healthy(rig), 150)
            gap = rng.uniform(3, 10)
            time.sleep(max(0.0, min(gap, end - time.monotonic())))
        soak_s = time.monotonic() - t_faults
        quiet_from = None
        if quiet_minutes > 0:  # no faults: the steady state, where growth means a leak
            log(f"{quiet_minutes:g} min without faults")
            quiet_from = time.monotonic() - monitor.t0
            time.sleep(quiet_minutes * 60)
    finally:
        if monitor is not None:
            monitor.stop()
        final_status = rig.status()
        if monitor is not None and final_status is not None and final_status.get("pid") in rig.daemon_pids:
            monitor.last_status[final_status["pid"]] = final_status
        daemon = rig.daemon
        kids = children_of(daemon.pid) if daemon is not None and daemon.poll() is None else []
        stop_code = None
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                stop_code = daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                stop_code = daemon.wait(10)
        if rig.device is not None and rig.device.poll() is None:
            rig.device.send_signal(signal.SIGTERM)
            try:
                rig.device.wait(15)
            except subprocess.TimeoutExpired:
                rig.device.kill()
        rig.stop_stream()
        if subs is not None:
            subs.close()
        time.sleep(1.0)
        leftover_shm = shm_segments(rig.daemon_pids)
        leftover_tmp = sorted(d for d in rig.tmp_dirs if os.path.exists(d))
        leftover_procs = [k for k in kids if alive(k)]
        for k in leftover_procs:
            os.kill(k, signal.SIGKILL)
        if monitor is not None:  # the last checkpoints and bundles, written at the stop
            monitor.scan_files()
        rig.close()

    # -- figures
    m = monitor
    evs = faults.events
    injected = [e for e in evs if e["injected"]]
    by_kind: dict[str, dict] = {}
    for k in KINDS:
        ks = [e for e in injected if e["kind"] == k]
        times = [e["recover_s"] for e in ks if e["recover_s"] is not None]
        by_kind[k] = {"injected": len(ks), "recovered": sum(e["recovered"] for e in ks),
                      "recover_p50_s": percentile(times, 50), "recover_p99_s": percentile(times, 99),
                      "recover_max_s": max(times) if times else None, "bound_s": BOUND_S[k]}
    by_kind["disk_full"]["skipped"] = not rig.tmpfs
    all_times = [e["recover_s"] for e in injected if e["recover_s"] is not None]

    # frames and masks per camera: each daemon's last status, summed over the daemons
    cams: dict[str, Counter] = defaultdict(Counter)
    for st in m.last_status.values():
        for name, c in st["cameras"].items():
            cams[name]["decoded"] += c["source_stats"]["decoded"]
            cams[name]["processed"] += c["frames"]
            cams[name]["kept"] += c["kept"]
            cams[name]["dropped_stale"] += c["source_stats"]["dropped_stale"]
            cams[name]["restarts"] += c["restarts"]
    cameras = {}
    for name, c in cams.items():
        got = subs.received[(name, "motion")]
        cameras[name] = {**c, "motion_masks_received": got, "motion_masks_missing_by_seq": subs.gaps[(name, "motion")],
                         "received_per_processed": round(got / c["processed"], 3) if c["processed"] else None,
                         "other_kinds_received": {k: v for (cam, k), v in subs.received.items()
                                                  if cam == name and k != "motion"}}

    span = (m.samples[-1]["t"] - m.samples[0]["t"]) if len(m.samples) > 1 else 0.0
    growth = growth_rates(m.procs, span)
    quiet = None
    if quiet_from is not None:  # the whole tree, after a minute to settle: no restart resets anything there
        qs = [x for x in m.samples if x["t"] >= quiet_from + WARMUP_S and "tree_rss_mb" in x]
        quiet = {k: round(slope_per_hour([x["t"] for x in qs], [x[key] for x in qs]), 2)
                 for k, key in (("rss_mb", "tree_rss_mb"), ("daemon_rss_mb", "daemon_rss_mb"), ("fds", "tree_fds"),
                                ("threads", "tree_threads"), ("shm", "shm"))}
        quiet.update(minutes=quiet_minutes, samples=len(qs))

    logs = {p.name: p.read_text(errors="replace") for p in rig.logs.glob("*.log")}
    tracebacks = {n: t.count("Traceback") for n, t in logs.items() if "Traceback" in t}
    result = {
        "seed": seed, "minutes": minutes, "soak_s": round(soak_s, 1),
        "machine": machine(),
        "faults_injected": len(injected),
        "faults_recovered": sum(e["recovered"] for e in injected),
        "faults_skipped": len(evs) - len(injected),
        "by_kind": by_kind,
        "recover_p50_s": percentile(all_times, 50), "recover_p99_s": percentile(all_times, 99),
        "unreadable_checkpoints": len(m.checks.bad_checkpoints),
        "unreadable_bundles": len(m.checks.bad_bundles),
        "checkpoints_written": logs.get("daemon.log", "").count("event=checkpoint_saved"),
        "checkpoints_failed": logs.get("daemon.log", "").count("event=checkpoint_failed"),
        "bundles_written": logs.get("daemon.log", "").count("event=export_published"),
        "device_installs": sum(t.count("event=bundle_installed") for n, t in logs.items() if n.startswith("device")),
        "device_rejections": sum(t.count("event=bundle_rejected") for n, t in logs.items() if n.startswith("device")),
        "checkpoints_checked": m.checks.checkpoints, "bundles_checked": m.checks.bundles,
        "device_checks": m.device_checks, "device_unverified": len(m.device_bad),
        "leftover_shm": len(leftover_shm), "leftover_processes": len(leftover_procs),
        "leftover_tmp_dirs": len(leftover_tmp), "daemon_tmp_dirs_seen": len(rig.tmp_dirs),
        # with --quiet-minutes: the tree's slope once the faults are over; else per-process slopes under faults
        "rss_slope_mb_per_hour": quiet["rss_mb"] if quiet else growth["rss"]["all"],
        "fds_slope_per_hour": quiet["fds"] if quiet else growth["fds"]["all"],
        "threads_slope_per_hour": quiet["threads"] if quiet else growth["threads"]["all"],
        "growth_quiet": quiet,
        "growth_under_faults": growth,
        "shm_slope_per_hour": round(slope_per_hour([x["t"] for x in m.samples], [x["shm"] for x in m.samples]), 2),
        "shm_max": max((s["shm"] for s in m.samples), default=0),
        "cameras": cameras,
        "subscriber_decode_errors": subs.decode_errors,
        "daemon_starts": rig.daemon_starts, "device_starts": rig.device_starts,
        "final_stop_exit": stop_code,
        "tracebacks_in_logs": tracebacks,
        # children the daemon had to SIGKILL at a stop (shutdown_timeout_s): a learner in the middle of an export
        "children_killed_at_stop": logs.get("daemon.log", "").count("event=child_killed"),
        "problems": problems + [f"unreadable checkpoint {x}" for x in m.checks.bad_checkpoints]
        + [f"unreadable bundle {x}" for x in m.checks.bad_bundles] + [f"device model {x}" for x in m.device_bad]
        + [f"left in /dev/shm: {x}" for x in leftover_shm] + [f"left in /tmp: {x}" for x in leftover_tmp] + [f"process {p} outlived the stop" for p in leftover_procs],
        "events": evs,
        "samples": m.samples,
        "final_status_learner": (final_status or {}).get("learner"),
    }
    failed = [e for e in injected if not e["recovered"]]
    result["problems"] += [f"not recovered: {e['kind']} ({e['detail']})" for e in failed]
    if stop_code != 0:
        result["problems"].append(f"the final SIGTERM stop exited {stop_code}")
    return result


def machine() -> str:
    try:
        from bench.common import cpu_model

        return f"{cpu_model()}, {os.cpu_count()} cores"
    except Exception:  # noqa: BLE001
        return f"{os.cpu_count()} cores"


def table(r: dict[str, Any]) -> str:
    lines = [f"soak: {r['minutes']:g} min of faults (seed {r['seed']}), {r['machine']}", "",
             "| fault | injected | recovered | p50 s | p99 s | max s | bound s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, v in r["by_kind"].items():
        if v["injected"] or v.get("skipped"):
            lines.append(f"| {k} | {v['injected']}{' (skipped: no tmpfs)' if v.get('skipped') else ''} | {v['recovered']} "
                         f"| {v['recover_p50_s']} | {v['recover_p99_s']} | {v['recover_max_s']} | {v['bound_s']} |")
    lines.append(f"| **all** | {r['faults_injected']} | {r['faults_recovered']} | {r['recover_p50_s']} "
                 f"| {r['recover_p99_s']} | | |")
    lines += ["", "| camera | decoded | processed | kept | motion masks received | missing by seq | restarts |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in r["cameras"].items():
        lines.append(f"| {name} | {c['decoded']} | {c['processed']} | {c['kept']} | {c['motion_masks_received']} "
                     f"| {c['motion_masks_missing_by_seq']} | {c['restarts']} |")
    lines += ["", f"written: {r['checkpoints_written']} checkpoints ({r['checkpoints_failed']} refused by a full disk), "
              f"{r['bundles_written']} bundles; the device installed {r['device_installs']} and rejected "
              f"{r['device_rejections']} (damaged in transit)",
              f"checkpoints checked {r['checkpoints_checked']}, unreadable {r['unreadable_checkpoints']}; "
              f"bundles checked {r['bundles_checked']}, unreadable {r['unreadable_bundles']}; device model checked "
              f"{r['device_checks']} times, unverified {r['device_unverified']}",
              f"left in /dev/shm {r['leftover_shm']}, in /tmp {r['leftover_tmp_dirs']}, processes left "
              f"{r['leftover_processes']}; shm segments {r['shm_slope_per_hour']}/h (max {r['shm_max']})",
              f"growth under faults (per-process slopes after {WARMUP_S:g} s of warm-up, weighted by lifetime): RSS "
              f"{r['growth_under_faults']['rss']['all']} MB/h ("
              + ", ".join(f"{k} {v}" for k, v in r["growth_under_faults"]["rss"].items() if k != "all")
              + f"), open files {r['growth_under_faults']['fds']['all']}/h, threads "
              f"{r['growth_under_faults']['threads']['all']}/h"]
    q = r["growth_quiet"]
    if q:
        lines.append(f"growth without faults (the whole tree, {q['minutes']:g} min, {q['samples']} samples after "
                     f"{WARMUP_S:g} s): RSS {q['rss_mb']} MB/h (daemon {q['daemon_rss_mb']}), open files {q['fds']}/h, "
                     f"threads {q['threads']}/h, shm segments {q['shm']}/h")
    lines += [f"daemon starts {r['daemon_starts']}, device starts {r['device_starts']}, final stop exit "
              f"{r['final_stop_exit']} ({r['children_killed_at_stop']} children SIGKILLed at a stop after "
              f"shutdown_timeout_s); problems: {len(r['problems'])}"]
    lines += [f"  - {p}" for p in r["problems"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Soak a real `motionmask run` (two cameras, learner, exports, a device, subscribers) under a "
                    "seeded schedule of faults; assert that each is recovered and nothing is lost or corrupted.",
        epilog="examples:\n  python -m bench.soak                       # 20 minutes of faults, seed 0\n"
               "  python -m bench.soak --minutes 2 --seed 3 --out /tmp/soak.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="minutes of faults after the rig is up (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seeds the fault order, pauses and durations (default 0)")
    p.add_argument("--out", default=str(OUT / "soak.json"), help="JSON output")
    p.add_argument("--quiet-minutes", type=float, default=0.0, help="then this long without faults: the growth "
                   "of RSS, files and threads in a steady state (default 0)")
    p.add_argument("--kinds", default="", help=f"comma-separated faults to draw from (default: all of {', '.join(KINDS)})")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, run dir, device dir)")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be > 0")
    only = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if set(only) - set(KINDS):
        p.error(f"--kinds: unknown {', '.join(sorted(set(only) - set(KINDS)))}; known: {', '.join(KINDS)}")
    work = Path(tempfile.mkdtemp(prefix="motionmask-soak-"))
    keep = args.keep
    try:
        r = soak(args.minutes, args.seed, work, only or None, args.quiet_minutes)
        keep = keep or bool(r["problems"])
    except SoakFailure as e:
        keep = True
        print(f"soak: {e}", file=sys.stderr)
        return 1
    finally:
        if keep:
            log(f"kept {work} (logs in {work / 'logs'})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1))
    print(table(r))
    return 1 if r["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
