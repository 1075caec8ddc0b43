"""Scores of soft masks against reference masks, threshold-free figures included, and of the
trimaps made from them. One accumulator per method and family:

    s = MaskScore()
    for prob, ref in frames:            # prob: H x W float in [0, 1]; ref: 0 / 255, 128 = void
        s.add(prob, ref)
    s.summary()   # {"iou", "precision", "recall", "best_iou", "best_threshold", "ece", ...}

Void pixels (128 in a reference, e.g. the band around a real clip's reference outline) count
nowhere. IoU, precision and recall are per frame, then averaged over the frames whose reference
holds a moving object; `best_iou` is the largest such mean over one threshold per family (the
grid below), which says how much a different decision point would buy. `ece` is the expected
calibration error of the probability over the scored pixels of frames with an object (10 equal
bins): where the mask says 0.7, about 70% of the pixels should be foreground. A frame without an
object (a real clip's empty stretch) counts only for `empty_fp`, the fraction of its pixels called
foreground at 0.5: it has no object to find, so it says nothing about IoU or calibration.

A pixel reaches threshold t when prob >= t, compared in float32 (as `prob >= t` on a float32 map
does), so the curve's point at 0.5 is the published mask's decision exactly.

`LabelScore` counts what a trimap teaches on the frames that pruning kept: the share of object
pixels labelled positive and negative, and of background pixels labelled positive; and the
background labelled "don't care" per object pixel (2 means that around the objects twice their
area is left to the student, which may mark it as object: a halo).
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
# float32 like the maps: float64 0.7 lies above float32 0.7, so a pixel at exactly 0.7 missed 0.7
_T32 = THRESHOLDS.astype(np.float32)
HALF = int(np.argmin(np.abs(THRESHOLDS - 0.5)))
VOID = 128
CAL_BINS = 10


def reference(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, scored) boolean maps of a reference mask: 255 object, 0 background, 128 void
    (a boolean mask has no void)."""
    if ref.dtype == bool:  # ref > 192 would call every pixel of a boolean mask background
        return ref, np.ones(ref.shape, bool)
    return ref > 192, (ref < 64) | (ref > 192)


class MaskScore:
    def __init__(self) -> None:
        self.iou: list[np.ndarray] = []  # per frame with an object: IoU at every threshold
        self.precision: list[float] = []  # at 0.5
        self.recall: list[float] = []
        self.empty_fp: list[float] = []  # frames without an object: fraction called foreground at 0.5
        self.cal_sum = np.zeros(CAL_BINS)  # per probability bin: sum of probabilities,
        self.cal_fg = np.zeros(CAL_BINS)  # ... foreground pixels,
        self.cal_n = np.zeros(CAL_BINS)  # ... pixels

    def add(self, prob: np.ndarray, ref: np.ndarray) -> float | None:
        """Score one frame; returns its IoU at 0.5 (None when its reference has no object).
        prob: float in [0, 1] (uint8 0-255 is read as /255, the published PNG's scale)."""
        if prob.shape != ref.shape:
            raise ValueError(f"probability {prob.shape} and reference {ref.shape} differ in size")
        fg, scored = reference(ref)
        p = prob[scored].astype(np.float32)
        if prob.dtype == np.uint8:
            p /= 255.0
        g = fg[scored]
        if not g.any():
            self.empty_fp.append(float((p >= 0.5).mean()) if p.size else 0.0)
            return None
        b = np.minimum((p * CAL_BINS).astype(np.int64), CAL_BINS - 1)
        self.cal_sum += np.bincount(b, p, CAL_BINS)
        self.cal_fg += np.bincount(b, g, CAL_BINS)
        self.cal_n += np.bincount(b, minlength=CAL_BINS)
        # the whole threshold grid at once: pixel counts above each threshold, in and out of the object
        order = np.searchsorted(_T32, p, side="right")  # thresholds each pixel reaches
        above_fg = np.cumsum(np.bincount(order[g], minlength=len(THRESHOLDS) + 1)[::-1])[::-1][1:]
        above_all = np.cumsum(np.bincount(order, minlength=len(THRESHOLDS) + 1)[::-1])[::-1][1:]
        n_fg = float(g.sum())
        union = n_fg + above_all - above_fg
        iou = np.where(union > 0, above_fg / np.maximum(union, 1), 1.0)
        self.iou.append(iou)
        half = HALF
        self.precision.append(float(above_fg[half] / above_all[half]) if above_all[half] else 0.0)
        self.recall.append(float(above_fg[half] / n_fg))
        return float(iou[half])

    def reliability(self) -> list[dict]:
        """Per probability bin: mean probability, observed foreground fraction, pixels."""
        return [
            {
                "bin": f"{i / CAL_BINS:.1f}-{(i + 1) / CAL_BINS:.1f}",
                "pixels": int(n),
                "mean_prob": float(s / n) if n else None,
                "fg_fraction": float(f / n) if n else None,
            }
            for i, (s, f, n) in enumerate(zip(self.cal_sum, self.cal_fg, self.cal_n))
        ]

    def curve(self) -> list[float] | None:
        """Mean IoU at every threshold of THRESHOLDS (None before a frame with an object)."""
        return [float(v) for v in np.mean(self.iou, axis=0)] if self.iou else None

    def summary(self) -> dict:
        n = self.cal_n.sum()
        ece = float(np.abs(self.cal_sum - self.cal_fg).sum() / n) if n else None
        base = {
            "frames": len(self.iou),
            "empty_frames": len(self.empty_fp),
            "ece": ece,
            "empty_fp": _mean(self.empty_fp),
        }
        if not self.iou:
            return {**base, "iou": None, "precision": None, "recall": None, "best_iou": None, "best_threshold": None}
        curve = np.mean(self.iou, axis=0)
        best = int(np.argmax(curve))  # the lowest threshold among equals
        return {
            **base,
            "iou": float(curve[HALF]),
            "precision": _mean(self.precision),
            "recall": _mean(self.recall),
            "best_iou": float(curve[best]),
            "best_threshold": float(THRESHOLDS[best]),
        }


class LabelScore:
    """What trimaps teach on kept frames, against a reference (void pixels not counted)."""

    def __init__(self) -> None:
        self.fg = np.zeros(3, np.int64)  # object pixels labelled negative, don't care, positive
        self.bg = np.zeros(3, np.int64)  # background pixels, the same
        self.frames = 0
        self.kept = 0

    def add(self, trimap: np.ndarray, ref: np.ndarray, kept: bool) -> None:
        self.frames += 1
        if not kept:
            return
        self.kept += 1
        fg, scored = reference(ref)
        cls = np.searchsorted([64, 192], trimap)  # 0 negative, 1 don't care, 2 positive
        self.fg += np.bincount(cls[fg & scored], minlength=3)
        self.bg += np.bincount(cls[~fg & scored], minlength=3)

    def summary(self) -> dict:
        nf, nb = self.fg.sum(), self.bg.sum()
        return {
            "frames": self.frames,
            "kept": self.kept,
            "fg_positive": _ratio(self.fg[2], nf),
            "fg_negative": _ratio(self.fg[0], nf),
            "fg_dont_care": _ratio(self.fg[1], nf),
            "bg_positive": _ratio(self.bg[2], nb),
            # background the student is told nothing about, in object areas: the "don't care" band
            # and ring around the objects, where a student is free to grow a halo
            "bg_dont_care_per_object": _ratio(self.bg[1], nf),
            "positive_precision": _ratio(self.fg[2], self.fg[2] + self.bg[2]),
            "negative_precision": _ratio(self.bg[0], self.bg[0] + self.fg[0]),
        }


def _ratio(a: int, b: int) -> float | None:
    return float(a / b) if b else None


def _mean(v: list[float]) -> float | None:
    return float(np.mean(v)) if v else None
