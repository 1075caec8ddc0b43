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

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from streamer.motion.superpixels import Superpixels, adjacency


def geodesic_foreground(
    sp: Superpixels,
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
    step = np.linalg.norm(sp.mean_lab[a] - sp.mean_lab[b], axis=1)
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
