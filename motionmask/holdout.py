"""The export gate's holdout in the daemon: a rolling window of recent buffer samples that training
never sees, so that the gate judges a model on the scene the camera shows now.

A holdout copied once at start goes stale: after a day-night change or a moved camera the gate
would still compare models on the first minutes' frames. Instead, from the first sample on, one
block of `block` consecutive buffer samples in every `every` blocks (by put order, so by time) is
held out: the learner's feed drops these samples from every batch (`held`), and the window keeps
copies of the newest `size` of them (`collect`, called every learner step, before a bootstrapping
round could relabel them: the gate scores against the teacher's own trimaps). The gate refreshes
its holdout from the window before each decision (motionmask/learner_process.py). Held-out samples
come in blocks because neighbouring frames of one camera are near copies: a single held-out frame
between two trained ones would be a training sample in all but name.

    window = HoldoutWindow(ring, size=64, every=10, block=8)
    feed = HeldBack(RingFeed(ring), window)     # `put_seq in window`: never trained on
    ... each step: window.collect(); at each gate decision: Holdout.for_model(window.samples(), ...)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class HeldSample:
    """A held-out buffer sample, copied out of the ring (the slot will be reused)."""

    image: np.ndarray  # slot H x W x 3 uint8
    trimap: np.ndarray  # slot H x W uint8, as the camera put it (the teacher's)
    valid: tuple[int, int, int, int]  # y0, x0, h, w of the frame inside the slot
    put_seq: int
    put_time: float  # time.monotonic() at put
    camera: str
    frame_index: int


class HoldoutWindow:
    def __init__(self, ring, size: int, every: int, block: int) -> None:
        if size < 1 or every < 2 or block < 1:
            raise ValueError(f"holdout window: size {size} >= 1, every {every} >= 2, block {block} >= 1")
        self.ring, self.size, self.every, self.block = ring, size, every, block
        self.window: deque[HeldSample] = deque(maxlen=size)  # oldest first
        self.seen = 0  # the newest put_seq looked at
        self._one = None  # a one-sample Batch, reused

    def held(self, put_seq: int) -> bool:
        """Is the buffer sample put as `put_seq` (1, 2, ...) held out of training? The first block
        of every `every` is: the gate has a holdout from the first samples on (training waits for
        one block)."""
        return (int(put_seq) - 1) // self.block % self.every == 0

    __contains__ = held  # `put_seq in window`, as the learner's feed filter asks

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.window)

    def collect(self) -> int:
        """Copy the held-out samples put since the last call into the window (newest kept); the
        number added. Reads the newest slots first and stops at one already seen, or once the
        window would be refilled whole."""
        ring = self.ring
        if self._one is None:
            self._one = ring.new_batch(1)
        fresh: list[HeldSample] = []
        newest = self.seen
        for slot in ring.ready_slots():  # newest first
            b = ring.read([slot], out=self._one)
            if not len(b):
                continue  # being rewritten: a newer sample, seen next time
            q = int(b.put_seq[0])
            if q <= self.seen:
                break
            newest = max(newest, q)
            if self.held(q):
                y0, x0, h, w = (int(v) for v in b.valid[0])
                fresh.append(
                    HeldSample(
                        b.frames[0].copy(),
                        b.trimaps[0].copy(),
                        (y0, x0, h, w),
                        q,
                        float(b.put_time[0]),
                        b.cameras[0],
                        int(b.frame_index[0]),
                    )
                )
                if len(fresh) >= self.size:
                    break
        self.seen = newest
        for s in sorted(fresh, key=lambda s: s.put_seq):
            self.window.append(s)
        return len(fresh)

    def samples(self) -> list[HeldSample]:
        """The window now, oldest first (image, trimap, valid: what exporter.export.Holdout takes)."""
        return list(self.window)

    def describe(self, now: float) -> dict[str, object]:
        """For the log line at each refresh: how many, how old, from which cameras."""
        w = self.window
        cams: dict[str, int] = {}
        for s in w:
            cams[s.camera] = cams.get(s.camera, 0) + 1
        return {
            "samples": len(w),
            "newest_age_s": round(now - w[-1].put_time, 1) if w else None,
            "oldest_age_s": round(now - w[0].put_time, 1) if w else None,
            "cameras": ",".join(f"{k}:{v}" for k, v in sorted(cams.items())) or "-",
        }


__all__ = ["HeldSample", "HoldoutWindow"]
