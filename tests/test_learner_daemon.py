"""The learner process inside a real `motionmask run`: a real clip, a real camera process, real
sockets, a tiny ConvNet on the CPU. It trains, checkpoints, runs bootstrapping rounds whose
masks are published as kind `refined`, shows in `motionmask status`, survives a SIGKILL by
resuming from its checkpoint, and stops cleanly (checkpoint first) on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _daemon import reap, start_daemon, stop_daemon, wait_learner
from _media import process_gone

from learner.checkpoint import LAST, checkpoint_dir, load_checkpoint
from motionmask.client import MaskSubscriber

SHUTDOWN_S = 5.0
ROUND_EVERY = 40


def test_learner_in_the_daemon(tmp_path, learner_daemon_config):
    cfg = learner_daemon_config(
        SHUTDOWN_S,
        checkpoint={"every_steps": 50, "every_minutes": 0, "keep": 2},
        bootstrap={"every_steps": ROUND_EVERY},
    )
    control, endpoint = cfg["daemon"]["control_endpoint"], cfg["publish"]["endpoint"]
    proc, log = start_daemon(tmp_path, cfg)
    try:
        with MaskSubscriber(endpoint, "mask.a.refined") as sub:
            st = wait_learner(
                proc,
                control,
                lambda s: (
                    s["state"] == "running" and (s["checkpoint_step"] or 0) >= 50 and (s["bootstrap_round"] or 0) >= 1
                ),
                log,
            )
            assert st["device"] == "cpu" and st["threads"] == 1 and st["pid"]
            assert st["loss"] is not None and st["crops_per_s"] > 0
            # refined masks: the camera's frame size, stamped with the step of the model that made them
            peak = 0
            for _ in range(10):
                got = sub.recv(10.0)
                assert got is not None, "no refined mask published"
                header, mask = got
                assert header["kind"] == "refined" and header["camera"] == "a" and mask.shape == (120, 160)
                assert int(header["model_version"]) % ROUND_EVERY == 0 and int(header["model_version"]) > 0
                peak = max(peak, int(mask.max()))
            assert peak > 0  # a probability image, not an empty one (fusion values: test_bootstrap.py)

        out = subprocess.run(
            [sys.executable, "-m", "motionmask.cli", "status", "--endpoint", control],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        line = [x for x in out.stdout.splitlines() if x.startswith("learner:")]
        assert len(line) == 1 and "running" in line[0] and "on cpu x1" in line[0], out.stdout
        assert "bootstrap round" in line[0] and "checkpoint step" in line[0]

        # SIGKILL: the daemon restarts it; it resumes from its last checkpoint and goes on counting
        victim, ckpt = st["pid"], None
        st = wait_learner(
            proc, control, lambda s: s["checkpoint_step"] is not None and s["step"] > s["checkpoint_step"], log
        )
        victim, ckpt = st["pid"], st["checkpoint_step"]
        os.kill(victim, signal.SIGKILL)
        st = wait_learner(
            proc,
            control,
            lambda s: (
                s["pid"] not in (None, victim) and s["resumed_from"] is not None and s["step"] > s["resumed_from"]
            ),
            log,
        )
        assert st["restarts"] == 1 and "SIGKILL" in st["last_error"]
        assert st["resumed_from"] >= ckpt
        step_before_stop = st["step"]

        code, took = stop_daemon(proc, signal.SIGTERM, SHUTDOWN_S + 5)
    finally:
        reap(proc)
    text = log.read_text(errors="replace")
    assert code == 0 and took < SHUTDOWN_S + 2, text[-3000:]
    assert "Traceback" not in text and "event=child_killed" not in text
    assert "event=learner_resume" in text and "event=bootstrap_round" in text
    # the shutdown checkpoint holds at least the steps reported before SIGTERM
    state = load_checkpoint(checkpoint_dir(cfg["learner"]["run_dir"]) / LAST)
    assert int(state["step"]) >= step_before_stop
    rounds = [json.loads(x) for x in (Path(cfg["learner"]["run_dir"]) / "bootstrap.jsonl").read_text().splitlines()]
    assert rounds and all(r["step"] % ROUND_EVERY == 0 and r["samples"] + r["refused"] > 0 for r in rounds)
    assert rounds[0]["weight"] == pytest.approx(0.3)


def test_an_orphaned_learner_checkpoints_and_exits(tmp_path, learner_daemon_config):
    """A daemon killed with SIGKILL cannot stop its learner: the learner notices (its parent is
    gone), saves a checkpoint as on SIGTERM, and exits instead of training forever."""
    cfg = learner_daemon_config(SHUTDOWN_S, checkpoint={"every_steps": 10_000, "every_minutes": 0, "keep": 2})
    proc, log = start_daemon(tmp_path, cfg)
    try:
        st = wait_learner(
            proc, cfg["daemon"]["control_endpoint"], lambda s: s["state"] == "running" and s["step"] >= 5, log
        )
        learner, step = st["pid"], st["step"]
        proc.kill()
        proc.wait(5)
        assert process_gone(learner, 15.0), f"orphaned learner kept running:\n{log.read_text()[-3000:]}"
    finally:
        reap(proc)
    text = log.read_text(errors="replace")
    assert "event=learner_orphaned" in text, text[-3000:]
    state = load_checkpoint(checkpoint_dir(cfg["learner"]["run_dir"]) / LAST)  # no scheduled one: the exit's
    assert int(state["step"]) >= step
