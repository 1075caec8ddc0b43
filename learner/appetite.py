"""The learner's appetite: a samples-per-insert rate limiter with a tolerance, as DeepMind
Reverb's SampleToInsertRatio (Cassirer et al. 2021). With `inserts` samples put into the buffer
and `samples` drawn for training so far, the learner keeps

    |inserts * samples_per_insert - samples| <= tolerance

by waiting when it runs ahead (a fast learner does not overfit a trickle of samples) and, since a
rig must never wait, by dropping received samples instead of inserting them when it falls behind
(a slow learner does not fall hours behind; it trains on a subsample). Both counts are the ring
buffer's own totals (RingBuffer.totals: `puts`, `samples`), shared by the receiving and the
training process through shared memory, so neither has to tell the other anything.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Appetite:
    samples_per_insert: float  # 0 = no limit
    tolerance: float  # samples of slack either way; >= one batch and >= samples_per_insert

    def can_sample(self, inserts: int, samples: int, n: int) -> bool:
        """May the learner draw n more samples now?"""
        return not self.samples_per_insert or samples + n - inserts * self.samples_per_insert <= self.tolerance

    def can_insert(self, inserts: int, samples: int) -> bool:
        """May one more received sample go into the buffer now (else it is dropped)?"""
        return not self.samples_per_insert or (inserts + 1) * self.samples_per_insert - samples <= self.tolerance

    @staticmethod
    def ratio(inserts: int, samples: int) -> float | None:
        """Samples drawn per insert so far; None before the first insert."""
        return samples / inserts if inserts else None


__all__ = ["Appetite"]
