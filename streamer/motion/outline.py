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

An edge between two regions moves with one of them only. Where the other side is textured and
measured moving, that side explains the edge by itself, so the flat side gives the edge (almost)
no say: flat background stops taking a textured mover's motion as its own, while a flat object
over static texture keeps all of its outline.
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


# how much of an edge's say a textured, moving neighbour across it takes: not all, so a flat
# region whose whole outline is claimed (a flat patch on a moving textured object) keeps its answer
_CLAIM = 0.95

# below this the band's mean motion (working px) has no direction worth testing edges against
_MIN_OUTLINE_MOTION = 0.25


def outline_motion(
    sp: Superpixels,
    region: np.ndarray,
    saliency: np.ndarray,
    weight: np.ndarray,
    band: int,
    residual: np.ndarray | None = None,
    gradient: tuple[np.ndarray, np.ndarray] | None = None,
    owner: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per superpixel, of its region's outline: (the weighted mean of the per-pixel `saliency` over
    the band of `band` px just inside it, the band's mean `weight`). The frame's border is no
    outline: a region that leaves the frame is judged by the rest of its edge.

    With the `residual` motion (h x w x 2) and the image `gradient` (gx, gy), an edge counts in the
    mean as far as it can see the region's motion: an edge that lies along the motion (the top and
    bottom of a box that moves sideways) reads static whether the region moves or not (the aperture
    problem), so it weighs (cos of the angle between its normal and the band's mean motion)^2.

    With `owner` (per pixel, how surely a textured neighbour moved: reliability x saliency), an
    edge whose other side, `band` + 1 px across, is such a neighbour counts (1 - 0.95 x owner) as
    much: the edge is that neighbour's. The support stays the band's plain mean weight: how well
    the outline was measured at all."""
    reg = region[sp.labels]
    regf = reg.astype(np.float32)  # exact below 2**24 regions; dilate and erode take float32
    k = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    inside = (cv2.dilate(regf, k) != regf) | (cv2.erode(regf, k) != regf)
    r = reg[inside]
    n = int(region.max()) + 1
    w = weight[inside].astype(np.float64)
    s = saliency[inside].astype(np.float64)
    seen = w
    if residual is not None and gradient is not None:
        # channel by channel: a boolean mask over (h, w, 2) rows is several times slower
        rx, ry = residual[..., 0][inside], residual[..., 1][inside]
        seen = w * _sees_motion(r, n, w * s, rx, ry, gradient[0][inside], gradient[1][inside])
    if owner is not None:
        seen = seen * (1.0 - _CLAIM * _claimed(reg, inside, owner, band + 1))
    total = np.bincount(r, seen, n)
    value = np.bincount(r, seen * s, n) / np.maximum(total, 1e-9)
    support = np.bincount(r, w, n) / np.maximum(np.bincount(r, minlength=n), 1)
    return value[region].astype(np.float32), support[region].astype(np.float32)


def _sees_motion(
    r: np.ndarray, n: int, moved: np.ndarray, rx: np.ndarray, ry: np.ndarray, gx: np.ndarray, gy: np.ndarray
) -> np.ndarray:
    """Per band pixel in [0, 1]: how much of its region's motion its edge can see, cos^2 of the
    angle between the gradient (gx, gy) and the region's motion: the band's mean residual (rx, ry)
    weighted by `moved` (the parts that read static have no direction). A region whose band
    barely moves keeps every edge at 1."""
    den = np.maximum(np.bincount(r, moved, n), 1e-9)
    vx = np.bincount(r, moved * rx, n) / den
    vy = np.bincount(r, moved * ry, n) / den
    speed2 = vx * vx + vy * vy
    dot = gx * vx[r] + gy * vy[r]
    cos2 = dot * dot / np.maximum((gx * gx + gy * gy) * speed2[r], 1e-12)
    cos2[(speed2 < _MIN_OUTLINE_MOTION**2)[r]] = 1.0
    return cos2


def _claimed(reg: np.ndarray, inside: np.ndarray, owner: np.ndarray, d: int) -> np.ndarray:
    """Per band pixel (`inside`), the largest `owner` among the pixels `d` px away in the 8
    directions that lie in another region; past the frame's border, nothing."""
    h, w = reg.shape
    rp = np.pad(reg, d, constant_values=-1)
    op = np.pad(owner.astype(np.float32), d)
    best = np.zeros((h, w), np.float32)
    for dy in (-d, 0, d):
        for dx in (-d, 0, d):
            if dy or dx:
                shifted = (slice(d + dy, d + dy + h), slice(d + dx, d + dx + w))
                np.maximum(best, np.where(rp[shifted] != reg, op[shifted], 0.0), out=best)
    return best[inside]


def with_outline(
    saliency: np.ndarray, reliability: np.ndarray, value: np.ndarray, support: np.ndarray, gain: float
) -> tuple[np.ndarray, np.ndarray]:
    """A superpixel's (saliency, reliability) with its outline's evidence added: weight `gain` x
    the outline's support x how unreliable the superpixel's own measurement is."""
    w = gain * support * (1.0 - np.clip(reliability, 0.0, 1.0))
    total = reliability + w
    merged = (reliability * saliency + w * value) / np.maximum(total, 1e-9)
    return merged.astype(np.float32), total.astype(np.float32)
