"""`motionmask predict --checkpoint CKPT INPUT --out DIR`: the trained ConvNet on every frame alone,
written with the same file contract as `motionmask masks` (streamer.writer). `--model BUNDLE`
runs an exported bundle with ONNX Runtime instead (exporter.runtime; torch is never loaded)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2

from common.errors import UserError
from common.log import log_event
from motionmask.commands.mask_outputs import Outputs, Progress, write_all
from motionmask.commands.options import info_logs, parse_count, plural, source_spec
from motionmask.commands.signals import StopRequest, signals_deferred
from motionmask.config import Config, load_config
from streamer.config import StreamerConfig
from streamer.frames import MaskResult
from streamer.motion.flow import working_size
from streamer.motion.prune import prune
from streamer.motion.shots import ShotDetector
from streamer.motion.trimap import trimap
from streamer.sources import open_source
from streamer.sources.base import Source
from streamer.writer import check_out_dir

if TYPE_CHECKING:
    from exporter.runtime import BundleRunner
    from learner.predict import Predictor

logger = logging.getLogger(__name__)

EPILOG = """examples:
  motionmask predict --checkpoint runs/r1/checkpoints/last.pt clip.mp4 --out pred/
  motionmask predict --checkpoint runs/r1/checkpoints/last.pt frames/ --out pred/ --overlay --device cuda
  motionmask predict --model exports/ clip.mp4 --out pred/     # the bundle LATEST names, ONNX Runtime

writes, as `motionmask masks` does, DIR/NNNNNN.png (foreground probability 0-255, input
resolution), DIR/trimap/NNNNNN.png (0, 128 = don't care, 255; streamer.trimap thresholds),
DIR/frames.jsonl (one line per frame: shot, fg_fraction, kept/reason by streamer.prune, ms) and
with --overlay DIR/overlay.mp4 and DIR/contact.png. The net sees each frame alone, scaled to the
resolution it was trained at (--native: as decoded)."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="masks of a video from a trained ConvNet (single frames), as `masks` writes them",
        description="Run a trained mask ConvNet on every frame of a video, a folder of images, a "
        "camera or a stream, and write per-frame probabilities with the file contract of `motionmask masks`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input", metavar="INPUT", help="video file, folder of images, camera (0, camera:0, /dev/video0) or URL"
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint", metavar="CKPT", help="a checkpoint of `motionmask train`, e.g. RUN/checkpoints/last.pt"
    )
    what.add_argument(
        "--model",
        metavar="BUNDLE",
        help="an exported bundle folder, or an exports folder (its LATEST): "
        "ONNX Runtime at the bundle's fixed size, no torch",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; an earlier run there is replaced)"
    )
    p.add_argument(
        "--config", metavar="FILE", help="YAML config: source, shots, prune and trimap settings (default: built-in)"
    )
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto (CUDA when present)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8"],
        default="auto",
        help="--model: which of the bundle's models runs (default: auto, the 8-bit one on a CPU where it has one)",
    )
    p.add_argument("--start", default="0", metavar="N", help="first decode index to write")
    p.add_argument("--frames", default=None, metavar="M", help="stop after writing M frames (default: to the end)")
    p.add_argument("--native", action="store_true", help="run the net at the input resolution, not the training one")
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
    if args.model:
        if args.native:
            raise UserError("--native: a bundle runs at its fixed input size; use --checkpoint for --native")
        from exporter.runtime import BundleRunner  # ONNX Runtime only: the device's code path

        predictor = BundleRunner(args.model, provider=args.device, precision=args.precision)
    else:
        from learner.predict import Predictor  # torch loads here, not at import

        predictor = Predictor(args.checkpoint, args.device, native=args.native)
    with info_logs(not args.quiet), signals_deferred() as stop:
        return _run(args, cfg, predictor, out, start, limit, stop)


def _run(
    args: argparse.Namespace,
    cfg: Config,
    predictor: BundleRunner | Predictor,
    out: Path,
    start: int,
    limit: int | None,
    stop: StopRequest,
) -> int:
    with open_source(source_spec(args.input), cfg.streamer.source) as source:
        log_event(
            logger,
            "predict_start",
            source=source.source_id,
            checkpoint=predictor.path,
            step=predictor.step,
            device=predictor.device.type,
            precision=getattr(predictor, "precision", "fp32"),
            out=out,
            start=start,
        )
        outputs = Outputs(out, args.overlay, source.fps)
        progress = Progress(source, start, limit, args.quiet, show_fps=False)
        results = _predictions(source, cfg.streamer, predictor, start, limit, stop)
        tally, status = write_all(results, outputs, progress, args.quiet)
    if tally.written == 0 and not status:
        raise UserError(f"{args.input}: no frames to write (--start {start} is past the last frame?)")
    log_event(
        logger,
        "predict_done",
        source=source.source_id,
        frames=tally.written,
        kept=tally.kept,
        fps=tally.fps,
        out=out,
        status=status,
    )
    print(
        f"motionmask predict: {'interrupted after ' if status else ''}{plural(tally.written, 'frame')}, "
        f"{plural(len(tally.shots), 'shot')}, {tally.kept} kept by pruning, {tally.fps:.1f} fps on "
        f"{predictor.device.type} (checkpoint step {predictor.step}) -> {out}",
        file=sys.stderr,
    )
    return status


def _predictions(
    source: Source,
    s: StreamerConfig,
    predictor: BundleRunner | Predictor,
    start: int,
    limit: int | None,
    stop: StopRequest,
) -> Iterator[MaskResult]:
    """The net's mask of frames start.. (at most limit of them), pruned and thresholded as
    `motionmask masks` does, each with its decode, shots and predict times."""
    shots = ShotDetector(s.shots)
    written = 0
    frames = iter(source)
    while limit is None or written < limit:
        t0 = time.perf_counter()
        frame = next(frames, None)
        stop.check()
        if frame is None:
            break
        t1 = time.perf_counter()
        ww, wh = working_size(frame.width, frame.height, s.flow.width)
        shot = shots(cv2.resize(frame.image, (ww, wh), interpolation=cv2.INTER_AREA))  # every frame: cuts need history
        if frame.index < start:
            continue
        t2 = time.perf_counter()
        prob = predictor(frame.image)
        t3 = time.perf_counter()
        frac, kept, reason = prune(prob, s.prune, (s.trimap.negative_below, s.trimap.positive_above))
        yield MaskResult(
            frame,
            shot.shot,
            prob,
            trimap(prob, s.trimap),
            frac,
            kept,
            reason,
            {"decode": (t1 - t0) * 1e3, "shots": (t2 - t1) * 1e3, "predict": (t3 - t2) * 1e3},
        )
        written += 1
