"""Contact-sheet tiles for a person to look at: a frame scaled to a width with a label, and a mask
shown on its frame (background darkened, foreground tinted red).

    from bench._sheet import overlay, tile  # once ROOT, not bench/, is first on sys.path
"""
from __future__ import annotations

import cv2
import numpy as np


def tile(rgb: np.ndarray, width: int, label: str) -> np.ndarray:
    h = int(round(rgb.shape[0] * width / rgb.shape[1]))
    t = cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA)
    # a dark outline under white text reads on any frame
    cv2.putText(t, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(t, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return t


def overlay(rgb: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The frame darkened where the mask says background, tinted red where it says foreground."""
    fg = (prob >= threshold)[..., None]
    out = (rgb * 0.35).astype(np.uint8)
    tint = (0.5 * rgb + 0.5 * np.array([255, 40, 40])).astype(np.uint8)
    return np.where(fg, tint, out)
