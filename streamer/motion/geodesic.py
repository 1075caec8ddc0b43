"""Fill what motion cannot see: weakly textured parts of a moving object, by geodesic distance.

Flow is only measurable where there is texture; inside a flat or blurred object it says nothing,
so the vote leaves such interiors near the prior and a mask of only the object's moving edges
results (half an object, with "background" labels inside it). Following Wang et al. (CVPR 2015,
saliency-aware geodesic video object segmentation), each superpixel is asked which it is closer
to along the image: the sure foreground of this frame or the sure background, where a path is
cheap inside a region of even colour and expensive across a colour edge. A flat interior is
close to the moving edges of its own object (no edge between them) and far from the background
(the object's outline lies between). Superpixels whose own motion measurement is reliable keep
their vote; the less reliable, the more the geodesic answer counts, in both directions: it also
clears the flat background that smeared flow next to a moving object had lit up.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from streamer.motion.superpixels import Superpixels


def adjacency(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b), a < b, of superpixels that touch (4-neighbourhood), each pair once."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    d = a != b
    lo, hi = np.minimum(a[d], b[d]).astype(np.int64), np.maximum(a[d], b[d]).astype(np.int64)
    key = np.unique(lo * n + hi)
    return key // n, key % n


def mean_colour(sp: Superpixels, rgb: np.ndarray) -> np.ndarray:
    """(n, 3) mean Lab colour of each superpixel (OpenCV's 8-bit Lab scaling)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab).reshape(-1, 3).astype(np.float64)
    flat = sp.labels.ravel()
    area = np.maximum(sp.area, 1)
    return np.stack([np.bincount(flat, lab[:, c], sp.n) / area for c in range(3)], axis=1)


def geodesic_foreground(
    sp: Superpixels,
    rgb: np.ndarray,
    voted: np.ndarray,
    reliability: np.ndarray,
    sure_fg: float,
    sure_bg: float,
    min_reliability: float,
    edge_floor: float,
) -> np.ndarray | None:
    """Per superpixel, D_bg / (D_fg + D_bg) in [0, 1]: 1 where the sure foreground is much nearer
    along the image than the sure background. None when the frame has no sure foreground.
    Sure background: voted <= sure_bg where the motion was measured (reliability >= min_reliability:
    a flat interior's low vote says nothing), and the superpixels on the frame's border that are
    not foreground."""
    fg = np.flatnonzero((voted >= sure_fg) & (sp.area > 0))
    if len(fg) == 0:
        return None
    h, w = sp.labels.shape
    border = np.unique(np.concatenate([sp.labels[0], sp.labels[-1], sp.labels[:, 0], sp.labels[:, -1]]))
    bg_mask = (voted <= sure_bg) & (reliability >= min_reliability) & (sp.area > 0)
    bg_mask[border[voted[border] < sure_fg]] = True
    bg = np.flatnonzero(bg_mask)
    if len(bg) == 0:
        return None
    a, b = adjacency(sp.labels, sp.n)
    colour = mean_colour(sp, rgb)
    step = np.linalg.norm(colour[a] - colour[b], axis=1)
    # relative to this frame's typical edge, so a dim or washed-out frame is not all one region
    step = step / (np.median(step) + 1e-6) + edge_floor
    graph = coo_matrix(
        (np.concatenate([step, step]), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(sp.n, sp.n)
    ).tocsr()
    d_fg = dijkstra(graph, indices=fg, min_only=True)
    d_bg = dijkstra(graph, indices=bg, min_only=True)
    big = float(np.nanmax(np.where(np.isfinite(d_fg), d_fg, 0)) + np.nanmax(np.where(np.isfinite(d_bg), d_bg, 0)) + 1)
    d_fg = np.where(np.isfinite(d_fg), d_fg, big)
    d_bg = np.where(np.isfinite(d_bg), d_bg, big)
    return (d_bg / (d_fg + d_bg + 1e-9)).astype(np.float32)


def fill(voted: np.ndarray, geo: np.ndarray | None, reliability: np.ndarray, trust: float) -> np.ndarray:
    """The vote where the superpixel's own motion is reliable, the geodesic answer where it is not:
    weight r / (r + trust) on the vote, r the superpixel's reliability (flow confidence x texture)."""
    if geo is None:
        return voted
    k = reliability / (reliability + trust)
    return (k * voted + (1 - k) * geo).astype(np.float32)
