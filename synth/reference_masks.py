"""Reference masks for real fixed-camera footage, made by a method unlike the teacher's.

The teacher (streamer.motion.pipeline) finds motion with optical flow and superpixel voting. To score
it on real video without tuning to it, the reference here uses neither: a clean background
plate and a colour difference against it.

  1. background   per-pixel median of up to `median_frames` frames spread evenly over the whole
                  clip (a walker covers a pixel for a small share of the clip, so the median is
                  the empty scene; the cap keeps memory at ~200 MB for a 768x576 clip)
  2. difference   CIE76 colour distance (Lab, dE) of each frame to the plate, after a slight blur
                  (sigma `blur` x width): codec blocking and sensor noise are per-pixel, objects
                  are not. Lab, not RGB: a dE is a similar step for a person in any colour. The
                  frame's L is first divided by its median ratio to the plate's (`exposure`)
  3. threshold    per pixel, from the noise it shows: `noise` = median over the sampled frames
                  of its dE (movers pass a pixel rarely, so this is its own noise, and higher on
                  swaying foliage or a flickering window); high = max(floor_high, k_high x noise),
                  low = max(floor_low, k_low x noise). A mover is a connected region of dE > low
                  that holds dE > high somewhere (hysteresis: faint limbs join a sure torso)
  4. shadows      a pixel darker than the plate (L ratio in [shadow_l_min, shadow_l_max]) with
                  little change in chroma (|d a*b*| < shadow_ab) is a shadow candidate: taken out
                  of the mover before the clean-up, and void near a mover (a cast shadow moves but
                  is not the object: neither a teacher that marks it nor one that leaves it is
                  wrong). vtest is overcast: its shadows are soft pools at the feet, L ratio
                  0.8-0.9. shadow_l_min is 0.70, not lower: dark trousers on the grey tarmac are
                  0.5-0.65 with no chroma change either, and at 0.45 the legs became void
  5. clean-up     open (radius `open_r`) drops speckle, close (`close_r`) joins a body cut by a
                  pole or by a shirt coloured like the ground, components under `min_area` of the
                  frame go, holes inside a blob are filled (a uniform shirt can match the plate)
  6. void (128)   a band of `band` x width pixels (at least 3) on both sides of every mask edge
                  (the outline of a difference mask is uncertain by a blur radius, and 4:2:0
                  chroma smears a colour edge by up to 2 px); regions above the low threshold
                  that did not become a mover (too small, or not joined to a sure core: the
                  fluttering barrier tape, reflections in windows), specks under a quarter of
                  `min_area` excepted; shadow candidates within 4 bands of a mover

People who stand still: a mover is 255 also while it pauses (as in the synthetic sets), and the
difference keeps it so as long as it stands for less than half of the clip. Nobody in vtest
stands that long (the plate is an empty scene, checked on the sheet), so no void is spent on it.

Output: the same folder format as a synthetic set (synth.things.generate), so the benchmarks
read it: DIR/clips.json and DIR/<name>/gt/NNNNNN.png, uint8, 0 = background, 255 = moving object,
128 = void (not scored). "file" is the absolute path of the source video, not a re-encode: the
teacher is scored on the footage as delivered, without a second generation of codec loss, and
frame i of the gt folder is the i-th frame `streamer.sources.open_source(file)` yields (frames are
decoded through open_source itself, so the count matches by construction).

Clips (../shared/data), chosen by measuring the camera (phase correlation of consecutive frames,
and of each frame against the first):
  vtest.avi       still (0.05 px/frame median shift, no drift): pedestrians crossing a square
  tree.avi        still, although the data README calls it hand-held: 0.08 px/frame, 0.6 px of
                  drift over its 68 frames. Foliage sways and a hand enters from frame ~52: 52
                  frames have no object at all (reference all 0/void: a test of false alarms on
                  foliage), the last ~14 the hand, found whole on the sheet; auto-exposure jumps
                  as the bright hand comes in, so those frames carry 10-19% void
Left out:
  bigbuckbunny.mp4  the scene is still but the picture is not: it shifts by (28, 45) px over the
                  first 80 frames (a slow camera move, or a reframing), the character stands in
                  one spot from frame ~40 to the end (70% of its 132 frames), so a median plate
                  shows him, and it brightens over the first ~80 frames
  Megamind.avi, bikes.mp4  moving cameras (0.8 px/frame median, 70% of frames over 0.5 px) and
                  shot cuts
  carphone_pristine.mp4  a talking head in a car: the camera rides with the car and the
                  background moves past the window; nothing there is a still background

Figures of VERSION 1 (bench/real_reference.py; ~70 s to build on one core):
  vtest  795 frames, 768x576, mean foreground 1.5% of a frame, mean void 2.1%
  tree    68 frames, 320x240, mean foreground 2.6%, mean void 4.9%

VERSION 1 is frozen: figures are quoted from it. A change of method or parameters gets a new
version (a new folder, real_v<N>), never an edit of this one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from common.atomic import write_json
from common.errors import UserError
from streamer.config import SourceConfig
from streamer.png import write_png
from streamer.sources import open_source
from synth.things import swap_dir

VERSION = 1
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
BACKGROUND, VOID, OBJECT = 0, 128, 255


@dataclass(frozen=True)
class Params:
    """The method's parameters; lengths are fractions of the frame width, areas of the frame area."""

    median_frames: int = 160
    blur: float = 0.0015  # Gaussian sigma before the difference (~1.2 px at 768)
    k_high: float = 5.0  # sure mover: this many times the pixel's noise...
    floor_high: float = 12.0  # ... and at least this dE
    k_low: float = 2.5  # mover extent (hysteresis): this many times the noise...
    floor_low: float = 6.0  # ... and at least this dE
    shadow_l_min: float = 0.70  # shadow: L / L_plate in [min, max] ...
    shadow_l_max: float = 0.92
    shadow_ab: float = 6.0  # ... and chroma (a*, b*) within this distance of the plate
    open_r: float = 0.002  # radius of the opening (~1.5 px at 768)
    close_r: float = 0.005  # radius of the closing (~4 px at 768)
    min_area: float = 0.0002  # smallest mover (~90 px at 768x576)
    band: float = 0.004  # void on each side of an edge (~3 px at 768)


@dataclass(frozen=True)
class Clip:
    name: str
    file: str


CLIPS = (Clip("vtest", "vtest.avi"), Clip("tree", "tree.avi"))


def _px(fraction: float, width: int, least: int = 1) -> int:
    return max(least, int(round(fraction * width)))


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def decoded_frames(path: Path) -> Iterator[np.ndarray]:
    """RGB frames exactly as the project reads the file (so gt index i is source frame i)."""
    with open_source(str(path), SourceConfig()) as source:
        for frame in source:
            yield frame.image


def _first(path: Path, max_frames: int | None) -> Iterator[np.ndarray]:
    for i, image in enumerate(decoded_frames(path)):
        if max_frames is not None and i >= max_frames:
            return
        yield image


def sample_frames(path: Path, most: int, max_frames: int | None = None) -> tuple[list[np.ndarray], int]:
    """Up to `most` frames spread evenly over the clip (its first max_frames), in one pass: keep
    every step-th frame and double the step (dropping every other kept frame) whenever too many
    are kept. Returns the frames and the clip's frame count."""
    kept: list[np.ndarray] = []
    step, n = 1, 0
    for image in _first(path, max_frames):
        if n % step == 0:
            kept.append(image)
            if len(kept) > most:
                kept, step = kept[::2], step * 2
        n += 1
    return kept, n


def median_background(frames: list[np.ndarray], rows: int = 64) -> np.ndarray:
    """Per-pixel median, in bands of `rows` rows: np.median copies its input (and
    np.stack of a whole clip at once would double the memory)."""
    h = frames[0].shape[0]
    out = np.empty_like(frames[0])
    for y in range(0, h, rows):
        band = np.stack([f[y : y + rows] for f in frames])
        out[y : y + rows] = np.median(band, axis=0).round().astype(np.uint8)
    return out


def to_lab(rgb: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """Float Lab (L 0-100, a*, b* about -128..127) of an RGB uint8 image, blurred first if sigma."""
    f = rgb.astype(np.float32) / 255.0
    if sigma > 0:
        f = cv2.GaussianBlur(f, (0, 0), sigma)
    return cv2.cvtColor(f, cv2.COLOR_RGB2Lab)


def delta_e(lab: np.ndarray, plate: np.ndarray) -> np.ndarray:
    return np.sqrt(((lab - plate) ** 2).sum(axis=2))


def noise_map(sample: list[np.ndarray], plate: np.ndarray, sigma: float) -> np.ndarray:
    """Each pixel's typical dE to the plate over the sampled frames (its median): the pixel's own
    noise, since movers cover any one pixel for a small share of the frames."""
    h = plate.shape[0]
    out = np.empty(plate.shape[:2], np.float32)
    labs = [to_lab(f, sigma) for f in sample]
    for lab in labs:  # the same exposure correction as the masks get (see reference_mask)
        lab[..., 0] /= exposure(lab, plate)
    for y in range(0, h, 64):
        d = np.stack([delta_e(lab[y : y + 64], plate[y : y + 64]) for lab in labs])
        out[y : y + 64] = np.median(d, axis=0)
    # smooth: a threshold should follow regions (foliage, a window), not single noisy pixels
    return cv2.GaussianBlur(out, (0, 0), 2.0)


@dataclass
class Model:
    """What a clip's masks are computed against: the plate (Lab) and per-pixel thresholds."""

    plate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    params: Params


def fit(sample: list[np.ndarray], params: Params) -> Model:
    w = sample[0].shape[1]
    sigma = params.blur * w
    rgb_plate = median_background(sample)
    plate = to_lab(rgb_plate, sigma)
    noise = noise_map(sample, plate, sigma)
    low = np.maximum(params.floor_low, params.k_low * noise).astype(np.float32)
    high = np.maximum(params.floor_high, params.k_high * noise).astype(np.float32)
    return Model(plate, low, high, params)


def _hysteresis(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Components of `low` that hold at least one `high` pixel."""
    n, labels = cv2.connectedComponents(low.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[high & low])] = True
    keep[0] = False
    return keep[labels]


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return keep[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background that the frame's border cannot reach is a hole inside a blob."""
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    flood = pad.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return mask | (flood[1:-1, 1:-1] == 0)


def shadow(lab: np.ndarray, plate: np.ndarray, params: Params) -> np.ndarray:
    """Darker than the plate, same chroma: a cast shadow (or a cloud), not an object."""
    ratio = (lab[..., 0] + 1.0) / (plate[..., 0] + 1.0)
    dab = np.sqrt(((lab[..., 1:] - plate[..., 1:]) ** 2).sum(axis=2))
    return (ratio >= params.shadow_l_min) & (ratio <= params.shadow_l_max) & (dab < params.shadow_ab)


def exposure(lab: np.ndarray, plate: np.ndarray) -> float:
    """The frame's brightness relative to the plate: the median L ratio (movers cover a small
    share of the frame, so the median is the ground's). Divided out before the difference: a
    cloud or an auto-exposure step of 10% alone would push dE over the floor on whole regions.
    vtest's stays within 0.99-1.02, so there it changes little; it is there for other clips."""
    ratio = (lab[::4, ::4, 0] + 1.0) / (plate[::4, ::4, 0] + 1.0)
    return float(np.median(ratio))


def reference_mask(rgb: np.ndarray, model: Model) -> np.ndarray:
    """One frame's reference: uint8, 0 background, 255 moving object, 128 void."""
    p = model.params
    w = rgb.shape[1]
    lab = to_lab(rgb, p.blur * w)
    lab[..., 0] /= exposure(lab, model.plate)
    d = delta_e(lab, model.plate)
    shade = shadow(lab, model.plate, p)
    low = (d > model.low) & ~shade
    high = (d > model.high) & ~shade
    fg = _hysteresis(low, high).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _disk(_px(p.open_r, w)))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, _disk(_px(p.close_r, w)))
    min_px = _px(p.min_area * rgb.shape[0], w, least=4)
    fg = _drop_small(fg, min_px)
    fg = _fill_holes(fg.astype(np.uint8)).astype(bool)
    # at least 3: 4:2:0 chroma and its upsampling spread a colour edge by up to 2 px at any size
    r = _px(p.band, w, least=3)
    k = _disk(r)
    fg8 = fg.astype(np.uint8)
    band = cv2.dilate(fg8, k).astype(bool) & ~cv2.erode(fg8, k).astype(bool)
    near = cv2.dilate(fg8, _disk(4 * r)).astype(bool)
    # above the low threshold but not a mover: void, unless a speck (codec noise on texture; a
    # specked void would only hide background from the score). By area, not by an opening: the
    # thin barrier tape that flutters in vtest is a thing that moves and should stay void
    unsure = _drop_small(low & ~fg, max(4, min_px // 4))
    void = band | unsure | (shade & (d > model.low) & near)
    out = np.where(fg, OBJECT, BACKGROUND).astype(np.uint8)
    out[void] = VOID
    return out


def build_clip(
    path: Path, out: Path, name: str, params: Params = Params(), progress: bool = False, max_frames: int | None = None
) -> dict:
    """Write out/<name>/gt/*.png for one video and return its clips.json entry. max_frames: the
    first frames only (a quick check; the reference set always takes whole clips)."""
    sample, n = sample_frames(path, params.median_frames, max_frames)
    if n < 2:
        raise UserError(f"{path}: {n} frame(s); a median background needs a clip")
    model = fit(sample, params)
    h, w = sample[0].shape[:2]
    del sample
    work = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}."))
    fg_sum = void_sum = 0.0
    try:
        (work / "gt").mkdir()
        written = 0
        for i, image in enumerate(_first(path, max_frames)):
            m = reference_mask(image, model)
            fg_sum += float((m == OBJECT).mean())
            void_sum += float((m == VOID).mean())
            write_png(work / "gt" / f"{i:06d}.png", m)
            written += 1
            if progress and i % 50 == 0:
                print(f"{name}: frame {i}/{n}", flush=True)
        if written != n:
            raise UserError(f"{path}: decoded {n} frames, then {written}; the file changed while reading")
        with open_source(str(path), SourceConfig()) as source:
            fps = source.fps or 25.0
        swap_dir(work, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "name": name,
        "file": str(path.resolve()),
        "width": w,
        "height": h,
        "fps": fps,
        "frames": n,
        "shot_starts": [0],
        "family": "real",
        "version": VERSION,
        "method": "median_background",
        "params": asdict(params),
        "mean_foreground": fg_sum / n,
        "mean_void": void_sum / n,
    }


def _check_data(data: Path, clips: tuple[Clip, ...]) -> None:
    if not data.is_dir():
        raise UserError(
            f"{data}: no such folder (the shared real clips); pass data_dir / --data "
            f"pointing at the folder that holds {', '.join(c.file for c in clips)}"
        )
    for c in clips:
        if not (data / c.file).is_file():
            raise UserError(
                f"{data / c.file}: missing; the reference set needs it in {data} "
                f"(restore the shared data folder or pass another data_dir / --data)"
            )


def generate(
    out_dir: Path | str,
    data_dir: Path | str = DEFAULT_DATA,
    clips: tuple[Clip, ...] = CLIPS,
    params: Params = Params(),
    progress: bool = False,
) -> list[dict]:
    """Build the reference set in out_dir; clips.json is removed first and written last, so where
    it exists every clip it lists is complete."""
    data, out = Path(data_dir), Path(out_dir)
    _check_data(data, clips)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the reference folder ({e.strerror or e}); choose another") from None
    (out / "clips.json").unlink(missing_ok=True)
    entries = [build_clip(data / c.file, out, c.name, params, progress) for c in clips]
    write_json(out / "clips.json", entries)
    return entries


def reference_set(root: Path | str, data_dir: Path | str = DEFAULT_DATA) -> tuple[Path, list[dict]]:
    """root/real_v<VERSION>: the reference masks of the still-camera real clips, built on first use
    (slow: docs/benchmarks.md), then read back. Returns (folder, clips.json entries)."""
    d = Path(root) / f"real_v{VERSION}"
    if not (d / "clips.json").exists():
        return d, generate(d, data_dir)
    entries = json.loads((d / "clips.json").read_text())
    for e in entries:  # the set points at the source videos; they must still be where it says
        if not Path(e["file"]).is_file():
            raise UserError(
                f"{e['file']}: missing, and {d} scores against it; restore it, or delete {d} "
                f"and rebuild from another folder (python -m bench.real_reference --data DIR)"
            )
    return d, entries
