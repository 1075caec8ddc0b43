"""Two real daemons on loopback: a rig (`motionmask run`, learner.enabled false, learner.remote)
playing the bundled clip, and a learner (`motionmask learn`). Samples flow, the learner trains,
checkpoints and exports, the rig pulls the bundle and its camera publishes `student` masks. Then
the learner is SIGKILLed while the rig sends: the rig's camera keeps its fps (from its status),
and after a restart samples flow again and training resumes from the last checkpoint."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zmq
from _media import free_port, process_gone

from exporter.bundle import LATEST
from motionmask.client import MaskSubscriber
from motionmask.commands.status import format_status
from motionmask.control import ControlUnavailable, request

CLIP = Path(__file__).parent / "data" / "sample.mp4"  # 384x288, 10 fps, 80 frames
SLOT = {"train_width": 96, "train_height": 72, "memory_mb": 4}


def _configs(tmp: Path) -> tuple[dict, dict]:
    ep = {
        k: f"tcp://127.0.0.1:{free_port()}" for k in ("samples", "bundles", "announce", "lctl", "lpub", "rctl", "rpub")
    }
    learn = {
        "buffer": dict(SLOT, name=f"mm_test_learn_{os.getpid()}"),  # a restart replaces the killed one's segment
        "publish": {"endpoint": ep["lpub"]},
        "daemon": {
            "control_endpoint": ep["lctl"],
            "stats_interval_s": 0,
            "restart_backoff_s": 0.3,
            "shutdown_timeout_s": 5.0,
        },
        "web": {"enabled": False},
        "learner": {
            "run_dir": str(tmp / "run"),
            "listen": ep["samples"],
            "model": {"width": 8, "blocks": [1, 1, 1, 1]},
            "crops": {"size": 32},
            "train": {"batch": 4, "device": "cpu", "warmup_steps": 0, "threads": 1},
            "checkpoint": {"every_steps": 20, "every_minutes": 0, "keep": 2},
            "bootstrap": {"enabled": False},
            "transport": {"samples_per_insert": 16, "tolerance": 256},
        },
        "export": {
            "enabled": True,
            "dir": str(tmp / "exports"),
            "every_steps": 30,
            "every_minutes": 0,
            "holdout_samples": 4,
            "parity_frames": 2,
            "latency_runs": 2,
            "keep": 2,
            "endpoint": ep["bundles"],
            "announce_endpoint": ep["announce"],
            "announce_interval_s": 1.0,
        },
    }
    rig = {
        "streamer": {
            "flow": {"width": 96},
            "motion": {"num_superpixels": 60},
            "prune": {"min_fg": 0.0, "max_border_fg": 1.0, "max_unsure": 1.0},
        },
        "buffer": SLOT,
        "publish": {"endpoint": ep["rpub"]},
        "daemon": {"control_endpoint": ep["rctl"], "stats_interval_s": 0, "restart_backoff_s": 0.3},
        "web": {"enabled": False},
        "cameras": [{"name": "cam", "source": str(CLIP), "loop": True}],
        "learner": {
            "enabled": False,
            "remote": ep["samples"],
            "transport": {"rig": "rigA", "bundles": ep["bundles"], "heartbeat_s": 0.5},
        },
        "export": {"enabled": True, "serve": False, "dir": str(tmp / "rig_model"), "student_every": 2},
    }
    return learn, rig


def _start(args: list[str], config: dict, path: Path) -> tuple[subprocess.Popen, Path]:
    path.write_text(yaml.safe_dump(config))
    log = path.with_suffix(".log")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "motionmask.cli", *args, "--config", str(path)], stdout=out, stderr=subprocess.STDOUT
        ), log


def _status(endpoint: str) -> dict | None:
    try:
        return request(endpoint, "status", timeout=1.0)
    except ControlUnavailable:
        return None


def _wait(what: str, endpoint: str, ok, procs, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        for p, log in procs:
            assert p.poll() is None, f"{log.name} exited {p.returncode} waiting for {what}:\n{log.read_text()[-3000:]}"
        st = _status(endpoint)
        if st is not None and ok(st):
            return st
        time.sleep(0.3)
    logs = "\n".join(log.read_text(errors="replace")[-2000:] for _, log in procs)
    raise AssertionError(f"no {what} within {timeout:.0f} s; last status: {st and st.get('remote')}\n{logs}")


def _rig_in(st: dict) -> dict:
    return (st.get("remote") or {}).get("rigs", {}).get("rigA", {})


@pytest.mark.slow
def test_rig_and_learner_on_loopback_survive_a_killed_learner(tmp_path):
    learn_cfg, rig_cfg = _configs(tmp_path)
    lctl, rctl = learn_cfg["daemon"]["control_endpoint"], rig_cfg["daemon"]["control_endpoint"]
    learn, llog = _start(["learn"], learn_cfg, tmp_path / "learn.yaml")
    rig, rlog = _start(["run"], rig_cfg, tmp_path / "rig.yaml")
    procs = [(learn, llog), (rig, rlog)]
    try:
        # samples flow, the learner trains, checkpoints and exports; the rig pulls the bundle and
        # its camera publishes student masks made by it
        with MaskSubscriber(rig_cfg["publish"]["endpoint"], "mask.cam.student") as sub:
            st = _wait(
                "an export",
                lctl,
                lambda s: (
                    (Path(learn_cfg["export"]["dir"]) / LATEST).is_file()
                    and (s["learner"] or {}).get("checkpoint_step")
                ),
                procs,
                90,
            )
            assert _rig_in(st)["inserted"] > 0 and st["learner"]["step"] > 0
            assert st["remote"]["bad_total"] == 0 and st["remote"]["appetite"]["ratio"] is not None
            text = format_status(st)  # what `motionmask status` prints on the learner
            assert "appetite:" in text and "samples per insert" in text and "\n  rigA " in text
            got = sub.recv(40.0)
            assert got is not None, f"no student mask on the rig\n{rlog.read_text()[-3000:]}"
            assert got[0]["model_version"] and (tmp_path / "rig_model" / got[0]["model_version"]).is_dir()

        # junk on the learner's port is counted and dropped; its receiver goes on as it was
        ctx = zmq.Context()
        junk = ctx.socket(zmq.PUSH)
        junk.connect(learn_cfg["learner"]["listen"])
        for parts in (
            [b"GET / HTTP/1.0"],
            [b'{"schema":"motionmask.sample","version":7}', b"x"],
            [b"{}", b"", b"", b""],
        ):
            junk.send_multipart(parts)
        st = _wait("junk counted", lctl, lambda s: s["remote"]["bad_total"] >= 3, procs, 20)
        assert st["remote"]["state"] == "running" and st["remote"]["restarts"] == 0
        junk.close(0)
        ctx.term()

        rst = _wait("a steady rig", rctl, lambda s: s["remote"]["connected"] and s["cameras"]["cam"]["fps"] > 0, procs)
        fps_before = [_wait("rig fps", rctl, lambda s: True, procs)["cameras"]["cam"]["fps"] for _ in range(3)]
        sent_before = rst["remote"]["sent"]
        assert "remote: samples to" in format_status(rst) and "(connected)" in format_status(rst)
        st = _status(lctl)
        checkpoint, children = st["learner"]["checkpoint_step"], [st["learner"]["pid"], st["remote"]["pid"]]

        # kill -9 the learner while the rig sends: the rig's camera does not notice
        learn.send_signal(signal.SIGKILL)
        learn.wait(5)
        assert all(process_gone(pid, 40) for pid in children if pid)  # its children notice and exit
        procs = [(rig, rlog)]
        time.sleep(1.0)
        during = [_wait("rig fps", rctl, lambda s: True, procs) for _ in range(4)]
        fps_during = [s["cameras"]["cam"]["fps"] for s in during]
        # medians: one reading that a busy host dips does not decide it (the learner's death frees CPU)
        assert statistics.median(fps_during) >= 0.8 * statistics.median(fps_before), (fps_before, fps_during)
        assert not during[-1]["remote"]["connected"] and during[-1]["cameras"]["cam"]["restarts"] == 0
        assert during[-1]["remote"]["sent"] + during[-1]["remote"]["dropped"] > sent_before

        # a restarted learner resumes from its checkpoint; the rig reconnects by itself
        learn, llog = _start(["learn"], learn_cfg, tmp_path / "learn.yaml")
        procs = [(learn, llog), (rig, rlog)]
        st = _wait(
            "samples after the restart",
            lctl,
            lambda s: _rig_in(s).get("inserted", 0) > 0 and (s["learner"] or {}).get("resumed_from") is not None,
            procs,
            60,
        )
        resumed = st["learner"]["resumed_from"]
        assert resumed >= checkpoint > 0
        _wait("training after the restart", lctl, lambda s: s["learner"]["step"] > resumed, procs, 60)
        assert _wait("the rig reconnected", rctl, lambda s: s["remote"]["connected"], procs)["remote"]["connects"] >= 2

        for p, _ in procs:
            p.send_signal(signal.SIGINT)
        codes = [p.wait(20) for p, _ in procs]
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    text = llog.read_text(errors="replace") + rlog.read_text(errors="replace")
    assert codes == [0, 0], text[-3000:]
    assert "Traceback" not in text and "event=student_loaded" in text and "event=learner_resume" in text
