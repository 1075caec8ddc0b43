"""What bench.soak checks and measures besides recovery: every checkpoint loads with the
learner's loader, every bundle passes the device's checks (sha256 of each file, the pinned key's
signature, onnx.checker, an ONNX Runtime session that runs a frame), the device's model in service
is such a bundle, and the daemon's process tree (RSS, open files, threads, shared-memory segments)
sampled over time, with least-squares slopes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from common.pids import pid_alive
from exporter.bundle import MANIFEST_FILE, MODEL_FILE, TMP_PREFIX, load_bundle, read_pointer
from exporter.signing import SIG_FILE
from exporter.transfer import smoke_test
from exporter.verify import check_onnx
from learner.checkpoint import CHECKPOINT_DIR, load_checkpoint

# ---- processes -------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Every descendant of pid (from /proc; ppid links)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                parent[int(d)] = int(s[s.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def proc_usage(pid: int) -> tuple[float, int, int] | None:
    """(RSS MB, open files, threads) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            st = dict(line.split(":", 1) for line in f if ":" in line)
        rss = int(st.get("VmRSS", "0 kB").split()[0]) / 1024
        threads = int(st["Threads"])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds, threads
    except (OSError, KeyError, ValueError):
        return None


def alive(pid: int) -> bool:
    if not pid_alive(pid):
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def shm_segments(pids: set[int]) -> list[str]:
    """/dev/shm entries of the daemons with these pids (motionmask_<pid>_... and
    motionmask_pairs_<pid>_...): what the soak's own daemons created, not other users'."""
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return []
    return sorted(n for n in names if any(f"_{p}_" in n for p in pids) and n.startswith("motionmask"))


def slope_per_hour(t_s: list[float], y: list[float]) -> float:
    """Least-squares slope of y against time, per hour (0 for fewer than 3 points)."""
    if len(t_s) < 3 or max(t_s) - min(t_s) <= 0:
        return 0.0
    return float(np.polyfit(np.asarray(t_s), np.asarray(y, float), 1)[0] * 3600.0)


# ---- files -----------------------------------------------------------------------------------


@dataclass
class FileChecks:
    """Checks each checkpoint and bundle once (by path, size and mtime); remembers the bad ones."""

    trusted: Any  # exporter.signing.TrustedKey
    seen: set = field(default_factory=set)
    checkpoints: int = 0
    bundles: int = 0
    bad_checkpoints: list = field(default_factory=list)
    bad_bundles: list = field(default_factory=list)
    ran: set = field(default_factory=set)  # (version, sha256) of the models already run once

    @staticmethod
    def _key(p: Path) -> tuple | None:
        try:
            st = p.stat()
        except OSError:
            return None
        return (str(p), st.st_size, st.st_mtime_ns)

    def scan_checkpoints(self, run_dir: Path) -> None:
        d = run_dir / CHECKPOINT_DIR
        if not d.is_dir():
            return
        for p in sorted(d.glob("*.pt")):
            key = self._key(p)
            if key is None or key in self.seen:
                continue
            try:
                load_checkpoint(p)
            except UserError as e:
                if p.exists() and self._key(p) == key:  # not pruned or replaced while we read it
                    self.bad_checkpoints.append(f"{p.name}: {e}")
                    self.seen.add(key)
                continue
            self.seen.add(key)
            if p.name != "last.pt":
                self.checkpoints += 1

    def check_bundle(self, d: Path) -> str:
        """ "" when the bundle folder passes every check a device makes, else why not: each file
        against the manifest's sha256 and length, the manifest's signature by the pinned key, and
        (once per bundle) onnx.checker and an ONNX Runtime session that runs a frame."""
        try:
            b = load_bundle(d, check_hash=True)
            self.trusted.verify((d / MANIFEST_FILE).read_bytes(), (d / SIG_FILE).read_bytes(), b.version)
            if (b.version, b.sha256) not in self.ran:
                check_onnx((d / MODEL_FILE).read_bytes())
                smoke_test(d)
                self.ran.add((b.version, b.sha256))
        except (UserError, OSError, ValueError, KeyError) as e:
            return f"{type(e).__name__}: {e}"
        return ""

    def scan_bundles(self, folder: Path) -> None:
        if not folder.is_dir():
            return
        for d in sorted(folder.iterdir()):
            if not d.is_dir() or d.name.startswith(TMP_PREFIX) or d.name.startswith("."):
                continue
            key = self._key(d / "manifest.json")
            if key is None or key in self.seen:
                continue
            why = self.check_bundle(d)
            if why and d.exists() and self._key(d / "manifest.json") == key:
                self.bad_bundles.append(f"{folder.name}/{d.name}: {why}")
            elif why:
                continue  # pruned while we looked: check nothing
            self.seen.add(key)
            self.bundles += 1


def device_model(device_dir: Path, checks: FileChecks) -> tuple[str | None, str]:
    """(version in service or None, "" when it passes every check else why)."""
    version = read_pointer(device_dir)
    if version is None:
        return None, ""
    return version, checks.check_bundle(device_dir / version)
