"""`motionmask masks INPUT --out DIR`: decode a video, compute online motion masks, write them to
DIR following the contract of streamer.writer, and optionally an overlay video and contact sheet."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError
from common.log import log_event
from motionmask.commands.mask_outputs import Outputs, Progress, write_all
from motionmask.commands.options import info_logs, parse_count, source_spec
from motionmask.commands.signals import StopRequest, signals_deferred
from motionmask.config import Config, load_config
from streamer.config import StreamerConfig
from streamer.frames import MaskResult
from streamer.sources import open_source
from streamer.sources.base import Source
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
    p.add_argument(
        "input", metavar="INPUT", help="video file, folder of images, camera (0, camera:0, /dev/video0) or URL"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; an earlier run there is replaced)"
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults, as configs/default.yaml)")
    p.add_argument(
        "--start", default="0", metavar="N", help="first decode index to write (earlier frames are decoded and skipped)"
    )
    p.add_argument("--frames", default=None, metavar="M", help="stop after writing M frames (default: to the end)")
    p.add_argument(
        "--overlay", action="store_true", help="also write overlay.mp4 and contact.png for a person to look at"
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar and no info logs; warnings and the summary remain"
    )
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
    with open_source(source_spec(args.input), cfg.streamer.source) as source:
        log_event(
            logger,
            "masks_start",
            source=source.source_id,
            kind=source.kind,
            out=out,
            start=start,
            frames=limit if limit is not None else "all",
            overlay=args.overlay,
        )
        outputs = Outputs(out, args.overlay, source.fps)
        progress = Progress(source, start, limit, args.quiet, show_fps=True)
        results = _masks(source, cfg.streamer, start, limit, stop)
        tally, status = write_all(results, outputs, progress, args.quiet)
        corrupt = int(source.stats.get("skipped_corrupt", 0) or 0)
    if tally.written == 0 and not status:
        raise UserError(f"{args.input}: no frames to write (--start {start} is past the last frame?)")
    log_event(
        logger,
        "masks_done",
        source=source.source_id,
        frames=tally.written,
        shots=len(tally.shots),
        kept=tally.kept,
        fps=tally.fps,
        out=out,
        status=status,
    )
    print(tally.summary(out, corrupt, "interrupted after " if status else ""), file=sys.stderr)
    return status


def _masks(
    source: Source, cfg: StreamerConfig, start: int, limit: int | None, stop: StopRequest
) -> Iterator[MaskResult]:
    """The masks of frames start.. (at most limit of them), each with its decode time."""
    from streamer.motion.pipeline import MotionSegmenter  # OpenCV and SciPy: the rig role, loaded when run

    segmenter = MotionSegmenter(cfg)
    # Frames just before --start are fed to the segmenter (not written) so that the first
    # written frame already has its motion history, as it would in a run from the beginning.
    warmup = cfg.motion.history + 1
    decode_ms: dict[int, float] = {}
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
        yield from _written(segmenter.push(frame), decode_ms, start)
    yield from _written(segmenter.flush(), decode_ms, start)
    stop.check()


def _written(results: list[MaskResult], decode_ms: dict[int, float], start: int) -> Iterator[MaskResult]:
    """The results to write (those from start on), each given the decode time of its frame."""
    for r in results:
        ms = decode_ms.pop(r.frame.index, None)
        if r.frame.index < start:
            continue
        if ms is not None:
            r.timings_ms.setdefault("decode", ms)
        yield r
