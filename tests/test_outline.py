"""Outline evidence for flat interiors (streamer/motion/outline.py): flat regions, the motion of
their outline, and a flat box that the pipeline finds whole with it and only by its edges without."""

from __future__ import annotations

import cv2
import numpy as np

from streamer.config import FlowConfig, MotionConfig
from streamer.motion.flow import image_gradient
from streamer.motion.outline import flat_regions, outline_motion, with_outline
from streamer.motion.superpixels import describe
from tests._media import flat_box_clip
from tests._pipeline import config, run_segmenter


def _quadrants() -> tuple[np.ndarray, np.ndarray]:
    """Four 20x20 superpixels on a 40x40 image: 0 and 1 (top) one red, 2 a slightly different red,
    3 blue."""
    labels = np.zeros((40, 40), np.int32)
    labels[:20, 20:], labels[20:, :20], labels[20:, 20:] = 1, 2, 3
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:20] = (200, 30, 30)
    rgb[20:, :20] = (196, 34, 30)
    rgb[20:, 20:] = (30, 30, 200)
    return labels, rgb


def test_flat_superpixels_of_one_colour_merge_and_textured_or_other_coloured_ones_do_not():
    labels, rgb = _quadrants()
    sp = describe(labels, cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab))
    flat = np.zeros(4, np.float32)
    region = flat_regions(sp, flat, max_reliability=0.5, max_colour_step=8.0)
    assert region[0] == region[1] == region[2] != region[3]
    textured = np.array([0.0, 0.9, 0.0, 0.0], np.float32)  # its motion is measured: it stays alone
    region = flat_regions(sp, textured, max_reliability=0.5, max_colour_step=8.0)
    assert region[0] == region[2] and len({region[0], region[1], region[3]}) == 3
    strict = flat_regions(sp, flat, 0.5, max_colour_step=1.0)  # the slightly different red stays apart
    assert strict[0] == strict[1] and len({strict[0], strict[2], strict[3]}) == 3


def test_outline_motion_is_the_weighted_saliency_just_inside_the_outline_not_at_the_frame_border():
    labels = np.zeros((60, 60), np.int32)
    labels[20:40, 20:40] = 1  # a square region inside region 0
    sp = describe(labels, np.zeros((60, 60, 3), np.uint8))
    region = np.array([0, 1])
    weight = np.ones((60, 60), np.float32)
    moving = np.zeros((60, 60), np.float32)
    moving[18:42, 18:42] = 1.0  # the square's outline moved, on both sides of it
    value, support = outline_motion(sp, region, moving, weight, band=2)
    assert value[1] == 1.0 and value[0] == 1.0  # region 0's only outline is the square: the border is none
    assert support[1] == 1.0
    half = moving.copy()
    half[:, 30:] = 0.0  # only the left half of the outline moved
    value, _ = outline_motion(sp, region, half, weight, band=2)
    assert 0.4 < value[1] < 0.6
    unsure = weight.copy()
    unsure[:, 30:] = 0.0  # ... and the right half could not be measured: it does not count
    value, support = outline_motion(sp, region, half, unsure, band=2)
    assert value[1] == 1.0 and 0.4 < support[1] < 0.6


def test_edges_along_the_motion_do_not_count_as_static_outline():
    """A flat square sliding sideways: its left and right edges move, its top and bottom lie along
    the motion and read static (the aperture problem). Told the motion and the image gradient, the
    outline counts only the edges that can see it."""
    labels = np.zeros((60, 60), np.int32)
    labels[20:40, 20:40] = 1
    sp = describe(labels, np.zeros((60, 60, 3), np.uint8))
    region = np.array([0, 1])
    image = np.zeros((60, 60), np.float32)
    image[20:40, 20:40] = 100.0
    gradient = image_gradient(image)
    moving = np.zeros((60, 60), np.float32)
    moving[18:42, 18:23] = moving[18:42, 37:42] = 1.0  # the left and right edges, not the top and bottom
    residual = np.zeros((60, 60, 2), np.float32)
    residual[..., 0] = 2.0 * moving  # 2 px a frame to the right where it moved
    weight = np.ones((60, 60), np.float32)
    plain, support = outline_motion(sp, region, moving, weight, band=2)
    seen, seen_support = outline_motion(sp, region, moving, weight, band=2, residual=residual, gradient=gradient)
    assert 0.3 < plain[1] < 0.7  # half the outline reads static
    assert seen[1] > 0.95 and seen_support[1] == support[1] == 1.0
    still = outline_motion(sp, region, moving * 0, weight, band=2, residual=residual * 0, gradient=gradient)[0]
    assert still[1] == 0.0  # a region that does not move stays static


def test_an_edge_that_a_textured_mover_explains_belongs_to_the_mover():
    """Flat background (region 0) around a textured square that moves (1) and one that does not
    (2). The flow smears the mover's motion onto both sides of its edge, so half the background's
    outline reads moving. Told who is textured and moving (`owner`: reliability x saliency), the
    background leaves that edge to the mover and reads static; the mover itself is unchanged."""
    labels = np.zeros((60, 90), np.int32)
    labels[20:40, 10:30], labels[20:40, 60:80] = 1, 2
    sp = describe(labels, np.zeros((60, 90, 3), np.uint8))
    region = np.array([0, 1, 2])
    moving = np.zeros((60, 90), np.float32)
    moving[17:43, 7:33] = 1.0
    weight = np.ones((60, 90), np.float32)
    owner = sp.paint(np.array([0.0, 1.0, 0.0], np.float32))  # square 2 is textured too, but static
    plain, support = outline_motion(sp, region, moving, weight, band=2)
    owned, owned_support = outline_motion(sp, region, moving, weight, band=2, owner=owner)
    assert 0.3 < plain[0] < 0.7
    assert owned[0] < 0.1, owned[0]
    assert owned[1] == plain[1] == 1.0 and owned[2] == plain[2] == 0.0
    assert np.array_equal(owned_support, support)  # how well the outline was measured: unchanged
    # a flat patch on a textured object that moves with it: its whole outline is claimed, and
    # what is left of it still says "moved"
    patch = outline_motion(sp, region, moving, weight, band=2, owner=sp.paint(np.array([1.0, 0.0, 0.0])))[0]
    assert patch[1] == 1.0


def test_outline_evidence_counts_in_proportion_to_what_texture_could_not_say():
    sal, value = np.array([0.0, 0.0, 0.8], np.float32), np.array([1.0, 1.0, 0.0], np.float32)
    rel, support = np.array([0.0, 1.0, 0.2], np.float32), np.ones(3, np.float32)
    s, r = with_outline(sal, rel, value, support, gain=0.5)
    assert s[0] == 1.0 and r[0] == 0.5  # nothing measured inside: the outline's answer, at its weight
    assert s[1] == 0.0 and r[1] == 1.0  # fully measured: its own answer stands
    assert 0.0 < s[2] < 0.8 and r[2] > 0.2  # a static outline pulls a weakly measured "moved" down
    assert np.allclose(with_outline(sal, rel, value, np.zeros(3, np.float32), 0.5)[0], sal)  # no outline measured


def _smooth_texture() -> np.ndarray:
    """Blurred noise: texture the flow can follow right up to a box's edge."""
    rng = np.random.default_rng(3)
    bg = cv2.GaussianBlur(rng.normal(0, 1, (180, 240, 3)).astype(np.float32), (0, 0), 3)
    return np.clip(bg / bg.std() * 30 + 110, 0, 255).astype(np.uint8)


def _box_scores(gain: float, flow: FlowConfig | None = None) -> tuple[float, float]:
    # a bright flat box over smooth texture: its inside has nothing to track, its outline does
    frames, masks = flat_box_clip(colour=(200, 200, 60), background=_smooth_texture())
    cfg = config(outline_gain=gain)
    cfg.flow = flow or cfg.flow
    results, _ = run_segmenter(frames, cfg)
    pairs = list(zip(results[4:], masks[4:]))
    iou = np.mean([((r.prob >= 0.5) & m).sum() / ((r.prob >= 0.5) | m).sum() for r, m in pairs])
    outside = np.mean([r.prob[~m].mean() for r, m in pairs])
    return float(iou), float(outside)


def test_the_pipeline_finds_a_flat_box_whole_by_its_outline():
    assert MotionConfig().outline_gain > 0  # on by default
    (iou_without, out_without), (iou_with, out_with) = _box_scores(0.0), _box_scores(MotionConfig().outline_gain)
    assert iou_without < 0.4 and iou_with > 0.7, (iou_without, iou_with)
    assert out_with < out_without + 0.01  # no halo bought with it


def test_the_flat_box_is_found_whole_with_the_coarser_flow_too():
    """The default flow (at the working resolution) measures the box's edges sharply, and its top
    and bottom, which lie along the motion, read static: without the aperture weighting the box was
    lost (IoU 0.00). The flow of before 2026-12-07 (half the resolution) smears the corners' motion
    along them; the box is found whole with either (IoU 0.94 on the default flow, 0.89 on the old one
    with the vote's knobs retuned for the default flow, over 0.9 with the knobs before)."""
    iou, _ = _box_scores(MotionConfig().outline_gain, FlowConfig(preset="fast", finest_scale=1, patch_stride=0))
    assert iou > 0.85, iou
