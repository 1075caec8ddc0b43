"""What `motionmask masks` and `motionmask predict` share for writing their results: the loop that
writes them (write_all), the files of one run (Outputs, on a writer thread), the progress bar
(Progress), the counts of the summary line (Tally), and a disk error told with how much was
written (explained)."""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common.log import log_event
from motionmask.commands.options import plural
from motionmask.commands.signals import Terminated, exit_status, signals_ignored
from streamer.frames import MaskResult
from streamer.motion.prune import pruned_summary
from streamer.overlay import ContactSheet, OverlayVideo, contact_label, render_overlay, trimap_rgb
from streamer.sources.base import Source
from streamer.writer import CONTACT_NAME, OVERLAY_NAME, MaskWriter

logger = logging.getLogger(__name__)


def write_all(results: Iterator[MaskResult], outputs: Outputs, progress: Progress, quiet: bool) -> tuple[Tally, int]:
    """Write every result, then finish the outputs; returns the tally and the exit status.

    Ctrl-C or SIGTERM (raised between frames by the results' StopRequest.check) ends the run
    early with status 130 or 143: what was written is finished whole. Any other error drops
    what is not whole (Outputs.abort) and is raised, explained."""
    tally, status = Tally(), 0
    try:
        # log lines go through tqdm.write so that they do not tear the progress bar
        with logging_redirect_tqdm() if not quiet else contextlib.nullcontext():
            for r in results:
                outputs.submit(r)
                tally.add(r)
                progress.step(tally)
    except (KeyboardInterrupt, Terminated) as e:
        status = exit_status(e)
    except BaseException as e:
        progress.close(failed=True)
        outputs.abort()
        raise explained(e, outputs) from None
    try:
        with signals_ignored():
            outputs.finish()
            progress.close(tally)
    except BaseException as e:
        progress.close(failed=True)
        raise explained(e, outputs) from None
    return tally, status


class Progress:
    """The run's progress on stderr (nothing with --quiet), over the frames it will write when the
    source knows its length: a bar on a terminal, with show_fps the rate so far beside it; when
    stderr is a file or a pipe, a log line every LINE_EVERY_S instead (a bar's carriage-return
    redraws would fill a log with noise)."""

    LINE_EVERY_S = 10.0

    def __init__(self, source: Source, start: int, limit: int | None, quiet: bool, show_fps: bool) -> None:
        total = max(0, source.frame_count - start) if source.frame_count else None
        if limit is not None:
            total = min(total, limit) if total is not None else limit
        self.lines = not quiet and not sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            unit="frame",
            file=sys.stderr,
            disable=quiet or self.lines,
            dynamic_ncols=True,
            desc=source.source_id[:30],
        )
        self.total, self.source_id = total, source.source_id
        self.show_fps = show_fps
        self._last_postfix = self._last_line = time.perf_counter()

    def step(self, tally: Tally) -> None:
        if self.lines:
            now = time.perf_counter()
            if now - self._last_line >= self.LINE_EVERY_S:
                frames = f"{tally.written}/{self.total}" if self.total else tally.written
                log_event(
                    logger, "progress", source=self.source_id, frames=frames, kept=tally.kept, fps=round(tally.fps, 1)
                )
                self._last_line = now
            return
        if self.show_fps:
            now = time.perf_counter()
            if now - self._last_postfix > 0.2:
                self.bar.set_postfix_str(f"{tally.fps:.1f} fps", refresh=False)
                self._last_postfix = now
        self.bar.update(1)

    def close(self, tally: Tally | None = None, failed: bool = False) -> None:
        if failed:
            self.bar.leave = False  # the error line follows alone
        elif self.show_fps and tally is not None:
            self.bar.set_postfix_str(f"{tally.fps:.1f} fps", refresh=False)
        self.bar.close()


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
        return (
            f"motionmask masks: {note}{plural(self.written, 'frame')}, {plural(len(self.shots), 'shot')}, "
            f"{self.kept} kept, {pruned} pruned{why}{bad}, {self.fps:.1f} fps -> {out}"
        )


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


def explained(e: BaseException, outputs: Outputs) -> BaseException:
    """A full disk is told with the number of whole frames written; other errors as they are."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return OSError(e.errno, f"{e.strerror}; {outputs.written} whole frames were written", str(outputs.out))
    return e
