"""A checkpoint as a function: RGB frame (H x W x 3 uint8) -> foreground probability (H x W float32).

    predictor = Predictor("runs/r1/checkpoints/last.pt")
    prob = predictor(frame.image)

The compact net is fully convolutional: the frame is scaled to the resolution the net was trained
at (it fits the ring buffer's slot, keeping the aspect ratio, as training samples did; or kept
native), padded to a multiple of the net's stride, and the logits are cut back and resized to
the input size. AlexNet takes the frame resized to its fixed input (227 x 227 in the paper) and
its s x s mask is resized to the frame.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from common.errors import UserError
from learner.checkpoint import load_checkpoint
from learner.config import learner_config_from_dict
from learner.device import resolve_device
from learner.layers import upsample_logits
from learner.model import AlexNet, architecture, build_model


class Predictor:
    def __init__(self, checkpoint: str | Path, device: str | torch.device = "auto", native: bool = False):
        """native: run at the frame's own resolution instead of the training resolution."""
        self.path = Path(checkpoint)
        state = load_checkpoint(self.path, "cpu")
        self.cfg = learner_config_from_dict(state.get("config", {}))
        self.step = int(state["step"])
        crop = self.cfg.crop_size
        if state.get("arch") != architecture(self.cfg.model, crop, self.cfg.heads):
            raise UserError(f"{self.path}: checkpoint architecture {state.get('arch')} does not match its own config")
        self.device = device if isinstance(device, torch.device) else resolve_device(device, False)
        self.model = build_model(self.cfg.model, crop, self.cfg.heads)
        try:
            self.model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as e:
            raise UserError(f"{self.path}: checkpoint weights do not fit its architecture ({str(e)[:160]})") from None
        self.model.eval().to(self.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.slot = tuple(state["slot_size"]) if state.get("slot_size") else None  # (h, w)
        self.native = native

    def working_size(self, w: int, h: int) -> tuple[int, int]:
        """(w, h) the compact net runs at for a w x h frame."""
        if self.native or not self.slot:
            return w, h
        th, tw = self.slot
        scale = min(tw / w, th / h)
        return max(1, round(w * scale)), max(1, round(h * scale))

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if isinstance(self.model, AlexNet):
            s = self.model.input_size
            x = cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA if min(h, w) > s else cv2.INTER_LINEAR)
            logits = self._forward(x)
        else:
            ww, wh = self.working_size(w, h)
            x = image if (ww, wh) == (w, h) else cv2.resize(image, (ww, wh), interpolation=cv2.INTER_AREA)
            st = self.model.stride
            ph, pw = -wh % st, -ww % st
            if ph or pw:  # pad to a multiple of the stride; the padding is cut off again below
                x = cv2.copyMakeBorder(x, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
            logits = self._forward(x)[..., :wh, :ww]
        prob = torch.sigmoid(upsample_logits(logits.float(), (h, w)))
        return prob[0, 0].cpu().numpy()

    def _forward(self, rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None]
        x = self.model.normalize(x)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            return self.model(x)
