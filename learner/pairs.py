"""How tracked-patch pairs (streamer/motion/patches.py) reach the trainer's embedding head.

  PairBatch       n (query, tracked) pairs and a group id per pair: one per (camera, shot,
                  segment of time); a negative for a pair must come from another group.
  PairFeed        what the trainer draws from: sample_pairs(n, rng) -> PairBatch | None (None when
                  no pair is held yet; a batch may come back short).
  RingPairFeed    the shared-memory pair store (streamer/shm/pairbuffer.py), written by the daemon's
                  camera processes or by the offline streamer of `motionmask train`.
  MemoryPairFeed  pairs held in this process (tests, notebooks).

Sampling uses the trainer's numpy Generator, as for frames.

Groups and long shots: a negative must come from another group, and a group was (camera, shot).
A rig is one camera and one shot for hours (synth/rig.py; a daemon on a fixed camera):
every pair fell in one group, no pair ever had a negative, and the embedding loss was skipped for
the whole run. So a group is (camera, shot, segment): the query frame t0 // SEGMENT_FRAMES. Pairs
minutes apart in one shot are mostly different actors; those near in time (one visit) are not
negatives of each other. A short clip lies in one segment, so families of clips are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from streamer.shm.pairbuffer import PairBuffer, group_ids
from streamer.shm.ringbuffer import camera_id_of, camera_key

if TYPE_CHECKING:  # the miner pulls in the whole pipeline
    from streamer.motion.patches import PatchPair


# frames of one shot per group: 30 s at 15 fps, 15 s at 30 fps; longer than a track (30 frames) and
# than most visits, shorter than the part of a rig stream anyone trains on
SEGMENT_FRAMES = 450
_MIX_GROUP = np.uint64(0xBF58476D1CE4E5B9)
_MIX_SEGMENT = np.uint64(0x94D049BB133111EB)


def segment_groups(group: np.ndarray, t0: np.ndarray, segment: int = SEGMENT_FRAMES) -> np.ndarray:
    """One non-negative int64 per (group, t0 // segment): a long shot split into segments of
    time whose pairs may be negatives of each other (see the module docstring)."""
    seg = (np.asarray(t0, np.int64) // segment).astype(np.uint64)
    with np.errstate(over="ignore"):
        g = np.asarray(group, np.int64).astype(np.uint64) * _MIX_GROUP ^ seg * _MIX_SEGMENT
    return (g >> np.uint64(1)).astype(np.int64)


@dataclass
class PairBatch:
    query: np.ndarray  # n x P x P x 3 uint8
    tracked: np.ndarray  # n x P x P x 3 uint8
    group: np.ndarray  # n int64: one id per (camera, shot, segment); a negative must come from another group

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
        return PairBatch(rows.query, rows.tracked, segment_groups(rows.group, rows.t0))

    def stats(self) -> dict:
        return self.store.stats()


class MemoryPairFeed:
    """Pairs held in memory, drawn like the store's (uniformly, without replacement while enough)."""

    def __init__(self, pairs: Sequence[PatchPair]):
        self.pairs = list(pairs)
        cams = np.array([camera_id_of(camera_key(p.camera)) for p in self.pairs], np.int64)
        self.group = segment_groups(
            group_ids(cams, np.array([p.shot for p in self.pairs], np.int64)),
            np.array([p.t0 for p in self.pairs], np.int64),
        )
        self.patch = self.pairs[0].query.shape[0] if self.pairs else 0

    def sample_pairs(self, n: int, rng: np.random.Generator) -> PairBatch | None:
        if not self.pairs or n <= 0:
            return None
        idx = rng.choice(len(self.pairs), size=n, replace=n > len(self.pairs))
        return PairBatch(
            np.stack([self.pairs[i].query for i in idx]),
            np.stack([self.pairs[i].tracked for i in idx]),
            self.group[idx],
        )
