"""Student vs teacher on synthetic clips with exact masks (`motionmask synth`).

    res = evaluate_student("runs/r1/checkpoints/last.pt", "synth_unseen/")
    res["student"]["iou"], res["teacher"]["iou"]

The teacher is the motion masks (streamer.pipeline.MotionSegmenter over the whole clip, with
motion history); the student is the ConvNet on each frame alone (learner.predict.Predictor).
Both are thresholded at 0.5 and scored on every frame whose ground truth holds a moving object
(IoU, precision, recall; averaged over frames); frames without one count the fraction of pixels
each wrongly calls foreground.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from learner.predict import Predictor
from streamer.config import StreamerConfig
from streamer.errors import UserError
from streamer.pipeline import MotionSegmenter
from streamer.sources import open_source
from streamer.synth import load_gt

METHODS = ("student", "teacher")


def score(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """IoU, precision, recall of boolean masks (an empty prediction has precision 0)."""
    inter = float(np.logical_and(pred, gt).sum())
    union = float(np.logical_or(pred, gt).sum())
    p, g = float(pred.sum()), float(gt.sum())
    return (inter / union if union else 1.0), (inter / p if p else 0.0), (inter / g if g else 1.0)


def _mean(v: list[float]) -> float | None:
    return float(np.mean(v)) if v else None


def evaluate_student(checkpoint: str | Path, clips_dir: str | Path, device: str | torch.device = "auto",
                     streamer_cfg: StreamerConfig | None = None, threshold: float = 0.5,
                     max_clips: int | None = None, progress: bool = False, native: bool = False,
                     every: int = 1, teacher: bool = True) -> dict:
    """Mean IoU (and precision, recall, false positives on empty frames) of the student and of
    the teacher on the clips of clips_dir (a `motionmask synth` folder). Returns a dict:
    {"student": {...}, "teacher": {...}, "per_clip": [...], "clips", "checkpoint", "step"}.
    every: score every this many frames (0, every, 2 x every, ...); teacher False: the student
    only (the teacher's entries are None), several times faster for comparing recipes."""
    clips_dir = Path(clips_dir)
    index = clips_dir / "clips.json"
    if not index.is_file():
        raise UserError(f"{clips_dir}: no clips.json; generate clips with `motionmask synth --out {clips_dir}`")
    clips = json.loads(index.read_text())[:max_clips]
    cfg = streamer_cfg or StreamerConfig()
    student = Predictor(checkpoint, device, native=native)
    methods = METHODS if teacher else ("student",)
    rows = {m: {"iou": [], "precision": [], "recall": [], "empty_fp": []} for m in METHODS}
    per_clip = []
    from tqdm import tqdm

    for clip in tqdm(clips, desc="evaluate", unit="clip", disable=not progress, file=sys.stderr):
        seg = MotionSegmenter(cfg) if teacher else None
        images, motion = [], []
        with open_source(str(clips_dir / clip["file"]), cfg.source) as source:
            for frame in source:
                images.append(frame.image)
                if seg is not None:
                    motion += [r.prob for r in seg.push(frame)]
        if seg is not None:
            motion += [r.prob for r in seg.flush()]
        clip_iou = {m: [] for m in METHODS}
        for i in range(0, len(images), every):
            gt = load_gt(clips_dir / clip["name"], i) > 127
            preds = {"student": student(images[i]) >= threshold}
            if teacher:
                preds["teacher"] = motion[i] >= cfg.prune.fg_threshold
            for m in methods:
                if gt.any():
                    iou, p, r = score(preds[m], gt)
                    rows[m]["iou"].append(iou)
                    rows[m]["precision"].append(p)
                    rows[m]["recall"].append(r)
                    clip_iou[m].append(iou)
                else:
                    rows[m]["empty_fp"].append(float(preds[m].mean()))
        per_clip.append({"clip": clip["name"], **{m: _mean(clip_iou[m]) for m in METHODS}})
    summary = {m: {k: _mean(v) for k, v in rows[m].items()} | {"frames": len(rows[m]["iou"])} for m in METHODS}
    return {**summary, "per_clip": per_clip, "clips": len(clips), "checkpoint": str(checkpoint),
            "step": student.step, "threshold": threshold, "every": every}
