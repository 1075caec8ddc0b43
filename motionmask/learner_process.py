"""The daemon's learner process, started and restarted by the supervisor (motionmask/daemon.py)
next to the camera processes:

    shared ring buffer --samples--> learner.train.fit --> RUN/checkpoints (schedule, rounds, exit)
                       <--refined trimaps-- bootstrapping rounds (learner/bootstrap.py)
                                         --> refined masks to the daemon, published as kind `refined`

It only reads the buffer (a streamer never waits for it) and writes refined labels through the
buffer's seqlock. An empty buffer at start is waited on with a log line, not spun on. It resumes
from the newest readable checkpoint in `learner.run_dir` (model, optimiser, step, RNG), so a
crash or a SIGKILL costs at most the steps since the last checkpoint; SIGTERM checkpoints first,
abandoning an export under way (one takes seconds, longer than daemon.shutdown_timeout_s allows
on a small machine; the bundle in service stays, and a half-written one is never published).

learner.train.nproc > 1 (`motionmask learn --nproc N`): this process is rank 0 of N data-parallel
ranks and starts the others (motionmask/learner_ranks.py, docs/distributed.md).

Run as `python -m motionmask.learner_process` with its spec as JSON on stdin, like a camera.
Counters go to the daemon over the same PUSH socket as the cameras' (twice a second, from a
thread, so that a long step or a round never looks like a hang), and `motionmask status` shows
them. torch uses `learner.train.threads` CPU threads; 0 here means the cores not taken by the
cameras and the daemon (at least 1), and the process runs at nice 10, so the learner never
starves a camera on a small machine.

Exit status: 128 + N stopped by signal N, 2 a user error (e.g. an incompatible checkpoint in
run_dir, a loss that stays NaN), 1 a crash.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from typing import Any

import cv2
import numpy as np
import zmq

from common.config import from_dict
from common.log import log_event
from learner.config import LearnerConfig
from learner.held_back import HeldBack
from motionmask.camera_process import MSG_MASK, MSG_STATS
from motionmask.child import EXIT_CRASH, Reporter, Stopped, push_socket, run_child, run_reported
from streamer.config import TrimapConfig
from streamer.live import protocol
from streamer.shm.ringbuffer import BufferConfig

log = logging.getLogger("motionmask.learner")

REPORT_INTERVAL_S = 0.5
REFINED_HWM = 1024  # a round sends one mask per buffered sample in a burst; the daemon drains 500 per turn
_RATE_WINDOW_S = 10.0
_WALL_CLOCK = 1e9  # capture times above this (2001) are wall clock (live sources); below, stream time
# The cameras keep pace with their sources; the learner can wait. A nice learner gets the CPU the
# cameras leave, so on a small machine a busy learner costs camera fps nothing it could give back.
NICE = 10


def daemon_threads(requested: int, cameras: int) -> int:
    """torch threads in the daemon: `requested`, or the cores left by the cameras and the daemon."""
    from learner.device import available_cores

    return requested or max(1, available_cores() - cameras - 1)


class ExportInterrupted(BaseException):
    """A stop signal during an export: raised by the signal handler so that the export is left
    (a BaseException, past the export's own error handling) and fit() checkpoints and returns."""


class LearnerProcess:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.cfg: LearnerConfig = from_dict(LearnerConfig, spec["learner"], "learner")
        self.trimap_cfg: TrimapConfig = from_dict(TrimapConfig, spec["trimap"], "streamer.trimap")
        self.trimap_by_camera = {
            k: from_dict(TrimapConfig, v, f"cameras.{k}.streamer.trimap")
            for k, v in spec.get("trimap_by_camera", {}).items()
        }
        self.encoding: str | None = spec.get("publish_encoding")  # None: refined masks are not published
        self.stop = threading.Event()
        self.signum = 0
        self.phase = "starting"  # starting -> running -> stopped | failed
        self.exporting = False  # inside the gate's export: a stop signal interrupts it
        self.error = ""
        self.trainer = None
        self.bootstrap = None
        self.ring = None
        self.pairs = None  # streamer.shm.pairbuffer.PairBuffer when cameras mine tracked-patch pairs
        self.ranks: list = []  # learner.train.nproc > 1: the processes of ranks 1..N-1 (motionmask/learner_ranks.py)
        self.ranks_done = False
        self.export_spec: dict[str, Any] | None = spec.get("export")  # None: export is off
        self.periodic = None  # exporter.export.PeriodicExport, made once the buffer has samples to hold back
        self.window = None  # motionmask.holdout.HoldoutWindow: the export holdout's samples, never trained on
        self.export_cfg = None  # exporter.config.ExportConfig, parsed when training starts
        self.export_error = ""  # why periodic export stopped in this process (the holdout could not be built)
        self.counters: dict[str, Any] = {
            "step": 0,
            "loss": None,
            "lr": 0.0,
            "crops_per_s": 0.0,
            "device": "",
            "threads": 0,
            "nan_skipped": 0,
            "resumed_from": None,
            "refined_sent": 0,
            "refined_dropped": 0,
            "appetite_waits": 0,
            "appetite_waiting": False,
        }
        self._rate: deque[tuple[float, int]] = deque()  # (time, crops seen) for crops/s
        self._ckpt_cache: tuple[float, dict] = (0.0, {})
        self.ctx = zmq.Context()
        self.masks = push_socket(self.ctx, spec["forward_endpoint"], REFINED_HWM)
        # an orphan checkpoints on SIGTERM; 30 s later it exits whatever the step is doing
        stats = push_socket(self.ctx, spec["forward_endpoint"], 64)
        self.reporter = Reporter(
            "learner",
            self.snapshot,
            stats,
            MSG_STATS,
            int(spec["parent_pid"]),
            grace_s=30.0,
            orphan_exit=EXIT_CRASH,
            interval=REPORT_INTERVAL_S,
        )

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signum = signum
        self.stop.set()
        if self.phase == "starting":
            raise Stopped()
        if self.exporting and not self.ranks:  # ranks wait for rank 0 in the next step's collectives
            self.exporting = False
            raise ExportInterrupted()

    # -- main -------------------------------------------------------------------------------
    def run(self) -> int:
        return run_reported(self, self._train, "learner", log)

    def _train(self) -> None:
        # torch loads after the reporter is up: the daemon hears from us while it imports
        from learner.bootstrap import Bootstrapper
        from learner.train import Limits, fit

        cfg = self.cfg
        run_dir = os.path.expanduser(cfg.run_dir)
        trainer, buffer_cfg = self._start_trainer(run_dir)
        self.bootstrap = Bootstrapper(
            cfg.bootstrap,
            self.trimap_cfg,
            self.ring,
            run_dir,
            on_refined=self._publish_refined if self.encoding else None,
            stop=self.stop.is_set,
            fg_threshold=float(self.spec.get("fg_threshold", 0.5)),
            trimap_by_camera=self.trimap_by_camera,
        )
        self.bootstrap.round = self.bootstrap.rounds_before(trainer.step_count) if cfg.bootstrap.enabled else 0
        self.trainer = trainer
        self.counters.update(
            step=trainer.step_count,
            device=trainer.device.type,
            threads=cfg.train.threads,
            nan_skipped=trainer.nan_skipped,
        )
        self.phase = "running"
        if self.stop.is_set():
            return
        feed = self._feed(trainer, run_dir)
        if self.ranks:
            summary = self._fit_ranked(trainer, feed, run_dir, buffer_cfg)
        else:
            summary = fit(
                trainer,
                feed,
                run_dir,
                Limits(),
                progress=False,
                stop=self.stop.is_set,
                interrupts=(KeyboardInterrupt, ExportInterrupted),
                on_step=self._on_step,
            )
        if summary.interrupted_by == ExportInterrupted.__name__:
            log_event(log, "export_abandoned", logging.WARNING, step=summary.step, reason="stop signal")
        log_event(
            log,
            "learner_stopped",
            step=summary.step,
            steps=summary.steps,
            crops=summary.crops,
            checkpoint=summary.checkpoint or "-",
        )

    def _start_trainer(self, run_dir: str):
        """This process's share of the machine, the buffer attached, the other ranks started
        (learner.train.nproc > 1), and the Trainer, resumed from run_dir's newest checkpoint."""
        from learner.checkpoint import find_resume
        from learner.train import Trainer
        from streamer.shm.ringbuffer import RingBuffer

        cfg = self.cfg
        try:
            os.nice(NICE)
        except OSError:
            pass
        cfg.train.threads = daemon_threads(cfg.train.threads, int(self.spec.get("cameras", 1)))
        cv2.setNumThreads(1)  # only resizes refined masks for publishing: not worth a pool per core
        buffer_cfg = from_dict(BufferConfig, self.spec["buffer"], "buffer")
        self.ring = RingBuffer.attach(self.spec["buffer_name"], buffer_cfg)
        device = None
        if cfg.train.nproc > 1:  # `motionmask learn --nproc N`: this process is rank 0 (motionmask/learner_ranks.py)
            from learner import distributed
            from learner.device import resolve_device
            from motionmask import learner_ranks

            cfg.train.threads = max(1, cfg.train.threads // cfg.train.nproc)  # the cores, shared by the ranks
            self.ranks = learner_ranks.start(
                cfg.train.nproc,
                {
                    "learner": self.spec["learner"]
                    | {"train": self.spec["learner"]["train"] | {"threads": cfg.train.threads}},
                    "export": self.export_spec,
                    "log_level": self.spec.get("log_level", "INFO"),
                },
            )
            device = distributed.init(resolve_device(cfg.train.device, cfg.train.strict_device))
        trainer = Trainer(cfg, device)
        resumed = find_resume(run_dir, trainer.device)
        if resumed is not None:
            path, state = resumed
            trainer.load_state_dict(state, path)
            self.counters["resumed_from"] = trainer.step_count
            log_event(log, "learner_resume", checkpoint=path, step=trainer.step_count)
        return trainer, buffer_cfg

    def _feed(self, trainer, run_dir: str):
        """The buffer's samples (and the cameras' tracked-patch pairs), less the export holdout's,
        rationed by the appetite of `motionmask learn`."""
        from learner.samples import RingFeed

        cfg = self.cfg
        pairs = None
        if self.spec.get("pairs_name"):  # a camera mines tracked-patch pairs (streamer.patches.enabled)
            from learner.pairs import RingPairFeed
            from streamer.shm.pairbuffer import PairBuffer

            self.pairs = PairBuffer.attach(self.spec["pairs_name"])
            pairs = RingPairFeed(self.pairs)
        log_event(
            log,
            "learner_running",
            device=trainer.device.type,
            threads=cfg.train.threads,
            precision=trainer.precision,
            backbone=cfg.model.backbone,
            crop=trainer.crop_size,
            batch=cfg.train.batch,
            run_dir=run_dir,
            step=trainer.step_count,
            bootstrap=cfg.bootstrap.enabled,
            buffer=self.ring.name,
            pairs=self.pairs.name if self.pairs is not None else "off",
        )
        feed = RingFeed(self.ring, mode=cfg.samples.sampling or None, pairs=pairs)
        if self.export_spec is not None:
            from exporter.config import ExportConfig
            from motionmask.holdout import HoldoutWindow

            self.export_cfg = ecfg = from_dict(ExportConfig, self.export_spec, "export")
            self.window = HoldoutWindow(self.ring, ecfg.holdout_samples, ecfg.holdout_every, ecfg.holdout_block)
            feed = HeldBack(feed, self.window)
        if self.spec.get("appetite"):  # `motionmask learn`: samples per insert (learner/appetite.py)
            feed = Rationed(feed, self.ring, self.spec["appetite"], self.counters)
        return feed

    def _fit_ranked(self, trainer, feed, run_dir: str, buffer_cfg: BufferConfig):
        """fit() as rank 0 of several: the other ranks attach to this buffer (share_feed) and
        train on their own batches; this rank alone checkpoints, bootstraps and exports."""
        from learner import distributed
        from learner.train import Limits, fit

        distributed.wrap(trainer)
        with distributed.share_feed(_Shared(self.ring, buffer_cfg)):
            summary = fit(
                trainer, feed, run_dir, Limits(), progress=False, stop=self.stop.is_set, on_step=self._on_step
            )
        distributed.shutdown()
        self.ranks_done = True  # the others left fit() with this rank: close() waits for them
        return summary

    def _on_step(self, trainer, result) -> bool:
        c = self.counters
        c["step"], c["lr"], c["nan_skipped"] = trainer.step_count, result.lr, trainer.nan_skipped
        c["loss"] = result.loss if c["loss"] is None else 0.95 * c["loss"] + 0.05 * result.loss
        now = time.monotonic()
        self._rate.append((now, trainer.crops_seen))
        while len(self._rate) > 2 and now - self._rate[0][0] > _RATE_WINDOW_S:
            self._rate.popleft()
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        c["crops_per_s"] = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        if self.window is not None:
            self.window.collect()  # before a bootstrapping round relabels them: the gate scores against the teacher
        keep = self.bootstrap.on_step(trainer, result)
        if self.export_spec is not None:
            self._maybe_export(trainer)
        return keep

    # -- periodic export --------------------------------------------------------------------
    def _maybe_export(self, trainer) -> None:
        """Export on schedule (exporter.export.PeriodicExport), judged on the holdout window
        (motionmask/holdout.py): made once it holds one held-out block, refreshed before each
        decision, so the gate scores both models on the scene the cameras show now.
        Failures are logged, never raised: training goes on and the bundle in service stays."""
        try:
            if self.periodic is None:
                self.periodic = self._periodic_export(trainer)
            elif self.periodic.due(trainer.step_count):
                self.periodic.holdout = self._holdout(trainer, "refresh")
            if self.periodic is not None:
                self.exporting = True
                try:
                    self.periodic.maybe_export(trainer.model, trainer.step_count)
                finally:
                    self.exporting = False
        except Exception as e:
            log_event(log, "export_failed", logging.ERROR, step=trainer.step_count, error=f"{type(e).__name__}: {e}")
            if self.periodic is None:
                self.export_spec = None  # a holdout that cannot be built will not build next step either
                self.export_error = f"the export holdout could not be built: {type(e).__name__}: {e}"

    def _holdout(self, trainer, why: str):
        """The gate's holdout from the window's samples, fitted like the bundles' frames."""
        from exporter.export import Holdout

        cfg = self.export_cfg
        slot = (self.ring.height, self.ring.width)
        holdout = Holdout.for_model(self.window.samples(), trainer.model, cfg, slot_size=slot)
        log_event(
            log,
            "export_holdout",
            why=why,
            step=trainer.step_count,
            **self.window.describe(time.monotonic()),
            every=cfg.holdout_every,
            block=cfg.holdout_block,
        )
        return holdout

    def _periodic_export(self, trainer):
        from exporter.export import PeriodicExport

        # from the first held-out block on: the first export ships whatever its score (there is
        # nothing to beat), and by the gate's next decision the window has grown (refreshed then)
        if len(self.window) < min(self.window.size, self.window.block):
            return None
        cfg = self.export_cfg
        holdout = self._holdout(trainer, "first")
        log_event(log, "export_schedule", every_steps=cfg.every_steps, every_minutes=cfg.every_minutes, dir=cfg.dir)
        return PeriodicExport(
            cfg.dir,
            cfg,
            holdout,
            slot_size=(self.ring.height, self.ring.width),
            source={"run_dir": os.path.expanduser(self.cfg.run_dir)},
        )

    # -- refined masks ----------------------------------------------------------------------
    def _publish_refined(self, refined) -> None:
        """One `refined` mask per refined sample, at the camera's frame size, through the daemon's
        publisher (the cameras' path); model_version is the step of the model that refined it,
        which is checkpointed at that step."""
        now_wall, now_mono = time.time(), time.monotonic()
        for k, camera in enumerate(refined.cameras):
            prob = np.clip(refined.refined[k] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            h, w = refined.source_hw[k]
            if h > 0 and w > 0 and (h, w) != prob.shape:
                prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
            ct = refined.capture_time[k]
            # live sources stamp wall-clock capture times; files stream time: use when it entered the buffer
            capture = ct if ct > _WALL_CLOCK else now_wall - (now_mono - refined.put_time[k])
            meta = json.dumps(
                {
                    "frame": refined.frame_index[k],
                    "shot": refined.shot[k],
                    "capture_ns": int(capture * 1e9),
                    "width": prob.shape[1],
                    "height": prob.shape[0],
                    "model_version": str(refined.step),
                }
            ).encode()
            try:
                payload = protocol.encode_payload(prob, self.encoding)
                self.masks.send_multipart([MSG_MASK, camera.encode(), b"refined", meta, payload], zmq.NOBLOCK)
                self.counters["refined_sent"] += 1
            except (zmq.Again, protocol.ProtocolError):
                self.counters["refined_dropped"] += 1

    # -- reports ----------------------------------------------------------------------------
    def _checkpoint_info(self) -> dict[str, Any]:
        """The newest checkpoint on disk (looked up at most once a second)."""
        now = time.monotonic()
        if now - self._ckpt_cache[0] < 1.0:
            return self._ckpt_cache[1]
        info: dict[str, Any] = {"checkpoint_step": None, "checkpoint_age_s": None}
        try:
            from learner.checkpoint import step_files

            files = step_files(os.path.expanduser(self.cfg.run_dir))
            if files:
                info["checkpoint_step"] = int(files[-1].stem.split("_")[1])
                info["checkpoint_age_s"] = round(max(0.0, time.time() - files[-1].stat().st_mtime), 1)
        except (OSError, ValueError, IndexError):
            pass
        self._ckpt_cache = (now, info)
        return info

    def activity(self) -> str:
        if self.phase != "running":
            return self.phase
        if self.exporting:
            return "exporting"
        if self.bootstrap is not None and self.bootstrap.busy:
            return "bootstrapping"
        ring = self.ring
        if ring is not None and self.counters["step"] == (self.counters["resumed_from"] or 0):
            try:
                if not len(ring.ready_slots()):
                    return "waiting for samples"
            except ValueError:  # closed meanwhile
                pass
        if self.counters.get("appetite_waiting"):
            return "waiting for samples (samples per insert)"
        return "training"

    def snapshot(self) -> dict[str, Any]:
        c = dict(self.counters)
        if isinstance(c["loss"], float) and not math.isfinite(c["loss"]):
            c["loss"] = None
        b = self.bootstrap
        last = b.history[-1] if b is not None and b.history else None
        return {
            "child": self.name,
            "pid": os.getpid(),
            "phase": self.phase,
            "error": self.error,
            "activity": self.activity(),
            **c,
            **self._checkpoint_info(),
            "bootstrap_round": b.round if b is not None else 0,
            "export": self._export_status(),
            "bootstrap_last": {
                "round": last.round,
                "step": last.step,
                "samples": last.samples,
                "agreement": last.agreement,
                "changed": last.changed,
            }
            if last
            else None,
        }

    def _export_status(self) -> dict[str, Any] | None:
        """The export gate's record (exporter.export.PeriodicExport.summary) with its state: why
        a model did or did not ship is part of the status, so the console needs no other source."""
        if self.periodic is not None:
            return {
                "state": "exporting",
                "holdout_samples": len(self.periodic.holdout.images),
                **self.periodic.summary(),
            }
        if self.export_error:
            return {"state": "off", "reason": self.export_error}
        if self.export_spec is None:
            return None
        return {
            "state": "waiting",
            "reason": "waiting for the first held-out block of buffer samples (the gate's holdout window)",
        }

    def close(self) -> None:
        if self.ranks:
            from motionmask import learner_ranks

            learner_ranks.stop(self.ranks, learner_ranks.STOP_WAIT_S if self.ranks_done else 0.0)
        self.reporter.stop_and_send_last()
        if self.ring is not None:
            self.ring.close()
        if self.pairs is not None:
            self.pairs.close()
        self.masks.close(0)
        self.reporter.sock.close()
        self.ctx.term()


class _Shared:
    """What distributed.share_feed needs of rank 0's feed: the buffer the other ranks attach to."""

    def __init__(self, ring, buffer_cfg: BufferConfig) -> None:
        self.ring, self.buffer_cfg = ring, buffer_cfg

    def __enter__(self) -> _Shared:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Rationed:
    """A feed that comes back empty (fit() waits, as on an empty buffer) while the learner is
    ahead of its appetite: more samples drawn per sample inserted than the ratio allows."""

    def __init__(self, feed, ring, appetite: dict[str, float], counters: dict[str, Any]) -> None:
        from learner.appetite import Appetite

        self.feed, self.ring, self.counters = feed, ring, counters
        self.appetite = Appetite(float(appetite["samples_per_insert"]), float(appetite["tolerance"]))
        self.height, self.width = feed.height, feed.width

    def sample(self, n: int, rng, out):
        t = self.ring.totals()
        waiting = not self.appetite.can_sample(t["puts"], t["samples"], n)
        self.counters["appetite_waiting"] = waiting
        if waiting:
            self.counters["appetite_waits"] += 1
            out.n = 0
            return out
        return self.feed.sample(n, rng, out)

    def __getattr__(self, name: str):  # check(), fill(), sample_pairs(), ...
        return getattr(self.feed, name)


def main() -> int:
    return run_child(LearnerProcess)


if __name__ == "__main__":
    sys.exit(main())
