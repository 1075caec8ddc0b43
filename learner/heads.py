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

The heads know the backbone only by what it reports (learner/model.py MaskNet): its pyramid's
channels and the width and output scale of a decoder over it. The flow the segments loss needs is
cropped like the images (learner/crops.py crop_flow).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from learner.config import HeadsConfig
from learner.layers import conv_bn


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


def add_heads(model: nn.Module, cfg: HeadsConfig) -> nn.Module:
    """Attach the enabled extra heads to model.heads (in output order: embedding, segments).
    Their weights are drawn after the backbone's, so the backbone starts the same either way.
    model: a backbone of learner/model.py (it reports pyramid_channels, decoder_channels and
    decoder_upsample)."""
    chans = list(model.pyramid_channels)
    if cfg.embedding.enabled:
        e = cfg.embedding
        model.heads["embedding"] = EmbeddingHead(chans[-1], e.hidden, e.dim)
    if cfg.segments.enabled:
        head = SegmentsHead(chans, model.decoder_channels, cfg.segments.count, model.decoder_upsample)
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


def forward_heads(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
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
