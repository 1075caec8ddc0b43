"""The unit every source yields."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    image: np.ndarray  # H x W x 3 uint8, RGB, C-contiguous
    source_id: str  # e.g. the file name, "camera0", the URL
    index: int  # 0-based decode index within this source (never reset by reconnects)
    timestamp: float  # seconds: stream presentation time for files, wall clock for live sources

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
