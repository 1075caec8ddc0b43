"""Frame in, motion mask out: shots -> flow -> camera motion -> saliency -> superpixel voting
-> pruning -> trimap. One `MotionSegmenter` per source; it keeps the recent history of the
current shot and never mixes shots."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from streamer.config import StreamerConfig
from streamer.frames import Frame, MaskResult  # noqa: F401  MaskResult lives in frames, light to import
from streamer.motion.coherence import coherent_residual, noise_factor
from streamer.motion.flow import FlowEstimator, image_gradient, saturating, structure_eigenvalues, working_size
from streamer.motion.geodesic import fill, geodesic_foreground
from streamer.motion.global_motion import fit_global_motion, residual_motion
from streamer.motion.outline import flat_regions, outline_motion, with_outline
from streamer.motion.prune import prune
from streamer.motion.refine import edge_aware
from streamer.motion.shots import ShotDetector
from streamer.motion.superpixels import SuperpixelExtractor, Superpixels
from streamer.motion.trimap import trimap
from streamer.motion.voting import OnlineVoter, VoteParams


@dataclass
class _Analysis:
    """What one frame contributes before voting: computed as soon as the frame arrives."""

    frame: Frame
    shot: int
    small: np.ndarray  # working-resolution RGB
    gray: np.ndarray
    dark: bool
    sp: Superpixels | None = None
    saliency: np.ndarray | None = None  # per superpixel, raw (before voting)
    reliability: np.ndarray | None = None  # per superpixel: flow confidence x texture
    to_prev: np.ndarray | None = None  # 3x3 camera model, this frame -> previous frame
    motion: np.ndarray | None = None
    conf: np.ndarray | None = None  # forward-backward confidence of `motion`
    residual: np.ndarray | None = None  # residual motion after coherence (h x w x 2), for the next frame's
    noise: float = 0.0  # the camera model's median residual (px)
    camera_ok: bool = True  # the camera model was fitted (False: assumed static; the mask is not trusted)
    ms: dict[str, float] = field(default_factory=dict)


def motion_saliency(
    residual: np.ndarray, noise: float, scale: float, min_scale: float = 0.5, noise_multiplier: float = 3.0
) -> np.ndarray:
    """Residual motion (px) -> saliency in [0, 1); `scale` px gives 0.5. With scale 0 the
    scale adapts to the frame's flow noise, so compression noise does not light up."""
    tau = scale if scale > 0 else max(min_scale, noise_multiplier * noise)
    return (1.0 - np.exp(-np.log(2.0) * np.square(residual / tau))).astype(np.float32)


class MotionSegmenter:
    """Online uNLC. push() frames of one source in decode order; every pushed frame comes back
    exactly once, in order, as a MaskResult (delayed by the look-ahead, and the first frame of
    a shot waits for the second, whose flow it borrows)."""

    def __init__(self, cfg: StreamerConfig):
        self.cfg = cfg
        self.shots = ShotDetector(cfg.shots)
        self.flow = FlowEstimator(cfg.flow)
        self.superpixels = SuperpixelExtractor(cfg.motion.superpixels, cfg.motion.num_superpixels)
        m = cfg.motion
        self.voter = OnlineVoter(
            VoteParams(
                history=m.history,
                neighbours=m.neighbours,
                iterations=m.iterations,
                location_weight=m.location_weight,
                neighbour_weight=m.neighbour_weight,
                static_evidence=m.static_evidence,
                memory_decay=m.memory_decay,
                prior=m.prior,
                relay=m.relay,
            )
        )
        self.pending: list[_Analysis] = []  # analysed, waiting for look-ahead frames
        self.prev: _Analysis | None = None  # the last pushed frame (pending may already be empty)

    # -- public -------------------------------------------------------------------------------
    def push(self, frame: Frame) -> list[MaskResult]:
        t0 = time.perf_counter()
        h, w = frame.height, frame.width
        ww, wh = working_size(w, h, self.cfg.flow.width)
        small = cv2.resize(frame.image, (ww, wh), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        t1 = time.perf_counter()
        decision = self.shots(small)
        t2 = time.perf_counter()
        a = _Analysis(frame, decision.shot, small, gray, decision.dark)
        a.ms["resize"] = (t1 - t0) * 1e3
        a.ms["shots"] = (t2 - t1) * 1e3
        out: list[MaskResult] = []
        prev, self.prev = self.prev, a
        new_segment = prev is None or decision.cut or prev.dark or prev.shot != a.shot or prev.gray.shape != gray.shape
        if new_segment:
            out += self._finish_segment()
        if a.dark:
            out += self._finish_segment()
            out.append(self._finalize(a, None))
            return out
        if new_segment:
            self.pending.append(a)  # head: analysed when the next frame brings flow
            return out
        if prev.sp is None:  # prev is a segment head: give it this frame's flow, reversed in time
            self._analyse(prev, gray, reverse=True)
        self._analyse(a, prev.gray, prev.residual)
        self.pending.append(a)
        out += self._emit_ready()
        return out

    def flush(self) -> list[MaskResult]:
        return self._finish_segment()

    # -- stages -------------------------------------------------------------------------------
    def _analyse(
        self, a: _Analysis, other_gray: np.ndarray, previous: np.ndarray | None = None, reverse: bool = False
    ) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        motion, conf = self.flow(other_gray, a.gray)
        t1 = time.perf_counter()
        gm = fit_global_motion(motion, conf, cfg.global_motion)
        gain = 0.0 if reverse else cfg.motion.coherence_gain
        residual = coherent_residual(residual_motion(motion, gm), previous, motion, conf, gain)
        t2 = time.perf_counter()
        sal = motion_saliency(
            np.linalg.norm(residual, axis=2),
            gm.residual_noise * (noise_factor(gain) if previous is not None else 1.0),
            cfg.motion.saliency_scale,
            cfg.motion.min_saliency_scale,
            cfg.motion.noise_multiplier,
        )
        sp = self.superpixels(a.small)
        t3 = time.perf_counter()
        a.sp = sp
        m = cfg.motion
        grad = image_gradient(a.gray)
        lam_min, lam_max = structure_eigenvalues(a.gray, grad)
        rel = conf * saturating(lam_min, m.texture_scale)
        a.saliency = sp.pool(sal, rel + 1e-3).astype(np.float32)
        a.reliability = sp.pool(rel).astype(np.float32)
        t4 = time.perf_counter()
        if m.outline_gain > 0:
            region = flat_regions(sp, a.reliability, m.outline_max_reliability, m.outline_max_colour_step)
            edge = conf * saturating(lam_max, m.edge_scale)
            # who can explain an edge's motion by itself: textured superpixels that moved
            owner = sp.paint(np.clip(a.reliability, 0.0, 1.0) * a.saliency)
            value, support = outline_motion(sp, region, sal, edge, m.outline_band, residual, grad, owner)
            a.saliency, a.reliability = with_outline(a.saliency, a.reliability, value, support, m.outline_gain)
        t5 = time.perf_counter()
        a.to_prev = None if reverse else gm.to_prev
        a.camera_ok = gm.reliable
        a.motion = None if reverse else motion
        a.conf = None if reverse else conf
        a.noise = gm.residual_noise
        a.residual = None if reverse or gain <= 0 else residual
        a.ms.update(
            flow=(t1 - t0) * 1e3, global_motion=(t2 - t1) * 1e3, superpixels=(t3 - t2) * 1e3, outline=(t5 - t4) * 1e3
        )

    def _emit_ready(self) -> list[MaskResult]:
        out = []
        la = self.cfg.motion.lookahead
        while self.pending and self.pending[0].sp is not None and len(self.pending) > la:
            a = self.pending.pop(0)
            out.append(self._finalize(a, self.pending[:la]))
        return out

    def _finish_segment(self) -> list[MaskResult]:
        out = []
        while self.pending:
            a = self.pending.pop(0)
            out.append(self._finalize(a, self.pending[: self.cfg.motion.lookahead]))
        self.voter.reset()
        return out

    def _finalize(self, a: _Analysis, future: list[_Analysis] | None) -> MaskResult:
        t0 = time.perf_counter()
        h, w = a.frame.height, a.frame.width
        if a.sp is None:  # dark, or a shot of one frame: no motion evidence at all
            prob = np.zeros((h, w), np.float32)
            reason = "dark" if a.dark else "no_motion_history"
            a.ms["vote"] = a.ms["refine"] = 0.0
            return self._result(a, prob, reason_override=reason, t_start=t0)
        if a.to_prev is not None:
            self.voter.move_history(np.linalg.inv(a.to_prev))
        ahead = []
        to_here = np.eye(3)
        for f in future or []:
            if f.sp is None or f.to_prev is None:
                break
            to_here = to_here @ f.to_prev  # f -> ... -> a
            c = cv2.perspectiveTransform(f.sp.centroid[None].astype(np.float64), to_here)[0].astype(np.float32)
            ahead.append((replace(f.sp, centroid=c), f.saliency, f.reliability))
        voted = self.voter.vote(a.sp, a.saliency, a.reliability, ahead)
        m = self.cfg.motion
        if m.geodesic_trust > 0:
            geo = geodesic_foreground(a.sp, voted, a.reliability, m.sure_fg, m.sure_bg, m.geodesic_trust, m.edge_floor)
            voted = fill(voted, geo, a.reliability, m.geodesic_trust)
        small_prob = a.sp.paint(np.clip(voted, 0.0, 1.0))
        t1 = time.perf_counter()
        small_prob = edge_aware(a.small, small_prob, m.refine_radius, m.refine_eps)
        t2 = time.perf_counter()
        prob = (
            cv2.resize(small_prob, (w, h), interpolation=cv2.INTER_LINEAR) if small_prob.shape != (h, w) else small_prob
        )
        a.ms["vote"] = (t1 - t0) * 1e3
        a.ms["refine"] = (t2 - t1) * 1e3
        return self._result(a, prob, t_start=t2)

    def _result(self, a: _Analysis, prob: np.ndarray, t_start: float, reason_override: str = "") -> MaskResult:
        cfg = self.cfg
        frac, kept, reason = prune(prob, cfg.prune, (cfg.trimap.negative_below, cfg.trimap.positive_above))
        if kept and not a.camera_ok:
            kept, reason = False, "camera_unreliable"
        if reason_override:
            kept, reason = False, reason_override
        tri = trimap(prob, cfg.trimap)
        a.ms["upsample_prune"] = (time.perf_counter() - t_start) * 1e3
        return MaskResult(
            a.frame,
            a.shot,
            prob,
            tri,
            frac,
            kept,
            reason,
            dict(a.ms),
            a.motion,
            flow_conf=a.conf,
            to_prev=a.to_prev,
            camera_ok=a.camera_ok,
            camera_noise=a.noise,
            gray=a.gray,
        )
