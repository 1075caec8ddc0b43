"""One camera, one scene: does the student learn it? The daemon's real use, on real footage.

`motionmask train` (the real CLI, every default unless --config) trains on the first 70% of a real
clip; the student (one frame at a time) and the teacher (the motion masks, which run over the whole
clip, so they have their history) then mask the held-back 30%. There is no ground truth, so it
reports what can be measured without one, and a contact sheet for a person to judge:

  - agreement: IoU of the student's and the teacher's masks (prob >= 0.5), per held-back frame;
  - teacher positives covered: of the pixels the teacher is sure of (prob >= trimap.positive_above),
    the fraction the student marks;
  - student-only foreground: of the student's foreground, the fraction the teacher calls background
    (prob < trimap.negative_below): false marks, or objects standing still, which motion cannot see;
  - stability: IoU of each mask with the previous frame's (objects move between frames, so neither
    reaches 1; a mask that comes and goes scores low).

Where the clip has reference masks, both are also scored against them (IoU, precision and recall
at 0.5, and the best threshold's IoU; void pixels not counted): the still-camera clips of
../shared/data have them (synth/reference_masks.py, built under bench/out on first use), and so
does a clip of a synthetic set (`motionmask synth`: clips.json beside the video). On vtest that
is what says whether the student's foreground beyond its teacher's is a person or a halo.

    python -m bench.camera_student                      # ../shared/data/vtest.avi, 12 minutes (~15 min)
    python -m bench.camera_student CLIP --minutes 3 --config my.yaml --frames 300
    python -m bench.camera_student --reuse              # score the student trained by the last run again

Prints a markdown table and writes bench/out/camera_student.json (--out) and the sheet
bench/out/camera_student.png: eight held-back frames, the teacher's masks and the student's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import OUT, ROOT, cpu_model, fmt, git_revision, overlay, progress_bar, save_json, tile
from bench.maskscore import MaskScore, reference
from common.errors import UserError
from learner.evaluate import score
from learner.predict import Predictor
from motionmask.config import load_config
from streamer.motion.pipeline import MotionSegmenter
from streamer.png import write_png
from streamer.sources import open_source
from synth.reference_masks import CLIPS as REFERENCE_CLIPS
from synth.reference_masks import reference_set
from synth.things import load_gt

SHEET_FRAMES = 8
# What evaluate() reports, a mean over the held-back frames each (in this order in the JSON).
FIGURES = (
    "agreement",
    "agreement_kept",
    "covered",
    "student_only",
    "teacher_fg",
    "student_fg",
    "teacher_stable",
    "student_stable",
)


def extract(clip: Path, work: Path, max_frames: int, cfg) -> tuple[Path, Path, int, int]:
    """Every frame of the clip (at most max_frames) as JPEGs in work/all, and the first 70% of them
    again (as links) in work/train: a folder of images is an input `motionmask train` takes, and
    the teacher then reads exactly the pixels the student trained on."""
    all_dir, train_dir = work / "all", work / "train"
    for d in (all_dir, train_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    n = 0
    with open_source(str(clip), cfg.source) as source:
        for frame in source:
            cv2.imwrite(
                str(all_dir / f"{n:06d}.jpg"),
                cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
            n += 1
            if n >= max_frames:
                break
    if n < 20:
        raise UserError(f"{clip}: {n} frames decoded; at least 20 are needed (14 to train on, 6 held back)")
    split = int(n * 0.7)
    for i in range(split):
        os.symlink(f"../all/{i:06d}.jpg", train_dir / f"{i:06d}.jpg")  # relative: the folder may move
    return all_dir, train_dir, n, split


def extracted(work: Path) -> tuple[Path, Path, int, int]:
    """An earlier run's frames (--reuse): the same tuple as extract()."""
    all_dir, train_dir = work / "all", work / "train"
    if not (work / "run" / "checkpoints" / "last.pt").is_file():
        raise UserError(f"{work / 'run'}: no trained student to reuse; run once without --reuse")
    return all_dir, train_dir, len(list(all_dir.glob("*.jpg"))), len(list(train_dir.glob("*.jpg")))


def reference_of(clip: Path) -> Path | None:
    """The folder of reference masks (NNNNNN.png per frame) of `clip`, or None: a clip of a
    synthetic set (clips.json beside it), or one of the still-camera real clips (their reference
    set is built under bench/out on first use, ~70 s)."""
    sets = []
    if (clip.parent / "clips.json").is_file():
        sets.append((clip.parent, json.loads((clip.parent / "clips.json").read_text())))
    if clip.name in {c.file for c in REFERENCE_CLIPS}:
        sets.append(reference_set(OUT, clip.parent))
    for folder, entries in sets:
        for e in entries:
            if Path(folder, e["file"]).resolve() == clip.resolve():
                return Path(folder) / e["name"] / "gt"
    return None


def train(train_dir: Path, run: Path, minutes: float, config: str | None) -> str:
    """`motionmask train` from scratch, as a user runs it; returns its summary line."""
    shutil.rmtree(run, ignore_errors=True)  # the same --out again would resume the earlier run
    cmd = [
        sys.executable,
        "-m",
        "motionmask.cli",
        "train",
        str(train_dir),
        "--out",
        str(run),
        "--minutes",
        f"{minutes:g}",
        "--steps",
        "0",
    ] + (["--config", config] if config else [])
    print("$ " + " ".join(cmd[2:]), file=sys.stderr)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, cwd=ROOT)
    tail = b""
    for chunk in iter(lambda: proc.stderr.read1(4096), b""):  # passed through: its progress bar stays live
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-8192:]
    if proc.wait() != 0:
        raise UserError(f"motionmask train exited with {proc.returncode}; its error is above")
    lines = [ln for ln in tail.decode(errors="replace").splitlines() if ln.startswith("motionmask train:")]
    return lines[-1].removeprefix("motionmask train: ") if lines else ""


def frame_pair_iou(a: np.ndarray | None, b: np.ndarray) -> float | None:
    """IoU of a mask with the previous frame's; None where both are empty (nothing to be stable)."""
    if a is None or not (a.any() or b.any()):
        return None
    return score(b, a)[0]


def evaluate(
    all_dir: Path, split: int, n: int, checkpoint: Path, cfg, ref_dir: Path | None = None
) -> tuple[dict, list[tuple]]:
    scfg = cfg.streamer
    student = Predictor(checkpoint, "auto")
    pos, neg, fg = scfg.trimap.positive_above, scfg.trimap.negative_below, scfg.prune.fg_threshold
    rows: dict[str, list[float]] = {k: [] for k in FIGURES}
    picks = set(np.linspace(split, n - 1, SHEET_FRAMES).round().astype(int).tolist())
    sheet, prev_t, prev_s = [], None, None
    against = {"teacher": MaskScore(), "student": MaskScore()}
    seg = MotionSegmenter(scfg)
    with open_source(str(all_dir), scfg.source) as source:
        bar = progress_bar(n, "teacher over the clip, student on the held-back frames")

        def held_back(results):
            nonlocal prev_t, prev_s
            for r in results:
                bar.update(1)
                if r.frame.index < split:
                    continue
                sp = student(r.frame.image)
                t_fg, s_fg = r.prob >= fg, sp >= 0.5
                rows["teacher_fg"].append(float(t_fg.mean()))
                rows["student_fg"].append(float(s_fg.mean()))
                if t_fg.any() or s_fg.any():
                    iou = score(s_fg, t_fg)[0]
                    rows["agreement"].append(iou)
                    if r.kept:
                        rows["agreement_kept"].append(iou)
                sure = r.prob >= pos
                if sure.any():
                    rows["covered"].append(float(s_fg[sure].mean()))
                if s_fg.any():
                    rows["student_only"].append(float((r.prob[s_fg] < neg).mean()))
                for key, prev, cur in (("teacher_stable", prev_t, t_fg), ("student_stable", prev_s, s_fg)):
                    v = frame_pair_iou(prev, cur)
                    if v is not None:
                        rows[key].append(v)
                prev_t, prev_s = t_fg, s_fg
                ref = None
                if ref_dir is not None:
                    ref = load_gt(ref_dir.parent, r.frame.index, ref_dir.name)
                    against["teacher"].add(r.prob, ref)
                    against["student"].add(sp, ref)
                if r.frame.index in picks:
                    sheet.append((r.frame.index, r.frame.image, r.prob, sp, ref))

        for frame in source:
            if frame.index >= n:
                break
            held_back(seg.push(frame))
        held_back(seg.flush())
        bar.close()
    res = {k: (float(np.mean(v)) if v else None) for k, v in rows.items()}
    res["frames_scored"] = {k: len(v) for k, v in rows.items()}
    res["reference"] = str(ref_dir) if ref_dir is not None else None
    res["against_reference"] = {k: v.summary() for k, v in against.items()} if ref_dir is not None else None
    res["checkpoint_step"] = student.step
    return res, sheet


def write_sheet(path: Path, sheet: list[tuple], width: int = 240) -> None:
    """Three rows: the held-back frames, the teacher's masks, the student's; a fourth with the
    reference masks where there are some (void shown grey)."""

    def column(i, rgb, prob, sp, ref):
        rows = [
            tile(rgb, width, f"#{i}"),
            tile(overlay(rgb, prob), width, "teacher (motion)"),
            tile(overlay(rgb, sp), width, "student (one frame)"),
        ]
        if ref is not None:
            fg, scored = reference(ref)
            shown = overlay(rgb, fg.astype(np.float32))
            shown[~scored] = 128
            rows.append(tile(shown, width, "reference"))
        return np.concatenate(rows, axis=0)

    cols = [column(*s) for s in sorted(sheet, key=lambda s: s[0])]
    cols = [np.pad(c, ((0, 0), (0, 4), (0, 0))) for c in cols]
    write_png(path, np.concatenate(cols, axis=1))


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "clip",
        nargs="?",
        default=str(ROOT.parent / "shared" / "data" / "vtest.avi"),
        help="a real video (default: ../shared/data/vtest.avi, a fixed camera over walkers)",
    )
    ap.add_argument("--minutes", type=float, default=12.0, help="training minutes (default 12, the issue's budget)")
    ap.add_argument("--config", default=None, help="YAML config for `motionmask train` and the teacher")
    ap.add_argument("--frames", type=int, default=100000, help="at most this many frames of the clip")
    ap.add_argument("--out", default=str(OUT / "camera_student.json"))
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="score the student the last run with the same --out trained again, without training (its "
        "--minutes and --config are taken as given)",
    )
    args = ap.parse_args()
    clip = Path(args.clip)
    try:
        if not clip.is_file():
            raise UserError(f"{clip}: no such video; pass a clip, e.g. ../shared/data/vtest.avi")
        cfg = load_config(args.config)
        out = Path(args.out).resolve()
        if out.suffix.lower() != ".json":  # the run goes in a folder named like it: they would collide
            raise UserError(f"--out {args.out}: name a .json file, e.g. {out.name}.json (the run goes beside it)")
        work = out.parent / out.stem / clip.stem  # frames and the run, beside the JSON
        t0 = time.monotonic()
        if args.reuse:
            all_dir, train_dir, n, split = extracted(work)
            summary = f"reused {work / 'run'}"
        else:
            all_dir, train_dir, n, split = extract(clip, work, args.frames, cfg.streamer)
            summary = train(train_dir, work / "run", args.minutes, args.config)
        ref_dir = reference_of(clip)
        res, sheet = evaluate(all_dir, split, n, work / "run" / "checkpoints" / "last.pt", cfg, ref_dir)
    except UserError as e:
        print(f"camera_student: {e}", file=sys.stderr)
        return 2
    png = out.with_suffix(".png")
    write_sheet(png, sheet)
    doc = {
        "clip": str(clip),
        "frames": n,
        "train_frames": split,
        "held_back": n - split,
        "minutes": args.minutes,
        "config": args.config,
        "train_summary": summary,
        **res,
        "contact_sheet": str(png),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "revision": git_revision(),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    save_json(out, doc, indent=1)
    print(f"\n{clip.name}: trained on frames 0-{split - 1} for {args.minutes:g} min: {summary}")
    print(f"held back: frames {split}-{n - 1}\n")
    print("| held-back frames | teacher (motion) | student (one frame) |")
    print("|---|---:|---:|")
    print(f"| mean foreground fraction | {fmt(res['teacher_fg'])} | {fmt(res['student_fg'])} |")
    print(
        f"| stability: IoU with the previous frame's mask | {fmt(res['teacher_stable'])} | "
        f"{fmt(res['student_stable'])} |"
    )
    print(
        f"| agreement IoU, all / frames the teacher keeps | {fmt(res['agreement'])} / {fmt(res['agreement_kept'])} | |"
    )
    print(f"| teacher's sure positives the student marks | | {fmt(res['covered'])} |")
    print(f"| student foreground the teacher calls background | | {fmt(res['student_only'])} |")
    if res["against_reference"]:
        t, st = res["against_reference"]["teacher"], res["against_reference"]["student"]
        for key, what in (
            ("iou", "IoU at 0.5"),
            ("precision", "precision at 0.5"),
            ("recall", "recall at 0.5"),
            ("best_iou", "IoU at the best threshold"),
        ):
            print(f"| against the reference: {what} | {fmt(t[key])} | {fmt(st[key])} |")
        print(f"| against the reference: best threshold | {fmt(t['best_threshold'])} | {fmt(st['best_threshold'])} |")
        print(f"\nreference masks: {res['reference']} ({t['frames']} held-back frames with an object)")
    else:
        print("\nno reference masks for this clip: agreement with the teacher only")
    print(f"\nwrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
