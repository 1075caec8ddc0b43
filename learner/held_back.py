"""A feed (learner/samples.py) without the export holdout's samples: exports are compared on
samples the model was not trained on (motionmask/holdout.py keeps that window). The daemon's
learner process and the other ranks of `motionmask learn --nproc N` both train through it."""

from __future__ import annotations

from collections.abc import Container

import numpy as np


class HeldBack:
    """A feed that drops the held samples (by put_seq, unique per put: `q in held`, a set or a
    motionmask.holdout.HoldoutWindow) from every batch; empty when the buffer holds nothing else
    yet (fit() waits, as on an empty buffer)."""

    def __init__(self, feed, held: Container[int]) -> None:
        self.feed, self.held = feed, held
        self.height, self.width = feed.height, feed.width

    def sample(self, n: int, rng: np.random.Generator, out):
        batch = self.feed.sample(n, rng, out)
        if not self.held or not len(batch):
            return batch
        keep = np.flatnonzero([int(q) not in self.held for q in batch.put_seq])
        if len(keep) == len(batch):
            return batch
        # the held rows are replaced by redraws of the others (as the buffer draws with replacement
        # when it holds too few): a batch keeps its size, since BatchNorm cannot train on one sample
        rows = keep if not len(keep) else np.concatenate([keep, rng.choice(keep, size=len(batch) - len(keep))])
        batch.take(rows)
        return batch

    def __getattr__(self, name: str):  # check(), fill(), ...
        return getattr(self.feed, name)
