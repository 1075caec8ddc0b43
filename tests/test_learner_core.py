"""Learner building blocks on the CPU: the masked loss against a hand computation, the crops
(jitter, positives inside, flips, colour jitter, padding, determinism), both backbones forward
and backward at their sizes, and the config section."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.config import CropConfig, LearnerConfig, ModelConfig, learner_config_from_dict
from learner.crops import dilate, make_crops, positive_boxes
from learner.layers import upsample_logits
from learner.loss import masked_bce
from learner.model import AlexNet, CompactNet, architecture, build_model, output_size
from motionmask.config import ConfigError, load_config


# -- loss -------------------------------------------------------------------------------------
def test_loss_matches_hand_computation_and_ignores_dont_care():
    logits = torch.tensor([[[2.0, -1.0, 0.5], [3.0, 100.0, -100.0]]])  # 1 x 2 x 3
    trimap = torch.tensor([[[255, 0, 128], [0, 128, 255]]], dtype=torch.uint8)

    def bce(z, y):  # -log sigmoid(z) for y = 1, -log(1 - sigmoid(z)) for y = 0
        return math.log1p(math.exp(-z)) if y else math.log1p(math.exp(z))

    by_hand = (bce(2.0, 1) + bce(-1.0, 0) + bce(3.0, 0) + 100.0) / 4  # bce(-100, 1) = 100 (to 1e-40)
    loss = masked_bce(logits.unsqueeze(1), trimap)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    # the don't-care pixels may hold anything, even inf: they change neither loss nor gradient
    wild = logits.clone()
    wild[0, 0, 2], wild[0, 1, 1] = -1e9, float("inf")
    wild.requires_grad_(True)
    loss2 = masked_bce(wild, trimap)
    loss2.backward()
    assert loss2.item() == pytest.approx(by_hand, rel=1e-6)
    assert wild.grad[0, 0, 2] == 0 and wild.grad[0, 1, 1] == 0 and wild.grad[0, 0, 0] != 0


def test_loss_without_counted_pixels_is_zero_not_nan():
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = masked_bce(logits, torch.full((2, 4, 4), 128, dtype=torch.uint8))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


# -- crops ------------------------------------------------------------------------------------
def scene(n: int = 8, h: int = 96, w: int = 128, seed: int = 0):
    """Frames with a bright square object (positives) on a dark noisy background (negatives),
    a don't-care ring around it, and the right 16 columns as slot padding."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, (n, h, w, 3), dtype=np.uint8)
    tri = np.zeros((n, h, w), np.uint8)
    boxes = []
    for i in range(n):
        s = int(rng.integers(12, 28))
        y, x = int(rng.integers(4, h - s - 4)), int(rng.integers(4, w - 16 - s - 4))
        frames[i, y : y + s, x : x + s] = (220, 180, 40)
        tri[i, y - 2 : y + s + 2, x - 2 : x + s + 2] = 128
        tri[i, y : y + s, x : x + s] = 255
        boxes.append((x, y, x + s, y + s))
    tri[:, :, w - 16 :] = 128
    frames[:, :, w - 16 :] = 0
    valid = torch.tensor([[0, 0, h, w - 16]] * n)
    return torch.from_numpy(frames), torch.from_numpy(tri), valid, boxes


PLAIN = dict(paste=0.0, hue=0.0, grayscale=0.0)  # no copy-paste and no colour changes beyond the test's own


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_positive_boxes_are_the_bounding_boxes():
    frames, tri, valid, boxes = scene()
    got, has = positive_boxes(tri)
    assert has.all()
    assert got.tolist() == [list(map(float, b)) for b in boxes]
    empty = torch.zeros((1, 8, 8), dtype=torch.uint8)
    assert not positive_boxes(empty)[1].any()


def test_crops_jitter_around_the_segment_with_positives_inside():
    frames, tri, valid, boxes = scene(n=1)
    cfg = CropConfig(random_fraction=0.0, brightness=0, contrast=0, saturation=0, **PLAIN)
    c = make_crops(frames, tri, valid, cfg, size=64, generator=gen(0), per_frame=64)
    assert c.images.shape == (64, 3, 64, 64) and c.targets.shape == (64, 64, 64)
    assert c.images.dtype == torch.float32 and c.targets.dtype == torch.uint8
    x0, y0, x1, y1 = boxes[0]
    cx, cy, side = c.boxes[:, 0], c.boxes[:, 1], c.boxes[:, 2]
    # position and scale vary: a box always centred on the object would let a centred blob win
    assert cx.std() > 1.0 and cy.std() > 1.0 and side.std() > 1.0
    off = torch.maximum((cx - (x0 + x1) / 2).abs(), (cy - (y0 + y1) / 2).abs())
    assert off.max() <= cfg.shift * side.max() + 1e-3 and off.max() > 0.5
    assert (side >= cfg.context_min * (x1 - x0) - 1e-3).all()
    # every crop holds positives, and its labels are only 0, 128, 255
    assert all((t == 255).any() for t in c.targets)
    assert set(np.unique(c.targets.numpy())) <= {0, 128, 255}
    # the object's colour sits under the positive labels (image and labels are aligned)
    pos = c.targets == 255
    red, blue = c.images[:, 0][pos], c.images[:, 2][pos]  # the object is (220, 180, 40)
    assert red.mean() > 200 and blue.mean() < 60


def test_crops_are_deterministic_given_the_seed():
    frames, tri, valid, _ = scene()
    cfg = CropConfig()
    a = make_crops(frames, tri, valid, cfg, 64, generator=gen(3))
    b = make_crops(frames, tri, valid, cfg, 64, generator=gen(3))
    c = make_crops(frames, tri, valid, cfg, 64, generator=gen(4))
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.boxes, c.boxes)


def test_flip_mirrors_image_and_labels_and_colour_jitter_keeps_geometry():
    frames, tri, valid, _ = scene(n=1)
    plain = CropConfig(random_fraction=0.0, flip=False, brightness=0, contrast=0, saturation=0, **PLAIN)
    flips = CropConfig(random_fraction=0.0, flip=True, brightness=0, contrast=0, saturation=0, **PLAIN)
    a = make_crops(frames, tri, valid, plain, 64, generator=gen(1), per_frame=16)
    b = make_crops(frames, tri, valid, flips, 64, generator=gen(1), per_frame=16)
    flipped = b.boxes[:, 3] < 0
    assert 0 < flipped.sum() < 16 and (a.boxes[:, 3] > 0).all()
    assert torch.allclose(a.boxes[:, :3], b.boxes[:, :3])  # same boxes, only mirrored
    assert torch.allclose(b.images[flipped], a.images[flipped].flip(-1), atol=1e-3)
    assert torch.equal(b.targets[flipped], a.targets[flipped].flip(-1))
    assert torch.equal(b.images[~flipped], a.images[~flipped])
    jit = make_crops(
        frames, tri, valid, CropConfig(random_fraction=0.0, flip=False, paste=0.0), 64, generator=gen(1), per_frame=16
    )
    assert torch.equal(jit.targets, a.targets)  # colour changes, labels and geometry do not
    assert not torch.allclose(jit.images, a.images, atol=1.0)
    assert jit.images.min() >= 0 and jit.images.max() <= 255
    means = jit.images.mean((2, 3)) / a.images.mean((2, 3)).clamp(min=1)
    assert means.std(0).max() > 0.02  # factors differ from crop to crop


def test_copy_paste_puts_another_crops_object_with_its_labels_and_a_dont_care_rim():
    frames, tri, valid, _ = scene(n=8)
    base = CropConfig(random_fraction=0.0, flip=False, brightness=0, contrast=0, saturation=0, **PLAIN)
    plain = make_crops(frames, tri, valid, base, 64, generator=gen(5))
    pasted = make_crops(frames, tri, valid, CropConfig(**{**base.__dict__, "paste": 1.0}), 64, generator=gen(5))
    assert plain.pasted is None and pasted.pasted is not None
    region = pasted.pasted
    assert region.any(dim=(1, 2)).sum() >= 6  # nearly every crop got an object (some land off the crop)
    pos = pasted.targets == 255
    # new positives appear only inside pasted regions, and they wear the object's colour
    new_pos = pos & ~(plain.targets == 255)
    assert new_pos.any() and not (new_pos & ~region).any()
    assert pasted.images[:, 0][new_pos].mean() > 200 and pasted.images[:, 2][new_pos].mean() < 60
    # the rim of the paste (pasted, not positive) is "don't care": the seam is never a label
    rim = region & ~pos
    assert rim.any() and (pasted.targets[rim] == 128).all()
    # outside the pasted regions nothing changed
    assert torch.equal(pasted.images.permute(0, 2, 3, 1)[~region], plain.images.permute(0, 2, 3, 1)[~region])
    assert torch.equal(pasted.targets[~region], plain.targets[~region])


def test_dilate_is_a_square_max_pool():
    g = torch.Generator().manual_seed(3)
    mask = torch.rand((6, 64, 48), generator=g) > 0.995
    mask[0, 0, 0] = mask[1, -1, -1] = True  # corners: the padding must not leak or cut
    for r in (1, 3, 5):
        want = torch.nn.functional.max_pool2d(mask.unsqueeze(1).float(), 2 * r + 1, 1, r).squeeze(1) > 0
        assert torch.equal(dilate(mask, r), want)
    assert not dilate(torch.zeros((1, 8, 8), dtype=torch.bool), 2).any()


def test_hue_rotation_keeps_luma_and_grayscale_makes_grey():
    frames, tri, valid, _ = scene(n=4)
    base = dict(random_fraction=0.0, flip=False, brightness=0, contrast=0, saturation=0, paste=0.0)
    a = make_crops(frames, tri, valid, CropConfig(**base), 64, generator=gen(2), per_frame=4)
    b = make_crops(frames, tri, valid, CropConfig(**base, hue=0.5), 64, generator=gen(2), per_frame=4)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    pos = a.targets == 255  # the saturated object: its hue turns, its brightness stays
    la, lb = (a.images * luma).sum(1)[pos], (b.images * luma).sum(1)[pos]
    assert (la - lb).abs().mean() < 6.0
    assert (a.images - b.images).abs().permute(0, 2, 3, 1)[pos].mean() > 20
    g = make_crops(frames, tri, valid, CropConfig(**base, grayscale=1.0), 64, generator=gen(2), per_frame=4)
    assert torch.allclose(g.images[:, 0], g.images[:, 1], atol=1e-3) and torch.allclose(
        g.images[:, 1], g.images[:, 2], atol=1e-3
    )


def test_samples_without_positives_get_random_crops_and_outside_is_dont_care():
    frames, tri, valid, _ = scene(n=4)
    tri[2:] = torch.where(tri[2:] == 255, torch.zeros_like(tri[2:]), tri[2:])  # samples 2, 3: no positives
    c = make_crops(
        frames,
        tri,
        valid,
        CropConfig(random_fraction=0.0, context_min=3.0, context_max=4.0),
        64,
        generator=gen(0),
        per_frame=8,
    )
    assert not c.random[c.source < 2].any() and c.random[c.source >= 2].all()
    # random boxes stay inside the valid area
    r = c.boxes[c.random]
    assert (r[:, 0] - r[:, 2] / 2 >= -1e-3).all() and (r[:, 0] + r[:, 2] / 2 <= 112 + 1e-3).all()
    # large context boxes around objects near the border leave the frame: labels say don't care there
    big = make_crops(
        frames[:1],
        tri[:1],
        valid[:1],
        CropConfig(random_fraction=0, context_min=6, context_max=6, shift=0),
        64,
        generator=gen(0),
    )
    side, cx = big.boxes[0, 2].item(), big.boxes[0, 0].item()
    assert cx - side / 2 < 0 or cx + side / 2 > 128
    assert (big.targets == 128).sum() > 0
    # the alexnet target: s x s labels of the same box
    small = make_crops(frames, tri, valid, CropConfig(), 67, target_size=56, generator=gen(0))
    assert small.images.shape[-1] == 67 and small.targets.shape[-1] == 56


# -- models -----------------------------------------------------------------------------------
def test_compact_forward_backward_any_multiple_of_32():
    torch.manual_seed(0)
    cfg = ModelConfig(width=8, blocks=[1, 1, 1, 1])
    m = build_model(cfg, 64)
    assert isinstance(m, CompactNet) and m.stride == 32 and "mask" in m.heads
    x = m.normalize(torch.randint(0, 256, (2, 3, 96, 160), dtype=torch.uint8))
    feats = m.features(x)
    assert [f.shape[-1] for f in feats] == [40, 20, 10, 5] and [f.shape[1] for f in feats] == [8, 16, 32, 64]
    y = m(x)
    assert y.shape == (2, 1, 96, 160)
    assert torch.sigmoid(y).mean().item() == pytest.approx(0.25, abs=0.05)  # the foreground prior
    y.mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert output_size(m, 64) == 64


def test_alexnet_paper_sizes_and_other_inputs():
    torch.manual_seed(0)
    m = build_model(ModelConfig(backbone="alexnet", width=16), 227)
    assert isinstance(m, AlexNet) and m.input_size == 227
    x = torch.randn(2, 3, 227, 227)
    y = m(x)
    assert y.shape == (2, 1, 56, 56) and output_size(m, 227) == 56
    y.mean().backward()
    assert upsample_logits(y, (227, 227)).shape == (2, 1, 227, 227)
    assert [f.shape[-1] for f in m.features(x)] == [27, 13, 6]  # pool1, pool2, pool5 as in AlexNet
    assert m.heads["mask"].fc.in_features == round(16 * 256 / 96) * 36
    with pytest.raises(ValueError, match="built for 227x227"):
        m(torch.randn(1, 3, 128, 128))
    m128 = build_model(ModelConfig(backbone="alexnet", width=16), 128)
    assert m128(torch.randn(1, 3, 128, 128)).shape == (1, 1, 56, 56)
    full = build_model(ModelConfig(backbone="alexnet"), 227)  # the paper's widths: 96, 256, 384, 384, 256
    assert [full.conv1[0].out_channels, full.conv2[0][0].out_channels] == [96, 256]


def test_architecture_signature_names_what_weights_depend_on():
    a = architecture(ModelConfig(width=16), 128)
    assert a == architecture(ModelConfig(width=16), 224)  # compact: any input size
    assert a != architecture(ModelConfig(width=24), 128)
    assert architecture(ModelConfig(backbone="alexnet"), 227) != architecture(ModelConfig(backbone="alexnet"), 224)


def test_learner_config_section_and_round_trip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("learner:\n  model:\n    width: 16\n  crops:\n    size: 96\n  train:\n    device: cpu\n")
    cfg = load_config(p).learner
    assert cfg.model.width == 16 and cfg.crop_size == 96 and cfg.train.device == "cpu"
    assert LearnerConfig().crop_size == 128
    alex = LearnerConfig(model=ModelConfig(backbone="alexnet"))
    assert alex.crop_size == 227 and alex.model.resolved_width() == 96
    import dataclasses

    assert learner_config_from_dict(dataclasses.asdict(cfg)) == cfg
    for bad, key in [
        ("learner:\n  crops:\n    size: 100\n", "learner.crops.size"),
        ("learner:\n  model:\n    backbone: vgg\n", "learner.model.backbone"),
        ("learner:\n  train:\n    device: tpu\n", "learner.train.device"),
        ("learner:\n  model:\n    blocks: [1, 2]\n", "learner.model.blocks"),
    ]:
        p.write_text(bad)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(p)
