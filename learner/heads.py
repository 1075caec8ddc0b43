"""The multi-task heads on the shared backbone (Pathak et al. 2017, section 3: several cheap heads
on one net), switched on in `learner.heads`:

  embedding  Wang & Gupta 2015: the top feature map, global-pooled, through a small MLP to an
             L2-normalised vector, one per input image (feed a patch to embed a patch).
             Loss: learner/embedding_loss.py, on tracked-patch pairs.
  segments   S3-CNN (Mahendran et al. 2018): L soft segments (softmax over L channels) from the
             feature pyramid, at stride 4 and upsampled x4 like the mask. The flow enters only the
             loss (learner/grouping_loss.py), never the input.

Heads live in `model.heads` next to `mask`, so one backbone pass serves them all and the exporter
names each output after its head. With only the mask head (the default) nothing here runs and
the model is exactly the plain mask net.

    add_heads(model, cfg.heads)                        # build_model(..., heads) calls this
    out = forward_heads(model, x, ["mask", "segments"])  # {name: raw head output}
    flow, ok = crop_flow(flows, has_flow, valid, crops.boxes, crops.source, size)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from learner.config import HeadsConfig
from learner.model import MaskNet, conv_bn


class EmbeddingHead(nn.Module):
    """Global average pool of the top feature -> Linear -> ReLU -> Linear -> L2 normalisation."""

    def __init__(self, cin: int, hidden: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        x = pyramid[-1].mean(dim=(2, 3))
        x = self.fc2(F.relu(self.fc1(x)))
        return F.normalize(x.float(), dim=1, eps=1e-6)  # N x dim, unit length


class SegmentsHead(nn.Module):
    """Top-down decoder over the pyramid (1x1 laterals, bilinear upsampling, sums), one 3x3 conv at
    the finest level, L logits, upsampled by `up` (compact: x4, to the input size). Returns logits;
    the softmax over L is taken by the loss and by the exported graph."""

    def __init__(self, chans: list[int], d: int, count: int, up: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in chans)
        self.smooth = conv_bn(d, d, 3)
        self.logit = nn.Conv2d(d, count, 1)
        self.up = up

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](pyramid[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(pyramid[:-1])):
            x = lat(f) + F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False)
        x = self.logit(self.smooth(x))
        return F.interpolate(x, scale_factor=self.up, mode="bilinear", align_corners=False) if self.up > 1 else x


def pyramid_channels(model: MaskNet) -> list[int]:
    """Channels of each level of model.features()."""
    if hasattr(model, "channels"):  # compact
        return list(model.channels)
    return [model.conv1[0].out_channels, model.conv2[0][0].out_channels, model.conv345[2][0].out_channels]


def add_heads(model: MaskNet, cfg: HeadsConfig) -> MaskNet:
    """Attach the enabled extra heads to model.heads (in output order: embedding, segments).
    Their weights are drawn after the backbone's, so the backbone starts the same either way."""
    chans = pyramid_channels(model)
    w = model.cfg.resolved_width()
    if cfg.embedding.enabled:
        e = cfg.embedding
        model.heads["embedding"] = EmbeddingHead(chans[-1], e.hidden, e.dim)
    if cfg.segments.enabled:
        compact = hasattr(model, "channels")
        d = (model.cfg.decoder or 2 * w) if compact else 2 * chans[0]
        head = SegmentsHead(chans, d, cfg.segments.count, 4 if compact else 1)
        for m in head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias) if m.bias is not None else None
        nn.init.normal_(head.logit.weight, std=0.01)  # near-uniform segments at the start
        model.heads["segments"] = head
    return model


def heads_architecture(cfg: HeadsConfig) -> dict:
    """What of the heads must match for weights to load; {} for the mask alone, so that mask-only
    checkpoints keep the architecture they always had."""
    out = {}
    if cfg.embedding.enabled:
        out["embedding"] = {"dim": cfg.embedding.dim, "hidden": cfg.embedding.hidden}
    if cfg.segments.enabled:
        out["segments"] = {"count": cfg.segments.count}
    return {"heads": out} if out else {}


def forward_heads(model: MaskNet, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """One backbone pass, the named heads on its pyramid."""
    pyramid = model.features(x)
    return {n: model.heads[n](pyramid) for n in names}


@dataclass
class HeadInputs:
    """What the extra heads' losses need beyond the crops, on the training device."""
    flows: torch.Tensor | None = None  # N x H x W x 2 (float16 from the buffer), slot pixels, t-1 -> t on t's grid
    has_flow: torch.Tensor | None = None  # N bool
    query: torch.Tensor | None = None  # n x P x P x 3 uint8: tracked-patch pairs (None: no pairs this step)
    tracked: torch.Tensor | None = None
    group: torch.Tensor | None = None  # n int64: one id per (camera, shot)


def crop_flow(flows: torch.Tensor, has_flow: torch.Tensor, valid: torch.Tensor, boxes: torch.Tensor,
              source: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow through the crops' boxes (learner/crops.py Crops.boxes: centre x, centre y, side,
    flip in slot pixels): M x 2 x size x size in pixels of the crop, and M x size x size bool where
    it counts (the sample has flow and the point lies inside the image, not its padding).
    Vectors are scaled by the crop's scale and x is negated for flipped crops."""
    n, h, w, _ = flows.shape
    m = boxes.shape[0]
    cx, cy, side, flip = boxes.float().unbind(1)
    theta = torch.zeros((m, 2, 3), device=boxes.device)
    theta[:, 0, 0] = flip * side / w
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 1] = side / h
    theta[:, 1, 2] = 2 * cy / h - 1
    grid = F.affine_grid(theta, [m, 1, size, size], align_corners=False)
    # the valid box and has_flow as a third channel, sampled like the flow: 1 only well inside
    ys = torch.arange(h, device=flows.device).view(1, h, 1)
    xs = torch.arange(w, device=flows.device).view(1, 1, w)
    v = valid.to(flows.device).long()
    inside = ((ys >= v[:, 0, None, None]) & (ys < (v[:, 0] + v[:, 2])[:, None, None])
              & (xs >= v[:, 1, None, None]) & (xs < (v[:, 1] + v[:, 3])[:, None, None]))
    ok = (inside & has_flow.to(flows.device).view(n, 1, 1)).float()
    src = torch.cat([flows.float().permute(0, 3, 1, 2), ok.unsqueeze(1)], 1)[source]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    scale = (size / side).view(m, 1, 1)
    flow = torch.stack([out[:, 0] * scale * flip.view(m, 1, 1), out[:, 1] * scale], 1)
    return flow, out[:, 2] > 0.999
