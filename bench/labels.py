"""What the learner is taught: the streamer's pseudo-labels (trimaps of the kept frames) against
reference masks, on every evaluation family (bench/families.py: things-s100, THE TUNING SET;
things-s7; patchwork-s1; real, skipped with a note when ../shared/data is absent). Where a student
trails its teacher, this says whether its labels were the limit: of the pixels of moving objects,
the share labelled positive, negative or "don't care"; of the background, the share labelled
positive; how many frames pruning kept; the teacher's IoU on kept and pruned frames. Void pixels
(128 in a reference) count nowhere (bench/maskscore.py LabelScore).

Targets (issue 18), on kept frames: >= 70% of object pixels positive, <= 5% negative, <= 2% of
background positive; each marked met / NOT MET.

    python -m bench.labels                                   # every family (a few minutes)
    python -m bench.labels --family patchwork-s1 --family real
    python -m bench.labels runs/s100                         # one folder, with a row per clip
    python -m bench.labels --data runs/s100 --config la4.yaml  # e.g. streamer: {motion: {lookahead: 4}}

Prints markdown tables; writes bench/out/labels.json (keyed by family; --out).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from bench.common import OUT, cpu_model, git_revision, progress_bar, save_json
from bench.families import FAMILIES, Family, chosen, each_resolved, folder_family, print_skipped, title
from bench.maskscore import LabelScore, MaskScore
from common.errors import UserError
from motionmask.config import load_config
from streamer.config import SourceConfig
from streamer.motion.pipeline import MotionSegmenter
from streamer.sources import open_source
from synth.things import load_gt

# issue 18, on kept frames: (summary key, bound, at least?)
TARGETS = {"fg_positive": (0.70, True), "fg_negative": (0.05, False), "bg_positive": (0.02, False)}


def clip_labels(path: Path, clip_dir: Path, cfg, total: LabelScore, iou: dict[str, MaskScore], bar=None) -> dict:
    """One clip's trimaps into `total` (and a LabelScore of its own), the teacher's IoU on kept and
    pruned frames into `iou`; returns the clip's row."""
    mine = LabelScore()
    own = {"kept": MaskScore(), "pruned": MaskScore()}

    def take(results) -> None:
        for r in results:
            ref = load_gt(clip_dir, r.frame.index)
            for s in (mine, total):
                s.add(r.trimap, ref, r.kept)
            part = "kept" if r.kept else "pruned"
            for s in (own[part], iou[part]):
                s.add(r.prob, ref)

    seg = MotionSegmenter(cfg)
    # the reader the reference sets were written from: frame i is reference frame i
    with open_source(str(path), SourceConfig()) as source:
        for frame in source:
            take(seg.push(frame))
            if bar is not None:
                bar.update(1)
    take(seg.flush())
    return {**mine.summary(), "iou_kept": own["kept"].summary()["iou"], "iou_pruned": own["pruned"].summary()["iou"]}


def family_labels(folder: Path, clips: list[dict], cfg, desc: str = "labels") -> dict:
    """Every clip of a folder: {"total": LabelScore summary + teacher IoU kept / pruned, "targets",
    "clips": per-clip rows}."""
    total = LabelScore()
    iou = {"kept": MaskScore(), "pruned": MaskScore()}
    rows = []
    frames = sum(int(c.get("frames", 0)) for c in clips) or None
    with progress_bar(frames, desc) as bar:
        for clip in clips:
            rows.append(
                {
                    "clip": clip["name"],
                    **clip_labels(folder / clip["file"], folder / clip["name"], cfg, total, iou, bar),
                }
            )
    t = {**total.summary(), "iou_kept": iou["kept"].summary()["iou"], "iou_pruned": iou["pruned"].summary()["iou"]}
    return {"total": t, "targets": targets(t), "clips": rows}


def targets(summary: dict) -> dict:
    """Each label target: its value, bound and whether it is met (None: nothing to judge by)."""
    out = {}
    for key, (bound, at_least) in TARGETS.items():
        v = summary[key]
        out[key] = {
            "value": v,
            "bound": bound,
            "at_least": at_least,
            "met": None if v is None else (v >= bound if at_least else v <= bound),
        }
    return out


def _f(v: float | None, pct: bool = False) -> str:
    return "-" if v is None else f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _met(t: dict) -> str:
    return "" if t["met"] is None else " met" if t["met"] else " NOT MET"


def print_clips(name: str, r: dict) -> None:
    print(f"\npseudo-labels of {name} on kept frames, per clip")
    print(
        "| clip | kept frames | fg -> positive | fg -> negative | fg -> don't care | bg -> positive | "
        "positive precision | negative precision | teacher IoU kept / pruned |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in r["clips"] + [{"clip": "**all**", **r["total"]}]:
        print(
            f"| {c['clip']} | {c['kept']}/{c['frames']} | {_f(c['fg_positive'], True)} | "
            f"{_f(c['fg_negative'], True)} | {_f(c['fg_dont_care'], True)} | {_f(c['bg_positive'], True)} | "
            f"{_f(c['positive_precision'], True)} | {_f(c['negative_precision'], True)} | "
            f"{_f(c['iou_kept'])} / {_f(c['iou_pruned'])} |"
        )


def print_families(res: dict, config: str | None) -> None:
    print(f"\n### pseudo-labels on kept frames, every family (streamer config: {config or 'defaults'})")
    print(
        "| family | kept frames | fg -> positive (>= 70%) | fg -> negative (<= 5%) | bg -> positive (<= 2%) | "
        "fg -> don't care | bg -> don't care, per object pixel | positive precision | teacher IoU kept / pruned |"
    )
    print("|---|---:|---|---|---|---:|---:|---:|---|")
    for name, r in res["families"].items():
        t, g = r["total"], r["targets"]
        label = f"{name} (tuning set)" if r["tuning"] else name
        print(
            f"| {label} | {t['kept']}/{t['frames']} | {_f(t['fg_positive'], True)}{_met(g['fg_positive'])} | "
            f"{_f(t['fg_negative'], True)}{_met(g['fg_negative'])} | "
            f"{_f(t['bg_positive'], True)}{_met(g['bg_positive'])} | {_f(t['fg_dont_care'], True)} | "
            f"{_f(t['bg_dont_care_per_object'])} | {_f(t['positive_precision'], True)} | "
            f"{_f(t['iou_kept'])} / {_f(t['iou_pruned'])} |"
        )
    print_skipped(res["skipped"])


def chosen_families(args) -> list[Family]:
    """--family names (all by default) and a --data folder (alone, without --family)."""
    folder = args.data or args.clips
    return chosen(args.family, [folder_family(folder)] if folder else [])


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "clips",
        nargs="?",
        help="a folder in the synthetic sets' format (clips.json, CLIP.mp4, CLIP/gt/); the same as --data",
    )
    ap.add_argument("--data", help="also (or, without --family, only) this folder; printed with a row per clip")
    ap.add_argument(
        "--family",
        action="append",
        choices=list(FAMILIES),
        metavar="NAME",
        help=f"an evaluation family, repeatable (default: all of {', '.join(FAMILIES)})",
    )
    ap.add_argument("--config", help="YAML config whose streamer section makes the labels (default: built-in)")
    ap.add_argument("--out", default=str(OUT / "labels.json"))
    args = ap.parse_args()
    if args.clips and args.data:
        ap.error("give the folder once: CLIPS or --data")
    t0 = time.monotonic()
    res: dict = {"families": {}, "skipped": {}}
    try:
        cfg = load_config(args.config).streamer
        for fam, folder, clips in each_resolved(chosen_families(args), res["skipped"]):
            r = family_labels(folder, clips, cfg, desc=fam.name)
            res["families"][fam.name] = {"folder": str(folder), "tuning": fam.tuning, **r}
            if fam.kind == "folder":
                print_clips(title(fam), r)
    except UserError as e:
        print(f"labels.py: error: {e}", file=sys.stderr)
        return 2
    print_families(res, args.config)
    res |= {
        "config": args.config,
        "targets": {k: {"bound": b, "at_least": a} for k, (b, a) in TARGETS.items()},
        "machine": {
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "revision": git_revision(),
            "load_avg": os.getloadavg(),
        },
        "seconds": time.monotonic() - t0,
    }
    save_json(args.out, res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
