"""Tracked-patch pairs from the live stream (Wang & Gupta 2015, section 4), for the learner's
embedding head: a patch on an independently moving region at frame t0 and the same region
`track_length` frames later, in the same shot.

Per MaskResult, in decode order (one PatchMiner per camera):
  examine   every `start_every` frames while fewer than `max_tracks` tracks run: Shi-Tomasi
            interest points on the working-resolution gray frame; a point with trustworthy flow
            (forward-backward confidence > 0.5) *moves* when its flow departs from the camera
            model's prediction by more than `move_threshold` working px (the paper's IDT + 0.5 px);
            a frame where under `min_moving` of the points move is noise, over `max_moving` a
            camera the model did not capture: both are skipped
  start     the box (side `box` x the shorter frame side, as the paper's 227 of 448) holding the
            most moving points; its moving points are the track's points; the query patch is cut
            at once, so no frame is ever held for later
  track     each later frame moves every point along the pipeline's flow (chained), keeps the
            points whose flow passes the forward-backward check, and shifts the box by their
            median step; a track ends when too few points survive, the box leaves the frame, or
            the shot ends (a cut, a dark frame: a result without flow)
  emit      after `track_length` frames: PatchPair(query, tracked), both P x P RGB cut from the
            full-resolution frames

Memory per camera: at most `max_tracks` tracks of a few dozen points and one P x P query patch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from streamer.config import PatchConfig
from streamer.motion.pipeline import MaskResult

_CONFIDENT = 0.5  # forward-backward confidence above which a flow vector is trusted
_MAX_OUTSIDE = 0.2  # a box more than this fraction outside the frame has left it
_TRACK_RESIDUAL = 0.5  # working px: a chained step must invert the flow this closely


@dataclass
class PatchPair:
    query: np.ndarray  # P x P x 3 uint8 RGB, the patch at frame t0
    tracked: np.ndarray  # P x P x 3 uint8 RGB, the same patch tracked to frame t1 (same shot)
    camera: str
    shot: int
    t0: int  # frame indices
    t1: int
    track: int  # id of the track within (camera, shot)
    box0: tuple[int, int, int, int] = (0, 0, 0, 0)  # x, y, w, h of the query patch, full-resolution px
    box1: tuple[int, int, int, int] = (0, 0, 0, 0)  # ... of the tracked patch


@dataclass
class _Track:
    id: int
    shot: int
    t0: int
    pts: np.ndarray  # k x 2 float32, working px, this frame
    n0: int  # points at the start
    center: np.ndarray  # box centre, working px
    side: float  # box side, working px
    query: np.ndarray
    box0: tuple[int, int, int, int]
    steps: int = 0


@dataclass
class MinerStats:
    frames: int = 0
    examined: int = 0  # frames looked at for a new track
    skipped_few_points: int = 0  # too few interest points with trustworthy flow
    skipped_few_moving: int = 0  # < min_moving of them moved
    skipped_many_moving: int = 0  # > max_moving moved
    skipped_camera: int = 0  # no camera model to compare with
    skipped_no_box: int = 0  # the moving points were too scattered for one box
    started: int = 0
    pairs: int = 0
    ended_lost: int = 0  # the forward-backward check left too few points
    ended_left_frame: int = 0
    ended_cut: int = 0  # the shot ended (cut, dark frame) or the stream did
    ms: float = 0.0  # total time in push()
    last_fraction: float = 0.0  # moving fraction of the last examined frame
    fractions: list[float] = field(default_factory=list, repr=False)  # of recent examined frames

    def as_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items() if k != "fractions"}
        d["ms_per_frame"] = self.ms / self.frames if self.frames else 0.0
        return d


def bilinear(field_: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Sample an h x w (x c) array at k float (x, y) points, clamped to the border."""
    h, w = field_.shape[:2]
    x = np.clip(pts[:, 0], 0, w - 1.001)
    y = np.clip(pts[:, 1], 0, h - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = x - x0, y - y0
    if field_.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    a, b = field_[y0, x0], field_[y0, x0 + 1]
    c, d = field_[y0 + 1, x0], field_[y0 + 1, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def step_points(pts: np.ndarray, motion: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move points of frame t-1 to frame t. The pipeline's flow lives on frame t's grid (x was at
    x - motion(x) in t-1), so the new position solves x = p + motion(x): a fixed point, reached
    in a few steps for flow that is smooth at the scale of one step. A point is kept when the
    solution inverts the flow closely, its flow passed the forward-backward check, and it stays
    inside the frame."""
    h, w = motion.shape[:2]
    x = pts + bilinear(motion, pts)
    for _ in range(3):
        x = pts + bilinear(motion, x)
    resid = np.linalg.norm(x - bilinear(motion, x) - pts, axis=1)
    inside = (x[:, 0] >= 0) & (x[:, 0] <= w - 1) & (x[:, 1] >= 0) & (x[:, 1] <= h - 1)
    ok = inside & (resid < _TRACK_RESIDUAL) & (bilinear(conf, x) > _CONFIDENT)
    return x.astype(np.float32), ok


def best_box(points: np.ndarray, side: int, w: int, h: int) -> tuple[np.ndarray, int]:
    """Centre of the side x side box inside a w x h frame holding the most points (sliding window
    over an integral image), and how many it holds. Ties go to the window nearest their mean."""
    side = min(side, w, h)
    counts = np.zeros((h, w), np.int32)
    xi = np.clip(points[:, 0].astype(np.int64), 0, w - 1)
    yi = np.clip(points[:, 1].astype(np.int64), 0, h - 1)
    np.add.at(counts, (yi, xi), 1)
    s = np.zeros((h + 1, w + 1), np.int32)
    s[1:, 1:] = counts.cumsum(0).cumsum(1)
    win = s[side:, side:] - s[:-side, side:] - s[side:, :-side] + s[:-side, :-side]  # top-left (y, x)
    best = int(win.max())
    ys, xs = np.nonzero(win == best)
    my, mx = ys.mean(), xs.mean()
    i = int(np.argmin(np.square(ys - my) + np.square(xs - mx)))
    return np.array([xs[i] + side / 2, ys[i] + side / 2], np.float32), best


class PatchMiner:
    """See the module docstring. push() every MaskResult of one camera in order; it returns the
    pairs completed by that frame."""

    def __init__(self, cfg: PatchConfig, camera: str = ""):
        self.cfg = cfg
        self.camera = camera
        self.tracks: list[_Track] = []
        self.stats = MinerStats()
        self._next_id = 0
        self._since_start = cfg.start_every  # frames since the last examination that started a track
        self._shot: int | None = None

    def push(self, r: MaskResult) -> list[PatchPair]:
        t0 = time.perf_counter()
        st = self.stats
        st.frames += 1
        out: list[PatchPair] = []
        if r.flow is None or r.flow_conf is None or r.gray is None or r.shot != self._shot:
            # a new shot starts without flow (its head borrows the next frame's), as does a dark frame
            self._end_all()
            self._shot = r.shot
            self._since_start = self.cfg.start_every
        if r.flow is not None and r.flow_conf is not None and r.gray is not None:
            out = self._advance(r)
            self._since_start += 1
            if self._since_start >= self.cfg.start_every and len(self.tracks) < self.cfg.max_tracks:
                self._examine(r)
        st.pairs += len(out)
        st.ms += (time.perf_counter() - t0) * 1e3
        return out

    def flush(self) -> list[PatchPair]:
        """End of the stream: tracks still running are too short for a pair."""
        self._end_all()
        self._shot = None
        return []

    # -- tracking ---------------------------------------------------------------------------
    def _end_all(self) -> None:
        self.stats.ended_cut += len(self.tracks)
        self.tracks = []

    def _advance(self, r: MaskResult) -> list[PatchPair]:
        out, alive = [], []
        h, w = r.gray.shape
        for tr in self.tracks:
            new, ok = step_points(tr.pts, r.flow, r.flow_conf)
            if ok.sum() < max(3, self.cfg.min_survivors * tr.n0):
                self.stats.ended_lost += 1
                continue
            tr.center = tr.center + np.median(new[ok] - tr.pts[ok], axis=0)
            tr.pts = new[ok]
            tr.steps += 1
            if _outside_fraction(tr.center, tr.side, w, h) > _MAX_OUTSIDE:
                self.stats.ended_left_frame += 1
                continue
            if tr.steps >= self.cfg.track_length:
                tracked, box1 = self._cut(r, tr.center, tr.side)
                out.append(
                    PatchPair(tr.query, tracked, self.camera, tr.shot, tr.t0, r.frame.index, tr.id, tr.box0, box1)
                )
                continue
            alive.append(tr)
        self.tracks = alive
        return out

    def _examine(self, r: MaskResult) -> None:
        cfg, st = self.cfg, self.stats
        st.examined += 1
        if r.to_prev is None or not r.camera_ok:
            st.skipped_camera += 1
            return
        h, w = r.gray.shape
        corners = cv2.goodFeaturesToTrack(r.gray, cfg.points, 0.01, max(3.0, min(w, h) / 60), blockSize=3)
        if corners is None:
            st.skipped_few_points += 1
            return
        pts = corners.reshape(-1, 2).astype(np.float32)
        xi, yi = pts[:, 0].astype(np.int64), pts[:, 1].astype(np.int64)
        pts = pts[r.flow_conf[yi, xi] > _CONFIDENT]
        if len(pts) < max(8, 2 * cfg.min_box_points):
            st.skipped_few_points += 1
            return
        xi, yi = pts[:, 0].astype(np.int64), pts[:, 1].astype(np.int64)
        was = pts - r.flow[yi, xi]  # where each point really was in frame t-1
        camera = cv2.perspectiveTransform(pts[None].astype(np.float64), r.to_prev)[0]  # ... by the camera alone
        # noisier flow (compression, sensor noise) needs a larger departure before it counts
        moving = np.linalg.norm(was - camera, axis=1) > max(cfg.move_threshold, 3.0 * r.camera_noise)
        frac = float(moving.mean())
        st.last_fraction = frac
        st.fractions = (st.fractions + [frac])[-100:]
        if frac < cfg.min_moving:
            st.skipped_few_moving += 1
            return
        if frac > cfg.max_moving:
            st.skipped_many_moving += 1
            return
        side = max(8, int(round(cfg.box * min(w, h))))
        mp = pts[moving]
        center, n = best_box(mp, side, w, h)
        if n < cfg.min_box_points:
            st.skipped_no_box += 1
            return
        for tr in self.tracks:  # the same region again would be the same pair twice
            if _iou(center, tr.center, side) > 0.5:
                return
        inside = np.all(np.abs(mp - center) <= side / 2, axis=1)
        query, box0 = self._cut(r, center, side)
        self.tracks.append(
            _Track(
                self._next_id,
                r.shot,
                r.frame.index,
                mp[inside].copy(),
                int(inside.sum()),
                center,
                float(side),
                query,
                box0,
            )
        )
        self._next_id += 1
        self._since_start = 0
        st.started += 1

    def _cut(self, r: MaskResult, center: np.ndarray, side: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The box (working px) as a P x P patch of the full-resolution frame, moved inside it."""
        img = r.frame.image
        H, W = img.shape[:2]
        h, w = r.gray.shape
        s = W / w
        sz = int(round(min(side * s, W, H)))
        x0 = int(round(np.clip(center[0] * s - sz / 2, 0, W - sz)))
        y0 = int(round(np.clip(center[1] * (H / h) - sz / 2, 0, H - sz)))
        crop = img[y0 : y0 + sz, x0 : x0 + sz]
        P = self.cfg.size
        patch = cv2.resize(crop, (P, P), interpolation=cv2.INTER_AREA if sz > P else cv2.INTER_LINEAR)
        return np.ascontiguousarray(patch), (x0, y0, sz, sz)


def _outside_fraction(center: np.ndarray, side: float, w: int, h: int) -> float:
    x0, y0 = center - side / 2
    ix = max(0.0, min(x0 + side, w) - max(x0, 0.0))
    iy = max(0.0, min(y0 + side, h) - max(y0, 0.0))
    return 1.0 - ix * iy / (side * side)


def _iou(a: np.ndarray, b: np.ndarray, side: float) -> float:
    ix = max(0.0, side - abs(float(a[0] - b[0])))
    iy = max(0.0, side - abs(float(a[1] - b[1])))
    inter = ix * iy
    return inter / (2 * side * side - inter)
