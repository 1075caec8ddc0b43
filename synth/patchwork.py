"""Synthetic family "patchwork": clips with exact motion masks, for REPORTING only, never tuning.

Family "things" (synth/things.py) is the one the project tunes on, and it drifted toward what
the motion-mask method does well: movers wear a whole photo of a thing, and the thresholds were
tuned on that look. This family is built on different assumptions (issue 18):

  pool     one shared pool of photos (frames of real clips, synth/data/patchwork/, see
           sources.json there), apart from the scikit-image photos of "things". Backgrounds AND
           object textures are cut at random from it: no "this photo is a thing" cue.
  clip     1-2 shots with hard cuts; per shot a background, a camera path (static | pan | zoom |
           pan_zoom, the camera code of synth/things.py), still distractors (GT 0), 1-3 movers
           (GT 255, also while they pause), sometimes a still post in front (GT 0)
  movers   large (20-40% of the frame), medium (6-20%) or small (1-6%); blob, polygon or box
           contrast  normal      a random piece of any pool photo
                     same_scene  a piece of the background's own photo or of another frame of
                                 the same source clip, at the background's scale: low contrast
                     matched     a piece of another photo, its colour mean and spread matched to
                                 the background where the object starts: low contrast
           texture   photo | flat (mean colour) | blurred (heavy Gaussian), with a slight
                     shading gradient on the weak ones
           carried   sometimes a box carried by an arm: an elongated polygon from the box to a
                     shoulder outside the view, behind the box, moving with it; the arm is the
                     same instance as the box and is foreground too (a hand carrying a box)
  frame    rendered by synth.things.render_frame (motion blur, colour cast, flicker, sensor
           noise), H.264 by synth.things's encoder: the same folder format as family "things".

Every random choice comes from the clip seed: a seed gives the same frames, GT and MP4 bytes.

FROZEN at VERSION 1: figures from this family are quoted, so a change to what a seed generates
(including the photos) must be a new VERSION, and never one made to make a method look better.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import cv2
import numpy as np

from common.errors import UserError
from synth import things
from synth.things import ClipPlan, Layer, Shot

FAMILY = "patchwork"
VERSION = 1  # FROZEN: bump when a seed's clips change; cached sets are keyed by it
PHOTO_DIR = Path(__file__).resolve().parent / "data" / "patchwork"

CAMERA_P = (0.3, 0.3, 0.2, 0.2)  # over synth.things.CAMERA_TYPES
SIZES = {"large": (0.20, 0.40), "medium": (0.06, 0.20), "small": (0.01, 0.06)}  # of the view area
SHAPES = ("blob", "polygon", "box")
CONTRASTS = ("normal", "same_scene", "matched")
CONTRAST_P = (0.45, 0.3, 0.25)
TEXTURES = ("photo", "flat", "blurred")
TEXTURE_P = (0.6, 0.2, 0.2)


@dataclass
class Part(Layer):
    """A layer with what this family varies on top of synth.things.Layer (for clips.json)."""

    contrast: str = "normal"  # CONTRASTS
    texture: str = "photo"  # TEXTURES
    part: str = "object"  # object | arm (an arm has its box's inst)
    carried: bool = False  # a box held by an arm
    area: float = 0.0  # planned covered fraction of the view at the shot's first frame


# ----------------------------------------------------------------------------------------------
# The photo pool


@lru_cache(maxsize=1)
def pool() -> tuple[str, ...]:
    """Names of the pool's photos, in the order sources.json lists them (the order is part of the
    family: a photo added to the folder changes nothing until sources.json lists it)."""
    index = PHOTO_DIR / "sources.json"
    if not index.exists():
        raise UserError(f"{index}: missing; the patchwork photos ship inside the package (reinstall motionmask)")
    return tuple(Path(r["file"]).stem for r in json.loads(index.read_text()))


@lru_cache(maxsize=1)
def photo_scenes() -> dict[str, str]:
    """Photo name -> the clip it was taken from."""
    return {Path(r["file"]).stem: r["clip"] for r in json.loads((PHOTO_DIR / "sources.json").read_text())}


@cache
def photo(name: str) -> np.ndarray:
    """A pool photo, RGB uint8, read-only."""
    bgr = cv2.imread(str(PHOTO_DIR / f"{name}.jpg"), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{PHOTO_DIR / name}.jpg: missing or unreadable; reinstall motionmask")
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    rgb.setflags(write=False)
    return rgb


# ----------------------------------------------------------------------------------------------
# Shapes and textures


def _outline(rng: np.random.Generator, shape: str) -> tuple[np.ndarray, float]:
    """Unit-square polygon and natural aspect; "box" is a slightly skewed quadrilateral (a box seen
    at an angle), the rest come from synth.things."""
    if shape != "box":
        return things.random_outline(rng, shape)
    pts = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float) + rng.uniform(-0.08, 0.08, (4, 2))
    pts = pts - pts.min(0)
    return pts / pts.max(0), 1.0


def _alpha(rng: np.random.Generator, shape: str, area: float) -> np.ndarray:
    """Coverage of a cut-out of `shape` whose covered area is about `area` world px."""
    pts, aspect = _outline(rng, shape)
    aspect *= rng.uniform(0.6, 1.6)
    fill = float(things.rasterize(pts, 64, 64)[2:-2, 2:-2].mean())
    h = math.sqrt(area / max(fill, 0.1) / aspect)
    return things.rasterize(pts, max(6, round(h * aspect)), max(6, round(h)))


def _shade(rng: np.random.Generator, rgb: np.ndarray, strength: tuple[float, float]) -> np.ndarray:
    """A linear shading gradient in a random direction: gain 1 -/+ strength across the sprite."""
    h, w = rgb.shape[:2]
    a = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (x / max(w - 1, 1) - 0.5) * math.cos(a) + (y / max(h - 1, 1) - 0.5) * math.sin(a)
    gain = 1 + 2 * rng.uniform(*strength) * ramp
    return np.clip(rgb.astype(np.float32) * gain[:, :, None], 0, 255).astype(np.uint8)


def _weaken(rng: np.random.Generator, rgb: np.ndarray, texture: str) -> np.ndarray:
    """A weakly textured interior: the mean colour, or a heavy blur, then slight shading."""
    if texture == "photo":
        return rgb
    if texture == "flat":
        flat = np.broadcast_to(rgb.reshape(-1, 3).mean(0), rgb.shape).astype(np.uint8)
        return _shade(rng, flat, (0.04, 0.12))
    sigma = 0.08 * max(rgb.shape[:2])
    blurred = cv2.GaussianBlur(rgb, (0, 0), sigma, borderType=cv2.BORDER_REFLECT101)
    return _shade(rng, blurred, (0.03, 0.1))


def _match_colour(rgb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """rgb with the per-channel mean and spread of `target`: a piece of another photo that takes
    on the colours of the background under it."""
    src = rgb.reshape(-1, 3).astype(np.float32)
    ref = target.reshape(-1, 3).astype(np.float32)
    out = (src - src.mean(0)) / (src.std(0) + 1.0) * ref.std(0) + ref.mean(0)
    return np.clip(out, 0, 255).reshape(rgb.shape).astype(np.uint8)


def _window(world: np.ndarray, centre: np.ndarray, w: int, h: int) -> np.ndarray:
    """The part of the world image under a w x h box at `centre` (at least a few pixels)."""
    x0, y0 = (np.round(centre - [w / 2, h / 2]).astype(int)).tolist()
    x0 = min(max(0, x0), world.shape[1] - 4)
    y0 = min(max(0, y0), world.shape[0] - 4)
    return world[y0 : y0 + max(4, h), x0 : x0 + max(4, w)]


# ----------------------------------------------------------------------------------------------
# Planning: every random choice of a clip is made here


def plan_clip(seed: int, frames: int = 90, size: tuple[int, int] = (320, 240)) -> ClipPlan:
    """Lay out a clip: shots, backgrounds, camera paths, cut-outs and their paths. No pixels yet.
    Render its frames with synth.things.render_frame."""
    width, height = size
    rng = np.random.default_rng(seed)
    min_shot = 30 if frames >= 60 else max(2, frames // 2)
    n_shots = min(int(rng.choice([1, 2], p=[0.6, 0.4])), max(1, frames // min_shot))
    cut = int(rng.integers(min_shot, frames - min_shot + 1)) if n_shots == 2 else frames
    starts, ends = ([0, cut], [cut, frames]) if n_shots == 2 else ([0], [frames])
    plan = ClipPlan(
        seed=seed,
        frames=frames,
        width=width,
        height=height,
        crf=int(rng.integers(23, 31)),
        noise_sigma=float(rng.uniform(1.5, 5.0)),
        shutter=float(rng.choice([0.0, rng.uniform(0.2, 0.6)], p=[0.3, 0.7])),
        flicker=1
        + rng.uniform(0.01, 0.03) * (0.7 * things.smooth_noise(rng, frames, 6.0) + 0.3 * rng.uniform(-1, 1, frames)),
        shots=[],
    )
    next_inst, prev_photo = 1, None
    for start, end in zip(starts, ends):
        shot = _plan_shot(rng, start, end - start, width, height, next_inst, prev_photo)
        next_inst = 1 + max([next_inst - 1] + [layer.inst for layer in shot.layers])
        prev_photo = shot.photo
        plan.shots.append(shot)
    return plan


class _View:
    """A shot's camera: world <-> view for frame i."""

    def __init__(self, center: np.ndarray, zoom: np.ndarray, angle: np.ndarray, width: int, height: int):
        self.center, self.zoom, self.angle = center, zoom, angle
        self.half = np.array([width / 2, height / 2])

    def to_world(self, v: np.ndarray, i: int) -> np.ndarray:
        return self.center[i] + things.rotation_matrix(self.angle[i]) @ ((v - self.half) / self.zoom[i])


def _background(
    rng: np.random.Generator,
    name: str,
    rel_center: np.ndarray,
    zoom: np.ndarray,
    angle: np.ndarray,
    half_view: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The world image (the photo scaled to cover all the camera sees, plus a margin), the camera
    centre path in it, and the photo -> world scale."""
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half_view
    seen = np.concatenate(
        [rel_center[i] + corners @ things.rotation_matrix(angle[i]).T / zoom[i] for i in range(len(zoom))]
    )
    lo, hi = seen.min(0), seen.max(0)
    img = photo(name)
    need = hi - lo + 8
    s = max(need[0] / img.shape[1], need[1] / img.shape[0]) * rng.uniform(1.0, 1.3)
    world_w, world_h = math.ceil(img.shape[1] * s), math.ceil(img.shape[0] * s)
    world = cv2.resize(img, (world_w, world_h), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    offset = np.array([rng.uniform(4, world_w - need[0] + 4), rng.uniform(4, world_h - need[1] + 4)]) - lo
    return world, rel_center + offset, s


def _plan_shot(
    rng: np.random.Generator, start: int, n: int, width: int, height: int, first_inst: int, prev_photo: str | None
) -> Shot:
    k = width / things.REF_WIDTH
    half_view = np.array([width / 2, height / 2])
    camera = str(rng.choice(things.CAMERA_TYPES, p=CAMERA_P))
    rel_center, zoom, angle = things.camera_path(rng, camera, n, k)
    names = pool()
    bg_name = str(rng.choice([p for p in names if p != prev_photo]))
    world, cam_center, bg_scale = _background(rng, bg_name, rel_center, zoom, angle, half_view)
    view = _View(cam_center, zoom, angle, width, height)
    cast = rng.uniform(0.85, 1.15, 3)  # a colour cast per shot, on everything (one camera, one light)
    view_area = width * height / zoom[0] ** 2  # world px seen at the shot's first frame

    def texture(alpha: np.ndarray, at: np.ndarray, contrast: str, weak: str) -> tuple[str, np.ndarray]:
        h, w = alpha.shape
        if contrast == "same_scene":  # the background's photo or its clip's other frames, at its scale
            scene = [p for p in names if photo_scenes()[p] == photo_scenes()[bg_name]]
            name = str(rng.choice(scene))
            rgb = things.crop_photo(rng, photo(name), w, h, (0.8 * bg_scale, 1.25 * bg_scale))
        else:
            name = str(rng.choice(names))
            rgb = things.crop_photo(rng, photo(name), w, h, (0.5, 1.5))
            if contrast == "matched":
                rgb = _match_colour(rgb, _window(world, at, w, h))
        return name, _weaken(rng, rgb, weak)

    def part(
        role: str,
        inst: int,
        size: str,
        shape: str,
        area_frac: float,
        at: np.ndarray,
        pos: np.ndarray,
        rot: np.ndarray,
        scale: np.ndarray,
        contrast: str,
        weak: str,
    ) -> Part:
        alpha = _alpha(rng, shape, area_frac * view_area)
        name, rgb = texture(alpha, at, contrast, weak)
        return Part(
            role,
            inst,
            name,
            shape,
            size,
            things.colour_cast(rgb, cast),
            alpha,
            pos,
            rot,
            scale,
            contrast=contrast,
            texture=weak,
            area=round(area_frac, 4),
        )

    def still(p: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.repeat(p[None], n, 0), np.full(n, a), np.ones(n)

    def draw(options: tuple[str, ...], p: tuple[float, ...]) -> str:
        return str(rng.choice(options, p=p))

    layers: list[Layer] = []
    mid = n // 2
    for _ in range(int(rng.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))):  # still distractors, GT 0
        size = draw(("large", "medium", "small"), (0.15, 0.5, 0.35))
        at = view.to_world(half_view * 2 * rng.uniform(0.15, 0.85, 2), mid)
        layers.append(
            part(
                "distractor",
                0,
                size,
                draw(SHAPES, (0.4, 0.35, 0.25)),
                rng.uniform(*SIZES[size]),
                at,
                *still(at, rng.uniform(-np.pi, np.pi)),
                draw(CONTRASTS, CONTRAST_P),
                draw(TEXTURES, TEXTURE_P),
            )
        )

    n_movers = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    carried = rng.random() < 0.4  # the first mover is a box in a hand
    for j in range(n_movers):
        size = draw(("large", "medium", "small"), (0.5, 0.3, 0.2) if j == 0 else (0.1, 0.45, 0.45))
        if j == 0 and carried and size == "small":
            size = "medium"  # an arm next to a tiny box would be most of the object
        shape = "box" if j == 0 and carried else draw(SHAPES, (0.45, 0.35, 0.2))
        margin = 0.3 if size == "large" else 0.15
        at = view.to_world(half_view * 2 * rng.uniform(margin, 1 - margin, 2), 0)
        env = things.pause_envelope(rng, n)
        pos = things.mover_path(rng, at, rng.uniform(1.0, 6.0), k, env, cam_center, zoom, half_view)
        spin = np.radians(rng.uniform(-0.5, 0.5)) if rng.random() < 0.4 else 0.0
        rot = rng.uniform(-0.4, 0.4) + spin * np.cumsum(env)  # turns only while it moves
        grow = np.exp(rng.uniform(-0.15, 0.15) * np.cumsum(env) / n)  # toward or away from the camera
        mover = part(
            "mover",
            first_inst + j,
            size,
            shape,
            rng.uniform(*SIZES[size]),
            at,
            pos,
            rot,
            grow,
            draw(CONTRASTS, CONTRAST_P),
            draw(TEXTURES, TEXTURE_P),
        )
        if j == 0 and carried:
            mover.carried = True
            layers.append(_arm(rng, mover, view, n, cast))  # behind its box: the hand holds it
        layers.append(mover)

    if rng.random() < 0.2:  # a still post in front of everything, GT 0
        alpha = things.rasterize(
            _outline(rng, "pole")[0],
            round(rng.uniform(0.05, 0.09) * width / zoom[mid]),
            round(1.3 * height / zoom[mid]),
        )
        name = str(rng.choice(names))
        rgb = things.crop_photo(rng, photo(name), alpha.shape[1], alpha.shape[0], (0.5, 1.5))
        at = view.to_world(half_view * 2 * np.array([rng.uniform(0.2, 0.8), 0.5]), mid)
        layers.append(
            Part(
                "occluder",
                0,
                name,
                "pole",
                "pole",
                things.colour_cast(rgb, cast),
                alpha,
                *still(at, angle[mid] + rng.uniform(-0.1, 0.1)),
            )
        )

    return Shot(start, n, bg_name, world, camera, cam_center, zoom, angle, layers)


def _arm(rng: np.random.Generator, box: Part, view: _View, n: int, cast: np.ndarray) -> Part:
    """An arm holding `box`: a long, slightly tapered polygon from the box's centre (its hand end,
    hidden under the box) to a shoulder outside the view that moves with the camera. It moves
    with the box, turning about the shoulder: foreground, with the box's instance id."""
    side = math.sqrt(float(box.alpha.sum()))  # world px
    height = 2 * view.half[1] / view.zoom[0]
    width = float(np.clip(rng.uniform(0.25, 0.4) * side, 0.07 * height, 0.16 * height))
    a = rng.uniform(0, 2 * np.pi)  # shoulder direction; 1.6 x the half view is outside it in any direction
    shoulder_view = view.half + 1.6 * view.half * np.array([math.cos(a), math.sin(a)])
    shoulder = np.array([view.to_world(shoulder_view, i) for i in range(n)])
    reach = shoulder - box.pos
    dist = np.hypot(reach[:, 0], reach[:, 1])
    length = float(dist.max() + width)  # ends beyond the shoulder, so its far end is never seen
    u = reach / np.maximum(dist, 1e-6)[:, None]
    taper = rng.uniform(0.1, 0.2)  # a wrist narrower than the upper arm
    pts = np.array([[0, taper], [1, 0], [1, 1], [0, 1 - taper]], float)
    alpha = things.rasterize(pts, max(6, round(length)), max(6, round(width)))
    h, w = alpha.shape
    sleeve_name = str(rng.choice(pool()))
    sleeve = things.crop_photo(rng, photo(sleeve_name), w, h, (0.5, 1.5))
    # a sleeve: one colour from the pool, lit like a cylinder across its width, faint lengthwise blur
    colour = sleeve.reshape(-1, 3).mean(0) * rng.uniform(0.7, 1.2)
    across = 0.7 + 0.4 * np.sin(np.pi * np.clip((np.arange(h) - 2) / max(h - 5, 1), 0, 1))
    grain = cv2.GaussianBlur(sleeve.astype(np.float32), (0, 0), max(1.0, width / 6)) - sleeve.mean((0, 1))
    rgb = np.clip(colour * across[:, None, None] + 0.3 * grain, 0, 255).astype(np.uint8)
    # the sprite's hand end (x = 0) sits at the box centre; the sprite turns about its own centre
    pos = box.pos + u * (w / 2 - 2)
    rot = np.arctan2(u[:, 1], u[:, 0])
    return Part(
        "mover",
        box.inst,
        sleeve_name,
        "arm",
        "arm",
        things.colour_cast(rgb, cast),
        alpha,
        pos,
        rot,
        np.ones(n),
        contrast="normal",
        texture="flat",
        part="arm",
        area=round(float(alpha.sum()) / (4 * view.half[0] * view.half[1] / view.zoom[0] ** 2), 4),
    )


# ----------------------------------------------------------------------------------------------
# Clip description and the public API


def clip_info(plan: ClipPlan) -> dict:
    """synth.things.clip_info plus the family, its version and what this family varies per object."""
    info = things.clip_info(plan)
    layers = [layer for shot in plan.shots for layer in shot.layers]
    for obj, layer in zip(info["objects"], layers):
        obj.update(
            {
                "part": layer.part,
                "carried": layer.carried,
                "contrast": layer.contrast,
                "texture": layer.texture,
                "area": layer.area,
            }
        )
    return {"family": FAMILY, "version": VERSION, **info}


def render_clip(
    seed: int, frames: int = 90, size: tuple[int, int] = (320, 240)
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], dict]:
    """Render a whole clip in memory without encoding: (frames_rgb, gt, inst, info)."""
    plan = plan_clip(seed, frames, size)
    rendered = [things.render_frame(plan, t) for t in range(frames)]
    return [r.rgb for r in rendered], [r.gt for r in rendered], [r.inst for r in rendered], clip_info(plan)


def generate(
    out_dir: str | Path,
    seed: int = 0,
    clips: int = 10,
    frames: int = 90,
    size: tuple[int, int] = (320, 240),
    progress: bool = False,
) -> list[dict]:
    """Write `clips` clips under out_dir in the folder format of synth.things.generate (its write
    loop: synth.things.write_clips) and return the clips.json entries (each with "family":
    "patchwork" and "version")."""
    return things.write_clips(
        out_dir, plan_clip, clip_info, seed, clips, frames, size, progress, desc=f"synth {FAMILY}"
    )
