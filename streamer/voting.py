"""Online nearest-neighbour voting over superpixels (the 'NLC' of uNLC, made causal).

Each superpixel of the current frame looks up its k nearest neighbours, by appearance and
location, among the superpixels of recent frames of the same shot (and of look-ahead frames,
when configured), and takes the affinity-weighted mean of their motion saliency. This spreads
the evidence of the moving edges over the whole object (same colours and textures), lets an
object that pauses stay foreground (it still looks like what moved a moment ago, at the same
place), and averages away isolated flow noise.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from streamer.superpixels import Superpixels


@dataclass
class _Memory:
    centroid: np.ndarray  # (n, 2) in the *current* frame's coordinates (kept up to date)
    features: np.ndarray  # (n, d)
    value: np.ndarray  # (n,) voted saliency
    valid: np.ndarray  # (n,) bool: non-empty superpixels


class OnlineVoter:
    def __init__(self, history: int, neighbours: int, iterations: int, location_weight: float = 1.5,
                 self_weight: float = 0.35):
        self.history = history
        self.k = neighbours
        self.iterations = iterations
        self.location_weight = location_weight
        self.self_weight = self_weight  # how much of a superpixel's own evidence survives the vote
        self.memory: deque[_Memory] = deque(maxlen=max(history, 1))

    def reset(self) -> None:
        self.memory.clear()

    def move_history(self, to_cur: np.ndarray) -> None:
        """The camera moved: carry remembered centroids into the new frame's coordinates."""
        for m in self.memory:
            if len(m.centroid):
                m.centroid = cv2.perspectiveTransform(m.centroid[None].astype(np.float64), to_cur)[0].astype(np.float32)

    def _embed(self, feats: np.ndarray, centroid: np.ndarray, scale: float) -> np.ndarray:
        return np.concatenate([feats, centroid * (self.location_weight / scale)], axis=1).astype(np.float32)

    def vote(self, sp: Superpixels, saliency: np.ndarray, future: list[tuple[Superpixels, np.ndarray]] = (),
             remember: bool = True) -> np.ndarray:
        """Voted saliency per superpixel of `sp`; `saliency` is its pooled raw motion saliency.
        `future`: (superpixels, raw saliency) of look-ahead frames, already in this frame's coordinates."""
        h, w = sp.labels.shape
        scale = float(np.hypot(h, w))
        valid = sp.area > 0
        cur = self._embed(sp.features, sp.centroid, scale)
        pool_x = [cur]
        pool_v = [saliency]
        pool_ok = [valid]
        if self.history > 0:
            for m in self.memory:
                pool_x.append(self._embed(m.features, m.centroid, scale))
                pool_v.append(m.value)
                pool_ok.append(m.valid)
        for fsp, fsal in future:
            pool_x.append(self._embed(fsp.features, fsp.centroid, scale))
            pool_v.append(fsal)
            pool_ok.append(fsp.area > 0)
        px = np.concatenate(pool_x)
        pv = np.concatenate(pool_v).astype(np.float32)
        ok = np.concatenate(pool_ok)
        px, pv = px[ok], pv[ok]
        n_cur = int(valid.sum())
        cur_idx_in_pool = np.arange(n_cur)  # current frame's valid superpixels come first

        # squared distances, current x pool, via |a|^2 + |b|^2 - 2ab (one matrix product)
        a = cur[valid]
        d2 = (a * a).sum(1)[:, None] + (px * px).sum(1)[None, :] - 2.0 * a @ px.T
        np.maximum(d2, 0, out=d2)
        d2[cur_idx_in_pool, cur_idx_in_pool] = np.inf  # a superpixel does not vote for itself
        k = min(self.k, px.shape[0] - 1)
        if k < 1:
            out = saliency.astype(np.float32).copy()
        else:
            nn = np.argpartition(d2, k - 1, axis=1)[:, :k]
            nd2 = np.take_along_axis(d2, nn, axis=1)
            sigma2 = float(np.median(nd2)) + 1e-6
            wgt = np.exp(-nd2 / (2 * sigma2)).astype(np.float32)
            wgt /= wgt.sum(1, keepdims=True) + 1e-9
            own = saliency[valid].astype(np.float32)
            v = pv.copy()
            for _ in range(max(self.iterations, 1)):
                voted = (wgt * v[nn]).sum(1)
                v[:n_cur] = self.self_weight * own + (1 - self.self_weight) * voted
            out = np.zeros(sp.n, np.float32)
            out[valid] = v[:n_cur]
        if remember and self.history > 0:
            self.memory.append(_Memory(sp.centroid.copy(), sp.features, out, valid))
        return out
