"""How tracked-patch pairs (streamer/patches.py) reach the trainer's embedding head.

  PairBatch       n (query, tracked) pairs and a group id per pair: one per (camera, shot); a
                  negative for a pair must come from another group.
  PairFeed        what the trainer draws from: sample_pairs(n, rng) -> PairBatch | None (None when
                  no pair is held yet; a batch may come back short).
  RingPairFeed    the shared-memory pair store (streamer/pairbuffer.py), written by the daemon's
                  camera processes or by the offline streamer of `motionmask train`.
  MemoryPairFeed  pairs held in this process (tests, notebooks).

Sampling uses the trainer's numpy Generator, as for frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from streamer.pairbuffer import PairBuffer, group_ids
from streamer.ringbuffer import _camera_id, camera_key

if TYPE_CHECKING:  # the miner pulls in the whole pipeline
    from streamer.patches import PatchPair


@dataclass
class PairBatch:
    query: np.ndarray  # n x P x P x 3 uint8
    tracked: np.ndarray  # n x P x P x 3 uint8
    group: np.ndarray  # n int64: one id per (camera, shot); a negative must come from another group

    def __len__(self) -> int:
        return len(self.group)

    @property
    def groups(self) -> int:
        """Distinct groups in the batch: with fewer than 2 no pair has a negative."""
        return int(np.unique(self.group).size)


class PairFeed(Protocol):
    def sample_pairs(self, n: int, rng: np.random.Generator) -> PairBatch | None: ...


class RingPairFeed:
    """Pairs from the shared-memory store; never waits (an empty store gives None)."""

    def __init__(self, store: PairBuffer):
        self.store = store
        self.patch = store.patch

    def sample_pairs(self, n: int, rng: np.random.Generator) -> PairBatch | None:
        rows = self.store.sample(n, rng)
        if not len(rows):
            return None
        return PairBatch(rows.query, rows.tracked, rows.group)

    def stats(self) -> dict:
        return self.store.stats()


class MemoryPairFeed:
    """Pairs held in memory, drawn like the store's (uniformly, without replacement while enough)."""

    def __init__(self, pairs: Sequence[PatchPair]):
        self.pairs = list(pairs)
        cams = np.array([_camera_id(camera_key(p.camera)) for p in self.pairs], np.int64)
        self.group = group_ids(cams, np.array([p.shot for p in self.pairs], np.int64))
        self.patch = self.pairs[0].query.shape[0] if self.pairs else 0

    def sample_pairs(self, n: int, rng: np.random.Generator) -> PairBatch | None:
        if not self.pairs or n <= 0:
            return None
        idx = rng.choice(len(self.pairs), size=n, replace=n > len(self.pairs))
        return PairBatch(np.stack([self.pairs[i].query for i in idx]), np.stack([self.pairs[i].tracked for i in idx]),
                         self.group[idx])
