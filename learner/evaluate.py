"""Student vs teacher on synthetic clips with exact masks (`motionmask synth`).

    res = evaluate_student("runs/r1/checkpoints/last.pt", "synth_unseen/")
    res["student"]["iou"], res["teacher"]["iou"]

The teacher is the motion masks (streamer.motion.pipeline.MotionSegmenter over the whole clip, with
motion history); the student is the ConvNet on each frame alone (learner.predict.Predictor).
Both are thresholded at 0.5 and scored on every frame whose ground truth holds a moving object
(IoU, precision, recall; averaged over frames); frames without one count the fraction of pixels
each wrongly calls foreground.

`coverage` splits those frames by what the training clips showed (the background, how often each
mover's photo), to tell a student that cannot generalise from one that has seen too little.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from learner.predict import Predictor
from streamer.config import StreamerConfig
from streamer.motion.pipeline import MotionSegmenter
from streamer.sources import open_source
from synth.things import load_gt


def score(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """IoU, precision, recall of boolean masks (an empty prediction has precision 0)."""
    inter = float(np.logical_and(pred, gt).sum())
    union = float(np.logical_or(pred, gt).sum())
    p, g = float(pred.sum()), float(gt.sum())
    return (inter / union if union else 1.0), (inter / p if p else 0.0), (inter / g if g else 1.0)


def _mean(v: list[float]) -> float | None:
    return float(np.mean(v)) if v else None


def synth_clips(clips_dir: str | Path) -> list[dict]:
    """The clips.json entries of a `motionmask synth` folder; UserError when it is not one."""
    index = Path(clips_dir) / "clips.json"
    if not index.is_file():
        raise UserError(f"{clips_dir}: no clips.json; generate clips with `motionmask synth --out {clips_dir}`")
    return json.loads(index.read_text())


def evaluate_checkpoints(
    checkpoints: dict[str, str | Path],
    clips_dir: str | Path,
    device: str | torch.device = "auto",
    streamer_cfg: StreamerConfig | None = None,
    threshold: float = 0.5,
    max_clips: int | None = None,
    progress: bool = False,
    native: bool = False,
    every: int = 1,
    teacher: bool = True,
) -> dict:
    """The teacher and any number of students (name -> checkpoint) on the clips of clips_dir (a
    `motionmask synth` folder), every clip decoded and its motion masks computed once. Returns
    {"summary": {method: {iou, precision, recall, empty_fp, frames}}, "per_clip": [{clip, method:
    IoU}], "per_frame": [{clip, frame, method: IoU}] (frames with a moving object), "steps": {name:
    step}, "clips": n}; methods are "teacher" (when teacher) and the names.
    every: score every this many frames (0, every, 2 x every, ...); teacher False: the students
    only, several times faster for comparing recipes."""
    clips_dir = Path(clips_dir)
    clips = synth_clips(clips_dir)[:max_clips]
    cfg = streamer_cfg or StreamerConfig()
    students = {name: Predictor(ck, device, native=native) for name, ck in checkpoints.items()}
    methods = (["teacher"] if teacher else []) + list(students)
    rows = {m: {"iou": [], "precision": [], "recall": [], "empty_fp": []} for m in methods}
    per_clip, per_frame = [], []
    from tqdm import tqdm

    for clip in tqdm(clips, desc="evaluate", unit="clip", disable=not progress, file=sys.stderr):
        images, motion = _decode_clip(clips_dir / clip["file"], cfg, teacher)
        clip_iou = {m: [] for m in methods}
        for i in range(0, len(images), every):
            gt = load_gt(clips_dir / clip["name"], i) > 127
            preds = {name: p(images[i]) >= threshold for name, p in students.items()}
            if teacher:
                preds["teacher"] = motion[i] >= cfg.prune.fg_threshold
            frame_iou = _score_frame(preds, gt, methods, rows)
            for m, iou in frame_iou.items():
                clip_iou[m].append(iou)
            if frame_iou:
                per_frame.append({"clip": clip["name"], "frame": i, **frame_iou})
        per_clip.append({"clip": clip["name"], **{m: _mean(clip_iou[m]) for m in methods}})
    summary = {m: {k: _mean(v) for k, v in rows[m].items()} | {"frames": len(rows[m]["iou"])} for m in methods}
    return {
        "summary": summary,
        "per_clip": per_clip,
        "per_frame": per_frame,
        "steps": {n: p.step for n, p in students.items()},
        "clips": len(clips),
    }


def _decode_clip(path: Path, cfg: StreamerConfig, teacher: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every frame of a clip, and with teacher its motion masks (the streamer over the whole clip)."""
    seg = MotionSegmenter(cfg) if teacher else None
    images, motion = [], []
    with open_source(str(path), cfg.source) as source:
        for frame in source:
            images.append(frame.image)
            if seg is not None:
                motion += [r.prob for r in seg.push(frame)]
    if seg is not None:
        motion += [r.prob for r in seg.flush()]
    return images, motion


def _score_frame(preds: dict[str, np.ndarray], gt: np.ndarray, methods: list[str], rows: dict) -> dict[str, float]:
    """Add each method's scores on one frame to rows; returns their IoUs ({} when the ground
    truth holds no moving object: then the wrongly-foreground fraction is what counts)."""
    frame_iou = {}
    for m in methods:
        if gt.any():
            iou, p, r = score(preds[m], gt)
            rows[m]["iou"].append(iou)
            rows[m]["precision"].append(p)
            rows[m]["recall"].append(r)
            frame_iou[m] = iou
        else:
            rows[m]["empty_fp"].append(float(preds[m].mean()))
    return frame_iou


def evaluate_student(
    checkpoint: str | Path,
    clips_dir: str | Path,
    device: str | torch.device = "auto",
    streamer_cfg: StreamerConfig | None = None,
    threshold: float = 0.5,
    max_clips: int | None = None,
    progress: bool = False,
    native: bool = False,
    every: int = 1,
    teacher: bool = True,
) -> dict:
    """One student against the teacher (evaluate_checkpoints). Returns {"student": {...},
    "teacher": {...} (its entries None when teacher is False), "per_clip": [...], "clips",
    "checkpoint", "step", "threshold", "every"}."""
    res = evaluate_checkpoints(
        {"student": checkpoint}, clips_dir, device, streamer_cfg, threshold, max_clips, progress, native, every, teacher
    )
    return {**student_view(res, "student", checkpoint), "clips": res["clips"], "threshold": threshold, "every": every}


def student_view(res: dict, name: str, checkpoint: str | Path) -> dict:
    """One student of an evaluate_checkpoints result, side by side with the teacher:
    {"student", "teacher" (entries None when it was not scored), "per_clip", "checkpoint", "step"}."""
    none = {k: None for k in ("iou", "precision", "recall", "empty_fp")} | {"frames": 0}
    return {
        "student": res["summary"][name],
        "teacher": res["summary"].get("teacher", none),
        "per_clip": [{"clip": c["clip"], "student": c[name], "teacher": c.get("teacher")} for c in res["per_clip"]],
        "checkpoint": str(checkpoint),
        "step": res["steps"][name],
    }


def coverage(res: dict, eval_dir: str | Path, train_dir: str | Path, common: int = 5) -> list[dict]:
    """The per-frame IoUs of an evaluate_checkpoints result, grouped by what the training clips (a
    `motionmask synth` folder) showed of each frame's shot: was its background among the training
    backgrounds, and did each of its movers' photos move in at least `common` training objects.
    Returns one row per group present, [{"background": "seen" | "unseen", "movers": "common" |
    "rare", "frames": n, method: mean IoU, ...}], seen-and-common last."""
    train = synth_clips(train_dir)
    backgrounds = {shot["background"] for c in train for shot in c["shots"]}
    counts = Counter(o["photo"] for c in train for o in c["objects"] if o["role"] == "mover")
    clips = {c["name"]: c for c in synth_clips(eval_dir)}
    methods = list(res["summary"])
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in res["per_frame"]:
        clip = clips[rec["clip"]]
        shot = max(k for k, s in enumerate(clip["shots"]) if s["start"] <= rec["frame"])
        movers = [o["photo"] for o in clip["objects"] if o["role"] == "mover" and o["shot"] == shot]
        key = (
            "seen" if clip["shots"][shot]["background"] in backgrounds else "unseen",
            "common" if all(counts[p] >= common for p in movers) else "rare",
        )
        groups.setdefault(key, []).append(rec)
    order = [("unseen", "rare"), ("unseen", "common"), ("seen", "rare"), ("seen", "common")]
    return [
        {
            "background": b,
            "movers": m,
            "frames": len(groups[b, m]),
            **{k: _mean([r[k] for r in groups[b, m]]) for k in methods},
        }
        for b, m in order
        if (b, m) in groups
    ]
