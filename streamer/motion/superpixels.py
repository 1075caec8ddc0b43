"""Superpixels and the per-superpixel features that the nearest-neighbour vote compares.

SEEDS (OpenCV ximgproc) is the default: several times faster than scikit-image's SLIC for the
same boundary recall, and superpixels were the costliest stage of the streamer (figures:
docs/benchmarks.md, "Why SEEDS, not SLIC").
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

COLOR_BINS = 8  # per Lab channel (marginal histograms: dense enough for ~60-pixel superpixels)
ORIENT_BINS = 8


@dataclass
class Superpixels:
    labels: np.ndarray  # h x w int32 in [0, n)
    n: int
    area: np.ndarray  # (n,) pixels per superpixel (0 for empty labels)
    centroid: np.ndarray  # (n, 2) x, y in working pixels
    features: np.ndarray  # (n, d) float32 appearance: sqrt-normalised histograms (Hellinger)
    mean_lab: np.ndarray  # (n, 3) mean colour (OpenCV's 8-bit Lab scaling)

    def pool(self, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Mean of a per-pixel map over each superpixel (weighted if weights given)."""
        lab = self.labels.ravel()
        if weights is None:
            s = np.bincount(lab, values.ravel(), minlength=self.n)
            return s / np.maximum(self.area, 1)
        w = weights.ravel()
        s = np.bincount(lab, (values * weights).ravel(), minlength=self.n)
        return s / np.maximum(np.bincount(lab, w, minlength=self.n), 1e-6)

    def paint(self, values: np.ndarray) -> np.ndarray:
        return values[self.labels].astype(np.float32)


class SuperpixelExtractor:
    def __init__(self, method: str, num_superpixels: int):
        self.method = method
        self.num = num_superpixels
        self._seeds = None
        self._seeds_size: tuple[int, int] | None = None

    def labels(self, rgb: np.ndarray, lab: np.ndarray) -> np.ndarray:
        h, w = lab.shape[:2]
        if self.method == "slic":
            from skimage.segmentation import slic

            # from RGB: scikit-image's own Lab scaling is what its compactness is tuned for
            return slic(rgb, n_segments=self.num, compactness=10, start_label=0).astype(np.int32)
        if self._seeds_size != (w, h):
            self._seeds = _closest_seeds(w, h, self.num)  # bound to one image size: rebuilt only when it changes
            self._seeds_size = (w, h)
        self._seeds.iterate(lab, 4)
        return self._seeds.getLabels().astype(np.int32)

    def __call__(self, rgb: np.ndarray) -> Superpixels:
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
        labels = self.labels(rgb, lab)
        return describe(labels, lab)


def _closest_seeds(w: int, h: int, num: int):
    """SEEDS rounds the requested count to its block grid (at 240x180, 300-700 all give 165 with
    4 levels); fewer levels allow other grids. Take the level count that comes closest."""
    best = None
    for levels in (4, 3, 2):
        s = cv2.ximgproc.createSuperpixelSEEDS(w, h, 3, num, levels, 2, 5, False)
        err = abs(s.getNumberOfSuperpixels() - num)
        if best is None or err < best[0]:
            best = (err, s)
    return best[1]


def describe(labels: np.ndarray, lab: np.ndarray) -> Superpixels:
    """Colour (Lab) and gradient-orientation histograms per superpixel, plus centroids."""
    h, w = labels.shape
    n = int(labels.max()) + 1
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n).astype(np.float64)
    ys, xs = np.divmod(np.arange(h * w), w)
    safe = np.maximum(area, 1)
    centroid = np.stack([np.bincount(flat, xs, n) / safe, np.bincount(flat, ys, n) / safe], axis=1)

    lab_flat = lab.reshape(-1, 3)
    mean_lab = np.stack([np.bincount(flat, lab_flat[:, c], n) / safe for c in range(3)], axis=1)
    feats = []
    q = (lab_flat.astype(np.int32) * COLOR_BINS) >> 8  # 0..COLOR_BINS-1 per channel
    for c in range(3):
        hist = np.bincount(flat * COLOR_BINS + q[:, c], minlength=n * COLOR_BINS).reshape(n, COLOR_BINS)
        feats.append(hist / safe[:, None])
    gray = lab[..., 0].astype(np.float32)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy).ravel()
    ang = (np.arctan2(gy, gx).ravel() % np.pi) / np.pi  # unsigned orientation in [0, 1)
    ob = np.minimum((ang * ORIENT_BINS).astype(np.int32), ORIENT_BINS - 1)
    ohist = np.bincount(flat * ORIENT_BINS + ob, mag, minlength=n * ORIENT_BINS).reshape(n, ORIENT_BINS)
    feats.append(ohist / np.maximum(ohist.sum(axis=1, keepdims=True), 1e-6))
    # sqrt turns Euclidean distance between histograms into the Hellinger distance
    features = np.sqrt(np.concatenate(feats, axis=1)).astype(np.float32)
    return Superpixels(labels, n, area, centroid.astype(np.float32), features, mean_lab.astype(np.float32))


def adjacency(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b), a < b, of superpixels that touch (4-neighbourhood), each pair once, sorted."""
    across = labels[:, :-1] != labels[:, 1:]
    down = labels[:-1, :] != labels[1:, :]
    x = np.concatenate([labels[:, :-1][across], labels[:-1, :][down]]).astype(np.int64)
    y = np.concatenate([labels[:, 1:][across], labels[1:, :][down]]).astype(np.int64)
    seen = np.zeros(n * n, bool)  # a bitmap beats np.unique here: n is a few hundred
    seen[np.minimum(x, y) * n + np.maximum(x, y)] = True
    key = np.flatnonzero(seen)
    return key // n, key % n
