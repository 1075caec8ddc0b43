"""`motionmask masks INPUT --out DIR`: decode a video, compute online motion masks, write them to
DIR following the contract of streamer.writer, and optionally an overlay video and contact sheet."""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from motionmask.config import Config, load_config
from common.errors import UserError
from common.log import log_event
from streamer.overlay import ContactSheet, OverlayVideo, contact_label, render_overlay, trimap_rgb
from streamer.frames import MaskResult
from streamer.motion.prune import pruned_summary
from streamer.sources import open_source
from streamer.writer import CONTACT_NAME, OVERLAY_NAME, MaskWriter, check_out_dir

logger = logging.getLogger(__name__)

EPILOG = """examples:
  motionmask masks clip.mp4 --out masks/ --overlay
  motionmask masks clip.mp4 --out masks/ --start 300 --frames 100 --config configs/default.yaml
  motionmask masks camera:0 --out live/ --quiet          # until Ctrl-C

writes DIR/NNNNNN.png (foreground probability 0-255), DIR/trimap/NNNNNN.png (0, 128 = don't
care, 255), DIR/frames.jsonl (one line per frame), and with --overlay DIR/overlay.mp4 and
DIR/contact.png. NNNNNN is the 0-based decode index. Ctrl-C stops cleanly: every file written so
far is whole, overlay.mp4 included."""


class Terminated(Exception):
    """SIGTERM, turned into an exception so that outputs are closed as for Ctrl-C."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "masks",
        help="compute motion masks of a video into a folder",
        description="Compute online motion masks (Pathak et al. 2017) of a video, a folder of "
        "images, a camera or a stream, and write them as PNGs with trimaps and per-frame stats.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="video file, folder of images, camera (0, camera:0, /dev/video0) or URL")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; an earlier run there is replaced)")
    p.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults, as configs/default.yaml)")
    p.add_argument("--start", default="0", metavar="N", help="first decode index to write (earlier frames are decoded and skipped)")
    p.add_argument("--frames", default=None, metavar="M", help="stop after writing M frames (default: to the end)")
    p.add_argument("--overlay", action="store_true", help="also write overlay.mp4 and contact.png for a person to look at")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no info logs; warnings and the summary remain")
    return p


def parse_count(flag: str, text: str | None, minimum: int) -> int | None:
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected a whole number >= {minimum}") from None
    if value < minimum:
        raise UserError(f"{flag} {value}: must be >= {minimum}")
    return value


def source_spec(text: str) -> str | int:
    # a bare number is a camera index unless a file of that name exists
    return int(text) if text.isdigit() and not os.path.exists(text) else text


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass
class Tally:
    written: int = 0
    kept: int = 0
    shots: set[int] = field(default_factory=set)
    pruned: Counter = field(default_factory=Counter)
    last_index: int = -1
    t0: float = field(default_factory=time.perf_counter)

    def add(self, r: MaskResult) -> None:
        self.written += 1
        self.kept += bool(r.kept)
        self.shots.add(r.shot)
        if not r.kept:
            self.pruned[r.reason or "unknown"] += 1
        self.last_index = r.frame.index

    @property
    def fps(self) -> float:
        return self.written / max(time.perf_counter() - self.t0, 1e-9)

    def summary(self, out: Path, corrupt: int = 0, note: str = "") -> str:
        pruned = self.written - self.kept
        why = f" ({pruned_summary(self.pruned)})" if pruned else ""
        bad = f", {corrupt} corrupt packets skipped" if corrupt else ""
        return (f"motionmask masks: {note}{plural(self.written, 'frame')}, {plural(len(self.shots), 'shot')}, "
                f"{self.kept} kept, {pruned} pruned{why}{bad}, {self.fps:.1f} fps -> {out}")


class Outputs:
    """Everything written for one run. Writing runs on one worker thread, so that PNG and H.264
    encoding (which release the GIL) overlap the segmentation of the next frames; a short queue
    keeps memory flat and pushes back when the disk is slower than the pipeline. The first
    write error stops the writing and is raised in the caller at the next submit() or finish().
    Files are opened at the first result, so that a run that fails before producing anything
    leaves an earlier run's folder untouched."""

    def __init__(self, out: Path, overlay: bool, fps: float | None, depth: int = 4):
        self.out = out
        self.want_overlay = overlay
        self.fps = fps
        self.writer: MaskWriter | None = None
        self.video: OverlayVideo | None = None
        self.sheet = ContactSheet() if overlay else None
        self.error: BaseException | None = None
        self._queue: queue.Queue[MaskResult | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._work, name="mask-writer", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        return self.writer.written if self.writer is not None else 0

    def submit(self, r: MaskResult) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(r)

    def _work(self) -> None:
        while (r := self._queue.get()) is not None:
            if self.error is None:  # after an error, keep draining so that submit() never blocks
                try:
                    self._write(r)
                except BaseException as e:
                    self.error = e

    def _write(self, r: MaskResult) -> None:
        if self.writer is None:
            self.writer = MaskWriter(self.out)
            if self.want_overlay:
                self.video = OverlayVideo(self.out / OVERLAY_NAME, r.frame.width, r.frame.height, self.fps)
        self.writer.write(r)
        if self.video is not None:
            self.video.write(render_overlay(r))
            if self.sheet.wants():  # without the caption: the sheet labels its columns itself
                rows = [r.frame.image, render_overlay(r, text=False), trimap_rgb(r.trimap)]
                self.sheet.add(contact_label(r), rows)
            else:
                self.sheet.add("", [])

    def _drain(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def finish(self) -> None:
        """Write what is queued, then close every file; overlay.mp4 and contact.png appear now."""
        self._drain()
        if self.error is not None:
            self.abort()
            raise self.error
        try:
            if self.video is not None:
                self.video.close()
            if self.sheet is not None and self.writer is not None:
                self.sheet.save(self.out / CONTACT_NAME)
        finally:
            if self.writer is not None:
                self.writer.close()

    def abort(self) -> None:
        """After an error: keep what is whole, drop what is not."""
        self._drain()
        if self.video is not None:
            try:
                self.video.close()  # on a full disk this fails and removes the temp file
            except Exception:
                pass
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGTERM raises Terminated (SIGINT already raises KeyboardInterrupt) while the run lasts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class StopRequest:
    """A SIGINT or SIGTERM seen by signals_deferred(), waiting for the loop to act on it."""

    signum = 0

    def check(self) -> None:
        """Between frames: raise KeyboardInterrupt (SIGINT) or Terminated (SIGTERM) if one came."""
        if self.signum:
            raise Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def signals_deferred() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM only set a flag that the frame loop turns into an exception between
    frames (StopRequest.check). An exception raised wherever the signal lands (inside a queue's
    lock, inside the decoder) can leave a lock taken and hang the shutdown; a second signal
    raises at once, for a loop that no longer reaches its check."""
    req = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield req
        return

    def on_signal(signum: int, frame: object) -> None:
        if req.signum:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        req.signum = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield req
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While outputs are being finished, a second Ctrl-C must not leave them half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def info_logs(enabled: bool) -> Iterator[None]:
    if enabled:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("streamer", "motionmask")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def run(args: argparse.Namespace) -> int:
    start = parse_count("--start", args.start, minimum=0)
    limit = parse_count("--frames", args.frames, minimum=1)
    cfg = load_config(args.config)
    out = check_out_dir(args.out)
    if Path(args.input).exists() and Path(args.input).resolve() == out.resolve():
        raise UserError(f"--out {out}: is the input folder; write the masks somewhere else")
    with info_logs(not args.quiet), signals_deferred() as stop:
        return _run(args, cfg, out, start, limit, stop)


def _explained(e: BaseException, outputs: Outputs) -> BaseException:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return OSError(e.errno, f"{e.strerror}; {outputs.written} whole frames were written", str(outputs.out))
    return e


def _run(args: argparse.Namespace, cfg: Config, out: Path, start: int, limit: int | None, stop: StopRequest) -> int:
    # Frames just before --start are fed to the segmenter (not written) so that the first
    # written frame already has its motion history, as it would in a run from the beginning.
    warmup = cfg.streamer.motion.history + 1
    tally = Tally()
    with open_source(source_spec(args.input), cfg.streamer.source) as source:
        log_event(logger, "masks_start", source=source.source_id, kind=source.kind, out=out, start=start,
                  frames=limit if limit is not None else "all", overlay=args.overlay)
        outputs = Outputs(out, args.overlay, source.fps)
        total = max(0, source.frame_count - start) if source.frame_count else None
        if limit is not None:
            total = min(total, limit) if total is not None else limit
        bar = tqdm(total=total, unit="frame", file=sys.stderr, disable=args.quiet, dynamic_ncols=True,
                   desc=source.source_id[:30])
        decode_ms: dict[int, float] = {}
        last_postfix = 0.0
        tally.t0 = time.perf_counter()

        def emit(results: list[MaskResult]) -> None:
            nonlocal last_postfix
            for r in results:
                ms = decode_ms.pop(r.frame.index, None)
                if r.frame.index < start:
                    continue
                if ms is not None:
                    r.timings_ms.setdefault("decode", ms)
                outputs.submit(r)
                tally.add(r)
                now = time.perf_counter()
                if now - last_postfix > 0.2:
                    bar.set_postfix_str(f"{tally.fps:.1f} fps", refresh=False)
                    last_postfix = now
                bar.update(1)

        status, note = 0, ""
        try:
            # log lines go through tqdm.write so that they do not tear the progress bar
            with logging_redirect_tqdm() if not args.quiet else contextlib.nullcontext():
                from streamer.motion.pipeline import MotionSegmenter  # OpenCV and SciPy: the rig role; devices import this module

                segmenter = MotionSegmenter(cfg.streamer)
                pushed = 0
                frames = iter(source)
                while limit is None or pushed < limit:
                    t = time.perf_counter()
                    frame = next(frames, None)
                    stop.check()
                    if frame is None:
                        break
                    if frame.index < start - warmup:
                        continue
                    decode_ms[frame.index] = (time.perf_counter() - t) * 1000
                    pushed += frame.index >= start
                    emit(segmenter.push(frame))
                emit(segmenter.flush())
                stop.check()
        except (KeyboardInterrupt, Terminated) as e:
            status = 143 if isinstance(e, Terminated) else 130
            note = "interrupted after "
        except BaseException as e:
            bar.leave = False  # the error line follows alone
            bar.close()
            outputs.abort()
            raise _explained(e, outputs) from None
        try:
            with signals_ignored():
                outputs.finish()
                bar.set_postfix_str(f"{tally.fps:.1f} fps", refresh=False)
                bar.close()
        except BaseException as e:
            bar.leave = False
            bar.close()
            raise _explained(e, outputs) from None
        corrupt = int(source.stats.get("skipped_corrupt", 0) or 0)
    if tally.written == 0 and not status:
        raise UserError(f"{args.input}: no frames to write (--start {start} is past the last frame?)")
    log_event(logger, "masks_done", source=source.source_id, frames=tally.written, shots=len(tally.shots),
              kept=tally.kept, fps=tally.fps, out=out, status=status)
    print(tally.summary(out, corrupt, note), file=sys.stderr)
    return status
