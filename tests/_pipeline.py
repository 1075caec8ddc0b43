"""The MotionSegmenter run over frames held in memory, as a streamer runs it. Shared by the tests
of the motion pipeline.

results, returned = run_segmenter(frames, config(lookahead=2))
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from streamer.config import MotionConfig, StreamerConfig
from streamer.frames import Frame, MaskResult
from streamer.motion.pipeline import MotionSegmenter


def config(**motion) -> StreamerConfig:
    """The default streamer config with these motion keys changed."""
    cfg = StreamerConfig()
    cfg.motion = replace(MotionConfig(), **motion)
    return cfg


def run_segmenter(
    frames: list[np.ndarray], cfg: StreamerConfig | None = None, fps: float = 30.0
) -> tuple[list[MaskResult], list[list[int]]]:
    """Push every frame, then flush; returns the results and, per push, the indices it returned."""
    seg = MotionSegmenter(cfg or StreamerConfig())
    results, returned = [], []
    for i, img in enumerate(frames):
        out = seg.push(Frame(img, "test", i, i / fps))
        returned.append([r.frame.index for r in out])
        results += out
    tail = seg.flush()
    returned.append([r.frame.index for r in tail])
    return results + tail, returned
