"""Kind `fused` from a real `motionmask run`: a real exported bundle in the exports folder, a real
camera process on a real clip that hot-loads it, ONNX Runtime, and a real ZeroMQ subscriber that
gets the fused mask on every frame, the student's own mask on every student_every-th frame, and
checks the rule of motionmask/fuse.py on what the wire carried."""

import shutil
import signal
import time
from collections import defaultdict

import numpy as np
from _daemon import reap, start_daemon, stop_daemon
from _export_data import exported

from exporter.bundle import LATEST
from motionmask.client import MaskSubscriber
from motionmask.commands.status import format_status
from motionmask.control import request
from motionmask.fuse import fuse

SHUTDOWN_S = 5.0
EVERY = 3


def test_daemon_publishes_fused_masks_every_frame(tmp_path, tmp_path_factory, learner_daemon_config):
    exports = tmp_path / "exports"
    shutil.copytree(exported(tmp_path_factory), exports)
    version = (exports / LATEST).read_text().strip()
    cfg = learner_daemon_config(SHUTDOWN_S)
    cfg["learner"]["enabled"] = False  # the bundle is there already: cameras only
    cfg["web"] = {"enabled": False}
    cfg["export"] = {
        "enabled": True,
        "dir": str(exports),
        "serve": False,
        "student_every": EVERY,
        "fuse_min_student": 0.5,
    }
    masks: dict[str, dict[int, tuple[dict, np.ndarray]]] = defaultdict(dict)
    proc, log = start_daemon(tmp_path, cfg)
    try:
        with MaskSubscriber(cfg["publish"]["endpoint"], "mask.a.") as sub:
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline and len(masks["fused"]) < 40:
                assert proc.poll() is None, f"daemon exited {proc.returncode}:\n{log.read_text()[-3000:]}"
                got = sub.recv(1.0)
                if got is not None:
                    header, mask = got
                    masks[header["kind"]][header["frame"]] = (header, mask)
        # what the operator sees: the bundle each camera runs, in which precision, how often
        st = request(cfg["daemon"]["control_endpoint"], "status", timeout=5.0)
        code, _ = stop_daemon(proc, signal.SIGINT, SHUTDOWN_S + 5)
    finally:
        reap(proc)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "Traceback" not in text and "event=student_failed" not in text and "event=student_loaded" in text
    loaded = next(line for line in text.splitlines() if "event=student_loaded" in line)
    assert "precision=int8" in loaded, loaded  # a camera on a CPU runs the bundle's 8-bit model
    assert st["cameras"]["a"]["student"] == {"version": version, "precision": "int8", "every": EVERY}
    row = next(line for line in format_status(st).splitlines() if line.startswith("a "))
    assert f"{version.rsplit('-', 1)[-1]} int8 /{EVERY}" in row, row
    fused, student, motion = masks["fused"], masks["student"], masks["motion"]
    assert len(fused) >= 40, f"{len(fused)} fused masks\n{text[-3000:]}"

    # every frame once the bundle is in: no gap between the first and the last fused frame
    # (the clip loops, and a loop's frame numbers start again: take the longest run)
    frames = sorted(fused)
    run = max(np.split(np.array(frames), np.flatnonzero(np.diff(frames) != 1) + 1), key=len)
    assert len(run) >= 30
    # the student runs on one frame in EVERY (plus one at a loop's new shot), not on every frame
    ran = [f for f in run if f in student]
    assert len(run) / EVERY - 2 <= len(ran) <= len(run) / EVERY + 3, (len(run), ran)
    for f in run:
        header, mask = fused[f]
        assert header["model_version"] == version and mask.shape == (120, 160) and mask.dtype == np.uint8
        if f not in motion:
            continue
        m = motion[f][1]
        assert (mask >= m).all()  # motion always passes
        if f in student:  # a frame the student ran on: exactly the rule, on what the wire carried
            np.testing.assert_array_equal(mask, fuse(m, student[f][1], 0.5))
    # between runs the student's mask is carried, not dropped: fused differs from motion there too
    carried = [f for f in run if f not in student and f in motion and (fused[f][1] != motion[f][1]).any()]
    if any((student[f][1] >= 128).any() for f in ran):
        assert carried, "the student's mask vanished between its runs"
