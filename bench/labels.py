"""What the learner is taught: the streamer's pseudo-labels (trimaps of the kept frames) against the
exact masks of a `motionmask synth` folder. Where a student trails its teacher, this says whether
its labels were the limit: how much of the real foreground became a positive label, a negative
one or "don't care", how precise each label is, and how many frames pruning kept.

    python bench/labels.py runs/s100                        # the default streamer config
    python bench/labels.py runs/s100 --config la4.yaml      # e.g. streamer: {motion: {lookahead: 4}}

Prints a markdown table per clip and the totals; writes bench/out/labels.json (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: bench/zmq.py would shadow pyzmq

from learner.evaluate import score, synth_clips  # noqa: E402
from motionmask.config import load_config  # noqa: E402
from streamer.errors import UserError  # noqa: E402
from streamer.pipeline import MotionSegmenter  # noqa: E402
from streamer.prune import TRIMAP_IGNORE, TRIMAP_NEGATIVE, TRIMAP_POSITIVE, trimap  # noqa: E402
from streamer.sources import open_source  # noqa: E402
from streamer.synth import load_gt  # noqa: E402

# pixel counts on kept frames: (trimap label, ground truth)
CELLS = {"pos_fg": (TRIMAP_POSITIVE, True), "pos_bg": (TRIMAP_POSITIVE, False),
         "neg_fg": (TRIMAP_NEGATIVE, True), "neg_bg": (TRIMAP_NEGATIVE, False),
         "dc_fg": (TRIMAP_IGNORE, True), "dc_bg": (TRIMAP_IGNORE, False)}


def clip_labels(path: Path, clip_dir: Path, cfg) -> dict:
    """Label counts on the kept frames of one clip, and the teacher's IoU on kept and pruned frames."""
    seg = MotionSegmenter(cfg)
    results = []
    with open_source(str(path), cfg.source) as source:
        for frame in source:
            results += seg.push(frame)
    results += seg.flush()
    counts = dict.fromkeys(CELLS, 0)
    iou = {"kept": [], "pruned": []}
    for r in results:
        gt = load_gt(clip_dir, r.frame.index) > 127
        if gt.any():
            iou["pruned" if r.reason else "kept"].append(score(r.prob >= cfg.prune.fg_threshold, gt)[0])
        if r.reason:
            continue
        t = trimap(r.prob, cfg.trimap)
        for k, (label, fg) in CELLS.items():
            counts[k] += int(((t == label) & (gt if fg else ~gt)).sum())
    return {"frames": len(results), "kept": sum(1 for r in results if not r.reason), **counts,
            "iou_kept": float(np.mean(iou["kept"])) if iou["kept"] else None,
            "iou_pruned": float(np.mean(iou["pruned"])) if iou["pruned"] else None}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def fractions(c: dict) -> dict:
    """Where the foreground went, and how right each label is (None where nothing was labelled)."""
    fg = c["pos_fg"] + c["neg_fg"] + c["dc_fg"]
    return {"fg_positive": _ratio(c["pos_fg"], fg), "fg_negative": _ratio(c["neg_fg"], fg),
            "fg_dont_care": _ratio(c["dc_fg"], fg),
            "positive_precision": _ratio(c["pos_fg"], c["pos_fg"] + c["pos_bg"]),
            "negative_precision": _ratio(c["neg_bg"], c["neg_bg"] + c["neg_fg"])}


def _f(v: float | None, pct: bool = False) -> str:
    return "-" if v is None else f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clips", help="a motionmask synth folder (clips.json, CLIP.mp4, CLIP/gt/)")
    ap.add_argument("--config", help="YAML config whose streamer section makes the labels (default: built-in)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "labels.json"))
    args = ap.parse_args()
    try:
        cfg = load_config(args.config).streamer
        clips_dir = Path(args.clips)
        clips = synth_clips(clips_dir)
    except UserError as e:
        print(f"labels.py: error: {e}", file=sys.stderr)
        return 2
    rows = []
    for clip in tqdm(clips, desc="labels", unit="clip", file=sys.stderr):
        rows.append({"clip": clip["name"], **clip_labels(clips_dir / clip["file"], clips_dir / clip["name"], cfg)})
    total = {k: sum(r[k] for r in rows) for k in ("frames", "kept", *CELLS)}
    print(f"\npseudo-labels of {args.clips} on kept frames (streamer config: {args.config or 'defaults'})")
    print("| clip | kept frames | fg -> positive | fg -> negative | fg -> don't care | positive precision | "
          "negative precision | teacher IoU kept / pruned |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows + [{"clip": "**all**", **total, "iou_kept": None, "iou_pruned": None}]:
        f = fractions(r)
        print(f"| {r['clip']} | {r['kept']}/{r['frames']} | {_f(f['fg_positive'], True)} | {_f(f['fg_negative'], True)} "
              f"| {_f(f['fg_dont_care'], True)} | {_f(f['positive_precision'], True)} | "
              f"{_f(f['negative_precision'], True)} | {_f(r['iou_kept'])} / {_f(r['iou_pruned'])} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"clips": args.clips, "config": args.config, "rows": rows,
                                          "total": {**total, **fractions(total)}}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
