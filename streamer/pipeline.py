"""Frame in, motion mask out: shots -> flow -> camera motion -> saliency -> superpixel voting
-> pruning -> trimap. One `MotionSegmenter` per source; it keeps the recent history of the
current shot and never mixes shots."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamer.frames import Frame


@dataclass
class MaskResult:
    frame: Frame
    shot: int  # 0-based shot number within the source
    prob: np.ndarray  # H x W float32 foreground probability in [0, 1], input resolution
    trimap: np.ndarray  # H x W uint8: 0 negative, 128 don't care, 255 positive
    fg_fraction: float  # fraction of pixels with prob >= prune.fg_threshold
    kept: bool  # passed pruning (usable as a training sample)
    reason: str  # why it was pruned ("" when kept): too_little_fg | too_much_fg | border_fg | no_motion_history
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
    flow: np.ndarray | None = None  # h x w x 2 float32 at working resolution (frame t-1 -> t), if any
