"""Ranks 1..N-1 of `motionmask learn --nproc N` (learner.train.nproc): data-parallel training
(learner/distributed.py) next to the learner process, which is rank 0.

    rigs --> receiver --> ring buffer <-- rank 0: the learner process (checkpoints, bootstraps,
                                 ^              exports, status), learner/distributed.share_feed
                                 +----------- rank r: attaches to the buffer, samples its own batches

Rank 0 (motionmask/learner_process.py) starts these processes itself, as `torchrun` would start
its ranks: it sets MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK in its environment and in theirs, and
each process joins the group with distributed.init (nccl on CUDA, one GPU per rank; gloo on the
CPU). The torch elastic agent of `train --nproc` is not used because rank 0 must stay the
daemon's child (its reports, its signals, its restarts). The ranks keep in step through fit()
(distributed.agree): a stop of rank 0 stops them after the same step. A rank exits on its own
when rank 0's process is gone; rank 0 kills what is left when it closes.

Run as `python -m motionmask.learner_ranks` with its spec as JSON on stdin.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from common.log import log_event
from motionmask.journald import setup_logging

log = logging.getLogger("motionmask.learner_ranks")

STOP_WAIT_S = 30.0  # a rank finishes its step and leaves; after this it is killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(nproc: int, spec: dict[str, Any]) -> list[subprocess.Popen]:
    """Make this process rank 0 of `nproc` (its environment) and start ranks 1..nproc-1 with
    `spec` (learner, buffer, export, log_level); call distributed.init afterwards."""
    world = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
    }
    os.environ.update(world, RANK="0", LOCAL_RANK="0")
    procs = []
    payload = json.dumps({**spec, "parent_pid": os.getpid()}).encode()
    for r in range(1, nproc):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r))
        p = subprocess.Popen([sys.executable, "-m", "motionmask.learner_ranks"], stdin=subprocess.PIPE, env=env)
        p.stdin.write(payload)
        p.stdin.close()
        procs.append(p)
    log_event(log, "ranks_started", world=nproc, pids=",".join(str(p.pid) for p in procs))
    return procs


def stop(procs: list[subprocess.Popen], wait_s: float = STOP_WAIT_S) -> None:
    """Wait for the ranks to leave (they stop with rank 0's last step); kill the ones that do not."""
    deadline = time.monotonic() + wait_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            log_event(log, "rank_killed", logging.WARNING, pid=p.pid)


def _watch_parent(parent: int) -> None:
    # rank 0 died (a SIGKILL): nothing will stop this rank's collectives but their 30-min timeout
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def run(spec: dict[str, Any]) -> int:
    from common.config import from_dict
    from learner import distributed
    from learner.checkpoint import find_resume
    from learner.config import LearnerConfig
    from learner.device import resolve_device
    from learner.train import Limits, Trainer, fit

    stop_ev = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_ev.set())
    signal.signal(signal.SIGINT, lambda *_: stop_ev.set())
    threading.Thread(target=_watch_parent, args=(int(spec["parent_pid"]),), daemon=True).start()
    cfg = from_dict(LearnerConfig, spec["learner"], "learner")
    t = cfg.train
    trainer = Trainer(cfg, distributed.init(resolve_device(t.device, t.strict_device)))
    resumed = find_resume(os.path.expanduser(cfg.run_dir), trainer.device)  # DDP then takes rank 0's weights
    if resumed is not None:
        trainer.load_state_dict(resumed[1], resumed[0])
    distributed.wrap(trainer)
    with distributed.share_feed(None) as feed:
        if spec.get("export"):  # rank 0's export holdout: never trained on, here neither
            from learner.held_back import HeldBack
            from motionmask.holdout import HoldoutWindow

            e = spec["export"]
            feed = HeldBack(
                feed, HoldoutWindow(feed.ring, e["holdout_samples"], e["holdout_every"], e["holdout_block"])
            )
        summary = fit(trainer, feed, None, Limits(), progress=False, stop=stop_ev.is_set)
    log_event(log, "rank_stopped", rank=distributed.rank(), step=summary.step, steps=summary.steps)
    distributed.shutdown()
    return 0


def main() -> int:
    spec = json.load(sys.stdin)
    setup_logging(spec.get("log_level", "INFO"))
    try:
        return run(spec)
    except Exception as e:  # rank 0 sees the group break and reports; this line says why
        log_event(log, "rank_failed", logging.ERROR, rank=os.environ.get("RANK"), error=f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
