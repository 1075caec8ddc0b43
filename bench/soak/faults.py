"""The faults the soak injects, one method each: inject, wait for recovery within the kind's
bound, record the event."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import ROOT
from bench.soak.checks import alive, children_of, device_model
from bench.soak.probes import camera_back, camera_frames_beyond, device_current, healthy
from bench.soak.rig import Rig
from bench.soak.settings import BOUND_S, SYSTEMD_RESTART_S, SYSTEMD_STOP_S, log, wait_until
from exporter.transfer import Channel
from learner.checkpoint import step_files

# What a device logs when it noticed a damaged bundle transfer.
NOTICED = ("event=bundle_rejected", "event=pull_retry", "event=pull_failed")


def schedule(rng: random.Random, kinds: list[str]) -> list[str]:
    """Faults in a seeded order: every kind once per round, each round shuffled."""
    out: list[str] = []
    for _ in range(200):
        r = list(kinds)
        rng.shuffle(r)
        out += r
    return out


class Faults:
    def __init__(self, rig: Rig, rng: random.Random) -> None:
        self.rig = rig
        self.rng = rng
        self.events: list[dict] = []

    def record(self, kind: str, detail: str, took: float | None, bound: float, injected: bool = True) -> dict:
        ev = {
            "kind": kind,
            "t": time.strftime("%H:%M:%S"),
            "detail": detail,
            "injected": injected,
            "recovered": took is not None,
            "recover_s": None if took is None else round(took, 1),
            "bound_s": bound,
        }
        self.events.append(ev)
        log(
            f"fault {kind}: {detail}; "
            + (
                "not injected"
                if not injected
                else f"recovered in {took:.1f} s"
                if took is not None
                else f"NOT RECOVERED within {bound} s"
            )
        )
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
        took = wait_until(lambda: camera_back(rig, name, pid, st), BOUND_S["camera_kill"])
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
            return (
                bool(l2.get("pid"))
                and l2["pid"] != pid
                and l2.get("state") == "running"
                and (l2.get("step") or 0) > (l2.get("resumed_from") or 0)
            )

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
        took = wait_until(
            lambda: rig.device_log().count("event=device_connected") > connected and device_current(rig),
            BOUND_S["device_kill"],
        )
        return self.record("device_kill", f"pid {pid}", took, BOUND_S["device_kill"])

    def daemon_kill(self) -> dict:
        """SIGKILL the daemon; then what systemd does for Restart=on-failure with KillMode=mixed:
        wait for the unit's remaining processes (the children stop themselves once they see their
        parent gone) up to TimeoutStopSec, SIGKILL what is left, wait RestartSec, start again."""
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
        ev = self.record(
            "daemon_kill",
            f"pid {old.pid}; {len(kids)} children exited in {orphans_s:.1f} s"
            + (f", {len(left)} SIGKILLed by the 'unit'" if left else ""),
            took,
            BOUND_S["daemon_kill"],
        )
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
        took = wait_until(lambda: camera_frames_beyond(rig, "net", st), BOUND_S["stream_stop"])
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

        def back() -> bool:
            files = step_files(rig.learner_dir)
            new_ckpt = bool(files) and files[-1].stat().st_mtime > time.time() - (time.monotonic() - freed)
            return new_ckpt and healthy(rig)

        took = wait_until(back, BOUND_S["disk_full"])
        return self.record(
            "disk_full",
            f"{free} bytes free for {hold:.0f} s (learner step {before.get('step')})",
            took,
            BOUND_S["disk_full"],
        )

    def junk(self) -> dict:
        rig = self.rig
        st = rig.status()
        # a process of its own: a junk client may crash itself (bench.soak.junk says how)
        proc = subprocess.run(
            [sys.executable, "-m", "bench.soak.junk", json.dumps(rig.endpoints()), str(self.rng.randrange(1 << 30))],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        try:
            sent = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            sent = {"client exit": proc.returncode}

        def back() -> bool:
            if not healthy(rig, since=st):
                return False
            ch = Channel(rig.cfg["export"]["endpoint"])
            try:
                hdr, _ = ch.request({"op": "hello"}, 2.0, 0)
            finally:
                ch.close()
            if not hdr.get("ok"):
                return False

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
        seen = rig.device_log()
        before = sum(seen.count(e) for e in NOTICED)
        rig.proxy.arm(how)
        hit = wait_until(lambda: len(rig.proxy.hits) > hits, 15.0)
        extra = fresh = None
        if hit is None:
            fresh = rig.work / f"device-once-{len(self.events)}"
            extra = self._once_device(fresh)
            hit = wait_until(lambda: len(rig.proxy.hits) > hits, 60.0)
        rig.proxy.arm("")
        if hit is None:
            if extra is not None:
                extra.kill()
                extra.wait(10)
            return self.record(kind, "no transfer went through the proxy", None, 0, injected=False)
        what = rig.proxy.hits[-1]
        if extra is not None:
            return self._once_device_recovers(kind, what, extra, fresh)
        # the device must have noticed (a rejected file, or a torn ZMTP stream it retried), then be whole again
        took = wait_until(
            lambda: sum(rig.device_log().count(e) for e in NOTICED) > before and device_current(rig),
            BOUND_S[kind],
        )
        return self.record(kind, f"{what} (the device)", took, BOUND_S[kind])

    def _once_device(self, fresh: Path) -> subprocess.Popen:
        """A device with a fresh folder that pulls once through the proxy, then exits."""
        rig = self.rig
        argv = [sys.executable, "-m", "motionmask.cli", "device", "--endpoint", rig.proxy.endpoint]
        argv += ["--dir", str(fresh), "--trusted-key", str(rig.public), "--timeout", "2", "--once"]
        return rig._spawn(fresh.name, argv)

    def _once_device_recovers(self, kind: str, what: str, extra: subprocess.Popen, fresh: Path) -> dict:
        """Recovered: the one-off device noticed the damage, and exited 0 with a verified model."""
        rig = self.rig

        def done() -> bool:
            if extra.poll() is None:
                return False

            version, why = device_model(fresh, rig.checks)
            text = (rig.logs / f"{fresh.name}.log").read_text(errors="replace")
            noticed = any(e in text for e in NOTICED)
            return extra.returncode == 0 and noticed and version is not None and not why

        took = wait_until(done, BOUND_S[kind])
        if extra.poll() is None:
            extra.kill()
            extra.wait(10)
        return self.record(kind, f"{what} (one-off device, exit {extra.returncode})", took, BOUND_S[kind])

    def bundle_flip(self) -> dict:
        return self._bundle_damage("flip")

    def bundle_truncate(self) -> dict:
        return self._bundle_damage("truncate")
