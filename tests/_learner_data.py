"""Small real training data for the learner tests: textured frames with one textured object,
its trimap (positives on the object, a don't-care ring, negatives elsewhere), in a real
shared-memory ring buffer."""

from __future__ import annotations

import cv2
import numpy as np

from learner.config import LearnerConfig
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, Sample, ring_bytes


def texture(rng: np.random.Generator, h: int, w: int, colour) -> np.ndarray:
    low = rng.random((max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    t = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.asarray(colour, np.float32) * (0.5 + 0.8 * t), 0, 255).astype(np.uint8)


def object_sample(rng: np.random.Generator, w: int = 96, h: int = 72, index: int = 0) -> Sample:
    img = texture(rng, h, w, (90, 110, 80))
    tri = np.zeros((h, w), np.uint8)
    r = int(rng.integers(7, 15))
    cx, cy = int(rng.integers(r + 3, w - r - 3)), int(rng.integers(r + 3, h - r - 3))
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (cx, cy), r, 1, -1)
    obj = texture(rng, h, w, (230, 120, 60))
    img[mask > 0] = obj[mask > 0]
    ring = cv2.dilate(mask, np.ones((5, 5), np.uint8)) - cv2.erode(mask, np.ones((5, 5), np.uint8))
    tri[mask > 0] = 255
    tri[ring > 0] = 128
    return Sample(
        camera="cam",
        frame_index=index,
        shot=index // 10,
        capture_time=index / 25.0,
        image=img,
        trimap=tri,
        prob=(mask * 255).astype(np.uint8),
        flow=None,
        valid=(0, 0, h, w),
        source_hw=(h, w),
    )


def make_ring(n: int = 24, w: int = 96, h: int = 72, seed: int = 0, slots: int | None = None) -> RingBuffer:
    slots = slots or n + 2
    cfg = BufferConfig(train_width=w, train_height=h, memory_mb=ring_bytes(h, w, slots) / 2**20, per_shot_cap=slots)
    ring = RingBuffer.create(cfg)
    rng = np.random.default_rng(seed)
    for i in range(n):
        assert ring.put(object_sample(rng, w, h, i))
    return ring


def tiny_config(**train) -> LearnerConfig:
    cfg = LearnerConfig()
    cfg.model.width = 8
    cfg.model.blocks = [1, 1, 1, 1]
    cfg.crops.size = 64
    cfg.train.batch = 8
    cfg.train.lr = 3e-3
    cfg.train.warmup_steps = 0
    cfg.train.schedule = "constant"
    cfg.train.device = "cpu"
    cfg.train.threads = 1
    cfg.train.cpu_precision = "fp32"  # the same arithmetic on every CI machine (auto follows the CPU's flags)
    cfg.train.log_every = 1
    cfg.checkpoint.every_minutes = 0
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg
