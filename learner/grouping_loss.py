"""The S3-CNN grouping losses (Mahendran et al. 2018, section 3): soft segments should each hold
one coherent motion. The flow is the target, never an input.

  affine   per segment l, the weighted least-squares affine fit of the flow, weights s_l(x):
           minimise sum_x s_l(x) |A_l [x, y, 1] - f(x)|^2, solved in the forward pass from the
           normal equations (3 x 3, one right-hand side per flow component: 6 parameters) with
           a small ridge, by torch.linalg.solve, so gradients flow through the fit. The flow is
           then predicted as sum_l s_l(x) A_l(x), and the loss is a robust residual against f.
  entropy  the alternative for noisy real flow: per segment a soft histogram of the flow
           magnitude (triangular bin kernels, differentiable in s); the loss is the segments'
           mass-weighted histogram entropy, low when each segment holds one speed.

Both count only valid pixels (the sample has flow, the point lies inside the image); a batch
without one gives 0 with zero gradients, never NaN. Nothing here waits for the device (no host
sync): the trainer knows from the batch's has_flow whether to compute the loss at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from learner.config import SegmentsHeadConfig


def _resize(
    logits: torch.Tensor, flow: torch.Tensor, ok: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segment probabilities, flow (in pixels of the new size) and validity at size x size."""
    logits = logits.float()
    if logits.shape[-1] != size or logits.shape[-2] != size:
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    s = torch.softmax(logits, dim=1)
    if flow.shape[-1] != size:
        scale = size / flow.shape[-1]
        flow = F.interpolate(flow.float(), size=(size, size), mode="bilinear", align_corners=False) * scale
        ok = (
            F.interpolate(ok.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            > 0.999
        )
    return s, flow.float(), ok


def affine_fit(weights: torch.Tensor, flow: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """Weighted least-squares affine flow per segment.

    weights: N x L x H x W (s_l times validity); flow: N x 2 x H x W.
    Returns N x L x 3 x 2: per segment [a_x, b_x; a_y, b_y; c_x, c_y] with f ~ [x, y, 1] @ theta,
    x and y in [-1, 1] across the map (conditioning does not depend on the map's size)."""
    n, segs, h, w = weights.shape
    phi = _design(h, w, weights.device)  # P x 3
    wp = weights.reshape(n, segs, h * w)
    fp = flow.reshape(n, 2, h * w).transpose(1, 2)  # N x P x 2
    outer = (phi.unsqueeze(2) * phi.unsqueeze(1)).reshape(h * w, 9)  # as matrix products: fast
    a = (wp @ outer).view(n, segs, 3, 3)
    b = torch.bmm(wp, (phi.view(1, -1, 3, 1) * fp.unsqueeze(2)).reshape(n, h * w, 6)).view(n, segs, 3, 2)
    mass = wp.sum(-1)[..., None, None]
    eye = torch.eye(3, device=weights.device)
    return torch.linalg.solve(a + (ridge * mass + 1e-6) * eye, b)


def _design(h: int, w: int, device: torch.device) -> torch.Tensor:
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones(h * w, device=device)], 1)


def robust(r2: torch.Tensor, kind: str, scale: float) -> torch.Tensor:
    """A robust penalty of the squared residual length r2 (pixels^2)."""
    if kind == "charbonnier":
        return torch.sqrt(r2 + scale * scale) - scale
    if kind == "huber":  # the sqrt only where it is used: its gradient at 0 is infinite
        return torch.where(r2 < scale * scale, 0.5 * r2 / scale, torch.sqrt(r2.clamp_min(scale * scale)) - 0.5 * scale)
    if kind == "l2":
        return r2
    raise ValueError(f"robust loss {kind!r}: expected charbonnier, huber or l2")


def affine_residual(
    segments: torch.Tensor,
    flow: torch.Tensor,
    ok: torch.Tensor,
    ridge: float = 1e-4,
    kind: str = "charbonnier",
    scale: float = 0.5,
) -> torch.Tensor:
    """Mean robust residual between the flow and the segments' recombined affine fits.
    segments: N x L x H x W probabilities (sum 1 over L); flow N x 2 x H x W; ok N x H x W bool."""
    n, segs, h, w = segments.shape
    v = ok.float()
    theta = affine_fit(segments * v.unsqueeze(1), flow, ridge)  # N x L x 3 x 2
    phi = _design(h, w, segments.device)
    pred = (phi @ theta).transpose(-1, -2).reshape(n, segs, 2, h, w)  # N x L x P x 2 -> N x L x 2 x H x W
    recombined = (segments.unsqueeze(2) * pred).sum(1)  # N x 2 x H x W
    r2 = (recombined - flow).square().sum(1)
    return (robust(r2, kind, scale) * v).sum() / v.sum().clamp_min(1)


def entropy_loss(segments: torch.Tensor, flow: torch.Tensor, ok: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """Mass-weighted entropy (nats) of each segment's soft flow-magnitude histogram; magnitudes
    are scaled by each crop's largest valid magnitude, so the bins span [0, 1] in every crop."""
    v = ok.float()
    keep = (v.flatten(1).sum(1) > 0).float()  # crops with a valid pixel
    n, segs = segments.shape[:2]
    mag = flow.square().sum(1).sqrt() * v  # N x H x W
    top = mag.flatten(1).amax(1).clamp_min(1e-3).view(n, 1, 1)
    u = (mag / top).clamp(0, 1).flatten(1)  # N x P in [0, 1]
    centres = torch.linspace(0, 1, bins, device=u.device)
    kern = (1 - (u.unsqueeze(1) - centres.view(1, bins, 1)).abs() * (bins - 1)).clamp_min(0)  # N x B x P
    w = (segments * v.unsqueeze(1)).flatten(2)  # N x L x P
    hist = torch.einsum("nlp,nbp->nlb", w, kern)
    mass = hist.sum(-1)  # N x L
    p = hist / mass.clamp_min(1e-8).unsqueeze(-1)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)  # N x L
    per_crop = (mass * ent).sum(1) / mass.sum(1).clamp_min(1e-8)
    return (per_crop * keep).sum() / keep.sum().clamp_min(1)


def segments_loss(logits: torch.Tensor, flow: torch.Tensor, ok: torch.Tensor, cfg: SegmentsHeadConfig) -> torch.Tensor:
    """The configured grouping loss of the segments head's logits (N x L x h x w, any size) against
    the cropped flow (N x 2 x S x S pixels, ok N x S x S), at cfg.loss_size."""
    s, f, v = _resize(logits, flow, ok, cfg.loss_size)
    if cfg.loss == "affine":
        return affine_residual(s, f, v, cfg.ridge, cfg.robust, cfg.robust_scale)
    return entropy_loss(s, f, v, cfg.bins)
