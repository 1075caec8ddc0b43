"""One camera's streamer process, started by the daemon (motionmask/daemon.py):

    open_source -> MotionSegmenter -> every result: masks `motion` (prob as u8) and `trimap`
                                      forwarded to the daemon, which publishes them
                                   -> kept results: the shared ring buffer (training samples)
                                   -> with streamer.patches.enabled, every result: PatchMiner ->
                                      tracked-patch pairs into the shared pair store

Run as `python -m motionmask.camera_process` with its spec as JSON on stdin (not argv: a camera
URL may carry a password, and argv is readable by every user through ps).

Talks to the daemon over two PUSH sockets on a private ipc:// endpoint: masks (already encoded
here, so that PNG encoding runs in parallel across cameras) and, from a reporter thread twice a
second, its counters. Nothing here ever blocks on the daemon: a full queue drops the mask and
counts it. A SIGKILLed child loses at most the last half second of counters.

Exit status: 0 the source ended (a file without loop), 128 + N stopped by signal N, 3 the source
failed (missing, unplugged, unreachable), 2 another user error, 1 a crash.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from common.config import from_dict
from common.errors import SourceError, UserError
from common.log import log_event
from motionmask.child import EXIT_CRASH, EXIT_OK, EXIT_SOURCE, EXIT_USER, Reporter, Stopped, push_socket, run_child
from motionmask.fuse import MIN_STUDENT, CarriedStudent, live_step
from streamer.config import StreamerConfig
from streamer.live import protocol
from streamer.motion.prune import FEW_KEPT_FRACTION, pruned_summary, relax_hint
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, sample_from_result

if TYPE_CHECKING:
    from streamer.motion.pipeline import MotionSegmenter
    from streamer.sources.base import Source

log = logging.getLogger("motionmask.camera")

REPORT_INTERVAL_S = 0.5
FORWARD_HWM = 64  # masks queued for the daemon before this camera drops (and counts) them
MSG_MASK, MSG_STATS = b"M", b"S"
_RESYNC_S = 1.0  # realtime playback further behind than this stops catching up and re-anchors
_FPS_WINDOW_S = 2.0
STUDENT_CHECK_S = 2.0  # how often the exports folder is looked at for a new bundle
KEEP_RATE_CHECK_FRAMES = 300  # the keep rate is judged once, after this many frames (10 s at 30 fps),
KEEP_RATE_MIN_FRAMES = 20  # or at the end of a shorter file of at least this many


def _zero_counters() -> dict[str, Any]:
    """The counters a camera reports to the daemon (CameraProcess.snapshot), all zero."""
    return {
        "frames": 0,
        "shots": 0,
        "kept": 0,
        "pruned": 0,
        "buffer_puts": 0,
        "buffer_drops": 0,
        "forward_drops": 0,
        "ms_per_frame": 0.0,
        "fps": 0.0,
        "pair_puts": 0,
        "pair_drops": 0,
        "pair_ms_per_frame": 0.0,
    }


class CameraProcess:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.spec = spec
        self.cfg: StreamerConfig = from_dict(StreamerConfig, spec["streamer"], f"cameras.{self.name}.streamer")
        self.realtime: bool = bool(spec.get("realtime", True))
        self.encoding: str | None = spec.get("publish_encoding")  # None: publishing is off
        self.stop = threading.Event()
        self.signum = 0
        self.phase = "opening"  # opening -> running -> finished | stopped | failed
        self.error = ""
        self.source = None
        self.counters: dict[str, Any] = _zero_counters()
        self.pruned_by: dict[str, int] = {}
        self.warnings: list[dict[str, Any]] = []  # said once (a log line), kept for the daemon's status
        self._times: deque[float] = deque()  # result times of the last _FPS_WINDOW_S, for fps
        self._running_since = 0.0
        self._capture_ns: dict[int, int] = {}
        self.ctx = zmq.Context()
        self.masks = push_socket(self.ctx, spec["forward_endpoint"], FORWARD_HWM)
        self.reporter = self._reporter(spec)
        self.ring: RingBuffer | None = None
        self.buffer_cfg: BufferConfig | None = None
        self.pairs = None  # streamer.shm.pairbuffer.PairBuffer, with a PatchMiner, when this camera mines pairs
        self.miner = None
        export = spec.get("export")  # None: no student masks
        self.student_dir: str | None = export["dir"] if export and self.encoding is not None else None
        self.student_every = int(export.get("student_every", 0)) if self.student_dir else 0
        self.student = None  # exporter.runtime.BundleRunner once a bundle exists
        # kind `fused` every frame (motionmask/fuse.py): the student between its runs is carried along the flow
        self.fused = bool(export.get("fused", True)) if self.student_dir else False
        self.min_student = float(export.get("fuse_min_student", MIN_STUDENT)) if self.student_dir else MIN_STUDENT
        self.student_precision = str(export.get("student_precision", "auto")) if self.student_dir else "auto"
        self.carried = CarriedStudent(max(1, self.student_every))
        self._student_check = 0.0
        self._student_error = ""
        # camera frames for web consoles (web.frame_fps), JPEG, published as topic frame.<camera>
        frames = spec.get("frames") if self.encoding is not None else None
        self.frame_every_s = 1.0 / frames["fps"] if frames and frames.get("fps", 0) > 0 else 0.0
        self.frame_width = int(frames.get("width", 640)) if frames else 640
        self.frame_quality = int(frames.get("quality", 70)) if frames else 70
        self._next_frame = 0.0

    def _reporter(self, spec: dict[str, Any]) -> Reporter:
        """The thread that pushes this camera's counters to the daemon twice a second."""
        # an orphan closes its source on SIGTERM; 5 s later it exits whatever the source is doing
        stats = push_socket(self.ctx, spec["forward_endpoint"], FORWARD_HWM)
        return Reporter(
            "camera",
            self.snapshot,
            stats,
            MSG_STATS,
            int(spec["parent_pid"]),
            grace_s=5.0,
            orphan_exit=EXIT_OK,
            interval=REPORT_INTERVAL_S,
            camera=self.name,
        )

    # -- signals ----------------------------------------------------------------------------
    def on_signal(self, signum: int, _frame: object) -> None:
        self.signum = signum
        self.stop.set()
        if self.phase == "opening":
            raise Stopped()
        src = self.source
        if src is not None and src.live:
            src.close()  # wakes a consumer waiting for a live frame; safe from a signal handler

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> int:
        from streamer.motion.pipeline import MotionSegmenter  # heavy imports after the reporter is up
        from streamer.sources import open_source

        self.reporter.start()
        try:
            self._attach_stores()
            log_event(log, "camera_opening", camera=self.name, source=self.spec["source_label"])
            source = open_source(self.spec["source"], self.cfg.source, source_id=self.name)
            self._running(source)
            self._segment(source, MotionSegmenter(self.cfg))
            return self._ended()
        except Stopped:
            self.phase = "stopped"
            return 128 + (self.signum or signal.SIGTERM)
        except SourceError as e:
            self.phase, self.error = "failed", str(e)
            log_event(log, "camera_source_failed", logging.ERROR, camera=self.name, error=e)
            return EXIT_SOURCE
        except UserError as e:
            self.phase, self.error = "failed", str(e)
            log_event(log, "camera_failed", logging.ERROR, camera=self.name, error=e)
            return EXIT_USER
        except Exception as e:
            self.phase, self.error = "failed", f"crashed: {type(e).__name__}: {e}"
            log.exception("event=camera_crashed camera=%s", self.name)
            return EXIT_CRASH
        finally:
            self.close()

    def _attach_stores(self) -> None:
        """The daemon's shared ring buffer (training samples) and pair store, when it has them."""
        if self.spec.get("buffer_name"):
            self.buffer_cfg = from_dict(BufferConfig, self.spec["buffer"], "buffer")
            self.ring = RingBuffer.attach(self.spec["buffer_name"], self.buffer_cfg)
        if self.spec.get("pairs_name") and self.cfg.patches.enabled:
            from streamer.motion.patches import PatchMiner
            from streamer.shm.pairbuffer import PairBuffer

            self.pairs = PairBuffer.attach(self.spec["pairs_name"], self.cfg.patches.lock_timeout_ms)
            self.miner = PatchMiner(self.cfg.patches, self.name)

    def _running(self, source: Source) -> None:
        self.source = source
        self.phase = "running"
        self._running_since = time.monotonic()
        if self.stop.is_set():
            source.close()
        self.info = {
            "kind": source.kind,
            "width": source.width,
            "height": source.height,
            "fps_nominal": source.fps or 0.0,
        }
        log_event(
            log,
            "camera_running",
            camera=self.name,
            kind=source.kind,
            size=f"{source.width}x{source.height}",
            fps=source.fps or 0.0,
        )

    def _segment(self, source: Source, seg: MotionSegmenter) -> None:
        """Every frame through the segmenter until the source ends or a stop; a file in realtime
        is paced as a camera would deliver it."""
        pace = self.realtime and not source.live
        anchor: tuple[float, float] | None = None  # (wall, stream time) of the pacing origin
        with source:
            for frame in source:
                if self.stop.is_set():
                    break
                if pace:
                    anchor = self._pace(frame.timestamp, anchor)
                    if self.stop.is_set():
                        break
                self._capture_ns[frame.index] = int(frame.timestamp * 1e9) if source.live else time.time_ns()
                t0 = time.perf_counter()
                results = seg.push(frame)
                self._handle(results, (time.perf_counter() - t0) * 1e3)
            if not self.stop.is_set():
                self._handle(seg.flush(), 0.0)

    def _ended(self) -> int:
        """The exit status once the loop is over: stopped by a signal, or the source ended."""
        if self.stop.is_set():
            self.phase = "stopped"
            return 128 + (self.signum or signal.SIGTERM)
        self.phase = "finished"
        log_event(log, "camera_source_ended", camera=self.name, frames=self.counters["frames"])
        if KEEP_RATE_MIN_FRAMES <= self.counters["frames"] < KEEP_RATE_CHECK_FRAMES:
            self._check_keep_rate()
        return EXIT_OK

    def _pace(self, ts: float, anchor: tuple[float, float] | None) -> tuple[float, float]:
        """Sleep until stream time `ts` is due, as a camera would deliver it."""
        now = time.monotonic()
        if anchor is None:
            return now, ts
        due = anchor[0] + (ts - anchor[1])
        if due - now > _RESYNC_S or now - due > _RESYNC_S:  # a loop restart, a jump, or we are too slow
            return now, ts
        if due > now:
            self.stop.wait(due - now)
        return anchor

    def _handle(self, results: list, push_ms: float) -> None:
        c = self.counters
        if results:
            # one push can emit several results (a shot's head, a flush): spread its time over them
            per = push_ms / len(results)
            c["ms_per_frame"] = per if c["frames"] == 0 else 0.9 * c["ms_per_frame"] + 0.1 * per
        now = time.monotonic()
        for r in results:
            c["frames"] += 1
            c["shots"] = max(c["shots"], r.shot + 1)
            self._times.append(now)
            capture_ns = self._capture_ns.pop(r.frame.index, time.time_ns())
            if self.encoding is not None:
                motion = np.clip(r.prob * 255.0 + 0.5, 0, 255).astype(np.uint8)
                self._forward(r, "motion", motion, capture_ns)
                self._forward(r, "trimap", r.trimap, capture_ns)
                if self.student_every:
                    self._student(r, capture_ns, motion)
                if self.frame_every_s and now >= self._next_frame:
                    self._next_frame = now + self.frame_every_s
                    self._forward_frame(r, capture_ns)  # after its masks: a viewer finds them waiting
            if self.miner is not None:
                self._mine(r)
            if r.kept:
                c["kept"] += 1
                if self.ring is not None and self.buffer_cfg is not None:
                    if self.ring.put(sample_from_result(r, self.name, self.buffer_cfg)):
                        c["buffer_puts"] += 1
                    else:
                        c["buffer_drops"] += 1  # never waits: the buffer counts why, we count that
            else:
                c["pruned"] += 1
                self.pruned_by[r.reason] = self.pruned_by.get(r.reason, 0) + 1
            if c["frames"] == KEEP_RATE_CHECK_FRAMES:
                self._check_keep_rate()
        while self._times and now - self._times[0] > _FPS_WINDOW_S:
            self._times.popleft()

    def _check_keep_rate(self) -> None:
        """Once per run: a camera whose pruning keeps few frames starves the learner; say which
        threshold to change (the status command shows the counts, this says why)."""
        c = self.counters
        if c["kept"] >= FEW_KEPT_FRACTION * c["frames"]:
            return
        hint = relax_hint(self.pruned_by, self.cfg.prune)
        log_event(
            log,
            "few_frames_kept",
            logging.WARNING,
            camera=self.name,
            kept=c["kept"],
            frames=c["frames"],
            pruned=pruned_summary(self.pruned_by),
            hint=hint or "-",
        )
        self.warnings.append(
            {
                "time": round(time.time(), 3),
                "key": "streamer.prune",
                "text": f"camera {self.name} kept {c['kept']} of its first {c['frames']} frames "
                f"(pruned: {pruned_summary(self.pruned_by)})" + (f"; {hint}" if hint else ""),
            }
        )

    def _mine(self, r) -> None:
        """Tracked-patch pairs into the pair store; never waits (a busy store drops, and counts)."""
        c = self.counters
        for pair in self.miner.push(r):
            if self.pairs.put(pair):
                c["pair_puts"] += 1
            else:
                c["pair_drops"] += 1
        st = self.miner.stats
        c["pair_ms_per_frame"] = st.ms / st.frames if st.frames else 0.0

    def _student(self, r, capture_ns: int, motion: np.ndarray) -> None:
        """The latest exported bundle on every student_every-th frame, published as kind
        `student`; with export.fused, kind `fused` on every frame (motionmask/fuse.py), the
        student's last mask carried along the flow in between. The bundle is (re)loaded every
        STUDENT_CHECK_S; a bundle that will not load or run is logged (once per distinct error)
        and skipped: the camera never stops for it."""
        now = time.monotonic()
        carried = self.carried
        try:
            if now >= self._student_check:
                self._student_check = now + STUDENT_CHECK_S
                from exporter.runtime import BundleRunner, follows_latest  # ONNX Runtime only, no torch

                if self.student is None and follows_latest(self.student_dir):
                    # one thread and, by default, the 8-bit model: the camera's fps first
                    self.student = BundleRunner(self.student_dir, threads=1, precision=self.student_precision)
                    log_event(
                        log,
                        "student_loaded",
                        camera=self.name,
                        version=self.student.version,
                        provider=self.student.device.provider,
                        precision=self.student.precision,
                    )
                elif self.student is not None:
                    self.student.reload_if_changed()
            if self.student is None:
                return
            version = self.student.version
            fused, mask = live_step(
                carried,
                motion,
                r.frame.image,
                r.shot,
                r.flow,
                self.student,
                version,
                self.min_student,
                self.cfg.flow.width,
            )
        except Exception as e:
            if str(e) != self._student_error:
                self._student_error = str(e)
                log_event(log, "student_failed", logging.WARNING, camera=self.name, error=f"{type(e).__name__}: {e}")
            return
        if mask is not None:
            self._forward(r, "student", mask, capture_ns, model_version=version)
        if self.fused:
            self._forward(r, "fused", fused, capture_ns, model_version=version)

    def fps(self) -> float:
        """Results per second over the last couple of seconds (0 when nothing came lately)."""
        times = list(self._times)
        now = time.monotonic()
        recent = sum(1 for t in times if now - t <= _FPS_WINDOW_S)
        span = min(_FPS_WINDOW_S, now - self._running_since) if self._running_since else 0.0
        return recent / span if span >= 0.5 else 0.0

    def _forward(self, r, kind: str, mask: np.ndarray, capture_ns: int, model_version: str = "") -> None:
        h, w = mask.shape
        try:
            payload = protocol.encode_payload(mask, self.encoding)
        except protocol.ProtocolError:
            self.counters["forward_drops"] += 1
            return
        meta = json.dumps(
            {
                "frame": r.frame.index,
                "shot": r.shot,
                "capture_ns": capture_ns,
                "width": w,
                "height": h,
                **({"model_version": model_version} if model_version else {}),
            }
        ).encode()
        try:
            self.masks.send_multipart([MSG_MASK, self.name.encode(), kind.encode(), meta, payload], zmq.NOBLOCK)
        except zmq.Again:
            self.counters["forward_drops"] += 1

    def _forward_frame(self, r, capture_ns: int) -> None:
        """The frame itself, JPEG, for web consoles (kind `frame`; the daemon publishes it on
        topic frame.<camera>, which `mask.` subscribers never see). At most web.frame_fps, scaled
        to web.frame_width: a few ms of this process's time per second."""
        import cv2

        img = r.frame.image
        h, w = img.shape[:2]
        if w > self.frame_width:
            img = cv2.resize(
                img, (self.frame_width, max(1, round(h * self.frame_width / w))), interpolation=cv2.INTER_AREA
            )
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.frame_quality]
        )
        if not ok:
            return
        h, w = img.shape[:2]
        meta = json.dumps(
            {"frame": r.frame.index, "shot": r.shot, "capture_ns": capture_ns, "width": w, "height": h}
        ).encode()
        try:
            self.masks.send_multipart([MSG_MASK, self.name.encode(), b"frame", meta, buf.tobytes()], zmq.NOBLOCK)
        except zmq.Again:
            self.counters["forward_drops"] += 1

    def snapshot(self) -> dict[str, Any]:
        c = dict(self.counters)
        c["fps"] = self.fps()
        src = self.source
        out = {
            "child": self.name,
            "camera": self.name,
            "pid": os.getpid(),
            "phase": self.phase,
            "error": self.error,
            "pruned_by": dict(self.pruned_by),
            **c,
        }
        if src is not None:
            out["source"] = dict(getattr(self, "info", {}), **dict(src.stats))
            if getattr(src, "link", None):  # network sources: running | reconnecting | failed, and why
                out["source_link"] = dict(src.link)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        student = self.student  # the reporter thread reads what the camera thread swaps in
        if student is not None:
            out["student"] = {"version": student.version, "precision": student.precision, "every": self.student_every}
        return out

    def close(self) -> None:
        self.reporter.stop_and_send_last()
        if self.ring is not None:
            self.ring.close()
        if self.pairs is not None:
            self.pairs.close()
        self.masks.close(0)
        self.reporter.sock.close()  # lingers up to 500 ms for the last counters
        self.ctx.term()


def main() -> int:
    return run_child(CameraProcess)


if __name__ == "__main__":
    sys.exit(main())
