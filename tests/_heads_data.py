"""Real data for the multi-task head tests: synthetic clips (synth/things.py) rendered in memory,
run through the real motion streamer into a real ring buffer (frames, trimaps and DIS flow), and
tracked-patch pairs cut around the same object instance in two frames of a shot (from the
clips' instance ground truth), served by a small in-memory PairFeed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.config import StreamerConfig
from streamer.motion.pipeline import MotionSegmenter
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, ring_bytes, sample_from_result
from synth.things import object_patch, plan_clip, render_clip


@dataclass
class Clip:
    frames: list[np.ndarray]
    inst: list[np.ndarray]
    shot_of: list[int]  # shot index of each frame


def render(seed: int, frames: int = 24, size: tuple[int, int] = (128, 96)) -> Clip:
    rgb, _, inst, _ = render_clip(seed, frames, size)
    plan = plan_clip(seed, frames, size)
    return Clip(rgb, inst, _shots(plan, frames))


def _shots(plan, frames: int) -> list[int]:
    starts = [s.start for s in plan.shots]
    return [int(np.searchsorted(starts, t, side="right")) - 1 for t in range(frames)]


def streamed_ring(clips: list[Clip], size: tuple[int, int] = (128, 96)) -> RingBuffer:
    """Every analysed frame of the clips (pruning off) in a ring buffer, flow included."""
    w, h = size
    cfg = StreamerConfig()
    cfg.prune.min_fg, cfg.prune.max_fg, cfg.prune.max_border_fg, cfg.prune.max_unsure = 0.0, 1.0, 1.0, 1.0
    samples = []
    for i, clip in enumerate(clips):
        seg = MotionSegmenter(cfg)
        results = []
        for k, f in enumerate(clip.frames):
            results += seg.push(_frame(f, k))
        results += seg.flush()
        samples += [
            sample_from_result(r, f"clip{i}", BufferConfig(train_width=w, train_height=h)) for r in results if r.kept
        ]
    n = len(samples) + 2
    ring = RingBuffer.create(
        BufferConfig(train_width=w, train_height=h, memory_mb=ring_bytes(h, w, n) / 2**20, per_shot_cap=n)
    )
    for s in samples:
        assert ring.put(s)
    return ring


def _frame(rgb: np.ndarray, index: int):
    from streamer.frames import Frame

    return Frame(image=rgb, source_id="synth", index=index, timestamp=index / 30.0)


@dataclass
class Pairs:
    query: np.ndarray
    tracked: np.ndarray
    group: np.ndarray


class GTPairFeed:
    """(query, tracked) patches of one moving object `gap` frames apart in one shot; group = (clip, shot)."""

    def __init__(self, clips: list[Clip], patch: int = 64, gap: int = 8):
        q, t, g = [], [], []
        for c, clip in enumerate(clips):
            for t0 in range(0, len(clip.frames) - gap, 2):
                t1 = t0 + gap
                if clip.shot_of[t0] != clip.shot_of[t1]:
                    continue
                for obj in set(np.unique(clip.inst[t0])) & set(np.unique(clip.inst[t1])) - {0}:
                    a, b = (
                        object_patch(clip.frames[t0], clip.inst[t0] == obj, patch),
                        object_patch(clip.frames[t1], clip.inst[t1] == obj, patch),
                    )
                    if a is not None and b is not None:
                        q.append(a), t.append(b), g.append(c * 100 + clip.shot_of[t0])
        self.query, self.tracked, self.group = np.stack(q), np.stack(t), np.asarray(g, np.int64)

    def __len__(self) -> int:
        return len(self.group)

    def sample_pairs(self, n: int, rng: np.random.Generator) -> Pairs | None:
        idx = rng.choice(len(self.group), size=min(n, len(self.group)), replace=False)
        return Pairs(self.query[idx], self.tracked[idx], self.group[idx])
