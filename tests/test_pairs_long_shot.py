"""One camera, one shot, a long stream (a rig, issue 19): its tracked-patch pairs must give the
embedding loss negatives. They used to fall in one group (camera, shot), so the loss was skipped
for the whole run; now a group is (camera, shot, segment of time), learner/pairs.py."""

from __future__ import annotations

import numpy as np
import torch
from _learner_data import tiny_config

from learner.embedding_loss import negative_mask, triplet_loss
from learner.pairs import SEGMENT_FRAMES, MemoryPairFeed, RingPairFeed
from learner.train import Trainer
from streamer.motion.patches import PatchPair
from streamer.shm.pairbuffer import PairBuffer

P = 16


def rig_pairs(n: int, every: int = 30) -> list[PatchPair]:
    """n pairs of one camera's one shot, a query every `every` frames (n * every frames of stream)."""
    rng = np.random.default_rng(0)
    return [
        PatchPair(
            rng.integers(0, 256, (P, P, 3), np.uint8),
            rng.integers(0, 256, (P, P, 3), np.uint8),
            "rig",
            0,
            t0=i * every,
            t1=i * every + 30,
            track=i,
        )
        for i in range(n)
    ]


def embedding_trainer() -> Trainer:
    cfg = tiny_config()
    cfg.heads.embedding.enabled = True
    cfg.heads.embedding.dim, cfg.heads.embedding.hidden, cfg.heads.embedding.pairs = 16, 32, 16
    return Trainer(cfg)


def test_a_long_shot_is_split_into_groups_of_time():
    pairs = rig_pairs(60)  # 1,800 frames: two minutes at 15 fps
    feed = MemoryPairFeed(pairs)
    by_t0 = dict(zip((p.t0 for p in pairs), feed.group.tolist()))
    assert len(set(by_t0.values())) == 1800 // SEGMENT_FRAMES
    assert by_t0[0] == by_t0[SEGMENT_FRAMES - 30] != by_t0[SEGMENT_FRAMES]  # one segment, one group
    batch = feed.sample_pairs(16, np.random.default_rng(1))
    assert batch.groups >= 2 and negative_mask(torch.from_numpy(batch.group)).any(1).all()
    # a short clip (90 frames) stays one group: pairs of one clip are never each other's negatives
    assert MemoryPairFeed(rig_pairs(3)).sample_pairs(8, np.random.default_rng(0)).groups == 1


def test_the_trainer_gets_pairs_with_negatives_from_one_long_shot():
    trainer = embedding_trainer()
    with PairBuffer.create(P, 0.5) as store:
        for p in rig_pairs(60):
            assert store.put(p)
        assert store.stats()["groups"] == 1  # the store still counts (camera, shot)
        pairs = trainer.draw_pairs(RingPairFeed(store))
    assert pairs is not None and pairs.groups >= 2  # before: None, "negatives need two", loss skipped
    q = torch.nn.functional.normalize(torch.randn(len(pairs), 8), dim=1)
    assert float(triplet_loss(q, q.roll(1, 0), torch.from_numpy(pairs.group))) > 0
