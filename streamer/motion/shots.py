"""Shot boundaries from colour-histogram change with an adaptive threshold.

A cut is a histogram distance far above the recent distances of the same shot (median plus
k robust sigmas) and above an absolute floor. Dark frames (black, fades through black) never
cut; the first lit frame after darkness is compared with the last lit frame before it, so a
fade-out/fade-in between two shots is one cut and a black lead-in is none. A slow dissolve is
caught by comparing with the frame `gap` frames back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2
import numpy as np

from streamer.config import ShotConfig


@dataclass
class ShotDecision:
    shot: int  # 0-based shot number
    cut: bool  # this frame starts a new shot
    dark: bool  # too dark for histogram (and motion) evidence
    distance: float  # histogram distance to the previous lit frame


def hsv_histogram(rgb_small: np.ndarray, bins: int) -> np.ndarray:
    """Colour histogram of the frame after normalising its mean brightness: a fade or a flicker
    changes the gain, not the content, and must not look like a cut."""
    luma = float(cv2.cvtColor(rgb_small, cv2.COLOR_RGB2GRAY).mean())
    if luma > 1.0:
        rgb_small = cv2.convertScaleAbs(rgb_small, alpha=110.0 / luma)
    hsv = cv2.cvtColor(rgb_small, cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1, 2], None, [bins, max(bins // 2, 2), max(bins // 2, 2)], [0, 180, 0, 256, 0, 256])
    return (h / max(h.sum(), 1.0)).ravel().astype(np.float32)


def is_dark(rgb_small: np.ndarray, dark_luma: float) -> bool:
    """Black or faded out: dim on average AND without bright detail (a starry sky is dim on
    average but full of content)."""
    gray = cv2.cvtColor(rgb_small, cv2.COLOR_RGB2GRAY)
    return float(gray.mean()) < dark_luma and float(np.percentile(gray, 99)) < 4 * dark_luma


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Hellinger distance in [0, 1]."""
    return float(np.sqrt(max(0.0, 1.0 - float(np.sqrt(a * b).sum()))))


class ShotDetector:
    def __init__(self, cfg: ShotConfig):
        self.cfg = cfg
        self.gap = cfg.dissolve_gap
        self.shot = -1
        self.since_cut = 0
        self.last_lit: np.ndarray | None = None
        self.recent = deque(maxlen=cfg.window)  # distances within the current shot
        self.lit_hists: deque[np.ndarray] = deque(maxlen=cfg.dissolve_gap + 1)

    def __call__(self, rgb_small: np.ndarray) -> ShotDecision:
        dark_now = is_dark(rgb_small, self.cfg.dark_luma)
        if self.shot < 0:
            self.shot = 0
            dark = dark_now
            if not dark:
                self._start(hsv_histogram(rgb_small, self.cfg.hist_bins))
            return ShotDecision(0, True, dark, 0.0)
        self.since_cut += 1
        if dark_now:
            return ShotDecision(self.shot, False, True, 0.0)
        hist = hsv_histogram(rgb_small, self.cfg.hist_bins)
        if self.last_lit is None:  # first lit frame after a dark lead-in: same shot
            self._start(hist)
            return ShotDecision(self.shot, False, False, 0.0)
        d = histogram_distance(hist, self.last_lit)
        cut = self._is_cut(d) or self._is_dissolve(hist)
        if cut and self.since_cut >= self.cfg.min_shot_len:
            self.shot += 1
            self.since_cut = 0
            self._start(hist)
            return ShotDecision(self.shot, True, False, d)
        self.recent.append(d)
        self.last_lit = hist
        self.lit_hists.append(hist)
        return ShotDecision(self.shot, False, False, d)

    def _start(self, hist: np.ndarray) -> None:
        self.recent.clear()
        self.lit_hists.clear()
        self.lit_hists.append(hist)
        self.last_lit = hist

    def _is_cut(self, d: float) -> bool:
        if d < self.cfg.min_distance:
            return False
        if len(self.recent) < 3:
            return True  # no statistics yet: the absolute floor alone decides
        r = np.asarray(self.recent)
        med = float(np.median(r))
        sigma = 1.4826 * float(np.median(np.abs(r - med))) + 0.01
        return d > med + self.cfg.k_sigma * sigma

    def _is_dissolve(self, hist: np.ndarray) -> bool:
        if len(self.lit_hists) <= self.gap:
            return False
        # far from `gap` frames ago although each step was small: a gradual transition
        return histogram_distance(hist, self.lit_hists[0]) > self.cfg.dissolve_distance
