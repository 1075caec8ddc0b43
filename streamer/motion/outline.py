"""Evidence for flat interiors from the motion of their outline.

Inside a flat or blurred object the flow says nothing (there is no texture to follow), so the vote
leaves such interiors near its prior and the mask holds only the object's moving edges. Its
outline, though, is an edge, and an edge's motion is measurable. Touching, weakly textured
superpixels of nearly one colour are merged into regions; each region is then told how much the
band just inside its outline moved, weighted by how sure that measurement is (flow confidence x
edge strength). The answer enters the vote as the region's own evidence, in proportion to how
little its own texture could say. It works both ways: a flat object moves along its whole
outline and is filled; flat background beside a mover, lit by flow smeared across the edge,
shares only part of its outline with the mover, reads mostly static and is cleared.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from streamer.motion.superpixels import Superpixels, adjacency


def flat_regions(
    sp: Superpixels, reliability: np.ndarray, max_reliability: float, max_colour_step: float
) -> np.ndarray:
    """Region id per superpixel: touching superpixels merge when both are less reliable than
    `max_reliability` and their mean Lab colours lie within `max_colour_step`."""
    a, b = adjacency(sp.labels, sp.n)
    step = np.linalg.norm(sp.mean_lab[a] - sp.mean_lab[b], axis=1)
    join = (step < max_colour_step) & (reliability[a] < max_reliability) & (reliability[b] < max_reliability)
    graph = coo_matrix((np.ones(int(join.sum())), (a[join], b[join])), shape=(sp.n, sp.n))
    return connected_components(graph, directed=False)[1]


def outline_motion(
    sp: Superpixels, region: np.ndarray, saliency: np.ndarray, weight: np.ndarray, band: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per superpixel, of its region's outline: (the weighted mean of the per-pixel `saliency` over
    the band of `band` px just inside it, the band's mean `weight`). The frame's border is no
    outline: a region that leaves the frame is judged by the rest of its edge."""
    reg = region[sp.labels]
    regf = reg.astype(np.float32)  # exact below 2**24 regions; dilate and erode take float32
    k = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    inside = (cv2.dilate(regf, k) != regf) | (cv2.erode(regf, k) != regf)
    r = reg[inside]
    n = int(region.max()) + 1
    w = weight[inside].astype(np.float64)
    total = np.bincount(r, w, n)
    value = np.bincount(r, w * saliency[inside], n) / np.maximum(total, 1e-9)
    support = total / np.maximum(np.bincount(r, minlength=n), 1)
    return value[region].astype(np.float32), support[region].astype(np.float32)


def with_outline(
    saliency: np.ndarray, reliability: np.ndarray, value: np.ndarray, support: np.ndarray, gain: float
) -> tuple[np.ndarray, np.ndarray]:
    """A superpixel's (saliency, reliability) with its outline's evidence added: weight `gain` x
    the outline's support x how unreliable the superpixel's own measurement is."""
    w = gain * support * (1.0 - np.clip(reliability, 0.0, 1.0))
    total = reliability + w
    merged = (reliability * saliency + w * value) / np.maximum(total, 1e-9)
    return merged.astype(np.float32), total.astype(np.float32)
