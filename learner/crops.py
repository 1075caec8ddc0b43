"""Training crops, as in Pathak et al. 2017 (4.1): a square box around the pseudo-labelled
segment (the bounding box of the trimap's positive pixels), jittered in scale and position so
that a blob in the centre of the box cannot win; horizontal flips and colour jitter. Samples
without positives (and `random_fraction` of the others) get a box placed at random.

Copy-paste (Ghiasi et al. 2021, "Simple Copy-Paste"): `paste` of the crops get the pseudo-labelled
object of another crop of the batch pasted on top. A learner fed by a few cameras sees the same
objects in front of the same backgrounds for hours; pasting breaks that pairing, so the net has to
learn what the objects look like rather than where in which scene they tend to be. The pasted
object is moved and scaled at random, and its rim is "don't care", so the seam of the paste is
never a label.

Vectorised on whatever device the tensors live on: one random draw per batch from a
torch.Generator (deterministic given its seed), one affine grid, two grid_sample calls.

    crops = make_crops(frames, trimaps, valid, cfg.crops, size=128, target_size=128, generator=g)
    crops.images   # M x 3 x size x size float32 RGB in 0..255 (not normalised)
    crops.targets  # M x target_size x target_size uint8 trimap; 128 where the box left the frame
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from learner.config import CropConfig
from learner.loss import DONT_CARE, POSITIVE

_LUMA = (0.299, 0.587, 0.114)


@dataclass
class Crops:
    images: torch.Tensor  # M x 3 x S x S float32, 0..255
    targets: torch.Tensor  # M x T x T uint8 trimap
    boxes: torch.Tensor  # M x 4 float32: centre x, centre y, side (slot pixels), flip (+1 / -1)
    random: torch.Tensor  # M bool: the box was placed at random (no positives, or random_fraction)
    source: torch.Tensor  # M long: which input sample each crop comes from
    pasted: torch.Tensor | None = None  # M x S x S bool: pixels pasted from another crop (copy-paste), or None


def positive_boxes(trimaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding boxes of the positive pixels: (N x 4 float x0, y0, x1, y1 in continuous pixel
    coordinates, edges included), and N bool: the sample has positives at all."""
    n, h, w = trimaps.shape
    pos = trimaps == POSITIVE
    rows, cols = pos.any(dim=2), pos.any(dim=1)
    ys = torch.arange(h, device=trimaps.device).expand(n, h)
    xs = torch.arange(w, device=trimaps.device).expand(n, w)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1) + 1
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1).float(), rows.any(1)


def crop_boxes(
    trimaps: torch.Tensor, valid: torch.Tensor, cfg: CropConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One jittered box per sample: (N x 4 centre x, centre y, side, flip) and N bool random."""
    n = trimaps.shape[0]
    dev = trimaps.device
    u = torch.rand((n, 8), generator=generator, device=dev)
    box, has = positive_boxes(trimaps)
    vy0, vx0, vh, vw = (valid[:, i].float() for i in range(4))
    short = torch.minimum(vh, vw)

    # around the segment: side = context x its longer side, centre shifted by up to `shift` x side
    long_side = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    context = torch.exp(math.log(cfg.context_min) + u[:, 0] * math.log(cfg.context_max / cfg.context_min))
    side = torch.maximum(long_side * context, cfg.min_side * short)
    side = torch.minimum(side, 1.25 * torch.maximum(vh, vw))
    cx = (box[:, 0] + box[:, 2]) / 2 + (2 * u[:, 1] - 1) * cfg.shift * side
    cy = (box[:, 1] + box[:, 3]) / 2 + (2 * u[:, 2] - 1) * cfg.shift * side

    # at random: side 0.4-1.0 of the shorter side, anywhere inside the valid area
    r_side = short * (0.4 + 0.6 * u[:, 3])
    r_cx = vx0 + r_side / 2 + u[:, 4] * (vw - r_side)
    r_cy = vy0 + r_side / 2 + u[:, 5] * (vh - r_side)
    rand = ~has | (u[:, 6] < cfg.random_fraction)

    flip = torch.where(u[:, 7] < 0.5, -1.0, 1.0) if cfg.flip else torch.ones_like(side)
    boxes = torch.stack(
        [torch.where(rand, r_cx, cx), torch.where(rand, r_cy, cy), torch.where(rand, r_side, side), flip], 1
    )
    return boxes, rand


def _grid(boxes: torch.Tensor, h: int, w: int, size: int) -> torch.Tensor:
    """Sampling grid (grid_sample, align_corners=False) of size x size points covering each box."""
    cx, cy, side, flip = boxes.unbind(1)
    theta = torch.zeros((boxes.shape[0], 2, 3), device=boxes.device)
    theta[:, 0, 0] = flip * side / w
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 1] = side / h
    theta[:, 1, 2] = 2 * cy / h - 1
    return F.affine_grid(theta, [boxes.shape[0], 1, size, size], align_corners=False)


def colour_jitter(images: torch.Tensor, cfg: CropConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in [1 - x, 1 + x], a hue rotation of
    up to +-hue of a turn, and grey with probability `grayscale`; in 0..255 RGB."""
    n = images.shape[0]
    u = torch.rand((n, 5, 1, 1, 1), generator=generator, device=images.device)
    b = 1 + cfg.brightness * (2 * u[:, 0] - 1)
    c = 1 + cfg.contrast * (2 * u[:, 1] - 1)
    s = torch.where(u[:, 3] < cfg.grayscale, 0.0, 1 + cfg.saturation * (2 * u[:, 2] - 1))
    luma = torch.tensor(_LUMA, device=images.device).view(1, 3, 1, 1)
    x = images * b
    mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - mean) * c + mean
    if cfg.hue:
        x = torch.einsum("nij,njhw->nihw", _hue_rotation(cfg.hue * (2 * u[:, 4, 0, 0, 0] - 1)), x)
    gray = (x * luma).sum(1, keepdim=True)
    x = gray + (x - gray) * s
    return x.clamp_(0, 255)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_rotation(turns: torch.Tensor) -> torch.Tensor:
    """N x 3 x 3 RGB -> RGB matrices that rotate the chroma plane (I, Q of YIQ) by `turns` x 2 pi,
    keeping luma."""
    a = turns * 2 * math.pi
    rot = torch.zeros((a.shape[0], 3, 3), device=a.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = a.cos(), -a.sin(), a.sin(), a.cos()
    yiq = _YIQ.to(a.device)
    return torch.linalg.inv(yiq) @ rot @ yiq


def paste_objects(
    images: torch.Tensor, targets: torch.Tensor, cfg: CropConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Copy-paste: each crop, with probability `paste`, gets the positive region of another crop
    of the batch (grown by `paste_rim` of the crop side, that ring labelled "don't care") pasted
    on top, moved by up to half the crop side and scaled by 0.7-1.3. Returns images, targets and
    the pasted pixels (M x S x S bool)."""
    m, t, s = targets.shape[0], targets.shape[-1], images.shape[-1]
    if m < 2 or cfg.paste <= 0:
        return images, targets, None
    dev = targets.device
    u = torch.rand((m, 5), generator=generator, device=dev)
    donor = (torch.arange(m, device=dev) + 1 + (u[:, 1] * (m - 1)).long().clamp_(max=m - 2)) % m
    # where each output pixel reads the donor: scale 0.7-1.3, shift up to half the side
    theta = torch.zeros((m, 2, 3), device=dev)
    zoom = 0.7 + 0.6 * u[:, 2]
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, 0, 2], theta[:, 1, 2] = 2 * u[:, 3] - 1, 2 * u[:, 4] - 1
    pos = (targets[donor] == POSITIVE).unsqueeze(1).float()
    grid_t = F.affine_grid(theta, [m, 1, t, t], align_corners=False)
    pos = F.grid_sample(pos, grid_t, mode="nearest", padding_mode="zeros", align_corners=False).squeeze(1) > 0
    pos &= (u[:, 0] < cfg.paste).view(m, 1, 1)
    r = max(1, round(cfg.paste_rim * t))
    region = dilate(pos, r)
    targets = torch.where(pos, POSITIVE, torch.where(region, DONT_CARE, targets)).to(torch.uint8)
    if s != t:
        region = F.interpolate(region.unsqueeze(1).float(), size=(s, s), mode="nearest").squeeze(1) > 0
    grid_s = grid_t if s == t else F.affine_grid(theta, [m, 3, s, s], align_corners=False)
    moved = F.grid_sample(images[donor], grid_s, mode="bilinear", padding_mode="zeros", align_corners=False)
    images = torch.where(region.unsqueeze(1), moved, images)
    return images, targets, region


def dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """N x H x W bool grown by r pixels (a (2r+1)-square): two 1-D box sums, the same result as
    a square max pool at a tenth of its cost on the CPU (max pooling also computes indices)."""
    x = mask.unsqueeze(1).float()
    x = F.avg_pool2d(x, (1, 2 * r + 1), 1, (0, r))
    return F.avg_pool2d(x, (2 * r + 1, 1), 1, (r, 0)).squeeze(1) > 0


@torch.no_grad()
def make_crops(
    frames: torch.Tensor,
    trimaps: torch.Tensor,
    valid: torch.Tensor,
    cfg: CropConfig,
    size: int,
    target_size: int | None = None,
    generator: torch.Generator | None = None,
    per_frame: int | None = None,
) -> Crops:
    """Cut `per_frame` (default cfg.per_frame) jittered crops from every sample.

    frames: N x H x W x 3 uint8 RGB (buffer slots); trimaps: N x H x W uint8; valid: N x 4
    (y0, x0, h, w) of the image inside its slot. All on one device; the crops are made there."""
    k = per_frame or cfg.per_frame
    n, h, w = trimaps.shape
    src = torch.arange(n, device=trimaps.device).repeat_interleave(k)
    tri = trimaps if k == 1 else trimaps[src]
    boxes, rand = crop_boxes(tri, valid[src], cfg, generator)
    img = frames.permute(0, 3, 1, 2).float()  # N x 3 x H x W, channels-last in memory already
    grid = _grid(boxes, h, w, size)
    img = F.grid_sample(img if k == 1 else img[src], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # the trimap is shifted by -128 so that zero padding outside the frame reads "don't care"
    t = tri.unsqueeze(1).float() - DONT_CARE
    t_grid = grid if (target_size or size) == size else _grid(boxes, h, w, target_size)
    t = F.grid_sample(t, t_grid, mode="nearest", padding_mode="zeros", align_corners=False)
    targets = (t.squeeze(1) + DONT_CARE).round_().to(torch.uint8)
    img, targets, pasted = paste_objects(img, targets, cfg, generator)
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue or cfg.grayscale:
        img = colour_jitter(img, cfg, generator)
    return Crops(img, targets, boxes, rand, src, pasted)


def crop_flow(
    flows: torch.Tensor,
    has_flow: torch.Tensor,
    valid: torch.Tensor,
    boxes: torch.Tensor,
    source: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow through the crops' boxes (Crops.boxes: centre x, centre y, side, flip in slot
    pixels), for the segments head's loss (learner/grouping_loss.py): M x 2 x size x size in
    pixels of the crop, and M x size x size bool where it counts (the sample has flow and the
    point lies inside the image, not its padding). Vectors are scaled by the crop's scale and x is
    negated for flipped crops.

    flows: N x H x W x 2 (slot pixels); has_flow: N bool; valid, source: as for make_crops."""
    n, h, w, _ = flows.shape
    m = boxes.shape[0]
    boxes = boxes.float()
    _, _, side, flip = boxes.unbind(1)
    grid = _grid(boxes, h, w, size)
    # the valid box and has_flow as a third channel, sampled like the flow: 1 only well inside
    ys = torch.arange(h, device=flows.device).view(1, h, 1)
    xs = torch.arange(w, device=flows.device).view(1, 1, w)
    v = valid.to(flows.device).long()
    inside = (
        (ys >= v[:, 0, None, None])
        & (ys < (v[:, 0] + v[:, 2])[:, None, None])
        & (xs >= v[:, 1, None, None])
        & (xs < (v[:, 1] + v[:, 3])[:, None, None])
    )
    ok = (inside & has_flow.to(flows.device).view(n, 1, 1)).float()
    src = torch.cat([flows.float().permute(0, 3, 1, 2), ok.unsqueeze(1)], 1)[source]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    scale = (size / side).view(m, 1, 1)
    flow = torch.stack([out[:, 0] * scale * flip.view(m, 1, 1), out[:, 1] * scale], 1)
    return flow, out[:, 2] > 0.999
