"""Bootstrapping (Pathak et al. 2017, discussion): the student improves its own teacher.

Every `bootstrap.every_steps` training steps a round runs over the samples in the ring buffer:

  1. student   the ConvNet predicts each buffered frame from that frame alone (eval mode, at
               the slot's training resolution, as `motionmask predict` does)
  2. fuse      with the frame's motion probability (the teacher, kept untouched in the slot):
                 linear     refined = w * student + (1 - w) * motion
                 geometric  logit(refined) = w * logit(student) + (1 - w) * logit(motion)
               w = the student's weight, weight_start in round 1, + weight_step per round, up to
               weight_max (a ramp: trust that grows as the student does; off by default, below).
  3. trimap    re-derived from `refined` with the streamer's thresholds (streamer.motion.trimap)
               and written back into the slot (RingBuffer.update_labels); training reads the
               refined trimaps from then on. A slot that meanwhile took a new sample is left alone.

Why `linear` is the default: the motion probability saturates at 0 and 1 (the superpixel vote
clips) and is not calibrated, so under the log-odds rule whichever expert is most extreme wins,
and a confident student cannot overrule a saturated background or vice versa. The linear mix
treats both as probabilities: where they disagree strongly the result lands in the trimap's
don't-care band (0.3-0.6 by default) and nobody trains on it; where they agree it stays a label.

The measurements behind linear, w = 0.3, no ramp: docs/learner-trials.md, "Bootstrapping: the
fusion rule". Raise weight_step/weight_max where the student has been seen to beat its teacher (a
long GPU run); the per-round lines tell.

Why the trimap is refined in place, the motion probability kept: every draw from the buffer then
sees the refined label with no lookup (training is unchanged), the ring's seqlock and the
sample's put sequence guarantee that a label never lands on a replaced sample, and each round
fuses the current student with the original motion evidence, so a student's mistakes are never
fed back into the teacher it is fused with (no drift over rounds). Samples that arrive between
rounds train on their motion trimap until the next round refines them.

Each round is measured: agreement of student and motion, how much of the labels changed, and,
when a ground-truth lookup is given (bench), the IoU and label accuracy of the motion labels
and the refined ones on the same samples. One line per round in RUN/bootstrap.jsonl.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from common.log import log_event
from learner.config import BootstrapConfig
from learner.layers import upsample_logits
from learner.model import AlexNet, MaskNet
from streamer.config import TrimapConfig
from streamer.motion.trimap import TRIMAP_IGNORE, trimap
from streamer.shm.ringbuffer import Batch, RingBuffer
from streamer.writer import append_line

logger = logging.getLogger(__name__)

BOOTSTRAP_LOG = "bootstrap.jsonl"
EPS = 0.01  # probabilities are clipped to [EPS, 1 - EPS] before log-odds: a saturated 0 or 1 is not certainty

GroundTruth = Callable[[str, int], "np.ndarray | None"]  # (camera, frame index) -> bool mask, any size


def synthetic_ground_truth(specs: list[str]) -> GroundTruth | None:
    """Ground truth for offline samples of `motionmask synth` clips (CLIP.mp4 beside CLIP/gt/),
    so that `motionmask train synth/` reports the labels' quality per round; None when no input
    has any. Offline samples are named "<input index>:<file name>" (learner/samples.py)."""
    from synth.things import load_gt

    dirs = {i: Path(s).with_suffix("") / "gt" for i, s in enumerate(specs)}
    dirs = {i: d for i, d in dirs.items() if d.is_dir()}
    if not dirs:
        return None

    def lookup(camera: str, frame: int) -> np.ndarray | None:
        head = camera.split(":", 1)[0]
        d = dirs.get(int(head)) if head.isdigit() else None
        if d is None or not (d / f"{frame:06d}.png").is_file():
            return None
        return load_gt(d.parent, frame) > 127

    return lookup


def fuse(student: np.ndarray, motion: np.ndarray, w: float, rule: str = "linear") -> np.ndarray:
    """The refined foreground probability from the student's and the motion probability (same
    shape, float in [0, 1]); w is the student's weight."""
    s = np.asarray(student, np.float32)
    m = np.asarray(motion, np.float32)
    if rule == "linear":
        return (w * s + (1.0 - w) * m).astype(np.float32)
    if rule == "geometric":

        def logit(p: np.ndarray) -> np.ndarray:
            p = np.clip(p, EPS, 1.0 - EPS)
            return np.log(p) - np.log1p(-p)

        z = w * logit(s) + (1.0 - w) * logit(m)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    raise ValueError(f"unknown fusion rule {rule!r} (linear or geometric)")


def round_weight(cfg: BootstrapConfig, round_no: int) -> float:
    """The student's weight in round `round_no` (1-based)."""
    return float(min(cfg.weight_max, cfg.weight_start + (round_no - 1) * cfg.weight_step))


def slot_trimap(
    prob: np.ndarray, valid: tuple[int, int, int, int], shape: tuple[int, int], cfg: TrimapConfig
) -> np.ndarray:
    """A slot's trimap from the probability of its valid region: don't care in the padding."""
    y0, x0, h, w = (int(v) for v in valid)
    out = np.full(shape, TRIMAP_IGNORE, np.uint8)
    out[y0 : y0 + h, x0 : x0 + w] = trimap(prob, cfg)
    return out


@torch.no_grad()
def student_probs(model: MaskNet, frames: np.ndarray, valid: np.ndarray, device: torch.device) -> list[np.ndarray]:
    """The model's foreground probability for the valid region of each slot frame (list of
    h x w float32), at the slot's resolution. Frames with the same valid region run as a batch."""
    out: list[np.ndarray | None] = [None] * len(frames)
    cuda = device.type == "cuda"
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(valid):
        groups.setdefault(tuple(int(x) for x in v), []).append(i)
    for (y0, x0, h, w), idx in groups.items():
        x = torch.from_numpy(np.ascontiguousarray(frames[idx, y0 : y0 + h, x0 : x0 + w])).to(device)
        x = model.normalize(x.permute(0, 3, 1, 2))
        if isinstance(model, AlexNet):
            s = model.input_size
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        else:
            ph, pw = -h % model.stride, -w % model.stride
            if ph or pw:  # as the predictor: pad by replication to the stride, cut off below
                x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        if not isinstance(model, AlexNet):
            logits = logits[..., :h, :w]
        prob = torch.sigmoid(upsample_logits(logits.float(), (h, w)))[:, 0].cpu().numpy()
        for k, i in enumerate(idx):
            out[i] = prob[k]
    return out  # type: ignore[return-value]


@dataclass
class Refined:
    """One chunk of a round, for whoever publishes or scores it (slot resolution, valid region)."""

    cameras: list[str]
    frame_index: list[int]
    shot: list[int]
    capture_time: list[float]
    put_time: list[float]  # time.monotonic() when the sample entered the buffer
    source_hw: list[tuple[int, int]]
    motion: list[np.ndarray]  # h x w float32: the teacher
    student: list[np.ndarray]  # h x w float32
    refined: list[np.ndarray]  # h x w float32: the fused probability
    trimap: list[np.ndarray]  # h x w uint8: the new label
    step: int
    round: int


@dataclass
class RoundStats:
    round: int
    step: int
    weight: float
    rule: str
    samples: int = 0  # refined and written back
    refused: int = 0  # replaced by a new sample while refining: left alone
    seconds: float = 0.0
    agreement: float | None = None  # mean IoU of student and motion masks (>= 0.5)
    changed: float | None = None  # fraction of pixels whose label (pos / neg / don't care) the round changed
    coverage_motion: float | None = None  # fraction of pixels labelled (not don't care) by the motion trimap
    coverage_refined: float | None = None  # ... by the refined one
    quality: dict[str, float] = field(default_factory=dict)  # with ground truth: iou_* and accuracy_*
    gt_samples: int = 0
    stopped: bool = False  # the round was cut short by a stop request

    def line(self) -> dict:
        d = asdict(self)
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _accuracy(tri: np.ndarray, gt: np.ndarray) -> tuple[float, int]:
    """Fraction of labelled pixels whose label is right, and how many are labelled."""
    pos, neg = tri == 255, tri == 0
    n = int(pos.sum() + neg.sum())
    right = int(np.logical_and(pos, gt).sum() + np.logical_and(neg, ~gt).sum())
    return (right / n if n else 1.0), n


class Bootstrapper:
    """Runs the rounds. Pass `on_step` to learner.train.fit; it returns True after a round, so
    that fit checkpoints the model that made the labels (its step names them: model_version)."""

    def __init__(
        self,
        cfg: BootstrapConfig,
        trimap_cfg: TrimapConfig,
        ring: RingBuffer,
        run_dir: str | Path | None = None,
        on_refined: Callable[[Refined], None] | None = None,
        ground_truth: GroundTruth | None = None,
        stop: Callable[[], bool] | None = None,
        fg_threshold: float = 0.5,
        trimap_by_camera: dict[str, TrimapConfig] | None = None,
    ):
        """trimap_by_camera: thresholds of cameras whose config overrides streamer.trimap."""
        self.cfg, self.trimap_cfg, self.ring = cfg, trimap_cfg, ring
        self.trimap_by_camera = dict(trimap_by_camera or {})
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.on_refined, self.ground_truth, self.stop = on_refined, ground_truth, stop
        self.fg_threshold = fg_threshold
        self.history: list[RoundStats] = []
        self.round = 0  # the last round run (or, after a resume, the last one due before it)
        self.busy = False  # a round is running (for status reports)
        self._batch: Batch | None = None

    @property
    def first_step(self) -> int:
        return self.cfg.start_step or self.cfg.every_steps

    def round_at(self, step: int) -> int:
        """The round due at `step` (1-based), or 0 when none is."""
        if step < self.first_step or (step - self.first_step) % self.cfg.every_steps:
            return 0
        r = (step - self.first_step) // self.cfg.every_steps + 1
        return 0 if self.cfg.max_rounds and r > self.cfg.max_rounds else r

    def rounds_before(self, step: int) -> int:
        """Rounds that a run at `step` has been through (a resumed run's round counter)."""
        if step < self.first_step:
            return 0
        r = (step - self.first_step) // self.cfg.every_steps + 1
        return min(r, self.cfg.max_rounds) if self.cfg.max_rounds else r

    def on_step(self, trainer, result) -> bool:
        r = self.round_at(trainer.step_count) if self.cfg.enabled else 0
        if not r:
            return False
        self.run_round(trainer.model, trainer.device, trainer.step_count, r)
        return True

    def run_round(self, model: MaskNet, device: torch.device, step: int, round_no: int) -> RoundStats:
        cfg = self.cfg
        w = round_weight(cfg, round_no)
        st = RoundStats(round=round_no, step=step, weight=w, rule=cfg.rule)
        t0 = time.monotonic()
        self.busy = True
        was_training = model.training
        model.eval()
        acc = {
            k: []
            for k in (
                "agreement",
                "changed",
                "cov_m",
                "cov_r",
                "iou_motion",
                "iou_student",
                "iou_refined",
                "acc_motion",
                "acc_refined",
                "n_motion",
                "n_refined",
            )
        }
        try:
            slots = self.ring.ready_slots()  # newest first: the oldest leave the buffer soonest
            if cfg.max_samples:
                slots = slots[: cfg.max_samples]
            if self._batch is None or self._batch.capacity < cfg.batch:
                self._batch = self.ring.new_batch(cfg.batch)
            for start in range(0, len(slots), cfg.batch):
                if self.stop is not None and self.stop():
                    st.stopped = True
                    break
                batch = self.ring.read(slots[start : start + cfg.batch], out=self._batch)
                if len(batch):
                    self._refine(batch, model, device, step, round_no, w, st, acc)
        finally:
            model.train(was_training)
            self.busy = False
        st.seconds = time.monotonic() - t0

        def mean(k: str) -> float | None:
            return float(np.mean(acc[k])) if acc[k] else None

        st.agreement, st.changed = mean("agreement"), mean("changed")
        st.coverage_motion, st.coverage_refined = mean("cov_m"), mean("cov_r")
        if acc["iou_motion"]:
            st.gt_samples = len(acc["iou_motion"])
            st.quality = {k: mean(k) for k in ("iou_motion", "iou_student", "iou_refined")}
            # label accuracy over all labelled pixels of the round (pixel-weighted)
            for k in ("motion", "refined"):
                n = np.asarray(acc[f"n_{k}"], np.float64)
                st.quality[f"accuracy_{k}"] = float((np.asarray(acc[f"acc_{k}"]) * n).sum() / max(n.sum(), 1))
        self.round = round_no
        self.history.append(st)
        self._log(st)
        return st

    def _refine(
        self,
        batch: Batch,
        model: MaskNet,
        device: torch.device,
        step: int,
        round_no: int,
        w: float,
        st: RoundStats,
        acc: dict[str, list],
    ) -> None:
        valid = np.asarray(batch.valid)
        students = student_probs(model, batch.frames, valid, device)
        shape = (self.ring.height, self.ring.width)
        thr = self.fg_threshold
        out = Refined([], [], [], [], [], [], [], [], [], [], step, round_no)
        cameras = batch.cameras
        for k in range(len(batch)):
            y0, x0, h, wd = (int(v) for v in valid[k])
            motion = batch.probs[k, y0 : y0 + h, x0 : x0 + wd].astype(np.float32) / 255.0
            student = students[k]
            refined = fuse(student, motion, w, self.cfg.rule)
            tcfg = self.trimap_by_camera.get(cameras[k], self.trimap_cfg)
            tri = slot_trimap(refined, valid[k], shape, tcfg)
            if not self.ring.update_labels(int(batch.slots[k]), int(batch.put_seq[k]), tri):
                st.refused += 1
                continue
            st.samples += 1
            new = tri[y0 : y0 + h, x0 : x0 + wd]
            old = trimap(motion, tcfg)
            m_fg, s_fg, r_fg = motion >= thr, student >= thr, refined >= thr
            acc["agreement"].append(_iou(s_fg, m_fg))
            acc["changed"].append(float((new != old).mean()))
            acc["cov_m"].append(float((old != TRIMAP_IGNORE).mean()))
            acc["cov_r"].append(float((new != TRIMAP_IGNORE).mean()))
            gt = self.ground_truth(cameras[k], int(batch.frame_index[k])) if self.ground_truth else None
            if gt is not None:
                if gt.shape != (h, wd):
                    gt = cv2.resize(gt.astype(np.uint8), (wd, h), interpolation=cv2.INTER_NEAREST) > 0
                acc["iou_motion"].append(_iou(m_fg, gt))
                acc["iou_student"].append(_iou(s_fg, gt))
                acc["iou_refined"].append(_iou(r_fg, gt))
                for name, t in (("motion", old), ("refined", new)):
                    a, n = _accuracy(t, gt)
                    acc[f"acc_{name}"].append(a)
                    acc[f"n_{name}"].append(n)
            out.cameras.append(cameras[k])
            out.frame_index.append(int(batch.frame_index[k]))
            out.shot.append(int(batch.shot[k]))
            out.capture_time.append(float(batch.capture_time[k]))
            out.put_time.append(float(batch.put_time[k]))
            out.source_hw.append(tuple(int(v) for v in batch.source_hw[k]))
            out.motion.append(motion)
            out.student.append(student)
            out.refined.append(refined)
            out.trimap.append(new)
        if self.on_refined is not None and out.cameras:
            self.on_refined(out)

    def _log(self, st: RoundStats) -> None:
        q = st.quality
        log_event(
            logger,
            "bootstrap_round",
            round=st.round,
            step=st.step,
            weight=st.weight,
            rule=st.rule,
            samples=st.samples,
            refused=st.refused,
            seconds=st.seconds,
            agreement=st.agreement if st.agreement is not None else "-",
            changed=st.changed if st.changed is not None else "-",
            **({"iou_motion": q["iou_motion"], "iou_refined": q["iou_refined"]} if q else {}),
            **({"stopped": True} if st.stopped else {}),
        )
        if self.run_dir is None:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / BOOTSTRAP_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                append_line(fd, (json.dumps(st.line(), separators=(",", ":")) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as e:  # a full disk costs this line of bootstrap.jsonl, not the round or the learner
            log_event(logger, "bootstrap_log_failed", logging.WARNING, round=st.round, error=e)
