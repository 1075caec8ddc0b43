"""Edge-aware refinement of the vote (issue 18's "an edge-aware refinement in place of the paper's
CRF"): the vote is painted superpixel by superpixel at the working resolution, so its outline is
a superpixel's, and a walker a few working pixels wide sits inside a blob. He et al.'s guided
filter (cv2.ximgproc.guidedFilter) fits, in every window, the probability as a linear function of
the frame's colour: where the colour steps, the probability may step with it, and where the colour
is flat it is smoothed. So the outline moves to the image's edges.

It runs at the working resolution on the frame the flow and superpixels already see, where it
costs about as much as one more superpixel pass (docs/teacher.md has the cost and the figures)."""

from __future__ import annotations

import cv2
import numpy as np


def edge_aware(rgb: np.ndarray, prob: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """prob (H x W float32 in [0, 1]) refined along the edges of rgb (H x W x 3 uint8, the same
    size): the guided filter with a (2 radius + 1)^2 window and regulariser eps (grey levels^2:
    colour steps much smaller than sqrt(eps) are treated as flat). Returns float32 in [0, 1]."""
    if radius <= 0:
        return prob
    out = cv2.ximgproc.guidedFilter(rgb, prob.astype(np.float32, copy=False), int(radius), float(eps))
    return np.clip(out, 0.0, 1.0, out=out)
