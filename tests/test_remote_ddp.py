"""`motionmask learn --nproc 2` on gloo: a real learner daemon whose learner process is rank 0 of
two (motionmask/learner_ranks.py starts rank 1), fed real wire-format samples over its listen
socket. Steps grow on both ranks (the log's per-rank lines), rank 0 checkpoints, and a SIGINT stops
both ranks cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq
from _media import free_port, process_gone

from motionmask.control import ControlUnavailable, request
from motionmask.sample_wire import encode_sample

W, H = 64, 48


def _parts(i: int) -> list[bytes]:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([(xx * 4 + i) % 256, (yy * 5) % 256, np.full_like(xx, 40 + i)], -1).astype(np.uint8)
    trimap = np.zeros((H, W), np.uint8)
    trimap[10:30, 20 + i % 8 : 40 + i % 8] = 255
    prob = (rng.random((H, W)) * 255).astype(np.uint8)
    return encode_sample(
        rig="rigA",
        camera="cam0",
        seq=i,
        frame=i,
        shot=i // 10,
        capture_time=1000.0 + i,
        image=img,
        trimap=trimap,
        prob=prob,
        flow=None,
        valid=(0, 0, H, W),
        source_hw=(H, W),
    )


def _status(endpoint: str) -> dict | None:
    try:
        return request(endpoint, "status", timeout=1.0)
    except ControlUnavailable:
        return None


@pytest.mark.slow
def test_learn_with_two_gloo_ranks_trains_checkpoints_and_stops_both(tmp_path: Path):
    ep = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("samples", "ctl", "pub", "bundles", "announce")}
    cfg = {
        "buffer": {"train_width": W, "train_height": H, "memory_mb": 2, "name": f"mm_test_ddp_{os.getpid()}"},
        "publish": {"endpoint": ep["pub"]},
        "daemon": {"control_endpoint": ep["ctl"], "stats_interval_s": 0, "shutdown_timeout_s": 30.0},
        "web": {"enabled": False},
        "learner": {
            "run_dir": str(tmp_path / "run"),
            "listen": ep["samples"],
            "model": {"width": 8, "blocks": [1, 1, 1, 1]},
            "crops": {"size": 32},
            "train": {"batch": 4, "device": "cpu", "warmup_steps": 0, "threads": 2},
            "checkpoint": {"every_steps": 5, "every_minutes": 0, "keep": 2},
            "bootstrap": {"enabled": False},
            "transport": {"samples_per_insert": 0},
        },
        # export on: rank 1 leaves rank 0's holdout out too; no export falls due in this test
        "export": {
            "enabled": True,
            "dir": str(tmp_path / "exports"),
            "every_steps": 100000,
            "every_minutes": 0,
            "holdout_samples": 4,
            "endpoint": ep["bundles"],
            "announce_endpoint": ep["announce"],
        },
    }
    path = tmp_path / "learn.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "learn.log"
    with open(log, "ab") as out:
        learn = subprocess.Popen(
            [sys.executable, "-m", "motionmask.cli", "learn", "--config", str(path), "--nproc", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(ep["samples"])
    st, sent = None, 0
    try:
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline:
            assert learn.poll() is None, log.read_text()[-3000:]
            if sent < 200:
                try:
                    for _ in range(10):
                        push.send_multipart(_parts(sent), zmq.NOBLOCK)
                        sent += 1
                except zmq.Again:
                    pass
            st = _status(ep["ctl"])
            lr = (st or {}).get("learner") or {}
            if (lr.get("step") or 0) >= 12 and lr.get("checkpoint_step"):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(
                f"no training within 50 s; learner: {st and st.get('learner')}\n{log.read_text()[-3000:]}"
            )
        assert (
            st["remote"]["rigs"]["rigA"]["inserted"] > 0
            and st["learner"]["state"] == "running"
            and st["learner"]["restarts"] == 0
        )
        text = log.read_text(errors="replace")
        pids = [int(p) for p in re.search(r"event=ranks_started .*pids=([\d,]+)", text).group(1).split(",")]
        assert "world=2" in text and "backend=gloo" in text
        assert len(pids) == 1 and process_gone(pids[0], 0.01) is False  # rank 1 runs beside rank 0
        learn.send_signal(signal.SIGINT)
        code = learn.wait(40)
    finally:
        push.close(0)
        ctx.term()
        if learn.poll() is None:
            learn.kill()
            learn.wait(5)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert process_gone(pids[0], 10), "rank 1 outlived the learner"
    assert "Traceback" not in text and "rank_failed" not in text and "rank_killed" not in text, text[-3000:]
    # both ranks left fit() after the same step; rank 0 wrote the last checkpoint
    stopped = re.search(r"event=learner_stopped step=(\d+)", text)
    rank1 = re.search(r"event=rank_stopped rank=1 step=(\d+)", text)
    assert stopped and rank1 and stopped.group(1) == rank1.group(1) and int(rank1.group(1)) >= 12, text[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
