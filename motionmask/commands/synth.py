"""`motionmask synth --out DIR [--family F]`: synthetic clips with exact motion masks. Family
"things" (streamer/synth.py) is the one the project tunes on; "patchwork"
(streamer/synth_patchwork.py) is for reporting only."""
from __future__ import annotations

import argparse
import logging
import time

from streamer.errors import UserError
from streamer.log import log_event
from streamer.synth import FAMILIES, family_generate

logger = logging.getLogger(__name__)

EPILOG = """examples:
  motionmask synth --out synth/                       # 10 clips, 90 frames, 320x240, seed 0
  motionmask synth --out tiny/ --clips 2 --frames 20 --size 160x120 --seed 7
  motionmask synth --out patchwork/ --family patchwork   # the family only ever reported on

writes DIR/clipNNN.mp4 (H.264, 30 fps), DIR/clipNNN/gt/NNNNNN.png (255 = an object that moves in
the current shot, also while it pauses), DIR/clipNNN/inst/NNNNNN.png (instance id, 0 = background)
and DIR/clips.json (shots, camera motion, objects, CRF, seed per clip). The same seed and options
give the same bytes.

families: "things" (default) moves cut-outs that wear whole photos of things over photos of
stuff; the project tunes on it. "patchwork" cuts backgrounds and object textures from one pool
of frames of real clips, with large, low-contrast and weakly textured objects and boxes carried
by an arm (arm and box are foreground); it is for reporting, never for tuning. Its clips.json
entries carry "family" and "version"."""


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 320x240") from None
    return w, h


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "synth",
        help="generate synthetic clips with exact motion masks (fixture and benchmark)",
        description="Generate deterministic clips of real-photo cut-outs moving over real photos, "
        "with camera pans and zooms, pauses, occlusions, still distractors, shot cuts, flicker, "
        "sensor noise and H.264 compression, together with exact ground-truth masks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; clips of the same name are replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole set (default: 0)")
    p.add_argument("--clips", type=_positive, default=10, metavar="N", help="number of clips (default: 10)")
    p.add_argument("--frames", type=_positive, default=90, metavar="F", help="frames per clip, at 30 fps (default: 90)")
    p.add_argument("--size", type=_size, default=(320, 240), metavar="WxH", help="frame size, even numbers (default: 320x240)")
    p.add_argument("--family", choices=FAMILIES, default="things",
                   help="generator: things (tuned on) or patchwork (reported only) (default: things)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    if args.frames < 2:
        raise UserError("--frames must be at least 2: motion needs two frames")
    started = time.monotonic()
    _, generate = family_generate(args.family)
    entries = generate(args.out, seed=args.seed, clips=args.clips, frames=args.frames,
                       size=args.size, progress=not args.quiet)
    log_event(logger, "synth_done", out=args.out, family=args.family, clips=len(entries), frames=args.frames,
              size=f"{args.size[0]}x{args.size[1]}", seed=args.seed,
              seconds=time.monotonic() - started)
    return 0
