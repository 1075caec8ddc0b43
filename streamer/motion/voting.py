"""Online nearest-neighbour voting over superpixels (the 'NLC' of uNLC, made causal).

Each superpixel of the current frame looks up its k nearest neighbours, by appearance and
location, among the superpixels of recent frames of the same shot (and of look-ahead frames,
when configured), and combines their saliency with its own evidence, each weighted by how
reliable it is. This spreads the evidence of moving edges over the whole object (same colours
and textures), lets an object that pauses stay foreground (it still looks like what moved a
moment ago, at the same place), and averages away isolated flow noise.

Evidence is asymmetric on purpose: "this moved" is strong evidence, "this did not move right
now" is weak, because objects pause and flat regions hide motion.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from streamer.motion.superpixels import Superpixels


@dataclass
class _Memory:
    centroid: np.ndarray  # (n, 2) in the *current* frame's coordinates (kept up to date)
    features: np.ndarray  # (n, d)
    value: np.ndarray  # (n,) voted saliency
    weight: np.ndarray  # (n,) how much evidence stands behind `value`
    valid: np.ndarray  # (n,) bool: non-empty superpixels


@dataclass
class VoteParams:
    """The vote's knobs; the pipeline fills them from streamer.config.MotionConfig, whose
    comments say what each does (one set of defaults, there)."""

    history: int
    neighbours: int
    iterations: int
    location_weight: float
    neighbour_weight: float
    static_evidence: float
    memory_decay: float
    prior: float
    relay: float


def evidence_weight(saliency: np.ndarray, reliability: np.ndarray, static_evidence: float) -> np.ndarray:
    return reliability * (static_evidence + (1.0 - static_evidence) * saliency)


def nearest_others(queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours (indices, squared distances) in `pool` of each query, where query i
    is pool row i and must not count as its own neighbour. OpenCV's brute-force search is
    faster here than numpy's matrix product + argpartition (docs/benchmarks.md)."""
    d2, idx = cv2.batchDistance(queries, pool, cv2.CV_32F, normType=cv2.NORM_L2SQR, K=k + 1)
    is_self = idx == np.arange(len(queries))[:, None]
    is_self[~is_self.any(axis=1), -1] = True  # self not among the k+1 (ties): drop the farthest
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(d2, order, axis=1)


class OnlineVoter:
    def __init__(self, params: VoteParams):
        self.p = params
        self.memory: deque[_Memory] = deque(maxlen=max(params.history, 1))

    def reset(self) -> None:
        self.memory.clear()

    def move_history(self, to_cur: np.ndarray) -> None:
        """The camera moved: carry remembered centroids into the new frame's coordinates."""
        for m in self.memory:
            if len(m.centroid):
                m.centroid = cv2.perspectiveTransform(m.centroid[None].astype(np.float64), to_cur)[0].astype(np.float32)
            m.weight = m.weight * self.p.memory_decay

    def _embed(self, feats: np.ndarray, centroid: np.ndarray, scale: float) -> np.ndarray:
        return np.concatenate([feats, centroid * (self.p.location_weight / scale)], axis=1).astype(np.float32)

    def vote(
        self,
        sp: Superpixels,
        saliency: np.ndarray,
        reliability: np.ndarray,
        future: list[tuple[Superpixels, np.ndarray, np.ndarray]] = (),
    ) -> np.ndarray:
        """Voted saliency per superpixel of `sp`. `saliency`, `reliability`: its pooled raw motion
        saliency and the reliability of that measurement (flow confidence x texture).
        `future`: (superpixels, saliency, reliability) of look-ahead frames, in this frame's coordinates."""
        p = self.p
        h, w = sp.labels.shape
        scale = float(np.hypot(h, w))
        valid = sp.area > 0
        own_w = evidence_weight(saliency, reliability, p.static_evidence)
        pool_x = [self._embed(sp.features, sp.centroid, scale)]
        pool_v, pool_w, pool_ok = [saliency], [own_w], [valid]
        if p.history > 0:
            for m in self.memory:
                pool_x.append(self._embed(m.features, m.centroid, scale))
                pool_v.append(m.value)
                pool_w.append(m.weight)
                pool_ok.append(m.valid)
        for fsp, fsal, frel in future:
            pool_x.append(self._embed(fsp.features, fsp.centroid, scale))
            pool_v.append(fsal)
            pool_w.append(evidence_weight(fsal, frel, p.static_evidence))
            pool_ok.append(fsp.area > 0)
        ok = np.concatenate(pool_ok)
        px = np.concatenate(pool_x)[ok]
        pv = np.concatenate(pool_v).astype(np.float32)[ok]
        pw = np.concatenate(pool_w).astype(np.float32)[ok]
        n_cur = int(valid.sum())  # the current frame's valid superpixels come first in the pool
        own_s, own_wv = saliency[valid].astype(np.float32), own_w[valid].astype(np.float32)

        k = min(p.neighbours, px.shape[0] - 1)
        if k < 1:
            v_cur, total = own_s, own_wv + p.prior
        else:
            nn, nd2 = nearest_others(px[:n_cur], px, k)
            aff = np.exp(-nd2 / (2 * (float(np.median(nd2)) + 1e-6))).astype(np.float32)
            aff *= p.neighbour_weight / (aff.sum(1, keepdims=True) + 1e-9)
            v = pv.copy()
            for _ in range(max(p.iterations, 1)):
                nw = aff * pw[nn]
                total = own_wv + nw.sum(1) + p.prior
                v_cur = (own_wv * own_s + (nw * v[nn]).sum(1)) / total
                v[:n_cur] = v_cur
        out = np.zeros(sp.n, np.float32)
        out[valid] = v_cur
        weight = np.zeros(sp.n, np.float32)
        weight[valid] = np.minimum(own_wv + p.relay * (total - own_wv - p.prior), 1.0)
        if p.history > 0:
            self.memory.append(_Memory(sp.centroid.copy(), sp.features, out, weight, valid))
        return out
