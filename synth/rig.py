"""Scenario "rig": one camera, one scene, a long stream, the same few actors again and again (issue 19).

The families (synth/things.py "things", synth/patchwork.py "patchwork") are many short
clips of new scenes. A rig is the opposite, and it is what the student is for: a single-frame
model that has watched one scene for a while should keep an actor that stops, where the motion
teacher loses it the moment it stands still. This module writes one continuous stream to score that.

  scene    one background photo of the patchwork pool (synth/data/patchwork/, the photos at
           least 320 px wide: carphone's 176 px is too little for a whole world), with 2-4 still
           decoys glued to it: actor-shaped cut-outs (a person-shaped sign, a parked cart) and a
           box, wearing pieces of pool photos of OTHER source clips. They are background: GT 0.
  camera   fixed; or (ptz) a slow sweep over a world 1.6 x the view's width: a sinusoidal pan
           (period 60-120 s, under 0.5 px/frame) and a gentle zoom between 1.0 and 1.12.
  cast     CAST actors (default 5: robot, person, cart, dog, person), ids 1..5. Each is a
           silhouette of its kind wearing one whole scikit-image "thing" photo (astronaut,
           coffee, rocket, motorcycle, camera; chelsea for the dog), made once: the same id, shape
           and look on every visit (mirrored when it walks left). Why scikit-image photos and not
           the pool: they are disjoint from the pool by construction, so no actor ever shares
           pixels with the background or a decoy, whichever pool photo the seed picks; and the
           pool holds only 5 source clips, so actors cut from it would look like each other and
           like the decoys, which would blur the identity the rig is about.
  visits   per actor, one after another with absences of 8-40 s: enter at the world's left or
           right edge, walk (a gently curved path, the speed of its kind) to a spot on the floor,
           either pass through to the far edge (20%), or stop for 1-6 s (45%) or stay for 10-30 s
           (35%) and leave by an edge (the far one 60% of the time). Actors slow down to a stop and speed up when
           they go; when standing they stand EXACTLY still. Lower on the floor = nearer: larger
           and in front (perspective scale 0.55-1.2 over the floor band).
  frame    the world through the camera, actors pasted back to front with motion blur
           (synth.things.paste), slow daylight drift (global gain +-12% and colour temperature
           +-5% red/blue, over periods of 1.5-6 minutes), sensor noise; real H.264
           (synth.things.encode_video at the rig's fps).

Ground truth per frame, from geometry (a pixel belongs to the topmost actor covering it by >= 1/2):
  gt/NNNNNN.png     255 = an actor is there, moving or standing still
  inst/NNNNNN.png   the actor's id, 1..CAST, the same on every visit
  still/NNNNNN.png  255 = pixels of actors that have not moved for at least one second: pose
                    (world position, scale, facing) unchanged over the last fps frames. Under PTZ
                    "moved" is in the world, not in the image: a standing actor is still while the
                    camera sweeps over it.
clips.json: one entry, the families' shape plus the cast with each visit's frames and the split:
the first 70% of the frames to train on, the rest to score.

Every random choice comes from the seed: a seed gives the same frames, GT and MP4 bytes.
Frames are rendered and encoded one at a time, so memory does not grow with the stream's length.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.atomic import write_json
from common.errors import UserError
from streamer.png import write_png
from synth import patchwork, things

FAMILY = "rig"
VERSION = 1  # bump when a seed's stream changes; cached streams are keyed by it
FPS = 15  # half the families' rate: a 3-minute stream is 2,700 frames, not 5,400
NAME = "rig"
TRAIN_FRACTION = 0.7
CAST = ("robot", "person", "cart", "dog", "person")  # kinds of actors 1..5
# synth.things.THINGS less the colour chart (a test pattern, not a look any actor has)
ACTOR_PHOTOS = ("astronaut", "coffee", "rocket", "motorcycle", "camera", "chelsea")
MAX_SCALE = 1.2  # perspective scale of the nearest floor row; sprites are rasterised at it
FLOOR = (0.55, 0.95)  # where feet can be, as fractions of the view height (the farthest row first)

# per kind: height at perspective scale 1 (px of a 240-high view), aspect w/h, speed (px/s of a 320-wide view)
KINDS = {
    "person": (84.0, 0.36, (40.0, 65.0)),  # a walk: a view 6-8 m wide crossed in 5-8 s
    "robot": (60.0, 0.75, (30.0, 45.0)),
    "cart": (52.0, 1.4, (35.0, 55.0)),
    "dog": (44.0, 1.35, (60.0, 90.0)),
}
VISIT_KINDS = ("pass", "stop", "stay")
VISIT_P = (0.2, 0.45, 0.35)
STAND_S = {"pass": (0.0, 0.0), "stop": (1.0, 6.0), "stay": (10.0, 30.0)}
ABSENCE_S = (8.0, 40.0)


# ----------------------------------------------------------------------------------------------
# What a rig stream is made of


@dataclass
class Visit:
    kind: str  # pass | stop | stay
    enter: int  # first frame: just outside the world's edge
    stop: int | None  # first frame standing at the spot (None for a pass)
    go: int | None  # first frame moving again
    leave: int  # first frame after the visit (gone)
    feet: np.ndarray  # (leave - enter) x 2 world position of the feet, per frame
    scale: np.ndarray  # (leave - enter) perspective scale
    facing: np.ndarray  # (leave - enter) +1 right, -1 left
    still: np.ndarray  # (leave - enter) bool: pose unchanged for at least fps frames

    def covers(self, t: int) -> bool:
        return self.enter <= t < self.leave


@dataclass
class Actor:
    id: int
    kind: str
    photo: str
    rgb: np.ndarray  # sprite facing right, rasterised at MAX_SCALE
    alpha: np.ndarray
    speed: float  # px/s of a 320-wide view at perspective scale 1
    visits: list[Visit] = field(default_factory=list)

    def visit_at(self, t: int) -> Visit | None:
        for v in self.visits:
            if v.covers(t):
                return v
        return None


@dataclass
class RigPlan:
    seed: int
    frames: int
    fps: int
    width: int
    height: int
    ptz: bool
    crf: int
    noise_sigma: float
    shutter: float
    background: str
    world: np.ndarray  # uint8 RGB with the decoys glued on
    decoys: list[dict]
    cam_center: np.ndarray  # frames x 2 world point at the view centre
    cam_zoom: np.ndarray  # frames
    light: np.ndarray  # frames x 3 per-channel gain (daylight drift)
    actors: list[Actor]

    def camera(self, t: int) -> np.ndarray:
        """World -> view at frame t."""
        return things.similarity(
            float(self.cam_zoom[t]), 0.0, self.cam_center[t], np.array([self.width / 2, self.height / 2])
        )


@dataclass
class RigFrame:
    rgb: np.ndarray  # H x W x 3 uint8, before compression
    gt: np.ndarray  # H x W uint8, 255 = an actor
    inst: np.ndarray  # H x W uint8 actor id
    still: np.ndarray  # H x W uint8, 255 = an actor that has not moved for >= 1 s


# ----------------------------------------------------------------------------------------------
# Silhouettes: drawn in unit coordinates, 4x supersampled


def _silhouette(kind: str, w: int, h: int) -> np.ndarray:
    """Coverage (h+4 x w+4 float32, 2 px empty frame) of an actor of `kind` filling w x h, facing right."""
    ss = 4
    big = np.zeros((h * ss, w * ss), np.uint8)

    def poly(*pts: tuple[float, float]) -> None:
        p = np.array(pts, float) * [w * ss - 1, h * ss - 1]
        cv2.fillPoly(big, [np.round(p).astype(np.int32)], 255)

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> None:
        axes = (max(1, round(rx * w * ss)), max(1, round(ry * h * ss)))
        cv2.ellipse(big, (round(cx * w * ss), round(cy * h * ss)), axes, 0, 0, 360, 255, -1)

    if kind == "person":
        ellipse(0.5, 0.085, 0.22, 0.075)  # head
        poly((0.42, 0.14), (0.58, 0.14), (0.58, 0.2), (0.42, 0.2))  # neck
        poly((0.18, 0.17), (0.82, 0.17), (0.95, 0.3), (0.88, 0.58), (0.12, 0.58), (0.05, 0.3))  # torso, arms
        poly((0.2, 0.56), (0.49, 0.56), (0.46, 1.0), (0.24, 1.0))  # legs
        poly((0.51, 0.56), (0.8, 0.56), (0.76, 1.0), (0.54, 1.0))
    elif kind == "robot":
        poly((0.47, 0.0), (0.53, 0.0), (0.53, 0.12), (0.47, 0.12))  # antenna
        poly((0.28, 0.1), (0.72, 0.1), (0.72, 0.34), (0.28, 0.34))  # head
        poly((0.1, 0.32), (0.9, 0.32), (0.9, 0.84), (0.1, 0.84))  # body
        poly((0.0, 0.82), (1.0, 0.82), (0.95, 1.0), (0.05, 1.0))  # treads
    elif kind == "cart":
        poly((0.0, 0.0), (0.05, 0.0), (0.2, 0.14), (0.16, 0.17))  # handle at the back (left: it goes right)
        poly((0.15, 0.1), (1.0, 0.1), (0.92, 0.72), (0.22, 0.72))  # basket
        poly((0.2, 0.7), (0.92, 0.7), (0.92, 0.77), (0.2, 0.77))  # chassis
        ellipse(0.32, 0.87, 0.09, 0.13)  # wheels
        ellipse(0.8, 0.87, 0.09, 0.13)
    elif kind == "dog":  # a quadruped: scikit-image's horse silhouette, squeezed to a dog's build
        pts = things.horse_outline()
        pts = (pts - pts.min(0)) / np.ptp(pts, 0)
        poly(*map(tuple, pts))
    else:
        raise ValueError(kind)
    alpha = cv2.resize(big.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(alpha, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=0)


def _sprite_size(kind: str, k: float, rng: np.random.Generator) -> tuple[int, int]:
    """(w, h) of a sprite of `kind` at MAX_SCALE; k = view height / 240. A little varied per actor."""
    height, aspect, _ = KINDS[kind]
    h = height * k * MAX_SCALE * rng.uniform(0.9, 1.1)
    return max(6, round(h * aspect * rng.uniform(0.9, 1.1))), max(8, round(h))


# ----------------------------------------------------------------------------------------------
# Planning: every random choice of a stream is made here


def plan_rig(
    seed: int = 0, minutes: float = 3.0, size: tuple[int, int] = (320, 240), fps: int = FPS, ptz: bool = False
) -> RigPlan:
    """Lay out a rig stream: scene, camera, cast and every visit. No pixels of frames yet."""
    width, height = size
    frames = round(minutes * 60 * fps)
    rng = np.random.default_rng([seed, 19])  # 19: apart from the families' streams of the same seed
    world_w = round(width * 1.6) if ptz else width
    cam_center, cam_zoom = _camera(rng, frames, fps, width, height, world_w, ptz)
    background, world = _background(rng, world_w, height)
    world, decoys = _glue_decoys(rng, world, background, height)
    plan = RigPlan(
        seed=seed,
        frames=frames,
        fps=fps,
        width=width,
        height=height,
        ptz=ptz,
        crf=int(rng.integers(23, 29)),
        noise_sigma=float(rng.uniform(1.5, 3.5)),
        shutter=float(rng.uniform(0.3, 0.6)),
        background=background,
        world=world,
        decoys=decoys,
        cam_center=cam_center,
        cam_zoom=cam_zoom,
        light=_daylight(rng, frames, fps),
        actors=_cast(rng, height),
    )
    for actor in plan.actors:
        actor.visits = _schedule(rng, actor, frames, fps, width, height, world_w)
    return plan


def _camera(
    rng: np.random.Generator, frames: int, fps: int, width: int, height: int, world_w: int, ptz: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and zoom per frame: fixed, or a slow sinusoidal pan with a gentle zoom (ptz)."""
    centre = np.tile([world_w / 2, height / 2], (frames, 1)).astype(float)
    zoom = np.ones(frames)
    if ptz:
        secs = np.arange(frames) / fps
        reach = (world_w - width) / 2  # at zoom 1 the view stays inside the world
        centre[:, 0] += reach * np.sin(2 * np.pi * secs / rng.uniform(60, 120) + rng.uniform(0, 2 * np.pi))
        zoom = 1 + 0.12 * (0.5 - 0.5 * np.cos(2 * np.pi * secs / rng.uniform(70, 140) + rng.uniform(0, 2 * np.pi)))
    return centre, zoom


def _background(rng: np.random.Generator, world_w: int, world_h: int) -> tuple[str, np.ndarray]:
    """A pool photo at least 320 px wide, scaled to cover the world and cropped at random. The
    source clip is drawn first, then one of its photos: the pool holds 5 frames of bikes and 2-3
    of the others, and every scene should be as likely."""
    names = [n for n in patchwork.pool() if patchwork.photo(n).shape[1] >= 320]
    scenes = patchwork.photo_scenes()
    scene = str(rng.choice(sorted({scenes[n] for n in names})))
    name = str(rng.choice([n for n in names if scenes[n] == scene]))
    img = patchwork.photo(name)
    s = max(world_w / img.shape[1], world_h / img.shape[0])
    big = cv2.resize(
        img,
        (math.ceil(img.shape[1] * s), math.ceil(img.shape[0] * s)),
        interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
    )
    x = int(rng.integers(0, big.shape[1] - world_w + 1))
    y = int(rng.integers(0, big.shape[0] - world_h + 1))
    return name, np.ascontiguousarray(big[y : y + world_h, x : x + world_w])


def _floor_scale(y: np.ndarray | float, height: int) -> np.ndarray | float:
    """Perspective scale of feet at world row y: 0.55 on the farthest floor row to MAX_SCALE on the nearest."""
    f = np.clip((np.asarray(y) / height - FLOOR[0]) / (FLOOR[1] - FLOOR[0]), 0, 1)
    return 0.55 + (MAX_SCALE - 0.55) * f


def _glue_decoys(
    rng: np.random.Generator, world: np.ndarray, background: str, height: int
) -> tuple[np.ndarray, list[dict]]:
    """2-4 still cut-outs painted into the world (they are background, GT 0): actor-shaped ones
    standing on the floor and a box anywhere, wearing pieces of pool photos of other source clips
    (a piece of the background's own clip would hide in it)."""
    scenes = patchwork.photo_scenes()
    others = [n for n in patchwork.pool() if scenes[n] != scenes[background]]
    out = world.astype(np.float32)
    owner = np.zeros(world.shape[:2], np.uint8)
    decoys = []
    k = height / 240
    n = int(rng.integers(2, 5))
    for slot in rng.permutation(n):  # one per vertical strip of the world: spread, seldom on top of each other
        x = (slot + rng.uniform(0.15, 0.85)) / n * world.shape[1]
        kind = str(rng.choice([*KINDS, "box"]))
        if kind == "box":
            w = h = max(8, round(rng.uniform(18, 40) * k))
            alpha = things.rasterize(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float), w, h)
            feet = np.array([x, rng.uniform(0.25, 0.95) * height])
        else:
            w, h = _sprite_size(kind, k, rng)
            alpha = _silhouette(kind, w, h)
            feet = np.array([x, rng.uniform(*FLOOR) * height])
        photo = str(rng.choice(others))
        rgb = things.crop_photo(rng, patchwork.photo(photo), alpha.shape[1], alpha.shape[0], (0.5, 1.3))
        scale = float(_floor_scale(feet[1], height)) / MAX_SCALE if kind != "box" else 1.0
        m = things.similarity(scale, 0.0, np.array([alpha.shape[1] / 2, alpha.shape[0] - 2.0]), feet)
        things.paste(out, owner, 1, rgb, alpha, m, None)
        decoys.append({"kind": kind, "photo": photo, "x": round(float(feet[0]), 1), "y": round(float(feet[1]), 1)})
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), decoys


def _drift(rng: np.random.Generator, secs: np.ndarray) -> np.ndarray:
    """Slow signal in [-1, 1]: two sinusoids with periods of 1.5-6 minutes."""
    s = sum(
        rng.uniform(0.5, 1) * np.sin(2 * np.pi * secs / rng.uniform(90, 360) + rng.uniform(0, 2 * np.pi))
        for _ in range(2)
    )
    return s / 2


def _daylight(rng: np.random.Generator, frames: int, fps: int) -> np.ndarray:
    """Per-frame RGB gain: overall level +-12% and colour temperature +-5% (warmer: more red, less blue)."""
    secs = np.arange(frames) / fps
    level = rng.uniform(0.9, 1.05) * (1 + 0.12 * _drift(rng, secs))
    warm = 0.05 * _drift(rng, secs)
    return np.stack([level * (1 + warm), level, level * (1 - warm)], 1)


def _cast(rng: np.random.Generator, height: int) -> list[Actor]:
    """The actors, each with its own sprite made once: its look on every visit."""
    k = height / 240
    photos = [str(p) for p in rng.permutation([p for p in ACTOR_PHOTOS if p != "chelsea"])]
    actors = []
    for i, kind in enumerate(CAST, start=1):
        photo = "chelsea" if kind == "dog" else photos.pop()  # a cat's fur for the dog
        w, h = _sprite_size(kind, k, rng)
        alpha = _silhouette(kind, w, h)
        rgb = things.whole_view(rng, things.load_photo(photo), alpha.shape[1], alpha.shape[0])
        actors.append(Actor(i, kind, photo, rgb, alpha, float(rng.uniform(*KINDS[kind][2]))))
    return actors


def _schedule(
    rng: np.random.Generator, actor: Actor, frames: int, fps: int, width: int, height: int, world_w: int
) -> list[Visit]:
    """Visits one after another, apart by absences of ABSENCE_S, each ending before the stream does.
    A visit that does not fit is tried once as a pass before the actor is done."""
    visits = []
    t = int(rng.uniform(0, min(25.0, 0.25 * frames / fps)) * fps)
    while t < frames:
        kind = str(rng.choice(VISIT_KINDS, p=VISIT_P))
        visit = _visit(rng, actor, kind, t, fps, width, height, world_w)
        if visit.leave > frames and kind != "pass":
            visit = _visit(rng, actor, "pass", t, fps, width, height, world_w)
        if visit.leave > frames:
            break
        visits.append(visit)
        t = visit.leave + int(rng.uniform(*ABSENCE_S) * fps)
    return visits


def _curve(a: np.ndarray, b: np.ndarray, bend: float, n: int = 64) -> np.ndarray:
    """n points of a quadratic Bezier from a to b, bulging sideways by bend x the distance."""
    d = b - a
    ctrl = (a + b) / 2 + bend * np.array([-d[1], d[0]])
    u = np.linspace(0, 1, n)[:, None]
    return (1 - u) ** 2 * a + 2 * (1 - u) * u * ctrl + u**2 * b


def _walk(points: np.ndarray, step: float, ease_in: int, ease_out: int) -> np.ndarray:
    """Positions along `points` at `step` px/frame, speeding up over ease_in frames and slowing down
    over ease_out: samples 0..n, the first exactly at the start and the last exactly at the end."""
    seg = np.hypot(*np.diff(points, axis=0).T)
    arc = np.concatenate([[0], np.cumsum(seg)])
    n = max(2, math.ceil(arc[-1] / step + (ease_in + ease_out) / 2))
    speed = np.ones(n)
    if ease_in:
        speed[:ease_in] = np.minimum(speed[:ease_in], np.arange(1, ease_in + 1) / (ease_in + 1))
    if ease_out:
        speed[-ease_out:] = np.minimum(speed[-ease_out:], np.arange(ease_out, 0, -1) / (ease_out + 1))
    u = np.concatenate([[0], np.cumsum(speed)]) / speed.sum() * arc[-1]
    u[-1] = arc[-1]
    return np.stack([np.interp(u, arc, points[:, 0]), np.interp(u, arc, points[:, 1])], 1)


def _visit(
    rng: np.random.Generator, actor: Actor, kind: str, enter: int, fps: int, width: int, height: int, world_w: int
) -> Visit:
    """One visit from `enter`: in by an edge, to a spot, stand there (unless a pass), out by an edge."""
    half_w = actor.alpha.shape[1] / 2 + 2  # at MAX_SCALE: outside the world whatever the row
    side_in = int(rng.choice([-1, 1]))  # -1: the left edge

    def edge(side: int) -> np.ndarray:
        x = -half_w if side < 0 else world_w + half_w
        return np.array([x, rng.uniform(*FLOOR) * height])

    start = edge(side_in)
    spot = np.array([rng.uniform(0.15, 0.85) * world_w, rng.uniform(*FLOOR) * height])
    back = rng.random() >= 0.6 and kind != "pass"  # a pass crosses; one that stopped may turn back
    end = edge(side_in if back else -side_in)
    step = actor.speed * width / 320 / fps  # px/frame at perspective scale 1
    ease = max(1, round(0.6 * fps))  # 0.6 s to stop or to get going
    if kind == "pass":
        feet = _walk(_curve(start, end, rng.uniform(-0.15, 0.15)), step * _floor_scale(spot[1], height), 0, 0)
        return _visit_arrays(kind, enter, None, None, feet, height, fps)
    walk_in = _walk(_curve(start, spot, rng.uniform(-0.2, 0.2)), step * _floor_scale(start[1], height), 0, ease)
    walk_out = _walk(_curve(spot, end, rng.uniform(-0.2, 0.2)), step * _floor_scale(end[1], height), ease, 0)
    stand = max(1, round(rng.uniform(*STAND_S[kind]) * fps))  # frames at the spot
    stop = enter + len(walk_in) - 1  # the last sample of walk_in is the spot, the first of walk_out too
    feet = np.concatenate([walk_in, np.repeat(spot[None], stand - 1, 0), walk_out[1:]])
    go = stop + stand  # the first frame away from the spot
    return _visit_arrays(kind, enter, stop, go, feet, height, fps)


def _visit_arrays(
    kind: str, enter: int, stop: int | None, go: int | None, feet: np.ndarray, height: int, fps: int
) -> Visit:
    """The per-frame pose of a visit and when it is still (pose unchanged over the last fps frames)."""
    dx = np.diff(feet[:, 0], prepend=np.nan)
    facing = np.empty(len(feet))
    facing[0] = 1.0 if feet[1, 0] >= feet[0, 0] else -1.0  # a visit has at least 2 samples
    for i in range(1, len(feet)):  # turns only when it moves sideways; keeps its facing when standing
        facing[i] = np.sign(dx[i]) if abs(dx[i]) > 1e-6 else facing[i - 1]
    moved = np.ones(len(feet), bool)
    moved[1:] = np.any(feet[1:] != feet[:-1], axis=1) | (facing[1:] != facing[:-1])
    last_move = np.maximum.accumulate(np.where(moved, np.arange(len(feet)), 0))
    still = np.arange(len(feet)) - last_move >= fps
    return Visit(kind, enter, stop, go, enter + len(feet), feet, _floor_scale(feet[:, 1], height), facing, still)


# ----------------------------------------------------------------------------------------------
# Rendering


def still_ids(plan: RigPlan, t: int) -> set[int]:
    """Ids of the actors that have not moved for at least one second at frame t."""
    ids = set()
    for actor in plan.actors:
        v = actor.visit_at(t)
        if v is not None and v.still[t - v.enter]:
            ids.add(actor.id)
    return ids


def render_rig_frame(plan: RigPlan, t: int) -> RigFrame:
    """Frame t with its GT. A pure function of (plan, t): frames render in any order."""
    W, H = plan.width, plan.height
    cam = plan.camera(t)
    out = cv2.warpAffine(plan.world, cam[:2], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101).astype(
        np.float32
    )
    # the PTZ sweep moves under 0.5 px/frame: below what the blur kernel draws, so no camera blur
    present = [(a, v) for a in plan.actors if (v := a.visit_at(t)) is not None]
    present.sort(key=lambda av: (av[1].feet[t - av[1].enter, 1], av[0].id))  # the farther, the earlier
    owner = np.zeros((H, W), np.uint8)
    for actor, v in present:
        i = t - v.enter
        prev = i - 1 if i > 0 else min(1, len(v.feet) - 1)  # image motion for the blur (as synth.things)
        m = cam @ _placement(actor, v, i)
        m_prev = plan.camera(t + prev - i) @ _placement(actor, v, prev)
        centre = np.array([actor.alpha.shape[1] / 2, actor.alpha.shape[0] / 2, 1.0])
        kern = things.blur_kernel((m @ centre - m_prev @ centre)[:2] * plan.shutter)
        rgb, alpha = (actor.rgb, actor.alpha) if v.facing[i] > 0 else (actor.rgb[:, ::-1], actor.alpha[:, ::-1])
        things.paste(out, owner, actor.id, np.ascontiguousarray(rgb), np.ascontiguousarray(alpha), m, kern)

    noise = np.random.default_rng([plan.seed, 19, t]).standard_normal((H, W, 3), dtype=np.float32)
    out = out * plan.light[t].astype(np.float32) + noise * np.float32(plan.noise_sigma)
    rgb = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    gt = np.where(owner > 0, 255, 0).astype(np.uint8)
    ids = still_ids(plan, t)
    still = np.where(np.isin(owner, sorted(ids)), 255, 0).astype(np.uint8) if ids else np.zeros_like(gt)
    return RigFrame(rgb, gt, owner, still)


def _placement(actor: Actor, v: Visit, i: int) -> np.ndarray:
    """Sprite -> world: the sprite's bottom centre (its feet) at the visit's feet, scaled for its row."""
    h, w = actor.alpha.shape
    return things.similarity(float(v.scale[i]) / MAX_SCALE, 0.0, np.array([w / 2, h - 2.0]), v.feet[i])


# ----------------------------------------------------------------------------------------------
# clips.json and the public API


def rig_info(plan: RigPlan) -> dict:
    """What clips.json says about the stream, apart from its name and file."""
    train = round(TRAIN_FRACTION * plan.frames)

    def visit(v: Visit) -> dict:
        stand = (v.go - v.stop) / plan.fps if v.stop is not None else 0.0
        return {
            "kind": v.kind,
            "enter": v.enter,
            "stop": v.stop,
            "go": v.go,
            "leave": v.leave,
            "stand_seconds": round(stand, 2),
        }

    return {
        "width": plan.width,
        "height": plan.height,
        "fps": plan.fps,
        "frames": plan.frames,
        "shot_starts": [0],
        "family": FAMILY,
        "version": VERSION,
        "seed": plan.seed,
        "ptz": plan.ptz,
        "minutes": round(plan.frames / plan.fps / 60, 4),
        "crf": plan.crf,
        "noise_sigma": round(plan.noise_sigma, 3),
        "shutter": round(plan.shutter, 3),
        "background": plan.background,
        "decoys": plan.decoys,
        "camera_speed": round(float(np.hypot(*np.diff(plan.cam_center, axis=0).T).mean()), 3),  # px/frame, world
        "cast": [
            {
                "id": a.id,
                "kind": a.kind,
                "photo": a.photo,
                "speed": round(a.speed, 1),
                "visits": [visit(v) for v in a.visits],
            }
            for a in plan.actors
        ],
        "split": {"train_frames": train, "test_start": train},
    }


def _check(minutes: float, size: tuple[int, int], fps: int) -> int:
    """Frames of the stream, or a UserError naming the bad option."""
    width, height = size
    if not (1 <= fps <= 60):
        raise UserError(f"--fps {fps}: choose 1-60 frames per second")
    frames = round(minutes * 60 * fps) if minutes > 0 and math.isfinite(minutes) else 0
    if not 2 <= frames <= 999_999:  # frame files are named with 6 digits
        raise UserError(
            f"--minutes {minutes:g}: choose a stream of 2 to 999,999 frames "
            f"({2 / 60 / fps:.3f} to {999_999 / 60 / fps:.0f} minutes at {fps} fps)"
        )
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise UserError(f"--size {width}x{height}: width and height must be even and at least 32 (H.264 yuv420p)")
    return frames


def generate_rig(
    out_dir: str | Path,
    seed: int = 0,
    minutes: float = 3.0,
    size: tuple[int, int] = (320, 240),
    fps: int = FPS,
    ptz: bool = False,
    progress: bool = False,
) -> list[dict]:
    """Write the rig stream under out_dir (rig.mp4, rig/{gt,inst,still}/NNNNNN.png, clips.json) and
    return the clips.json entries (one). Rendered and encoded frame by frame; built in a hidden
    folder and swapped in whole; clips.json is removed first and written last."""
    from tqdm import tqdm

    frames = _check(minutes, size, fps)
    out = Path(out_dir)
    things.check_writable(out)
    (out / "clips.json").unlink(missing_ok=True)
    plan = plan_rig(seed, minutes, size, fps, ptz)
    assert plan.frames == frames
    work = Path(tempfile.mkdtemp(dir=out, prefix=f".{NAME}."))
    # disable=None: no bar when stderr is not a terminal
    bar = tqdm(total=frames, unit="frame", desc=f"synth {FAMILY}", disable=None if progress else True, file=sys.stderr)
    try:
        for kind in ("gt", "inst", "still"):
            (work / kind).mkdir()

        def frames_with_gt():
            for t in range(frames):
                r = render_rig_frame(plan, t)
                for kind in ("gt", "inst", "still"):
                    write_png(work / kind / f"{t:06d}.png", getattr(r, kind))
                bar.update(1)
                yield r.rgb

        things.encode_video(out / f"{NAME}.mp4", frames_with_gt(), size[0], size[1], plan.crf, fps=fps)
        things.swap_dir(work, out / NAME)
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    entries = [{"name": NAME, "file": f"{NAME}.mp4", **rig_info(plan)}]
    write_json(out / "clips.json", entries)
    return entries


def cached_rig(root: str | Path, seed: int = 0, minutes: float = 3.0, ptz: bool = False) -> tuple[Path, list[dict]]:
    """The default-size rig stream of (seed, minutes, ptz) under root, generated on first use (the
    benchmarks' cache): rig_v<VERSION>_s<seed>_m<minutes>[_ptz]."""
    d = Path(root) / f"rig_v{VERSION}_s{seed}_m{minutes:g}{'_ptz' if ptz else ''}"
    if (d / "clips.json").exists():
        return d, json.loads((d / "clips.json").read_text())
    return d, generate_rig(d, seed=seed, minutes=minutes, ptz=ptz, progress=True)
