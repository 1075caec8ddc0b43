"""Whether the rig is whole again: the conditions each fault's recovery waits for."""

from __future__ import annotations

from bench.soak.checks import device_model
from bench.soak.rig import Rig
from exporter.bundle import read_pointer


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
        same_daemon = since and since.get("pid") == st["pid"]
        before = since.get("cameras", {}).get(name, {}).get("frames", -1) if same_daemon else -1
        if cam["frames"] <= max(before, 0):
            return False
    if learner:
        lr = st.get("learner") or {}
        if lr.get("state") != "running" or (lr.get("step") or 0) <= (lr.get("resumed_from") or 0):
            return False
    return True


def exports_latest(rig: Rig) -> str | None:
    return read_pointer(rig.exports)


def device_current(rig: Rig) -> bool:
    """The device runs and has in service the exporter's latest bundle, verified."""
    if rig.device is None or rig.device.poll() is not None:
        return False
    latest = exports_latest(rig)
    version, why = device_model(rig.device_dir, rig.checks)
    return latest is not None and version == latest and not why


def camera_back(rig: Rig, name: str, pid: int, before: dict) -> bool:
    st = rig.status()
    if st is None:
        return False
    cam = st["cameras"][name]
    return (
        bool(cam["pid"])
        and cam["pid"] != pid
        and cam["state"] == "running"
        and cam["frames"] > before["cameras"][name]["frames"]
    )


def camera_frames_beyond(rig: Rig, name: str, before: dict | None) -> bool:
    st = rig.status()
    if st is None or st["cameras"][name]["state"] != "running":
        return False
    if before is None or before.get("pid") != st.get("pid"):
        return st["cameras"][name]["frames"] > 0
    return st["cameras"][name]["frames"] > before["cameras"][name]["frames"] + 5
