"""Mask quality against the synthetic ground truth (motionmask synth).

For every frame with a moving object: IoU, precision and recall of the motion masks (prob >=
0.5) and of two baselines that use the same flow and camera model:
  - otsu:     residual flow magnitude after camera-motion removal, Otsu threshold per frame
  - saliency: our per-pixel motion saliency >= 0.5, without superpixels or voting
Frames whose ground truth is empty are scored separately (false-positive fraction of pixels).

    python bench/quality.py                    # 10 clips, seed 100 (not the test seeds)
    python bench/quality.py --clips 20 --seed 7 --config configs/default.yaml
Prints a table and writes bench/out/quality.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: bench/zmq.py would shadow pyzmq

from motionmask.config import load_config  # noqa: E402
from streamer.flow import FlowEstimator, working_size  # noqa: E402
from streamer.frames import Frame  # noqa: E402
from streamer.global_motion import fit_global_motion, residual_motion  # noqa: E402
from streamer.pipeline import MotionSegmenter, motion_saliency  # noqa: E402
from streamer.synth import generate, load_gt  # noqa: E402

METHODS = ["motion_masks", "saliency", "otsu"]


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def baselines(frames: list[np.ndarray], shot_starts: set[int], cfg) -> dict[str, list[np.ndarray]]:
    """Per-frame binary masks of the two baselines (first frame of a shot: empty)."""
    fe = FlowEstimator(cfg.flow)
    out = {"saliency": [], "otsu": []}
    prev = None
    for i, rgb in enumerate(frames):
        h, w = rgb.shape[:2]
        ww, wh = working_size(w, h, cfg.flow.width)
        gray = cv2.cvtColor(cv2.resize(rgb, (ww, wh), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        if prev is None or i in shot_starts:
            prev = gray
            out["saliency"].append(np.zeros((h, w), bool))
            out["otsu"].append(np.zeros((h, w), bool))
            continue
        motion, conf = fe(prev, gray)
        gm = fit_global_motion(motion, conf, cfg.global_motion)
        res = residual_motion(motion, gm)
        res = np.linalg.norm(res, axis=2)
        sal = motion_saliency(res, gm.residual_noise, cfg.motion.saliency_scale)
        out["saliency"].append(cv2.resize(sal, (w, h)) >= 0.5)
        r8 = np.clip(res / max(float(res.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
        _, m = cv2.threshold(r8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        out["otsu"].append(cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) > 0)
        prev = gray
    return out


def score(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    inter = float(np.logical_and(pred, gt).sum())
    union = float(np.logical_or(pred, gt).sum())
    p, g = float(pred.sum()), float(gt.sum())
    return inter / union if union else 1.0, inter / p if p else 0.0, inter / g if g else 1.0


def evaluate(data_dir: Path, clips: list[dict], cfg, progress: bool = True) -> dict:
    rows = {m: {"iou": [], "precision": [], "recall": [], "empty_fp": []} for m in METHODS}
    per_clip = []
    kept_iou, kept_n, total = [], 0, 0
    seconds = 0.0
    for clip in tqdm(clips, desc="clips", disable=not progress, file=sys.stderr):
        frames = decode(data_dir / clip["file"])
        gts = [load_gt(data_dir / clip["name"], i) > 127 for i in range(len(frames))]
        seg = MotionSegmenter(cfg)
        t0 = time.perf_counter()
        results = []
        for i, rgb in enumerate(frames):
            results += seg.push(Frame(rgb, clip["name"], i, i / clip["fps"]))
        results += seg.flush()
        seconds += time.perf_counter() - t0
        preds = {"motion_masks": [r.prob >= cfg.prune.fg_threshold for r in results]}
        preds.update(baselines(frames, set(clip["shot_starts"]), cfg))
        clip_iou = []
        for i, gt in enumerate(gts):
            for m in METHODS:
                if gt.any():
                    iou, p, r = score(preds[m][i], gt)
                    rows[m]["iou"].append(iou)
                    rows[m]["precision"].append(p)
                    rows[m]["recall"].append(r)
                    if m == "motion_masks":
                        clip_iou.append(iou)
                else:
                    rows[m]["empty_fp"].append(float(preds[m][i].mean()))
            total += 1
            if results[i].kept:
                kept_n += 1
                if gt.any():
                    kept_iou.append(score(results[i].prob >= cfg.prune.fg_threshold, gt)[0])
        per_clip.append({"clip": clip["name"], "iou": float(np.mean(clip_iou)) if clip_iou else None})
    summary = {
        m: {k: (float(np.mean(v)) if v else None) for k, v in rows[m].items()} | {"frames": len(rows[m]["iou"])}
        for m in METHODS
    }
    summary["motion_masks"]["kept_fraction"] = kept_n / max(total, 1)
    summary["motion_masks"]["kept_iou"] = float(np.mean(kept_iou)) if kept_iou else None
    summary["motion_masks"]["fps"] = total / max(seconds, 1e-9)
    return {"summary": summary, "per_clip": per_clip}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--config", default=None)
    ap.add_argument("--data", default=None, help="existing synth folder (default: generate into bench/out)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "quality.json"))
    args = ap.parse_args()
    cfg = load_config(args.config).streamer
    data = Path(args.data) if args.data else ROOT / "bench" / "out" / f"synth_s{args.seed}_n{args.clips}"
    if (data / "clips.json").exists():
        clips = json.loads((data / "clips.json").read_text())
    else:
        clips = generate(data, seed=args.seed, clips=args.clips, progress=True)
    res = evaluate(data, clips, cfg)
    s = res["summary"]
    print(f"\nmask quality on {len(clips)} synthetic clips (seed {args.seed}), frames with a moving object")
    print(f"| method | mean IoU | precision | recall | FP on empty frames |")
    print(f"|---|---|---|---|---|")
    for m in METHODS:
        fp = s[m]["empty_fp"]
        print(f"| {m} | {s[m]['iou']:.3f} | {s[m]['precision']:.3f} | {s[m]['recall']:.3f} | "
              f"{'-' if fp is None else f'{fp:.3f}'} |")
    mm = s["motion_masks"]
    print(f"kept after pruning: {mm['kept_fraction']:.1%} of frames, IoU on kept frames {mm['kept_iou'] or 0:.3f}; "
          f"segmenter {mm['fps']:.1f} fps (decode excluded)")
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    res["args"] = vars(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
