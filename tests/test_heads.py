"""The multi-task heads: the grouping and ranking losses on hand-built cases, the flow cut with the
crops' boxes, multitask training on real frames (synthetic clips through the real streamer: DIS
flow and motion trimaps in a real ring buffer; tracked patches of the same object instance), the
mask-only path unchanged, and config and checkpoint errors that name what is wrong."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from _heads_data import GTPairFeed, render, streamed_ring
from _learner_data import make_ring, tiny_config

from common.errors import UserError
from learner.config import LearnerConfig
from learner.crops import crop_flow, make_crops
from learner.embedding_loss import hardest_negatives, negative_mask, triplet_loss
from learner.grouping_loss import affine_residual, entropy_loss, segments_loss
from learner.heads import forward_heads
from learner.loss import masked_bce
from learner.model import architecture, build_model
from learner.samples import RingFeed
from learner.train import Limits, Trainer, fit
from motionmask.config import ConfigError, load_config


def grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return xs, ys


# ---- grouping losses -------------------------------------------------------------------------


def test_an_affine_flow_is_fitted_exactly_by_any_segmentation():
    xs, ys = grid(32, 40)
    flow = torch.stack([0.5 + 0.05 * xs - 0.02 * ys, -1.0 + 0.03 * xs + 0.04 * ys])[None]  # one affine motion
    ok = torch.ones(1, 32, 40, dtype=torch.bool)
    segs = torch.softmax(torch.randn(1, 4, 32, 40, generator=torch.Generator().manual_seed(0)) * 3, 1)
    for kind in ("charbonnier", "huber", "l2"):
        assert affine_residual(segs, flow, ok, kind=kind).item() < 1e-3, kind
    shifted = flow + torch.randn(flow.shape, generator=torch.Generator().manual_seed(1))  # not affine any more
    assert affine_residual(segs, shifted, ok).item() > 0.3


def two_motions(h: int = 32, w: int = 40) -> torch.Tensor:
    """Left half translates right by 3 px, right half rotates about its centre."""
    xs, ys = grid(h, w)
    left = xs < w / 2
    u = torch.where(left, torch.full_like(xs, 3.0), -0.1 * (ys - h / 2))
    v = torch.where(left, torch.zeros_like(xs), 0.1 * (xs - 3 * w / 4))
    return torch.stack([u, v])[None]


def split(h: int, w: int, vertical: bool) -> torch.Tensor:
    """Two nearly hard segments: left/right (vertical cut) or top/bottom."""
    xs, ys = grid(h, w)
    first = (xs < w / 2) if vertical else (ys < h / 2)
    s = torch.stack([first, ~first]).float()[None] * 0.98 + 0.01
    return s


def test_two_motions_are_fitted_better_by_segments_aligned_with_them():
    flow = two_motions()
    ok = torch.ones(1, 32, 40, dtype=torch.bool)
    aligned = affine_residual(split(32, 40, True), flow, ok).item()
    wrong = affine_residual(split(32, 40, False), flow, ok).item()
    assert aligned < 0.05 and wrong > 10 * aligned, (aligned, wrong)
    # the entropy alternative ranks them the same way
    assert entropy_loss(split(32, 40, True), flow, ok).item() < entropy_loss(split(32, 40, False), flow, ok).item()


def test_grouping_losses_count_valid_pixels_only_and_give_zero_without_any():
    flow = two_motions()
    ok = torch.zeros(1, 32, 40, dtype=torch.bool)
    ok[..., :20] = True  # only the translating half has flow: one segment fits it exactly
    segs = split(32, 40, False)
    assert affine_residual(segs, flow, ok).item() < 1e-3
    none = torch.zeros_like(ok)
    for loss in ("affine", "entropy"):
        cfg = LearnerConfig().heads.segments
        cfg.loss = loss
        logits = torch.randn(1, 4, 16, 16, requires_grad=True)
        value = segments_loss(logits, flow, none, cfg)
        value.backward()
        assert value.item() == 0 and torch.count_nonzero(logits.grad) == 0, loss  # 0, not NaN


@pytest.mark.parametrize("loss", [affine_residual, entropy_loss])
def test_the_gradient_pulls_each_half_towards_its_own_segment(loss):
    """From a faint hint of the left motion in segment 0, the gradient raises segment 0 on the left
    half and segment 1 on the right half."""
    logits = torch.zeros(1, 2, 32, 40)
    logits[0, 0, :, :10] = 0.3
    logits.requires_grad_(True)
    loss(torch.softmax(logits, 1), two_motions(), torch.ones(1, 32, 40, dtype=torch.bool)).backward()
    d = logits.grad[0, 0] - logits.grad[0, 1]  # < 0: the loss falls when segment 0 takes the pixel
    assert d[:, :20].mean() < 0 < d[:, 20:].mean()


# ---- ranking loss ------------------------------------------------------------------------------


def test_triplet_loss_is_zero_when_the_margin_holds_and_exact_when_it_does_not():
    q = torch.eye(4)[:3]  # three pairs, tracked == query, all negatives orthogonal: D = 1 >= 0 + 0.5
    group = torch.tensor([0, 1, 2])
    assert triplet_loss(q, q.clone(), group, 0.5).item() == 0.0
    assert triplet_loss(q, q.clone(), group, 0.5, hard_negatives=4).item() == 0.0
    # tracked rotated 90 degrees away: D(q, t) = 1, D(q, n) = 1 for every negative -> hinge = M
    t = torch.eye(4)[[3, 3, 3]]
    q2 = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]), dim=1)
    loss = triplet_loss(q2, t, group, 0.5).item()
    # pair 0's negatives: q1, q2 (D = 1) and t1, t2 (D = 1): hinge 0.5 each
    assert math.isclose(loss, 0.5, abs_tol=1e-6)
    assert triplet_loss(q, q.clone(), torch.tensor([5, 5, 5]), 0.5).item() == 0  # one shot: no negatives


def test_hard_negative_mining_keeps_the_k_hardest_of_the_other_groups():
    group = torch.tensor([0, 0, 1, 2])
    neg = negative_mask(group)  # candidates: q0 q1 q2 q3 t0 t1 t2 t3
    assert neg[0].tolist() == [False, False, True, True, False, False, True, True]
    hinge = torch.tensor([[9.0, 8.0, 0.1, 0.4, 9.0, 7.0, 0.3, 0.2]] * 4)
    idx, real = hardest_negatives(hinge, neg, 2)
    assert sorted(idx[0].tolist()) == [3, 6] and real[0].all()  # 0.4 and 0.3; same-group 9s never
    idx, real = hardest_negatives(hinge, neg, 6)  # more than pair 0 has: the extra ones are not real
    assert real[0].sum().item() == 4 and set(idx[0][real[0]].tolist()) == {2, 3, 6, 7}
    # the loss with K=1 takes the hardest negative only
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1.0, 0.1], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    t = q.clone()
    full = triplet_loss(q, t, torch.tensor([0, 1, 2, 3]), 0.5, None).item()
    hard = triplet_loss(q, t, torch.tensor([0, 1, 2, 3]), 0.5, 1).item()
    assert hard > full > 0


# ---- the flow through the crops --------------------------------------------------------------


def test_flow_is_cut_with_the_crops_boxes_scaled_and_flipped():
    n, h, w = 2, 48, 64
    flows = torch.zeros(n, h, w, 2, dtype=torch.float16)
    flows[..., 0], flows[..., 1] = 2.0, 1.0  # slot pixels
    valid = torch.tensor([[0, 0, 40, 64], [0, 0, 48, 64]])  # sample 0: 8 padding rows at the bottom
    has = torch.tensor([True, False])
    boxes = torch.tensor([[32.0, 24.0, 32.0, -1.0], [32.0, 24.0, 32.0, 1.0], [32.0, 40.0, 32.0, 1.0]])
    source = torch.tensor([0, 1, 0])
    flow, ok = crop_flow(flows, has, valid, boxes, source, 16)
    assert torch.allclose(flow[0, 0][ok[0]], torch.tensor(-1.0)) and torch.allclose(
        flow[0, 1][ok[0]], torch.tensor(0.5)
    )
    assert ok[0].all()  # inside the image
    assert not ok[1].any()  # sample 1 has no flow
    assert ok[2, :4].all() and not ok[2, -4:].any()  # the box reaches into sample 0's padding


# ---- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth():
    clips = [render(s) for s in (1, 2, 3)]
    ring = streamed_ring(clips)
    yield ring, GTPairFeed(clips)
    ring.close()


# the heads and the crop code (copy-paste, hue) on CUDA too, where there is one (issue 19)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]


def multitask_config(device: str = "cpu", **heads) -> LearnerConfig:
    cfg = tiny_config(device=device)
    h = cfg.heads
    h.embedding.enabled = h.segments.enabled = True
    h.embedding.dim, h.embedding.hidden, h.embedding.pairs, h.embedding.warmup_steps = 16, 32, 12, 0
    h.segments.count, h.segments.loss_size = 4, 32
    # 60 steps learn the objects before the scenes: the thresholds below were measured with a
    # quarter of the crops at random (the default was 0.25 then), not half
    cfg.crops.random_fraction = 0.25
    for k, v in heads.items():
        setattr(h.segments, k, v)
    return cfg


def fixed_losses(trainer: Trainer, ring, pairs) -> dict[str, float]:
    """Each head's loss of the current weights on one fixed batch, crops and set of pairs."""
    b = ring.sample(16, np.random.default_rng(123))
    frames, tri, valid = trainer.upload(b)
    g = torch.Generator(device=trainer.device)
    g.manual_seed(5)
    c = make_crops(frames, tri, valid, trainer.cfg.crops, trainer.crop_size, trainer.target_size, g)
    extra = trainer.upload_heads(b, pairs.sample_pairs(24, np.random.default_rng(7)))
    trainer.model.eval()
    with torch.no_grad():
        out = forward_heads(trainer.model, trainer.model.normalize(c.images), ["mask", "segments"])
        losses = trainer.head_losses(masked_bce(out["mask"], c.targets), out, c, valid, extra)
    return {k: v.item() for k, v in losses.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss", ["affine", "entropy"])
def test_multitask_steps_reduce_every_loss_on_real_frames(synth, tmp_path, loss, device):
    ring, pairs = synth
    # the entropy's gradients are weak (a soft histogram of noisy DIS flow): more weight, fewer bins
    extra = {"weight": 3.0, "bins": 8} if loss == "entropy" else {}
    trainer = Trainer(multitask_config(device, loss=loss, **extra))
    assert trainer.device.type == device
    before = fixed_losses(trainer, ring, pairs)
    assert set(before) == {"mask", "embedding", "segments"}
    s = fit(trainer, RingFeed(ring), tmp_path, Limits(steps=60), progress=False, pairs=pairs)
    after = fixed_losses(trainer, ring, pairs)
    # the entropy has a floor well above 0 (noisy DIS flow): 2.18 -> 2.11 nats measured (synth v2).
    # The mask's labels fill flat interiors since issue 18's outline evidence, which 60 steps learn
    # less of: 0.692 -> 0.624 (affine) and 0.588 (entropy) measured. The flow at the working
    # resolution (the default since 2026-12-07) is noisier per pixel, which no affine motion explains:
    # the affine residual falls 0.099 -> 0.090 in these steps (0.081 -> 0.065 on the flow before)
    factor = {"mask": 0.93, "segments": 0.985 if loss == "entropy" else 0.95}
    for k in before:
        assert after[k] < factor.get(k, 0.9) * before[k], (k, before, after)
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert all({"loss_mask", "loss_embedding", "loss_segments"} <= set(x) for x in lines)
    assert set(s.last_losses) == {"mask", "embedding", "segments"}


def test_mask_only_training_is_the_plain_step_unchanged():
    """The default (mask head only) trains exactly as the plain mask step: same weights, same losses."""
    ring = make_ring(24)
    try:
        cfg = tiny_config()
        trainer = Trainer(cfg)
        assert "heads" not in trainer.arch and list(trainer.model.heads) == ["mask"]
        # by hand, the plain step: the same seed, the same draws, crops, loss and AdamW
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, cfg.crop_size)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trainer.model.state_dict().values()))
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.train.lr,
            betas=(0.9, 0.99),
        )
        rng, gen = np.random.default_rng(cfg.train.seed), torch.Generator()
        gen.manual_seed(cfg.train.seed)
        for _ in range(4):
            b = ring.sample(8, rng)
            frames, tri = torch.from_numpy(b.frames), torch.from_numpy(b.trimaps)
            valid = torch.from_numpy(np.ascontiguousarray(b.valid, dtype=np.int64))
            model.train()
            c = make_crops(frames, tri, valid, cfg.crops, cfg.crop_size, cfg.crop_size, gen)
            loss = masked_bce(model(model.normalize(c.images)), c.targets)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), cfg.train.grad_clip)
            opt.step()
            r = trainer.step(ring.sample(8, trainer.rng))
            assert r.loss == loss.item() and r.losses == {}
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trainer.model.state_dict().values()))
    finally:
        ring.close()


def test_embedding_without_pairs_skips_its_loss_with_one_log_line(synth, caplog):
    ring, _ = synth
    trainer = Trainer(multitask_config())
    with caplog.at_level(logging.INFO):
        s = fit(trainer, RingFeed(ring), None, Limits(steps=3), progress=False)
    assert s.steps == 3 and set(s.last_losses) == {"mask", "segments"}
    assert caplog.text.count("embedding_no_pairs") == 1
    # pairs of one shot only: no negatives, still skipped (decided on the host, before the step)
    _, pairs = synth
    one_shot = GTPairFeed.__new__(GTPairFeed)
    one_shot.query, one_shot.tracked, one_shot.group = pairs.query, pairs.tracked, np.full_like(pairs.group, 7)
    assert trainer.draw_pairs(one_shot) is None and trainer.draw_pairs(pairs) is not None


# ---- config and checkpoints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "heads,key",
    [
        ({"segments": {"loss": "mse"}}, "learner.heads.segments.loss"),
        ({"segments": {"count": 1}}, "learner.heads.segments.count"),
        ({"embedding": {"patch": 50}}, "learner.heads.embedding.patch"),
        ({"embedding": {"margin": 0}}, "learner.heads.embedding.margin"),
        ({"mask": {"enabled": False}}, "learner.heads.mask.enabled"),
        ({"embedding": {"dimm": 3}}, "learner.heads.embedding.dimm"),
        ({"segments": {"weight": "high"}}, "learner.heads.segments.weight"),
    ],
)
def test_config_errors_name_the_key(heads, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides={"learner": {"heads": heads}})


def test_a_checkpoint_with_other_heads_is_refused_by_name(tmp_path):
    ring = make_ring(8)
    try:
        cfg = tiny_config()
        cfg.heads.segments.enabled = True
        cfg.heads.segments.count = 4
        trainer = Trainer(cfg)
        trainer.step(ring.sample(8, trainer.rng))
        state = trainer.state_dict()
        assert architecture(cfg.model, cfg.crop_size, cfg.heads)["heads"] == {"segments": {"count": 4}}
        with pytest.raises(UserError, match="incompatible checkpoint: heads"):
            Trainer(tiny_config()).load_state_dict(state, "ckpt.pt")
        cfg6 = tiny_config()
        cfg6.heads.segments.enabled, cfg6.heads.segments.count = True, 6
        with pytest.raises(UserError, match="'count': 4.*in the checkpoint"):
            Trainer(cfg6).load_state_dict(state, "ckpt.pt")
    finally:
        ring.close()


@pytest.mark.parametrize("device", DEVICES)
def test_copy_paste_crops_train_the_segments_head_too(synth, device):
    """With copy-paste (learner.crops.paste) the pasted pixels carry the background's flow: they
    are left out of the grouping loss, and the step runs."""
    ring, pairs = synth
    cfg = multitask_config(device)
    cfg.crops.paste = 1.0
    trainer = Trainer(cfg)
    r = trainer.step(ring.sample(8, trainer.rng), trainer.draw_pairs(pairs))
    assert not r.skipped and set(r.losses) == {"mask", "segments", "embedding"}
    assert all(math.isfinite(v) for v in r.losses.values())
