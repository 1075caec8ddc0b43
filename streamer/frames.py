"""The unit every source yields (Frame), and what the motion pipeline makes of it (MaskResult)."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class MaskResult:
    frame: Frame
    shot: int  # 0-based shot number within the source
    prob: np.ndarray  # H x W float32 foreground probability in [0, 1], input resolution
    trimap: np.ndarray  # H x W uint8: 0 negative, 128 don't care, 255 positive
    fg_fraction: float  # fraction of pixels with prob >= prune.fg_threshold
    kept: bool  # passed pruning (usable as a training sample)
    # why it was pruned ("" when kept): too_little_fg | too_much_fg | border_fg | unsure |
    # camera_unreliable | no_motion_history | dark
    reason: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
    flow: np.ndarray | None = None  # h x w x 2 float32 at working resolution (frame t-1 -> t), if any
    # with the flow (None without): what tracking on it needs (streamer/motion/patches.py)
    flow_conf: np.ndarray | None = None  # h x w float32 forward-backward confidence of `flow`, in [0, 1]
    to_prev: np.ndarray | None = None  # 3x3 camera model, working px of this frame -> frame t-1
    camera_ok: bool = True  # the camera model was fitted (False: assumed static)
    camera_noise: float = 0.0  # median residual (working px) of the flow the camera model explains
    gray: np.ndarray | None = None  # h x w uint8 working-resolution gray frame
