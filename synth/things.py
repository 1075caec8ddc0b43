"""Synthetic clips with exact motion masks: the test fixture and the quality benchmark.

How a clip is composed (read `plan_clip`, then `render_frame`):

  clip   1-3 shots with hard cuts; each cut brings a new background, new objects, a new camera path
  shot   background photo = the world, larger than the view so that the camera can move over it
         camera path world -> view: static | pan | zoom | pan_zoom, smooth, with a slight rotation
         layers, back to front (all in world coordinates, so camera motion moves them too):
           distractor  a cut-out lying still on the background     GT 0: whole still things are background
           movers      1-3 cut-outs on smooth paths, 1-8 px/frame,  GT 255, also while they pause
                       pausing 5-20 frames, crossing each other
           occluder    a still cut-out in front of everything       GT 0: part of the background
  frame  warp background and layers into the view, motion blur along each layer's image motion,
         per-shot colour cast, global flicker, sensor noise; H.264 (CRF 23-30) when written.

GT comes from geometry, never from pixels: a pixel is foreground when the topmost layer covering
it by at least half is a mover. Cut-outs are real photos shipped inside scikit-image (no network).

Things and stuff: as in real video, what moves belongs to kinds of things (people, animals,
vehicles) and what stays is stuff (ground, walls) and clutter. Movers wear photos of THINGS, each
seen whole (most of the photo squeezed into the cut-out, as a person is seen whole, not as a
random patch of a shirt); backgrounds, still distractors and occluders wear random pieces of photos
of STUFF. A still cut-out therefore has
the sharp outline of an object but not its look, so a single-frame student (the learner) has to
learn what movers look like, not where cut-out edges are; and motion alone must still tell a
still cut-out from a moving one.
Every random choice comes from the clip seed, so a seed gives the same frames, GT and MP4 bytes.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache, lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

from common.atomic import write_json
from common.errors import UserError
from streamer.png import write_png

FPS = 30
VERSION = 2  # bump when a seed's clips change (2: movers wear their photo whole); cached sets are keyed by it
REF_WIDTH = 320  # speeds and sizes below are in pixels of a 320-wide frame and scale with the width

# Photos bundled inside scikit-image (they load offline). chelsea == cat, and the stereo pair is one
# scene, so each appears once. Each group mixes colour and gray photos, so colour alone does not
# tell a thing from stuff.
THINGS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera", "colorwheel")
STUFF = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "hubble_deep_field",
    "clock",
    "page",
    "text",
    "cell",
    "immunohistochemistry",
    "retina",
)
BACKGROUNDS = STUFF

CAMERA_TYPES = ("static", "pan", "zoom", "pan_zoom")
CAMERA_P = (0.3, 0.35, 0.15, 0.2)
SIZES = {"large": (0.15, 0.35), "medium": (0.05, 0.15), "small": (0.01, 0.05)}  # of the frame area


# ----------------------------------------------------------------------------------------------
# What a clip is made of


@dataclass
class Layer:
    role: str  # mover | distractor | occluder
    inst: int  # 1..K for the k-th mover of the clip; 0 for still layers
    photo: str
    shape: str  # blob | polygon | horse | pole
    size: str  # large | medium | small | pole
    rgb: np.ndarray  # h x w x 3 uint8 texture of the sprite
    alpha: np.ndarray  # h x w float32 coverage in [0, 1]; zero on a 2 px frame
    pos: np.ndarray  # L x 2 world position of the sprite centre, per frame of the shot
    angle: np.ndarray  # L radians
    scale: np.ndarray  # L


@dataclass
class Shot:
    start: int
    length: int
    photo: str
    background: np.ndarray  # world image, uint8 RGB
    camera: str  # one of CAMERA_TYPES
    cam_center: np.ndarray  # L x 2 world point at the view centre
    cam_zoom: np.ndarray  # L view px per world px
    cam_angle: np.ndarray  # L radians
    layers: list[Layer] = field(default_factory=list)  # back to front


@dataclass
class ClipPlan:
    seed: int
    frames: int
    width: int
    height: int
    crf: int
    noise_sigma: float  # sensor noise, grey levels
    shutter: float  # fraction of the frame time the shutter is open (motion blur length)
    flicker: np.ndarray  # per-frame global gain
    shots: list[Shot]

    def shot_at(self, t: int) -> tuple[Shot, int]:
        for shot in reversed(self.shots):
            if t >= shot.start:
                return shot, t - shot.start
        raise IndexError(t)


@dataclass
class Rendered:
    rgb: np.ndarray  # H x W x 3 uint8, before compression
    gt: np.ndarray  # H x W uint8, 255 = a mover of the current shot
    inst: np.ndarray  # H x W uint8 instance id (0 = background)
    layer: np.ndarray  # H x W uint8: 0 background, i = shot.layers[i - 1] (for per-role scoring)


# ----------------------------------------------------------------------------------------------
# Photos and shapes


@cache
def load_photo(name: str) -> np.ndarray:
    import skimage.data

    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3])
    img.setflags(write=False)
    return img


def crop_photo(rng: np.random.Generator, photo: np.ndarray, w: int, h: int, zoom: tuple[float, float]) -> np.ndarray:
    """A random w x h view of `photo`, seen at a random magnification."""
    ph, pw = photo.shape[:2]
    m = rng.uniform(*zoom)  # > 1: a smaller part of the photo, enlarged
    cw, ch = w / m, h / m
    k = min(1.0, pw / cw, ph / ch)  # larger than the photo: the largest crop of this aspect
    cw, ch = max(1, int(cw * k)), max(1, int(ch * k))
    x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    interp = cv2.INTER_AREA if cw > w else cv2.INTER_LINEAR
    return cv2.resize(photo[y : y + ch, x : x + cw], (w, h), interpolation=interp)


def whole_view(rng: np.random.Generator, photo: np.ndarray, w: int, h: int) -> np.ndarray:
    """Most of `photo` (75-100% of the largest w:h window in it) squeezed into w x h: a thing seen
    whole, so that a mover always looks like the thing it is, whatever its size."""
    ph, pw = photo.shape[:2]
    k = min(pw / w, ph / h) * rng.uniform(0.75, 1.0)
    cw, ch = max(1, int(w * k)), max(1, int(h * k))
    x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    interp = cv2.INTER_AREA if cw > w else cv2.INTER_LINEAR
    return cv2.resize(photo[y : y + ch, x : x + cw], (w, h), interpolation=interp)


def random_outline(rng: np.random.Generator, shape: str) -> tuple[np.ndarray, float]:
    """Polygon (N x 2) of a shape scaled into the unit square, and the shape's natural aspect w/h."""
    aspect = 1.0
    if shape == "blob":  # smooth random star-shaped blob: a few low harmonics of the radius
        t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
        r = np.ones_like(t)
        for k in range(2, 6):
            r += rng.uniform(0, 0.35 / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
    elif shape == "polygon":  # deformed polygon: jittered angles and radii, sharp corners
        n = int(rng.integers(5, 10))
        t = np.sort((np.arange(n) + rng.uniform(-0.35, 0.35, n)) * 2 * np.pi / n)
        r = rng.uniform(0.55, 1.0, n)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
    elif shape == "pole":  # tall, slightly tapered and tilted: a post, a tree trunk
        top, tilt = rng.uniform(0.5, 0.9), rng.uniform(-0.15, 0.15)
        pts = np.array([[-top + tilt, -1], [top + tilt, -1], [1, 1], [-1, 1]], float)
    elif shape == "horse":  # a real silhouette
        pts = horse_outline() * [rng.choice([-1, 1]), 1]
    else:
        raise ValueError(shape)
    pts = pts - pts.min(0)
    if shape == "horse":
        aspect = float(pts[:, 0].max() / pts[:, 1].max())
    return pts / pts.max(0), aspect


@lru_cache(maxsize=1)
def horse_outline() -> np.ndarray:
    import skimage.data

    silhouette = (~skimage.data.horse()).astype(np.uint8)  # True is background in scikit-image's horse
    contours, _ = cv2.findContours(silhouette, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return max(contours, key=cv2.contourArea)[:, 0, :].astype(float)


def rasterize(pts: np.ndarray, w: int, h: int) -> np.ndarray:
    """Coverage (h+4 x w+4 float32) of a unit-square polygon filling w x h, 4x supersampled, 2 px frame."""
    ss = 4
    big = np.zeros((h * ss, w * ss), np.uint8)
    cv2.fillPoly(big, [np.round(pts * [w * ss - 1, h * ss - 1]).astype(np.int32)], 255)
    alpha = cv2.resize(big.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(alpha, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=0)


def _sprite(
    rng: np.random.Generator, shape: str, area: float, photo: str, whole: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Texture and coverage of a cut-out whose covered area is about `area` px; whole: the cut-out
    wears the whole photo (a thing), else a random piece of it (stuff)."""
    pts, aspect = random_outline(rng, shape)
    aspect *= rng.uniform(0.85, 1.15) if shape == "horse" else rng.uniform(0.6, 1.6)
    fill = float(rasterize(pts, 64, 64)[2:-2, 2:-2].mean())
    h = math.sqrt(area / max(fill, 0.1) / aspect)
    w, h = max(6, round(h * aspect)), max(6, round(h))
    alpha = rasterize(pts, w, h)
    rgb = (
        whole_view(rng, load_photo(photo), w + 4, h + 4)
        if whole
        else crop_photo(rng, load_photo(photo), w + 4, h + 4, (0.5, 1.3))
    )
    return rgb, alpha


# ----------------------------------------------------------------------------------------------
# Motion


def smooth_noise(rng: np.random.Generator, n: int, cycles: float = 2.0) -> np.ndarray:
    """Low-frequency random signal in [-1, 1]: a sum of three sinusoids of up to `cycles` per n."""
    t = np.arange(n) / max(n, 1)
    s = sum(
        rng.uniform(0.5, 1) * np.sin(2 * np.pi * rng.uniform(0.2, cycles) * t + rng.uniform(0, 2 * np.pi))
        for _ in range(3)
    )
    return s / (np.abs(s).max() + 1e-9)


def camera_path(rng: np.random.Generator, kind: str, n: int, k: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (relative to the start), zoom and angle per frame; speeds in view px/frame * k."""
    zoom0 = rng.uniform(0.8, 1.3)
    center = np.zeros((n, 2))
    zoom = np.full(n, zoom0)
    angle = np.zeros(n)
    if kind in ("pan", "pan_zoom"):
        speed = rng.uniform(0.5, 4.0) * k * (1 + 0.3 * smooth_noise(rng, n))
        ease = np.clip(np.arange(n) / 6.0, 0.2, 1.0)  # a pan gets going over a few frames
        horizontal = rng.random() < 0.75  # most pans are horizontal; some tilt or go diagonal
        head = (rng.choice([0, np.pi]) + rng.uniform(-0.3, 0.3)) if horizontal else rng.uniform(0, 2 * np.pi)
        head = head + 0.3 * smooth_noise(rng, n)
        step = np.stack([np.cos(head), np.sin(head)], 1) * (speed * ease)[:, None] / zoom0
        center = np.vstack([[0, 0], np.cumsum(step, 0)[:-1]])
    if kind in ("zoom", "pan_zoom"):
        factor = rng.choice([-1, 1]) * rng.uniform(0.15, 0.35)  # zooms in or out by 15-35%
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / max(n - 1, 1))
        zoom = zoom0 * np.exp(factor * ramp)
        drift = np.stack([smooth_noise(rng, n, 1.0), smooth_noise(rng, n, 1.0)], 1) * rng.uniform(0, 0.4) * k
        center = center + np.cumsum(drift, 0) / zoom0  # a zoom is seldom perfectly centred
    if kind != "static":
        angle = np.radians(rng.uniform(0.3, 2.0)) * smooth_noise(rng, n, 1.0)
    return center, zoom, angle


def pause_envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """Speed factor per frame: 1 while moving, 0 during 0-2 pauses of 5-20 frames, eased in and out.
    Pauses take at most half of the shot, so that every mover really moves in its shot."""
    env = np.ones(n)
    pauses = int(rng.choice([0, 1, 2], p=[0.35, 0.45, 0.2])) if n >= 30 else 0
    for _ in range(pauses):
        length = int(rng.integers(5, 21))
        start = int(rng.integers(0, n - length + 1))
        near = env[max(0, start - 5) : start + length + 5]
        if (env == 0).sum() + length <= n // 2 and near.all():  # separate pauses, never one long one
            env[start : start + length] = 0
    eased = np.convolve(np.pad(env, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    return np.where(env > 0, eased, 0.0)  # slows down over 2 frames, then stands exactly still


def mover_path(
    rng: np.random.Generator,
    start: np.ndarray,
    speed: float,
    k: float,
    env: np.ndarray,
    cam_center: np.ndarray,
    cam_zoom: np.ndarray,
    half_view: np.ndarray,
) -> np.ndarray:
    """World positions of a mover: a smoothly turning walk that steers back when near the view edge.
    `speed` is in px/frame of a REF_WIDTH-wide view; k = width / REF_WIDTH."""
    n = len(env)
    to_center = cam_center[0] - start
    head = math.atan2(to_center[1], to_center[0]) + rng.uniform(-1.0, 1.0)  # tends to cross the view
    turn = np.radians(3.0) * smooth_noise(rng, n, 3.0)
    vary = np.clip(1 + 0.25 * smooth_noise(rng, n), 1 / speed, 8 / speed)  # stays within 1-8 px/frame
    pos = np.empty((n, 2))
    p = start.astype(float).copy()
    for i in range(n):
        pos[i] = p
        rel = (p - cam_center[i]) * cam_zoom[i] / half_view  # -1..1 across the view
        head += turn[i]
        if np.hypot(*rel) > 0.6:  # near the edge: turn toward the view centre, at most 8 deg/frame
            want = math.atan2(-rel[1] * half_view[1], -rel[0] * half_view[0])
            d = (want - head + np.pi) % (2 * np.pi) - np.pi
            head += float(np.clip(d, -np.radians(8), np.radians(8)))
        p = p + speed * k * env[i] * vary[i] / cam_zoom[i] * np.array([math.cos(head), math.sin(head)])
    return pos


# ----------------------------------------------------------------------------------------------
# Planning: every random choice of a clip is made here


def plan_clip(seed: int, frames: int = 90, size: tuple[int, int] = (320, 240)) -> ClipPlan:
    """Lay out a clip: shots, backgrounds, camera paths, cut-outs and their paths. No pixels yet."""
    width, height = size
    rng = np.random.default_rng(seed)
    min_shot = 20 if frames >= 60 else max(2, frames // 2)
    max_shots = max(1, min(3, frames // min_shot))
    n_shots = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    n_shots = min(n_shots, max_shots)
    # shot starts: cut points at least min_shot apart
    slack = frames - n_shots * min_shot
    extra = np.sort(rng.integers(0, slack + 1, n_shots - 1)) if n_shots > 1 else np.array([], int)
    starts = [0] + [int(e + (i + 1) * min_shot) for i, e in enumerate(extra)]
    ends = starts[1:] + [frames]
    plan = ClipPlan(
        seed=seed,
        frames=frames,
        width=width,
        height=height,
        crf=int(rng.integers(23, 31)),
        noise_sigma=float(rng.uniform(2.0, 6.0)),
        shutter=float(rng.choice([0.0, rng.uniform(0.2, 0.6)], p=[0.3, 0.7])),
        flicker=1 + rng.uniform(0.01, 0.04) * (0.7 * smooth_noise(rng, frames, 6.0) + 0.3 * rng.uniform(-1, 1, frames)),
        shots=[],
    )
    next_inst = 1
    prev_photo = None
    for start, end in zip(starts, ends):
        shot = _plan_shot(rng, start, end - start, width, height, next_inst, prev_photo)
        next_inst += sum(1 for layer in shot.layers if layer.role == "mover")
        prev_photo = shot.photo
        plan.shots.append(shot)
    if next_inst > 255:
        raise ValueError("more than 255 movers do not fit an 8-bit instance map")
    return plan


def _plan_shot(
    rng: np.random.Generator, start: int, n: int, width: int, height: int, first_inst: int, prev_photo: str | None
) -> Shot:
    k = width / REF_WIDTH
    half_view = np.array([width / 2, height / 2])
    camera = str(rng.choice(CAMERA_TYPES, p=CAMERA_P))
    rel_center, zoom, angle = camera_path(rng, camera, n, k)

    # The world: a photo scaled to cover everything the camera sees along its path, plus a margin.
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half_view
    seen = np.concatenate([rel_center[i] + corners @ rotation_matrix(angle[i]).T / zoom[i] for i in range(n)])
    lo, hi = seen.min(0), seen.max(0)
    photo_name = str(rng.choice([p for p in BACKGROUNDS if p != prev_photo]))
    photo = load_photo(photo_name)
    need = hi - lo + 8
    s = max(need[0] / photo.shape[1], need[1] / photo.shape[0]) * rng.uniform(1.0, 1.3)
    world_w, world_h = math.ceil(photo.shape[1] * s), math.ceil(photo.shape[0] * s)
    background = cv2.resize(photo, (world_w, world_h), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    offset = np.array([rng.uniform(4, world_w - need[0] + 4), rng.uniform(4, world_h - need[1] + 4)]) - lo
    cam_center = rel_center + offset
    # a colour cast per shot (a different camera or light): also what makes a cut obvious in colour
    cast = rng.uniform(0.85, 1.15, 3)
    background = colour_cast(background, cast)

    def view_to_world(v: np.ndarray, i: int) -> np.ndarray:
        return cam_center[i] + rotation_matrix(angle[i]) @ ((v - half_view) / zoom[i])

    def still(n_: int, p: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.repeat(p[None], n_, 0), np.full(n_, a), np.ones(n_)

    def stuff(avoid: str) -> str:
        return str(rng.choice([p for p in STUFF if p != avoid]))

    layers: list[Layer] = []
    mid = n // 2
    if rng.random() < 0.7:  # distractor: a cut-out lying still on the background
        size = str(rng.choice(["medium", "small"], p=[0.6, 0.4]))
        area = rng.uniform(*SIZES[size]) * width * height / zoom[mid] ** 2
        shape = str(rng.choice(["blob", "polygon", "horse"], p=[0.45, 0.45, 0.1]))
        tex = stuff(photo_name)
        rgb, alpha = _sprite(rng, shape, area, tex)
        p = view_to_world(half_view * 2 * rng.uniform(0.2, 0.8, 2), mid)
        layers.append(
            Layer(
                "distractor",
                0,
                tex,
                shape,
                size,
                colour_cast(rgb, cast),
                alpha,
                *still(n, p, rng.uniform(-np.pi, np.pi)),
            )
        )

    n_movers = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    for j in range(n_movers):
        size = str(rng.choice(["large", "medium", "small"], p=[0.5, 0.3, 0.2] if j == 0 else [0.0, 0.45, 0.55]))
        shape = str(rng.choice(["blob", "polygon", "horse"], p=[0.5, 0.35, 0.15]))
        area = rng.uniform(*SIZES[size]) * width * height / zoom[0] ** 2
        tex = str(rng.choice(THINGS))
        rgb, alpha = _sprite(rng, shape, area, tex, whole=True)
        margin = 0.3 if size == "large" else 0.15
        start_pos = view_to_world(half_view * 2 * rng.uniform(margin, 1 - margin, 2), 0)
        speed = rng.uniform(1.0, 8.0)
        env = pause_envelope(rng, n)
        pos = mover_path(rng, start_pos, speed, k, env, cam_center, zoom, half_view)
        spin = np.radians(rng.uniform(-0.6, 0.6)) if rng.random() < 0.5 else 0.0
        rot = rng.uniform(-0.5, 0.5) + spin * np.cumsum(env)  # turns only while it moves
        grow = np.exp(rng.uniform(-0.15, 0.15) * np.cumsum(env) / n)  # walks toward or away from us
        layers.append(Layer("mover", first_inst + j, tex, shape, size, colour_cast(rgb, cast), alpha, pos, rot, grow))

    if rng.random() < 0.35:  # occluder: a still post in front of everything
        pole_w = rng.uniform(0.05, 0.09) * width / zoom[mid]
        pole_h = 1.3 * height / zoom[mid]
        tex = stuff(photo_name)
        alpha = rasterize(random_outline(rng, "pole")[0], round(pole_w), round(pole_h))
        rgb = crop_photo(rng, load_photo(tex), alpha.shape[1], alpha.shape[0], (0.5, 1.3))
        p = view_to_world(half_view * 2 * np.array([rng.uniform(0.2, 0.8), 0.5]), mid)
        layers.append(
            Layer(
                "occluder",
                0,
                tex,
                "pole",
                "pole",
                colour_cast(rgb, cast),
                alpha,
                *still(n, p, angle[mid] + rng.uniform(-0.1, 0.1)),
            )
        )

    return Shot(start, n, photo_name, background, camera, cam_center, zoom, angle, layers)


def colour_cast(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Rendering


def rotation_matrix(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


def similarity(scale: float, angle: float, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 matrix taking `src` to `dst`, rotating by `angle` and scaling by `scale` around it."""
    m = np.eye(3)
    m[:2, :2] = scale * rotation_matrix(angle)
    m[:2, 2] = dst - m[:2, :2] @ src
    return m


def camera_at(shot: Shot, i: int, width: int, height: int) -> np.ndarray:
    """World -> view."""
    return similarity(shot.cam_zoom[i], -shot.cam_angle[i], shot.cam_center[i], np.array([width / 2, height / 2]))


def _placement(layer: Layer, i: int) -> np.ndarray:
    """Sprite -> world."""
    h, w = layer.alpha.shape
    return similarity(layer.scale[i], layer.angle[i], np.array([w / 2, h / 2]), layer.pos[i])


def blur_kernel(v: np.ndarray) -> np.ndarray | None:
    """Line kernel along the image motion v (px) seen during the exposure; None when negligible."""
    length = float(np.hypot(*v))
    if length < 1.0:
        return None
    r = math.ceil(length / 2)
    kern = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    d = v / 2
    cv2.line(
        kern,
        (round((r - d[0]) * 16), round((r - d[1]) * 16)),
        (round((r + d[0]) * 16), round((r + d[1]) * 16)),
        1.0,
        1,
        cv2.LINE_AA,
        shift=4,
    )
    return kern / kern.sum()


def paste(
    out: np.ndarray,
    owner: np.ndarray,
    index: int,
    rgb: np.ndarray,
    alpha: np.ndarray,
    m: np.ndarray,
    kern: np.ndarray | None,
) -> None:
    """Composite a sprite (rgb, alpha) placed by `m` (3x3, sprite -> view) over `out` (H x W x 3
    float32), blurred by `kern`, and write `index` into `owner` where its UNBLURRED coverage is at
    least half (GT comes from geometry). Shared with synth/rig.py."""
    H, W = owner.shape
    h, w = alpha.shape
    pad = 2 + (kern.shape[0] if kern is not None else 0)
    box = m[:2] @ np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], float).T
    x0, y0 = max(0, int(box[0].min()) - pad), max(0, int(box[1].min()) - pad)
    x1, y1 = min(W, math.ceil(box[0].max()) + pad), min(H, math.ceil(box[1].max()) + pad)
    if x1 <= x0 or y1 <= y0:
        return  # outside the view
    roi = (np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], float) @ m)[:2]
    a = cv2.warpAffine(alpha, roi, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=0)
    src = cv2.warpAffine(rgb, roi, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(
        np.float32
    )
    owner[y0:y1, x0:x1][a >= 0.5] = index  # GT: the unblurred geometry
    prem = src * a[:, :, None]
    if kern is not None:
        prem = cv2.filter2D(prem, -1, kern, borderType=cv2.BORDER_CONSTANT)
        a = cv2.filter2D(a, -1, kern, borderType=cv2.BORDER_CONSTANT)
    view = out[y0:y1, x0:x1]
    view *= 1 - a[:, :, None]
    view += prem


def render_frame(plan: ClipPlan, t: int) -> Rendered:
    """Frame t of the clip, with its GT. A pure function of (plan, t): frames render in any order."""
    W, H = plan.width, plan.height
    shot, i = plan.shot_at(t)
    # image motion for the blur: from the previous frame (the next one at a shot's first frame;
    # a line kernel is symmetric, so the direction's sign does not matter)
    prev = i - 1 if i > 0 else min(1, shot.length - 1)
    cam, cam_prev = camera_at(shot, i, W, H), camera_at(shot, prev, W, H)

    out = cv2.warpAffine(
        shot.background, cam[:2], (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
    ).astype(np.float32)
    if plan.shutter > 0:  # camera motion blurs the whole view; approximated by the motion at the centre
        c = np.array([W / 2, H / 2, 1.0])
        v = (cam @ np.linalg.inv(cam_prev) @ c)[:2] - c[:2]
        kern = blur_kernel(v * plan.shutter)
        if kern is not None:
            out = cv2.filter2D(out, -1, kern, borderType=cv2.BORDER_REFLECT101)

    owner = np.zeros((H, W), np.uint8)
    for index, layer in enumerate(shot.layers, start=1):
        m = cam @ _placement(layer, i)
        h, w = layer.alpha.shape
        centre = np.array([w / 2, h / 2, 1.0])
        v = (m @ centre - cam_prev @ _placement(layer, prev) @ centre)[:2]
        kern = blur_kernel(v * plan.shutter) if plan.shutter > 0 else None
        paste(out, owner, index, layer.rgb, layer.alpha, m, kern)

    noise = np.random.default_rng([plan.seed, t]).standard_normal((H, W, 3), dtype=np.float32)
    out = out * np.float32(plan.flicker[t]) + noise * np.float32(plan.noise_sigma)
    rgb = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    role_inst = np.zeros(len(shot.layers) + 1, np.uint8)
    for index, layer in enumerate(shot.layers, start=1):
        role_inst[index] = layer.inst if layer.role == "mover" else 0
    inst = role_inst[owner]
    return Rendered(rgb, np.where(inst > 0, 255, 0).astype(np.uint8), inst, owner)


# ----------------------------------------------------------------------------------------------
# Clip description (clips.json) and the public API


def clip_info(plan: ClipPlan) -> dict:
    """What clips.json says about a clip, apart from its name and file."""
    k = REF_WIDTH / plan.width
    shots, objects = [], []
    for s, shot in enumerate(plan.shots):
        cam_speed = (
            np.hypot(*np.diff(shot.cam_center, axis=0).T) * shot.cam_zoom[:-1] if shot.length > 1 else np.zeros(1)
        )
        shots.append(
            {
                "start": shot.start,
                "frames": shot.length,
                "background": shot.photo,
                "camera": shot.camera,
                "camera_speed": round(float(cam_speed.mean()), 3),  # view px/frame at the clip's size
                "zoom_change": round(float(shot.cam_zoom[-1] / shot.cam_zoom[0]), 3),
            }
        )
        for layer in shot.layers:
            step = np.hypot(*np.diff(layer.pos, axis=0).T) * shot.cam_zoom[:-1] if shot.length > 1 else np.zeros(1)
            objects.append(
                {
                    "id": layer.inst,
                    "shot": s,
                    "role": layer.role,
                    "moving": layer.role == "mover",
                    "photo": layer.photo,
                    "shape": layer.shape,
                    "size": layer.size,
                    "mean_speed": round(float(step.mean()), 3),  # view px/frame relative to the background
                    "mean_speed_ref": round(float(step.mean()) * k, 3),  # the same at 320 px wide
                    "paused_frames": int((step < 1e-6).sum()) if layer.role == "mover" else 0,
                }
            )
    return {
        "seed": plan.seed,
        "width": plan.width,
        "height": plan.height,
        "fps": FPS,
        "frames": plan.frames,
        "crf": plan.crf,
        "noise_sigma": round(plan.noise_sigma, 3),
        "shutter": round(plan.shutter, 3),
        "shot_starts": [s.start for s in plan.shots],
        "shots": shots,
        "objects": objects,
    }


def render_clip(
    seed: int, frames: int = 90, size: tuple[int, int] = (320, 240)
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], dict]:
    """Render a whole clip in memory without encoding: (frames_rgb, gt, inst, info)."""
    plan = plan_clip(seed, frames, size)
    rendered = [render_frame(plan, t) for t in range(frames)]
    return [r.rgb for r in rendered], [r.gt for r in rendered], [r.inst for r in rendered], clip_info(plan)


def clip_seed(seed: int, index: int) -> int:
    """Seed of the index-th clip of a set: independent streams, stable when --clips changes."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def load_gt(clip_dir: str | Path, index: int, kind: str = "gt") -> np.ndarray:
    """GT mask (kind="gt", 0/255) or instance map (kind="inst") of frame `index`, H x W uint8."""
    path = Path(clip_dir) / kind / f"{index:06d}.png"
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"{path}: missing or unreadable {kind} frame; regenerate with `motionmask synth`")
    return img


def object_patch(rgb: np.ndarray, mask: np.ndarray, patch: int, min_pixels: int = 30) -> np.ndarray | None:
    """The square around an object's ground-truth mask (1.2 x its bounding box's longer side),
    resized to patch x patch; None when the object shows fewer than min_pixels pixels."""
    ys, xs = np.nonzero(mask)
    if len(ys) < min_pixels:
        return None
    side = max(16.0, 1.2 * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    m = np.float32([[side / patch, 0, cx - side / 2], [0, side / patch, cy - side / 2]])
    return cv2.warpAffine(
        rgb, m, (patch, patch), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101
    )


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder") from None


def encode_video(path: Path, frames, width: int, height: int, crf: int, fps: int = FPS) -> int:
    """H.264 yuv420p at a constant fps (FPS unless told: the rig scenario runs at its own), frame i
    at pts i; encoded to a temp name, then renamed."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = Fraction(1, fps)
            # Same bytes on every run: one thread, and no macroblock tree, whose AVX-512 code in
            # x264 gave different bytes run to run on identical input (it reads uninitialised memory).
            stream.codec_context.thread_count = 1
            stream.options = {"crf": str(crf), "preset": "fast", "threads": "1", "x264-params": "no-mbtree=1"}
            n = 0
            for rgb in frames:
                # convert here: the encoder's own reused converter gave different bytes run to run
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts, frame.time_base = n, Fraction(1, fps)
                for packet in stream.encode(frame):
                    container.mux(packet)
                n += 1
            for packet in stream.encode(None):
                container.mux(packet)
        decoded = count_frames(tmp)
        if decoded != n:
            raise RuntimeError(f"{path}: encoded {n} frames but {decoded} decode back")
        os.replace(tmp, path)
        return n
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def count_frames(path: str | Path) -> int:
    """Frames that decode from a video file (decoding them all: container counts can lie)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def generate(
    out_dir: str | Path,
    seed: int = 0,
    clips: int = 10,
    frames: int = 90,
    size: tuple[int, int] = (320, 240),
    progress: bool = False,
) -> list[dict]:
    """Write `clips` clips under out_dir (see the module docstring) and return the clips.json entries."""
    return write_clips(out_dir, plan_clip, clip_info, seed, clips, frames, size, progress)


def write_clips(
    out_dir: str | Path,
    plan: Callable[[int, int, tuple[int, int]], ClipPlan],
    info: Callable[[ClipPlan], dict],
    seed: int,
    clips: int,
    frames: int,
    size: tuple[int, int],
    progress: bool = False,
    desc: str = "synth",
) -> list[dict]:
    """The write loop of every family that renders with render_frame: `plan(seed, frames, size)`
    plans a clip, `info(plan)` is its clips.json entry. Returns the entries.

    Each clip is built in a hidden folder and swapped in whole, its MP4 under a temp name and
    renamed. clips.json is removed first and written last: where it exists, every clip it lists
    is complete.
    """
    from tqdm import tqdm

    width, height = size
    if clips < 1 or frames < 2:
        raise UserError(f"need at least 1 clip of at least 2 frames (got --clips {clips} --frames {frames})")
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise UserError(f"--size {width}x{height}: width and height must be even and at least 32 (H.264 yuv420p)")
    out = Path(out_dir)
    check_writable(out)
    # clips.json is written last and names a complete set: an old one must not outlive the clips
    # it describes if this run is interrupted halfway
    (out / "clips.json").unlink(missing_ok=True)
    entries = []
    # disable=None: no bar when stderr is not a terminal
    bar = tqdm(total=clips * frames, unit="frame", desc=desc, disable=None if progress else True, file=sys.stderr)
    try:
        for c in range(clips):
            name = f"clip{c:03d}"
            p = plan(clip_seed(seed, c), frames, size)
            work = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}."))
            try:
                (work / "gt").mkdir()
                (work / "inst").mkdir()

                def frames_with_gt(p: ClipPlan, work: Path):
                    for t in range(frames):
                        r = render_frame(p, t)
                        write_png(work / "gt" / f"{t:06d}.png", r.gt)
                        write_png(work / "inst" / f"{t:06d}.png", r.inst)
                        bar.update(1)
                        yield r.rgb

                encode_video(out / f"{name}.mp4", frames_with_gt(p, work), width, height, p.crf)
                swap_dir(work, out / name)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            entries.append({"name": name, "file": f"{name}.mp4", **info(p)})
    finally:
        bar.close()
    write_json(out / "clips.json", entries)
    return entries


def swap_dir(new: Path, target: Path) -> None:
    """Put folder `new` at `target`, replacing what was there (rename is atomic; the old is removed
    after). The synthetic families and the reference masks (synth.reference_masks) use it."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
