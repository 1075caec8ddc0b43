"""PNG files written atomically (masks, trimaps, contact sheets, ground truth)."""

from __future__ import annotations

from pathlib import Path

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2
import numpy as np

from common.atomic import write_bytes


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 gray (HxW) or RGB (HxWx3) image as PNG, atomically."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    write_bytes(path, buf.tobytes())
