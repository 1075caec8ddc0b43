"""`motionmask masks INPUT --out DIR`: decode a video, compute online motion masks, write them to
DIR following the contract of streamer.writer, and optionally an overlay video and contact sheet."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from motionmask.commands.mask_outputs import Outputs, Tally, explained
from motionmask.commands.options import info_logs, parse_count, source_spec
from motionmask.commands.signals import StopRequest, Terminated, signals_deferred, signals_ignored
from motionmask.config import Config, load_config
from common.errors import UserError
from common.log import log_event
from streamer.frames import MaskResult
from streamer.sources import open_source
from streamer.writer import check_out_dir

logger = logging.getLogger(__name__)

EPILOG = """examples:
  motionmask masks clip.mp4 --out masks/ --overlay
  motionmask masks clip.mp4 --out masks/ --start 300 --frames 100 --config configs/default.yaml
  motionmask masks camera:0 --out live/ --quiet          # until Ctrl-C

writes DIR/NNNNNN.png (foreground probability 0-255), DIR/trimap/NNNNNN.png (0, 128 = don't
care, 255), DIR/frames.jsonl (one line per frame), and with --overlay DIR/overlay.mp4 and
DIR/contact.png. NNNNNN is the 0-based decode index. Ctrl-C stops cleanly: every file written so
far is whole, overlay.mp4 included."""


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


def run(args: argparse.Namespace) -> int:
    start = parse_count("--start", args.start, minimum=0)
    limit = parse_count("--frames", args.frames, minimum=1)
    cfg = load_config(args.config)
    out = check_out_dir(args.out)
    if Path(args.input).exists() and Path(args.input).resolve() == out.resolve():
        raise UserError(f"--out {out}: is the input folder; write the masks somewhere else")
    with info_logs(not args.quiet), signals_deferred() as stop:
        return _run(args, cfg, out, start, limit, stop)


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
            raise explained(e, outputs) from None
        try:
            with signals_ignored():
                outputs.finish()
                bar.set_postfix_str(f"{tally.fps:.1f} fps", refresh=False)
                bar.close()
        except BaseException as e:
            bar.leave = False
            bar.close()
            raise explained(e, outputs) from None
        corrupt = int(source.stats.get("skipped_corrupt", 0) or 0)
    if tally.written == 0 and not status:
        raise UserError(f"{args.input}: no frames to write (--start {start} is past the last frame?)")
    log_event(logger, "masks_done", source=source.source_id, frames=tally.written, shots=len(tally.shots),
              kept=tally.kept, fps=tally.fps, out=out, status=status)
    print(tally.summary(out, corrupt, note), file=sys.stderr)
    return status
