"""The mask ConvNet: a shared backbone whose feature pyramid feeds named heads.

    model = build_model(cfg.model, crop_size)
    logits = model(model.normalize(images))   # images: N x 3 x H x W float in 0..255
    pyramid = model.features(x)               # what later heads (embeddings, soft segments) attach to
    model.heads["mask"]                        # the mask head; add others to this ModuleDict

Two backbones:
  compact  fully convolutional ResNet-style net (stem to stride 4, residual stages at strides
           4, 8, 16, 32) and a light FPN decoder; logits at stride 4, upsampled bilinearly to the
           input size. Any input whose sides are multiples of `model.stride` (32).
  alexnet  the paper's net (Pathak et al. 2017, 4.1): AlexNet conv1-conv5 (batch norm instead of
           LRN) and one fully connected layer with s x s outputs (s = 56); the input size is fixed
           when the model is built (w = 227 in the paper) because the FC layer depends on it.

Only conv, batch norm, ReLU, max pool, linear, bilinear interpolation (align_corners=False)
and addition, with shapes fixed by the input shape: everything exports to ONNX.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from learner.config import HeadsConfig, ModelConfig
from learner.heads import add_heads, heads_architecture
from learner.layers import BasicBlock, conv_bn, upsample

FG_PRIOR = 0.25  # the heads start by predicting this foreground probability everywhere


class MaskNet(nn.Module):
    """Base of both backbones: input normalisation constants and the heads dictionary. Each
    backbone reports what heads on its pyramid need to know (learner/heads.py reads these):
    pyramid_channels (of each level of features()), decoder_channels (of a top-down decoder over
    the pyramid) and decoder_upsample (the decoder's output: from the finest level to this)."""

    stride = 1  # compact: input sides must be multiples of this
    input_size: int | None = None  # alexnet: the one input size the model accepts
    pyramid_channels: list[int]
    decoder_channels: int
    decoder_upsample: int

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer(
            "mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, persistent=False
        )
        self.heads = nn.ModuleDict()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W RGB in 0..255 (any float or uint8) -> the network's input."""
        return (images.float() - self.mean) / self.std

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> mask logits N x 1 x h x w (compact: the input size; alexnet: s x s)."""
        return self.heads["mask"](self.features(x))


class CompactNet(MaskNet):
    stride = 32

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        w = cfg.resolved_width()
        chans = [w, 2 * w, 4 * w, 8 * w]
        self.channels = self.pyramid_channels = chans
        self.decoder_channels = cfg.decoder or 2 * w
        self.decoder_upsample = 4  # stride 4 -> the input size
        self.stem = nn.Sequential(conv_bn(3, w, 3, 2), conv_bn(w, w, 3, 2))  # stride 4
        stages, cin = [], w
        for i, (cout, n) in enumerate(zip(chans, cfg.blocks)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(cin, cout, stride)] if (n > 0 or stride > 1 or cin != cout) else []
            blocks += [BasicBlock(cout, cout) for _ in range(max(0, n - 1))]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.heads["mask"] = FPNMaskHead(chans, cfg.decoder or 2 * w)
        init_weights(self)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature pyramid at strides 4, 8, 16, 32 (channels: width x 1, 2, 4, 8)."""
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class FPNMaskHead(nn.Module):
    """Top-down decoder (1x1 laterals, x2 bilinear upsampling, sums), one 3x3 conv at stride 4,
    a 1x1 logit, and x4 bilinear upsampling back to the input size."""

    def __init__(self, chans: list[int], d: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in chans)
        self.smooth = conv_bn(d, d, 3)
        self.logit = nn.Conv2d(d, 1, 1)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](pyramid[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(pyramid[:-1])):
            x = lat(f) + upsample(x, 2)
        return upsample(self.logit(self.smooth(x)), 4)


class AlexNet(MaskNet):
    def __init__(self, cfg: ModelConfig, input_size: int):
        super().__init__(cfg)
        w = cfg.resolved_width()
        c = [w, round(w * 256 / 96), round(w * 384 / 96), round(w * 384 / 96), round(w * 256 / 96)]
        self.input_size = input_size
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, c[0], 11, 4), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2)
        )
        self.conv2 = nn.Sequential(conv_bn(c[0], c[1], 5), nn.MaxPool2d(3, 2))
        self.conv345 = nn.Sequential(conv_bn(c[1], c[2]), conv_bn(c[2], c[3]), conv_bn(c[3], c[4]), nn.MaxPool2d(3, 2))
        self.pyramid_channels = [c[0], c[1], c[4]]
        self.decoder_channels = 2 * c[0]
        self.decoder_upsample = 1  # pool1's grid
        side = alexnet_feature_side(input_size)
        if side < 1:
            raise ValueError(f"alexnet needs an input of at least 67 px, got {input_size}")
        self.heads["mask"] = FCMaskHead(c[4] * side * side, cfg.mask_size)
        init_weights(self)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """pool1 (stride 8), pool2 (stride 16), pool5 (stride 32) feature maps."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(
                f"alexnet was built for {self.input_size}x{self.input_size} inputs, got {x.shape[-1]}x{x.shape[-2]}"
            )
        p1 = self.conv1(x)
        p2 = self.conv2(p1)
        return [p1, p2, self.conv345(p2)]


class FCMaskHead(nn.Module):
    """The paper's head: one fully connected layer with s x s outputs, reshaped to a mask."""

    def __init__(self, n_in: int, s: int):
        super().__init__()
        self.s = s
        self.fc = nn.Linear(n_in, s * s)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        return self.fc(torch.flatten(pyramid[-1], 1)).view(-1, 1, self.s, self.s)


def alexnet_feature_side(size: int) -> int:
    """Side of pool5 for a size x size input (conv1 11/4, three 3/2 max pools)."""
    s = (size - 11) // 4 + 1
    for _ in range(3):
        s = (s - 3) // 2 + 1
    return s


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions, small linear layers, zero biases; the mask head's logit starts
    at the foreground prior (FG_PRIOR)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    head = model.heads["mask"]
    last = head.logit if isinstance(head, FPNMaskHead) else head.fc
    nn.init.normal_(last.weight, std=0.01)
    nn.init.constant_(last.bias, math.log(FG_PRIOR / (1 - FG_PRIOR)))


def build_model(cfg: ModelConfig, crop_size: int, heads: HeadsConfig | None = None) -> MaskNet:
    """The configured network. `crop_size` fixes alexnet's input size (the compact net takes any).
    heads: the multi-task heads to attach (learner/heads.py); None or mask only: the plain mask net."""
    if cfg.backbone == "compact":
        model = CompactNet(cfg)
    elif cfg.backbone == "alexnet":
        model = AlexNet(cfg, crop_size)
    else:
        raise ValueError(f"learner.model.backbone {cfg.backbone!r}: expected compact or alexnet")
    if heads is not None and heads.extra():
        add_heads(model, heads)
    return model


def architecture(cfg: ModelConfig, crop_size: int, heads: HeadsConfig | None = None) -> dict:
    """What must match for weights to load: stored in checkpoints and compared on load. The extra
    heads appear only when enabled: mask-only checkpoints keep the architecture they always had."""
    extra = {}
    if heads is not None and heads.extra():
        extra = heads_architecture(heads)
    if cfg.backbone == "compact":
        return {
            "backbone": "compact",
            "width": cfg.resolved_width(),
            "blocks": list(cfg.blocks),
            "decoder": cfg.decoder or 2 * cfg.resolved_width(),
            **extra,
        }
    return {
        "backbone": cfg.backbone,
        "width": cfg.resolved_width(),
        "input_size": crop_size,
        "mask_size": cfg.mask_size,
        **extra,
    }


def output_size(model: MaskNet, crop_size: int) -> int:
    """Side of the logit map for a crop_size x crop_size input."""
    return model.cfg.mask_size if isinstance(model, AlexNet) else crop_size
