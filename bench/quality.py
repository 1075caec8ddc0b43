"""Mask quality against reference masks, on every evaluation family (issue 18: tune on one,
report all; bench/families.py lists them):

  things-s100   synthetic "things" clips, seed 100: THE TUNING SET (the streamer was tuned here)
  things-s7     synthetic "things" clips, seed 7, never tuned on
  patchwork-s1  synthetic "patchwork" clips (synth/patchwork.py), other assumptions
  real          the still-camera real clips of ../shared/data with reference masks
                (synth/reference_masks.py; skipped with a note when the folder is absent)

Each is generated under bench/out on first use. Methods, all from the same flow and camera model:
  motion_masks  the teacher (streamer.motion.pipeline.MotionSegmenter), its probability
  saliency      our per-pixel motion saliency, without superpixels or voting
  otsu          residual flow magnitude after camera-motion removal, Otsu threshold per frame
Scored by bench/maskscore.py MaskScore (void, 128 in a reference, counts nowhere): on frames with a
moving object, mIoU at 0.5 and at the best threshold (and which), precision and recall at 0.5,
expected calibration error; frames without an object count only for false positives. Then the
targets of issue 18, each met or not met: teacher IoU@0.5 - Otsu's >= +0.10, and |IoU@0.5 - best
IoU| <= 0.02 (0.5 is the decision point); a reliability table of the teacher's probability; a
contact sheet of the two worst clips per family (bench/out/quality_worst_<family>.png).

    python -m bench.quality                          # every family (a few minutes)
    python -m bench.quality --family things-s7 --family real
    python -m bench.quality --data runs/s100         # any folder in the synthetic sets' format
    python -m bench.quality --seed 7 --clips 20      # a "things" set of that seed and size
    python -m bench.quality --config my.yaml         # a streamer config to compare
Prints markdown tables and writes bench/out/quality.json (keyed by family; --out).

--learner: the student against its teacher (learner_main below; about 15 min on 2 CPU cores)
    python -m bench.quality --learner               # --minutes 6 per student, --real-minutes 2.5
    python -m bench.quality --learner --steps 2300 --real-minutes 0   # paired: same steps per student
Trains on --seed clips (default 100) and scores on --eval-seed clips (default 7), never seen in
training: the motion masks (teacher), the ConvNet from single frames (student), and the student
after bootstrapping rounds; the pseudo-label quality of every round; the fusion rules compared on
the same labels. Then real clips (../shared/data, skipped if absent), without ground truth:
student-teacher agreement on held-back frames and a contact sheet. Writes
bench/out/quality_learner.json and bench/out/quality_learner_real.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from bench.common import OUT, ROOT, cpu_model, fmt, git_revision, overlay, save_json, tile
from bench.families import FAMILIES, Family, chosen, each_resolved, folder_family, print_skipped, synth_family, title
from bench.maskscore import THRESHOLDS, MaskScore
from learner.evaluate import coverage, evaluate_checkpoints, score
from learner.progress import draws_bar
from motionmask.config import load_config
from streamer.config import SourceConfig
from streamer.frames import Frame
from streamer.motion.flow import FlowEstimator, working_size
from streamer.motion.global_motion import fit_global_motion, residual_motion
from streamer.motion.pipeline import MotionSegmenter, motion_saliency
from streamer.png import write_png
from streamer.sources import open_source
from synth.families import cached as synth_cached
from synth.things import load_gt

METHODS = ["motion_masks", "saliency", "otsu"]
NAMES = {"motion_masks": "motion masks (teacher)", "saliency": "per-pixel saliency", "otsu": "flow magnitude, Otsu"}
TARGET_GAP = 0.10  # teacher IoU@0.5 - Otsu's, on every family (issue 18)
TARGET_CALIBRATION = 0.02  # |IoU@0.5 - best IoU|: 0.5 must be the decision point
SHEET_WIDTH = 240  # px per tile
SHEET_CANDIDATES = 16  # frames with an object kept per clip for the sheet (thumbnails)
SHEET_CLIPS, SHEET_FRAMES = 2, 4


def _progress() -> bool:
    return draws_bar(True)


def frames_of(path: Path) -> Iterator[Frame]:
    """A clip's frames as the project reads them: frame i is reference frame i (a real set's
    reference was written from the same reader, synth/reference_masks.py)."""
    with open_source(str(path), SourceConfig()) as source:
        yield from source


class Baselines:
    """The two baselines of one clip, frame by frame: float32 maps at the frame's size (the first
    frame of a shot has no flow: empty)."""

    def __init__(self, cfg, shot_starts: set[int]) -> None:
        self.cfg, self.shot_starts = cfg, shot_starts
        self.fe = FlowEstimator(cfg.flow)
        self.prev: np.ndarray | None = None

    def __call__(self, rgb: np.ndarray, index: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        h, w = rgb.shape[:2]
        ww, wh = working_size(w, h, cfg.flow.width)
        gray = cv2.cvtColor(cv2.resize(rgb, (ww, wh), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        prev, self.prev = self.prev, gray
        if prev is None or index in self.shot_starts:
            empty = np.zeros((h, w), np.float32)
            return {"saliency": empty, "otsu": empty}
        motion, conf = self.fe(prev, gray)
        gm = fit_global_motion(motion, conf, cfg.global_motion)
        res = np.linalg.norm(residual_motion(motion, gm), axis=2)
        # saliency stays soft: its best threshold and calibration are figures too
        sal = motion_saliency(res, gm.residual_noise, cfg.motion.saliency_scale).astype(np.float32)
        r8 = np.clip(res / max(float(res.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
        _, m = cv2.threshold(r8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return {
            "saliency": cv2.resize(sal, (w, h)),
            "otsu": (cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) > 0).astype(np.float32),
        }


def _thumb(rgb: np.ndarray, prob: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = ref.shape
    size = (SHEET_WIDTH, int(round(h * SHEET_WIDTH / w)))
    return (
        cv2.resize(rgb, size, interpolation=cv2.INTER_AREA),
        cv2.resize(prob, size),
        cv2.resize(ref, size, interpolation=cv2.INTER_NEAREST),
    )


def evaluate_clip(path: Path, gt_dir: Path, clip: dict, cfg, scores: dict[str, MaskScore], bar=None) -> dict:
    """Score one clip into the family's `scores`; returns its row (per-method mean IoU@0.5,
    kept frames, the teacher's seconds) and, under "_sheet", thumbnails for the contact sheet."""
    seg = MotionSegmenter(cfg)
    base = Baselines(cfg, set(clip.get("shot_starts", [0])))
    pending: dict[int, dict[str, np.ndarray]] = {}  # baseline maps until the teacher's result (lookahead)
    stride = max(1, int(clip.get("frames", 90)) // SHEET_CANDIDATES)
    row = {
        "clip": clip["name"],
        "frames": 0,
        "kept": 0,
        "seconds": 0.0,
        "iou": {m: [] for m in METHODS},
        "kept_iou": [],
        "_sheet": [],
    }

    def take(results) -> None:
        for r in results:
            i = r.frame.index
            ref = load_gt(gt_dir, i)
            maps = {"motion_masks": r.prob, **pending.pop(i)}
            ious = {m: scores[m].add(maps[m], ref) for m in METHODS}
            row["frames"] += 1
            row["kept"] += int(r.kept)
            if ious["motion_masks"] is None:
                continue
            for m in METHODS:
                row["iou"][m].append(ious[m])
            if r.kept:
                row["kept_iou"].append(ious["motion_masks"])
            if i % stride == 0:
                row["_sheet"].append((i, ious["motion_masks"], *_thumb(r.frame.image, r.prob, ref)))

    for frame in frames_of(path):
        pending[frame.index] = base(frame.image, frame.index)
        t0 = time.perf_counter()
        results = seg.push(frame)
        row["seconds"] += time.perf_counter() - t0
        take(results)
        if bar is not None:
            bar.update(1)
    t0 = time.perf_counter()
    results = seg.flush()
    row["seconds"] += time.perf_counter() - t0
    take(results)
    return row


def evaluate(data_dir: Path, clips: list[dict], cfg, progress: bool = True, desc: str = "frames") -> dict:
    """Every method on every clip of a folder: {"summary": {method: MaskScore.summary() (+ kept
    frames and speed for the teacher)}, "curve", "reliability", "per_clip", "_sheet"}."""
    scores = {m: MaskScore() for m in METHODS}
    rows = []
    total = sum(int(c.get("frames", 0)) for c in clips) or None
    with tqdm(total=total, desc=desc, unit="frame", disable=not progress, file=sys.stderr) as bar:
        for clip in clips:
            rows.append(evaluate_clip(data_dir / clip["file"], data_dir / clip["name"], clip, cfg, scores, bar))
    summary = {m: scores[m].summary() for m in METHODS}
    frames = sum(r["frames"] for r in rows)
    kept_iou = [v for r in rows for v in r["kept_iou"]]
    summary["motion_masks"] |= {
        "kept_fraction": sum(r["kept"] for r in rows) / max(frames, 1),
        "kept_iou": float(np.mean(kept_iou)) if kept_iou else None,
        "fps": frames / max(sum(r["seconds"] for r in rows), 1e-9),
    }
    per_clip = [
        {
            "clip": r["clip"],
            "frames": r["frames"],
            "object_frames": len(r["iou"]["motion_masks"]),
            **{m: (float(np.mean(r["iou"][m])) if r["iou"][m] else None) for m in METHODS},
        }
        for r in rows
    ]
    return {
        "summary": summary,
        "targets": targets(summary),
        "curve": {m: scores[m].curve() for m in METHODS},
        "reliability": scores["motion_masks"].reliability(),
        "per_clip": per_clip,
        "_sheet": {r["clip"]: r["_sheet"] for r in rows},
    }


def targets(summary: dict) -> dict:
    """Issue 18's targets on one family, each with its value and whether it is met (None: no frame
    with an object to judge by)."""
    t, o = summary["motion_masks"], summary["otsu"]
    if t["iou"] is None:
        return {"gap_to_otsu": None, "gap_met": None, "calibration_gap": None, "calibration_met": None}
    gap, cal = t["iou"] - o["iou"], abs(t["iou"] - t["best_iou"])
    return {
        "gap_to_otsu": gap,
        "gap_met": gap >= TARGET_GAP,
        "calibration_gap": cal,
        "calibration_met": cal <= TARGET_CALIBRATION,
    }


def _outline(img: np.ndarray, ref: np.ndarray, void: bool = False) -> np.ndarray:
    """The reference object's outline in green; with `void`, the void pixels tinted cyan (on the
    frame only: on every tile, a real clip's void specks in foliage hid the masks)."""
    out = img.copy()
    if void:
        v = (ref > 64) & (ref < 192)
        out[v] = (0.5 * out[v] + 0.5 * np.array([0, 220, 255])).astype(np.uint8)
    contours, _ = cv2.findContours((ref > 192).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (40, 255, 40), 1, cv2.LINE_AA)
    return out


def _heat(rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
    heat = cv2.cvtColor(
        cv2.applyColorMap((np.clip(prob, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
    )
    gray = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return (0.7 * heat + 0.3 * gray).astype(np.uint8)  # a little of the frame, to see what is hot


def worst_sheet(result: dict, path: Path) -> list[str]:
    """Contact sheet of the SHEET_CLIPS clips with the lowest teacher IoU@0.5: per row a frame (void
    tinted cyan), the probability as a heat map (blue 0, red 1) and the mask at 0.5 (red), the
    reference outline in green on each; frames evenly spaced over the clip's frames with an object.
    Returns the clips shown (none: nothing written)."""
    scored = [c for c in result["per_clip"] if c["motion_masks"] is not None]
    worst = sorted(scored, key=lambda c: c["motion_masks"])[:SHEET_CLIPS]
    rows = []
    for c in worst:
        cands = result["_sheet"][c["clip"]]
        picks = sorted({int(round(k)) for k in np.linspace(0, len(cands) - 1, SHEET_FRAMES)}) if cands else []
        for k in picks:
            i, iou, rgb, prob, ref = cands[k]
            rows.append(
                np.concatenate(
                    [
                        tile(_outline(rgb, ref, void=True), SHEET_WIDTH, f"{c['clip']} #{i}"),
                        tile(_outline(_heat(rgb, prob), ref), SHEET_WIDTH, "teacher probability"),
                        tile(
                            _outline(overlay(rgb, prob), ref),
                            SHEET_WIDTH,
                            f"p>=0.5 IoU {iou:.2f}, clip {c['motion_masks']:.2f}",
                        ),
                    ],
                    axis=1,
                )
            )
    if not rows:
        return []
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 3), (0, width - r.shape[1]), (0, 0))) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, np.concatenate(rows, axis=0))
    return [c["clip"] for c in worst]


def _met(ok: bool | None) -> str:
    return "-" if ok is None else "met" if ok else "NOT MET"


def print_family(fam: Family, folder: Path, n_clips: int, r: dict) -> None:
    s, t = r["summary"], r["targets"]
    mm = s["motion_masks"]
    print(
        f"\n### {title(fam)}: {n_clips} clips, {mm['frames']} frames with a moving object, "
        f"{mm['empty_frames']} without ({folder})"
    )
    print("| method | mIoU@0.5 | best mIoU (threshold) | precision | recall | ECE | FP on frames without objects |")
    print("|---|---|---|---|---|---|---|")
    for m in METHODS:
        x = s[m]
        best = "-" if x["best_iou"] is None else f"{x['best_iou']:.3f} ({x['best_threshold']:.2f})"
        print(
            f"| {NAMES[m]} | {fmt(x['iou'])} | {best} | {fmt(x['precision'])} | {fmt(x['recall'])} | "
            f"{fmt(x['ece'])} | {fmt(x['empty_fp'])} |"
        )
    if t["gap_to_otsu"] is not None:
        print(
            f"targets: teacher IoU@0.5 - Otsu = {t['gap_to_otsu']:+.3f} (>= +{TARGET_GAP:.2f}: "
            f"{_met(t['gap_met'])}); |IoU@0.5 - best IoU| = {t['calibration_gap']:.3f} "
            f"(<= {TARGET_CALIBRATION:.2f}: {_met(t['calibration_met'])})"
        )
    print(
        f"kept after pruning: {mm['kept_fraction']:.1%} of frames, teacher IoU on kept frames "
        f"{fmt(mm['kept_iou'])}; segmenter {mm['fps']:.1f} fps (decode excluded)"
    )
    print(f"\nreliability of the teacher's probability, {fam.name} (frames with an object, void excluded)")
    print("| probability | pixels | mean probability | foreground fraction |")
    print("|---|---|---|---|")
    n = sum(b["pixels"] for b in r["reliability"]) or 1
    for b in r["reliability"]:
        print(f"| {b['bin']} | {b['pixels'] / n:.1%} | {fmt(b['mean_prob'])} | {fmt(b['fg_fraction'])} |")
    if r.get("contact_sheet"):
        print(f"worst clips ({', '.join(r['worst_clips'])}): {r['contact_sheet']}")


def print_overview(res: dict) -> None:
    print("\n### every family: the targets of issue 18 (teacher = motion masks)")
    print(
        "| family | teacher mIoU@0.5 | best (threshold) | Otsu mIoU@0.5 | teacher - Otsu (>= +0.10) | "
        "abs(IoU@0.5 - best) (<= 0.02) | ECE |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in res["families"].items():
        mm, t = r["summary"]["motion_masks"], r["targets"]
        best = "-" if mm["best_iou"] is None else f"{mm['best_iou']:.3f} ({mm['best_threshold']:.2f})"
        gap = "-" if t["gap_to_otsu"] is None else f"{t['gap_to_otsu']:+.3f} {_met(t['gap_met'])}"
        cal = "-" if t["calibration_gap"] is None else f"{t['calibration_gap']:.3f} {_met(t['calibration_met'])}"
        label = f"{name} (tuning set)" if r["tuning"] else name
        print(
            f"| {label} | {fmt(mm['iou'])} | {best} | {fmt(r['summary']['otsu']['iou'])} | {gap} | {cal} | "
            f"{fmt(mm['ece'])} |"
        )
    print_skipped(res["skipped"])


def chosen_families(args) -> list[Family]:
    """--family names (all by default), a --seed/--clips "things" set, and a --data folder."""
    extra = []
    if args.seed is not None or args.clips is not None:
        extra.append(synth_family(100 if args.seed is None else args.seed, 10 if args.clips is None else args.clips))
    if args.data:
        extra.append(folder_family(args.data))
    return chosen(args.family, extra)


def quality_main(args) -> int:
    args.out = args.out or str(OUT / "quality.json")
    out = Path(args.out)
    cfg = load_config(args.config).streamer
    res: dict = {"families": {}, "skipped": {}}
    t0 = time.monotonic()
    for fam, folder, clips in each_resolved(chosen_families(args), res["skipped"]):
        r = evaluate(folder, clips, cfg, progress=_progress(), desc=fam.name)
        sheet = out.parent / f"quality_worst_{re.sub(r'[^A-Za-z0-9_.-]+', '_', fam.name)}.png"
        r["worst_clips"] = worst_sheet(r, sheet)
        r["contact_sheet"] = str(sheet) if r["worst_clips"] else None
        del r["_sheet"]
        res["families"][fam.name] = {"folder": str(folder), "tuning": fam.tuning, "clips": len(clips), **r}
        print_family(fam, folder, len(clips), r)
    print_overview(res)
    res["thresholds_grid"] = [float(t) for t in THRESHOLDS]
    res["machine"] = {
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "revision": git_revision(),
        "load_avg": os.getloadavg(),
    }
    res["args"] = vars(args)
    res["seconds"] = time.monotonic() - t0
    save_json(out, res)
    print(f"wrote {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--family",
        action="append",
        choices=list(FAMILIES),
        metavar="NAME",
        help=f"an evaluation family, repeatable (default: all of {', '.join(FAMILIES)})",
    )
    ap.add_argument(
        "--data",
        default=None,
        help="also (or, without --family, only) this folder in the synthetic sets' format (clips.json, CLIP/gt/)",
    )
    ap.add_argument(
        "--clips",
        type=int,
        default=None,
        help="a 'things' set of this many clips (default 10; --learner: the training clips)",
    )
    ap.add_argument(
        "--seed", type=int, default=None, help="a 'things' set of this seed (default 100; --learner: the training seed)"
    )
    ap.add_argument("--config", default=None)
    ap.add_argument(
        "--out",
        default=None,
        help="default bench/out/quality.json (--learner: quality_learner.json); the contact sheets go next to it",
    )
    learner = ap.add_argument_group("--learner")
    learner.add_argument("--learner", action="store_true", help="student vs teacher and bootstrapping (see above)")
    learner.add_argument("--minutes", type=float, default=6.0, help="training minutes of each student (default 6)")
    learner.add_argument(
        "--steps",
        type=int,
        default=0,
        help="train each student this many steps instead of --minutes (a comparison that does not depend "
        "on how busy the machine is); 0 = use --minutes",
    )
    learner.add_argument(
        "--branch",
        type=float,
        default=0.5,
        help="fraction of --minutes (or --steps) trained plainly before the bootstrapped student branches off",
    )
    learner.add_argument("--rounds", type=int, default=3, help="bootstrapping rounds after the branch (default 3)")
    learner.add_argument("--eval-seed", type=int, default=7)
    learner.add_argument("--eval-clips", type=int, default=10)
    learner.add_argument("--real", default=str(ROOT.parent / "shared" / "data"), help="real clips (skipped if absent)")
    learner.add_argument("--real-minutes", type=float, default=2.5, help="training minutes on the real clips; 0 = skip")
    learner.add_argument("--real-frames", type=int, default=300, help="at most this many frames of each real clip")
    args = ap.parse_args()
    if args.learner:
        args.seed = 100 if args.seed is None else args.seed
        args.clips = 10 if args.clips is None else args.clips
        return learner_main(args)
    return quality_main(args)


# ---- --learner: the student against its teacher ------------------------------------------------

STUDENTS = {
    "student_branch": "plain student at the branch point",
    "student": "plain student",
    "bootstrapped": "student after bootstrapping rounds",
}


def _synth(seed: int, clips: int) -> tuple[Path, list[dict]]:
    # its own copy: the masks benchmark (and whoever tunes the streamer) regenerates bench/out/synth_*
    return synth_cached(OUT / "learner_runs", seed, clips)


def _train(
    cfg,
    feed,
    run_dir: Path,
    limits,
    stop_at: tuple[str, float] | None = None,
    resume: Path | None = None,
    boot=None,
):
    """One training phase on `feed` up to `limits` (learner.train.Limits), or earlier at `stop_at`
    ("seconds" or "steps", value); a phase that resumes starts from a copy of `resume`'s run."""
    import shutil

    from learner.checkpoint import find_resume
    from learner.train import Trainer, fit

    shutil.rmtree(run_dir, ignore_errors=True)
    if resume is not None:
        shutil.copytree(resume, run_dir)
    trainer = Trainer(cfg.learner)
    found = find_resume(run_dir, trainer.device) if resume is not None else None
    if found is not None:
        trainer.load_state_dict(found[1], found[0])
    stop = None
    if stop_at is not None:
        kind, at = stop_at
        stop = (lambda: trainer.train_seconds >= at) if kind == "seconds" else (lambda: trainer.step_count >= at)
    summary = fit(
        trainer,
        feed,
        run_dir,
        limits,
        progress=_progress(),
        stop=stop,
        interrupts=(),
        on_step=boot.on_step if boot is not None else None,
    )
    return trainer, summary


def fusion_table(model, device, ring, trimap_cfg, lookup, fg: float = 0.5) -> list[dict]:
    """Label quality of each rule and weight on the buffer's samples, for one student (nothing
    is written): IoU of the thresholded probability and accuracy/coverage of its trimap."""
    from learner.bootstrap import fuse, student_probs
    from streamer.motion.trimap import trimap

    grid = [("motion", None, 0.0), ("student", None, 1.0)] + [
        (r, r, w) for r in ("linear", "geometric") for w in (0.3, 0.5, 0.7)
    ]
    acc = {i: {"iou": [], "right": 0, "labelled": 0, "pixels": 0} for i in range(len(grid))}
    slots = ring.ready_slots()
    model.eval()
    for start in range(0, len(slots), 16):
        b = ring.read(slots[start : start + 16])
        students = student_probs(model, b.frames, np.asarray(b.valid), device)
        for k in range(len(b)):
            y0, x0, h, w = (int(v) for v in b.valid[k])
            gt = lookup(b.cameras[k], int(b.frame_index[k]))
            if gt is None:
                continue
            if gt.shape != (h, w):
                gt = cv2.resize(gt.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            motion = b.probs[k, y0 : y0 + h, x0 : x0 + w] / 255.0
            for i, (_, rule, wt) in enumerate(grid):
                p = motion if i == 0 else students[k] if i == 1 else fuse(students[k], motion, wt, rule)
                t = trimap(p, trimap_cfg)
                a = acc[i]
                a["iou"].append(score(p >= fg, gt)[0])
                a["right"] += int(((t == 255) & gt).sum() + ((t == 0) & ~gt).sum())
                a["labelled"] += int((t != 128).sum())
                a["pixels"] += t.size
    model.train()
    return [
        {
            "labels": name if rule is None else f"{rule} w={wt:g}",
            "iou": float(np.mean(acc[i]["iou"])),
            "accuracy": acc[i]["right"] / max(acc[i]["labelled"], 1),
            "coverage": acc[i]["labelled"] / max(acc[i]["pixels"], 1),
            "samples": len(acc[i]["iou"]),
        }
        for i, (name, rule, wt) in enumerate(grid)
    ]


def evaluate_students(data_dir: Path, clips: list[dict], scfg, checkpoints: dict[str, Path]) -> dict:
    """Teacher and students on clips never seen in training: IoU, precision, recall on frames with
    a moving object, false-positive fraction on frames without (learner.evaluate)."""
    return evaluate_checkpoints(checkpoints, data_dir, "auto", scfg, max_clips=len(clips), progress=_progress())


def _real_clips(folder: Path, max_frames: int, work: Path) -> list[dict]:
    """The first 70% of each real clip (at most max_frames) as a folder of JPEGs to train on; the
    rest is held back for agreement and the contact sheet."""
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".mp4", ".avi", ".mkv", ".mov"):
            continue
        try:
            frames = []
            with av.open(str(path)) as c:
                for f in c.decode(video=0):
                    frames.append(f.to_ndarray(format="rgb24"))
                    if len(frames) >= max_frames:
                        break
        except (av.error.FFmpegError, OSError) as e:
            print(f"skipping {path.name}: {e}", file=sys.stderr)
            continue
        if len(frames) < 20:
            continue
        split = int(len(frames) * 0.7)
        d = work / path.stem
        d.mkdir(parents=True, exist_ok=True)
        for i, rgb in enumerate(frames[:split]):
            cv2.imwrite(str(d / f"{i:06d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        out.append({"name": path.stem, "frames": frames, "split": split, "train_dir": d})
    return out


def _offline_feed(cfg, folders: list[str]):
    from learner.samples import OfflineFeed

    s = cfg.learner.samples
    return OfflineFeed(
        folders,
        cfg.streamer,
        cfg.buffer,
        s.offline_draws_per_sample,
        s.offline_max_buffer_mb,
        log_level=logging.WARNING,
    )


def real_part(args, cfg, out_dir: Path) -> dict | None:
    """Train on the first 70% of each real clip, then student-teacher agreement on the rest."""
    from learner.bootstrap import Bootstrapper
    from learner.predict import Predictor
    from learner.train import Limits

    folder = Path(args.real)
    if args.real_minutes <= 0 or not folder.is_dir():
        print(f"\nreal clips: skipped ({'--real-minutes 0' if args.real_minutes <= 0 else f'{folder} not found'})")
        return None
    clips = _real_clips(folder, args.real_frames, out_dir / "learner_runs" / "real_train")
    if not clips:
        return None
    run_dir = out_dir / "learner_runs" / "real"
    with _offline_feed(cfg, [str(c["train_dir"]) for c in clips]) as feed:
        boot = Bootstrapper(cfg.learner.bootstrap, cfg.streamer.trimap, feed.ring, run_dir)
        trainer, summary = _train(cfg, feed, run_dir, Limits(minutes=args.real_minutes), boot=boot)
    student = Predictor(run_dir / "checkpoints" / "last.pt", "auto")
    rows, sheet = [], []
    for c in clips:
        row, tiles = _score_real_clip(c, cfg.streamer, student)
        rows.append(row)
        sheet += tiles
    png = out_dir / "quality_learner_real.png"
    if sheet:
        width = max(t.shape[1] for t in sheet)
        sheet = [np.pad(t, ((0, 4), (0, width - t.shape[1]), (0, 0))) for t in sheet]
        write_png(png, np.concatenate(sheet, axis=0))
    return {
        "clips": rows,
        "train_steps": trainer.step_count,
        "train_minutes": summary.seconds / 60,
        "rounds": [h.line() for h in boot.history],
        "contact_sheet": str(png),
    }


def _score_real_clip(c: dict, scfg, student) -> tuple[dict, list[np.ndarray]]:
    """One real clip's agreement row and its contact-sheet rows (at most two)."""
    seg = MotionSegmenter(scfg)
    results = []
    for i, rgb in enumerate(c["frames"]):
        results += seg.push(Frame(rgb, c["name"], i, i / 25.0))
    results += seg.flush()
    held = [r for r in results if r.frame.index >= c["split"]]
    agree, agree_kept, picks = [], [], []
    for r in held:
        sp = student(r.frame.image)
        teacher_fg, student_fg = r.prob >= scfg.prune.fg_threshold, sp >= 0.5
        if r.kept:
            picks.append((r, sp))
        if not (teacher_fg.any() or student_fg.any()):
            continue  # both empty: agreement on nothing says nothing
        iou = score(student_fg, teacher_fg)[0]
        agree.append(iou)
        if r.kept:
            agree_kept.append(iou)
    if not picks:  # nothing kept: show the held-back frames anyway
        picks = [(r, student(r.frame.image)) for r in held[:: max(1, len(held) // 2)][:2]]
    row = {
        "clip": c["name"],
        "train_frames": c["split"],
        "held_back": len(held),
        "kept_held_back": sum(r.kept for r in held),
        "scored": len(agree),
        "agreement_iou": float(np.mean(agree)) if agree else None,
        "agreement_iou_kept": float(np.mean(agree_kept)) if agree_kept else None,
        "teacher_fg": float(np.mean([(r.prob >= 0.5).mean() for r in held])) if held else None,
    }
    return row, [_real_sheet_row(c["name"], r, sp) for r, sp in picks[:: max(1, len(picks) // 2)][:2]]


def _real_sheet_row(name: str, r, sp: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            tile(r.frame.image, 240, f"{name} #{r.frame.index}"),
            tile(overlay(r.frame.image, r.prob), 240, "teacher (motion)"),
            tile(overlay(r.frame.image, sp), 240, "student (one frame)"),
        ],
        axis=1,
    )


def learner_main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    t_start = time.monotonic()
    out_dir = OUT
    runs = out_dir / "learner_runs"
    cfg = load_config(args.config)
    cfg.learner.train.steps = 0
    train_dir, train_clips = _synth(args.seed, args.clips)
    eval_dir, eval_clips = _synth(args.eval_seed, args.eval_clips)
    boot_cfg = cfg.learner.bootstrap
    cfg.learner.bootstrap.enabled = False  # the plain phases; the bootstrapped branch gets its own Bootstrapper
    res: dict = {"args": vars(args)}
    res.update(train_students(args, cfg, boot_cfg, train_dir, len(train_clips), runs))
    ck = {
        "student_branch": runs / "branch" / "checkpoints" / "last.pt",
        "student": runs / "plain" / "checkpoints" / "last.pt",
        "bootstrapped": runs / "bootstrapped" / "checkpoints" / "last.pt",
    }
    res["unseen"] = evaluate_students(eval_dir, eval_clips, cfg.streamer, ck)
    res["coverage"] = coverage(res["unseen"], eval_dir, train_dir)
    cfg.learner.bootstrap = boot_cfg
    cfg.learner.bootstrap.enabled = True
    res["real"] = real_part(args, cfg, out_dir)
    res["machine"] = {
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "revision": git_revision(),
        "load_avg": os.getloadavg(),
    }
    res["seconds"] = time.monotonic() - t_start
    _print_learner(res, args)
    out = Path(args.out or out_dir / "quality_learner.json")
    save_json(out, res)
    print(f"wrote {out} ({res['seconds'] / 60:.1f} min)")
    return 0


def train_students(args, cfg, boot_cfg, train_dir: Path, n_clips: int, runs: Path) -> dict:
    """Plain training to the branch point, then a plain and a bootstrapped branch from there; the
    fusion rules scored at the branch point."""
    from learner.bootstrap import Bootstrapper, synthetic_ground_truth
    from learner.train import Limits

    M, S = args.minutes, args.steps
    # --steps: every student trains the same number of steps, however busy the machine is (a
    # paired comparison); --minutes: the same time, as a user's budget would be
    limits = Limits(steps=S) if S else Limits(minutes=M)
    budget = f"{S} steps" if S else f"{M:g} min"
    branch_at = ("steps", int(args.branch * S)) if S else ("seconds", args.branch * M * 60)
    with _offline_feed(cfg, [str(train_dir)]) as feed:
        lookup = synthetic_ground_truth(feed.specs)
        print(
            f"training on {n_clips} clips (seed {args.seed}) for {budget}: plain for "
            f"{args.branch:.0%} of it, then a plain and a bootstrapped branch",
            file=sys.stderr,
        )
        trainer, _ = _train(cfg, feed, runs / "branch", limits, stop_at=branch_at)
        branch_step = trainer.step_count
        rate = branch_step / max(trainer.train_seconds, 1e-9)
        fusion = fusion_table(trainer.model, trainer.device, feed.ring, cfg.streamer.trimap, lookup)
        del trainer
        _, plain = _train(cfg, feed, runs / "plain", limits, resume=runs / "branch")
        # rounds spread over the branch's expected steps: one at the branch, then every `every`
        left = S - branch_step if S else rate * (1 - args.branch) * M * 60
        every = max(1, int(left / max(args.rounds, 1)))
        bcfg = dataclasses.replace(
            boot_cfg, enabled=True, start_step=branch_step + 1, every_steps=every, max_rounds=args.rounds
        )
        fg_threshold = cfg.streamer.prune.fg_threshold
        boot = Bootstrapper(
            bcfg, cfg.streamer.trimap, feed.ring, runs / "bootstrapped", ground_truth=lookup, fg_threshold=fg_threshold
        )
        _, booted = _train(cfg, feed, runs / "bootstrapped", limits, resume=runs / "branch", boot=boot)
        streamed = dataclasses.asdict(feed.poll())
    training = {
        "branch_step": branch_step,
        "plain_step": plain.step,
        "bootstrapped_step": booted.step,
        "round_every_steps": every,
        "crops_per_s": plain.crops_per_s,
        "rule": bcfg.rule,
        "weights": [h.weight for h in boot.history],
    }
    return {
        "fusion_at_branch": fusion,
        "streamed": streamed,
        "training": training,
        "rounds": [h.line() for h in boot.history],
    }


def _print_learner(res: dict, args) -> None:
    _print_unseen(res, args)
    _print_coverage(res["coverage"])
    _print_rounds(res["rounds"], res["training"])
    _print_fusion(res["fusion_at_branch"], res["training"])
    if res.get("real"):
        _print_real(res["real"], args)


def _print_unseen(res: dict, args) -> None:
    u = res["unseen"]["summary"]
    print(
        f"\nstudent vs teacher on {args.eval_clips} unseen synthetic clips (seed {args.eval_seed}; trained on "
        f"seed {args.seed}, {f'{args.steps} steps' if args.steps else f'{args.minutes:g} min'} each on "
        f"{res['machine']['cpu']})"
    )
    print("| masks | mean IoU | precision | recall | FP on empty frames | steps |")
    print("|---|---|---|---|---|---|")
    steps = res["unseen"]["steps"]
    names = {"teacher": "teacher (motion masks)", **STUDENTS}
    for m in ["teacher", "student_branch", "student", "bootstrapped"]:
        r = u[m]
        print(
            f"| {names[m]} | {fmt(r['iou'])} | {fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['empty_fp'])} | "
            f"{steps.get(m, '-')} |"
        )


def _print_coverage(groups: list[dict]) -> None:
    print(
        "\nthe same frames by what the training clips showed of their shot: its background, and its movers' "
        "photos (common: each moved in >= 5 training objects)"
    )
    print("| background | movers | frames | teacher | plain at the branch | plain | bootstrapped |")
    print("|---|---|---|---|---|---|---|")
    for g in groups:
        print(
            f"| {g['background']} | {g['movers']} | {g['frames']} | {fmt(g['teacher'])} | "
            f"{fmt(g['student_branch'])} | {fmt(g['student'])} | {fmt(g['bootstrapped'])} |"
        )


def _print_rounds(rounds: list[dict], t: dict) -> None:
    print(
        f"\npseudo-label quality per round (training samples with ground truth; {t['rule']} rule, round 0 = "
        f"the motion labels; a round every {t['round_every_steps']} steps from step {t['branch_step'] + 1})"
    )
    print("| round | step | w | IoU of labels | label accuracy | labelled pixels | labels changed | student IoU |")
    print("|---|---|---|---|---|---|---|---|")
    if rounds:
        q = rounds[0]["quality"]
        print(
            f"| 0 | - | 0 | {fmt(q.get('iou_motion'))} | {fmt(q.get('accuracy_motion'))} | "
            f"{fmt(rounds[0]['coverage_motion'])} | - | - |"
        )
    for r in rounds:
        q = r["quality"]
        print(
            f"| {r['round']} | {r['step']} | {r['weight']:.2f} | {fmt(q.get('iou_refined'))} | "
            f"{fmt(q.get('accuracy_refined'))} | {fmt(r['coverage_refined'])} | {fmt(r['changed'])} | "
            f"{fmt(q.get('iou_student'))} |"
        )


def _print_fusion(rows: list[dict], t: dict) -> None:
    print(f"\nfusion rules on the training labels at the branch point (student at step {t['branch_step']})")
    print("| labels | IoU vs GT | label accuracy | labelled pixels |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['labels']} | {fmt(r['iou'])} | {fmt(r['accuracy'])} | {fmt(r['coverage'])} |")


def _print_real(real: dict, args) -> None:
    print(
        f"\nreal clips ({args.real}), trained {real['train_minutes']:.1f} min on the first 70% of each "
        f"(at most {args.real_frames} frames), scored on the held-back rest: no ground truth, so agreement "
        f"(IoU) of student and teacher on frames where either marks something"
    )
    print("| clip | held-back frames | kept by pruning | agreement (all) | agreement (kept) | teacher fg |")
    print("|---|---|---|---|---|---|")
    for r in real["clips"]:
        print(
            f"| {r['clip']} | {r['held_back']} | {r['kept_held_back']} | {fmt(r['agreement_iou'])} | "
            f"{fmt(r['agreement_iou_kept'])} | {fmt(r['teacher_fg'])} |"
        )
    print(f"contact sheet: {real['contact_sheet']}")


if __name__ == "__main__":
    sys.exit(main())
