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
    is pool row i and must not count as its own neighbour. Exact, and about twice as fast here
    as OpenCV's brute-force search (docs/benchmarks.md): the distances come from one matrix
    product, and the selection looks only at the k blocks of pool rows whose nearest member is
    nearest, since the k nearest rows lie in those blocks (the selection over all rows is
    what is slow)."""
    n, size = len(queries), len(pool)
    # -2 q.p + |p|^2 (|q|^2 is the same along a row). cv2.gemm, not numpy's matmul: OpenBLAS
    # threads spin next to the other cameras' processes (two streamers on two cores ran at half speed)
    d2 = cv2.gemm(queries, pool, -2.0, None, 0.0, flags=cv2.GEMM_2_T)
    d2 += np.einsum("ij,ij->i", pool, pool)[None, :]
    d2[np.arange(n), np.arange(n)] = np.inf
    width = max(1, min(8, size // (4 * k)))  # rows per block
    nb = size // width  # block j: rows j, j + nb, ..., j + (width - 1) nb; the rest is block nb
    block_min = np.full((n, nb + 1), np.inf, np.float32)
    np.min(d2[:, : width * nb].reshape(n, width, nb), axis=1, out=block_min[:, :nb])
    extra = size - width * nb
    if extra:
        block_min[:, nb] = d2[:, width * nb :].min(axis=1)
    blocks = np.argpartition(block_min, k - 1, axis=1)[:, :k]
    cols = blocks[:, :, None] + nb * np.arange(width)[None, None, :]
    rows, which = np.nonzero(blocks == nb)
    if len(rows):  # the remainder block, padded with the query itself (at infinity)
        rest = width * nb + np.arange(width)
        cols[rows, which] = np.where(np.arange(width) < extra, rest[None, :], rows[:, None])
    cols = cols.reshape(n, -1)
    cand = np.take_along_axis(d2, cols, axis=1)
    idx = np.take_along_axis(cols, np.argpartition(cand, k - 1, axis=1)[:, :k], axis=1)
    # the product form loses digits to cancellation (near-duplicates come out at 1e-7, not 0):
    # the chosen pairs' distances are computed directly
    return idx, np.square(queries[:, None, :] - pool[idx]).sum(axis=2)


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
