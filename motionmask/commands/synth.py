"""`motionmask synth --out DIR [--family F | --scenario rig]`: synthetic clips with exact motion
masks. Family "things" (synth/things.py) is the one the project tunes on; "patchwork"
(synth/patchwork.py) is for reporting only; scenario "rig" (synth/rig.py) is one
long stream of one scene with recurring actors that stop (issue 19)."""

from __future__ import annotations

import argparse
import logging
import time

from common.errors import UserError
from common.log import log_event
from synth.families import FAMILIES, family_generate

SCENARIOS = ("rig",)
RIG_FPS = 15  # synth.rig.FPS, without importing it for every command's --help

logger = logging.getLogger(__name__)

EPILOG = """examples:
  motionmask synth --out synth/                       # 10 clips, 90 frames, 320x240, seed 0
  motionmask synth --out tiny/ --clips 2 --frames 20 --size 160x120 --seed 7
  motionmask synth --out patchwork/ --family patchwork   # the family only ever reported on
  motionmask synth --out rig/ --scenario rig             # one 3-minute stream, fixed camera, 15 fps
  motionmask synth --out rig_ptz/ --scenario rig --ptz --minutes 5 --seed 1

writes DIR/clipNNN.mp4 (H.264, 30 fps), DIR/clipNNN/gt/NNNNNN.png (255 = an object that moves in
the current shot, also while it pauses), DIR/clipNNN/inst/NNNNNN.png (instance id, 0 = background)
and DIR/clips.json (shots, camera motion, objects, CRF, seed per clip). The same seed and options
give the same bytes.

families: "things" (default) moves cut-outs that wear whole photos of things over photos of
stuff; the project tunes on it. "patchwork" cuts backgrounds and object textures from one pool
of frames of real clips, with large, low-contrast and weakly textured objects and boxes carried
by an arm (arm and box are foreground); it is for reporting, never for tuning. Its clips.json
entries carry "family" and "version".

scenario "rig": ONE continuous stream (DIR/rig.mp4) from one camera (fixed, or --ptz: a slow
pan and zoom sweep) over one background with still decoys (GT 0); a cast of 5 recurring actors
(robot, people, cart, dog; each keeps its id and look on every visit) enter, cross, stop for 1-6 s
or stay for 10-30 s, and leave; slow daylight drift, sensor noise, H.264. Besides gt/ and inst/
(inst = the actor's id, the same on every visit) it writes DIR/rig/still/NNNNNN.png (255 = actors
that have not moved for at least one second). clips.json holds the cast with every visit's
enter/stop/go/leave frames and the split: the first 70% of the frames to train, the rest to
score. It runs at 15 fps (--fps) and 320x240: a 3-minute stream is 2,700 frames that generate in
well under a minute and take a few MB, while 15 fps is still a camera's rate; actors' speeds are
per second, so their motion per frame doubles at 15 fps, as it would on a real camera."""


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
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; clips of the same name are replaced)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the whole set (default: 0)")
    p.add_argument("--clips", type=_positive, default=None, metavar="N", help="number of clips (default: 10)")
    p.add_argument(
        "--frames", type=_positive, default=None, metavar="F", help="frames per clip, at 30 fps (default: 90)"
    )
    p.add_argument(
        "--size", type=_size, default=(320, 240), metavar="WxH", help="frame size, even numbers (default: 320x240)"
    )
    p.add_argument(
        "--family",
        choices=FAMILIES,
        default=None,
        help="generator: things (tuned on) or patchwork (reported only) (default: things)",
    )
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default=None,
        help="instead of a family of clips: rig, one long stream of one scene (see below)",
    )
    p.add_argument(
        "--minutes", type=float, default=None, metavar="M", help="rig: length of the stream in minutes (default: 3)"
    )
    p.add_argument("--fps", type=int, default=None, help=f"rig: frames per second (default: {RIG_FPS})")
    p.add_argument(
        "--ptz", action="store_true", help="rig: the camera sweeps slowly (pan and zoom) instead of staying fixed"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _only_for(args: argparse.Namespace, scenario: bool) -> None:
    """Refuse options of the other kind of output, rather than ignore them."""
    names = ("family", "clips", "frames") if scenario else ("minutes", "fps", "ptz")
    given = [f"--{n}" for n in names if getattr(args, n) not in (None, False)]
    if given:
        where = "the families of clips, not to --scenario rig" if scenario else "--scenario rig only"
        raise UserError(f"{', '.join(given)}: {'applies' if len(given) == 1 else 'apply'} to {where}")


def _run_rig(args: argparse.Namespace) -> int:
    from synth.rig import generate_rig

    _only_for(args, scenario=True)
    started = time.monotonic()
    minutes = 3.0 if args.minutes is None else args.minutes
    fps = RIG_FPS if args.fps is None else args.fps
    entries = generate_rig(
        args.out, seed=args.seed, minutes=minutes, size=args.size, fps=fps, ptz=args.ptz, progress=not args.quiet
    )
    log_event(
        logger,
        "synth_done",
        out=args.out,
        scenario=args.scenario,
        frames=entries[0]["frames"],
        fps=fps,
        ptz=args.ptz,
        size=f"{args.size[0]}x{args.size[1]}",
        seed=args.seed,
        seconds=time.monotonic() - started,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.scenario == "rig":
        return _run_rig(args)
    _only_for(args, scenario=False)
    args.family = args.family or "things"
    args.clips = 10 if args.clips is None else args.clips
    args.frames = 90 if args.frames is None else args.frames
    if args.frames < 2:
        raise UserError("--frames must be at least 2: motion needs two frames")
    started = time.monotonic()
    _, generate = family_generate(args.family)
    entries = generate(
        args.out, seed=args.seed, clips=args.clips, frames=args.frames, size=args.size, progress=not args.quiet
    )
    log_event(
        logger,
        "synth_done",
        out=args.out,
        family=args.family,
        clips=len(entries),
        frames=args.frames,
        size=f"{args.size[0]}x{args.size[1]}",
        seed=args.seed,
        seconds=time.monotonic() - started,
    )
    return 0
