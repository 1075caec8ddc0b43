"""Mask quality against the synthetic ground truth (motionmask synth).

For every frame with a moving object: IoU, precision and recall of the motion masks (prob >=
0.5) and of two baselines that use the same flow and camera model:
  - otsu:     residual flow magnitude after camera-motion removal, Otsu threshold per frame
  - saliency: our per-pixel motion saliency >= 0.5, without superpixels or voting
Frames whose ground truth is empty are scored separately (false-positive fraction of pixels).

    python bench/quality.py                    # 10 clips, seed 100 (not the test seeds)
    python bench/quality.py --clips 20 --seed 7 --config configs/default.yaml
Prints a table and writes bench/out/quality.json.

--learner: the student against its teacher (learner_main below; about 15 min on 2 CPU cores)
    python bench/quality.py --learner               # --minutes 6 per student, --real-minutes 2.5
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
import json
import logging
import os
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

from bench._machine import cpu_model, git_revision  # noqa: E402
from bench._sheet import overlay, tile  # noqa: E402

from learner.evaluate import coverage, evaluate_checkpoints, score  # noqa: E402
from motionmask.config import load_config  # noqa: E402
from streamer.flow import FlowEstimator, working_size  # noqa: E402
from streamer.frames import Frame  # noqa: E402
from streamer.global_motion import fit_global_motion, residual_motion  # noqa: E402
from streamer.pipeline import MotionSegmenter, motion_saliency  # noqa: E402
from streamer.synth import cached as synth_cached, load_gt  # noqa: E402

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
    ap.add_argument("--out", default=None, help="default bench/out/quality.json (--learner: quality_learner.json)")
    learner = ap.add_argument_group("--learner")
    learner.add_argument("--learner", action="store_true", help="student vs teacher and bootstrapping (see above)")
    learner.add_argument("--minutes", type=float, default=6.0, help="training minutes of each student (default 6)")
    learner.add_argument("--branch", type=float, default=0.5,
                         help="fraction of --minutes trained plainly before the bootstrapped student branches off")
    learner.add_argument("--rounds", type=int, default=3, help="bootstrapping rounds after the branch (default 3)")
    learner.add_argument("--eval-seed", type=int, default=7)
    learner.add_argument("--eval-clips", type=int, default=10)
    learner.add_argument("--real", default=str(ROOT.parent / "shared" / "data"), help="real clips (skipped if absent)")
    learner.add_argument("--real-minutes", type=float, default=2.5, help="training minutes on the real clips; 0 = skip")
    learner.add_argument("--real-frames", type=int, default=300, help="at most this many frames of each real clip")
    args = ap.parse_args()
    if args.learner:
        return learner_main(args)
    args.out = args.out or str(ROOT / "bench" / "out" / "quality.json")
    cfg = load_config(args.config).streamer
    if args.data:
        data = Path(args.data)
        clips = json.loads((data / "clips.json").read_text())
    else:
        data, clips = synth_cached(ROOT / "bench" / "out", args.seed, args.clips)
    res = evaluate(data, clips, cfg)
    s = res["summary"]
    print(f"\nmask quality on {len(clips)} synthetic clips (seed {args.seed}), frames with a moving object")
    print("| method | mean IoU | precision | recall | FP on empty frames |")
    print("|---|---|---|---|---|")
    for m in METHODS:
        fp = s[m]["empty_fp"]
        print(f"| {m} | {s[m]['iou']:.3f} | {s[m]['precision']:.3f} | {s[m]['recall']:.3f} | "
              f"{'-' if fp is None else f'{fp:.3f}'} |")
    mm = s["motion_masks"]
    print(f"kept after pruning: {mm['kept_fraction']:.1%} of frames, IoU on kept frames {mm['kept_iou'] or 0:.3f}; "
          f"segmenter {mm['fps']:.1f} fps (decode excluded)")
    res["machine"] = {"cpu": cpu_model(), "python": platform.python_version(), "revision": git_revision()}
    res["args"] = vars(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    return 0


# ---- --learner: the student against its teacher ------------------------------------------------

STUDENTS = {"student_branch": "plain student at the branch point", "student": "plain student",
            "bootstrapped": "student after bootstrapping rounds"}


def _synth(seed: int, clips: int) -> tuple[Path, list[dict]]:
    # its own copy: the masks benchmark (and whoever tunes the streamer) regenerates bench/out/synth_*
    return synth_cached(ROOT / "bench" / "out" / "learner_runs", seed, clips)


def _train(cfg, feed, run_dir: Path, minutes: float, stop_after_s: float | None = None,
           resume: Path | None = None, boot=None):
    """One training phase on `feed`; a phase that resumes starts from a copy of `resume`'s run."""
    import shutil

    from learner.checkpoint import find_resume
    from learner.train import Limits, Trainer, fit

    shutil.rmtree(run_dir, ignore_errors=True)
    if resume is not None:
        shutil.copytree(resume, run_dir)
    trainer = Trainer(cfg.learner)
    found = find_resume(run_dir, trainer.device) if resume is not None else None
    if found is not None:
        trainer.load_state_dict(found[1], found[0])
    stop = (lambda: trainer.train_seconds >= stop_after_s) if stop_after_s else None
    summary = fit(trainer, feed, run_dir, Limits(minutes=minutes), progress=True, stop=stop, interrupts=(),
                  on_step=boot.on_step if boot is not None else None)
    return trainer, summary


def fusion_table(model, device, ring, trimap_cfg, lookup, fg: float = 0.5) -> list[dict]:
    """Label quality of each rule and weight on the buffer's samples, for one student (nothing
    is written): IoU of the thresholded probability and accuracy/coverage of its trimap."""
    from learner.bootstrap import fuse, student_probs
    from streamer.prune import trimap

    grid = [("motion", None, 0.0), ("student", None, 1.0)] + [(r, r, w) for r in ("linear", "geometric")
                                                            for w in (0.3, 0.5, 0.7)]
    acc = {i: {"iou": [], "right": 0, "labelled": 0, "pixels": 0} for i in range(len(grid))}
    slots = ring.ready_slots()
    model.eval()
    for start in range(0, len(slots), 16):
        b = ring.read(slots[start:start + 16])
        students = student_probs(model, b.frames, np.asarray(b.valid), device)
        for k in range(len(b)):
            y0, x0, h, w = (int(v) for v in b.valid[k])
            gt = lookup(b.cameras[k], int(b.frame_index[k]))
            if gt is None:
                continue
            gt = gt if gt.shape == (h, w) else cv2.resize(gt.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            motion = b.probs[k, y0:y0 + h, x0:x0 + w] / 255.0
            for i, (_, rule, wt) in enumerate(grid):
                p = motion if i == 0 else students[k] if i == 1 else fuse(students[k], motion, wt, rule)
                t = trimap(p, trimap_cfg)
                a = acc[i]
                a["iou"].append(score(p >= fg, gt)[0])
                a["right"] += int(((t == 255) & gt).sum() + ((t == 0) & ~gt).sum())
                a["labelled"] += int((t != 128).sum())
                a["pixels"] += t.size
    model.train()
    return [{"labels": name if rule is None else f"{rule} w={wt:g}", "iou": float(np.mean(acc[i]["iou"])),
             "accuracy": acc[i]["right"] / max(acc[i]["labelled"], 1),
             "coverage": acc[i]["labelled"] / max(acc[i]["pixels"], 1), "samples": len(acc[i]["iou"])}
            for i, (name, rule, wt) in enumerate(grid)]


def evaluate_students(data_dir: Path, clips: list[dict], scfg, checkpoints: dict[str, Path]) -> dict:
    """Teacher and students on clips never seen in training: IoU, precision, recall on frames with
    a moving object, false-positive fraction on frames without (learner.evaluate)."""
    return evaluate_checkpoints(checkpoints, data_dir, "auto", scfg, max_clips=len(clips), progress=True)


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


def real_part(args, cfg, out_dir: Path) -> dict | None:
    from learner.predict import Predictor
    from learner.samples import OfflineFeed
    from streamer.atomic import write_png

    folder = Path(args.real)
    if args.real_minutes <= 0 or not folder.is_dir():
        print(f"\nreal clips: skipped ({'--real-minutes 0' if args.real_minutes <= 0 else f'{folder} not found'})")
        return None
    clips = _real_clips(folder, args.real_frames, out_dir / "learner_runs" / "real_train")
    if not clips:
        return None
    s = cfg.learner.samples
    with OfflineFeed([str(c["train_dir"]) for c in clips], cfg.streamer, cfg.buffer, s.offline_draws_per_sample,
                     s.offline_max_buffer_mb, log_level=logging.WARNING) as feed:
        from learner.bootstrap import Bootstrapper

        boot = Bootstrapper(cfg.learner.bootstrap, cfg.streamer.trimap, feed.ring, out_dir / "learner_runs" / "real")
        trainer, summary = _train(cfg, feed, out_dir / "learner_runs" / "real", args.real_minutes, boot=boot)
    student = Predictor(out_dir / "learner_runs" / "real" / "checkpoints" / "last.pt", "auto")
    scfg = cfg.streamer
    rows, sheet = [], []
    for c in clips:
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
        for r, sp in picks[:: max(1, len(picks) // 2)][:2]:
            sheet.append(np.concatenate([tile(r.frame.image, 240, f"{c['name']} #{r.frame.index}"),
                                         tile(overlay(r.frame.image, r.prob), 240, "teacher (motion)"),
                                         tile(overlay(r.frame.image, sp), 240, "student (one frame)")], axis=1))
        rows.append({"clip": c["name"], "train_frames": c["split"], "held_back": len(held),
                     "kept_held_back": sum(r.kept for r in held), "scored": len(agree),
                     "agreement_iou": float(np.mean(agree)) if agree else None,
                     "agreement_iou_kept": float(np.mean(agree_kept)) if agree_kept else None,
                     "teacher_fg": float(np.mean([(r.prob >= 0.5).mean() for r in held])) if held else None})
    png = out_dir / "quality_learner_real.png"
    if sheet:
        width = max(t.shape[1] for t in sheet)
        sheet = [np.pad(t, ((0, 4), (0, width - t.shape[1]), (0, 0))) for t in sheet]
        write_png(png, np.concatenate(sheet, axis=0))
    return {"clips": rows, "train_steps": trainer.step_count, "train_minutes": summary.seconds / 60,
            "rounds": [h.line() for h in boot.history], "contact_sheet": str(png)}


def learner_main(args) -> int:
    from learner.bootstrap import Bootstrapper, synthetic_ground_truth
    from learner.samples import OfflineFeed

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    t_start = time.monotonic()
    out_dir = ROOT / "bench" / "out"
    runs = out_dir / "learner_runs"
    cfg = load_config(args.config)
    cfg.learner.train.steps = 0
    train_dir, train_clips = _synth(args.seed, args.clips)
    eval_dir, eval_clips = _synth(args.eval_seed, args.eval_clips)
    boot_cfg = cfg.learner.bootstrap
    cfg.learner.bootstrap.enabled = False  # the plain phases; the bootstrapped branch gets its own Bootstrapper
    M = args.minutes
    s = cfg.learner.samples
    res: dict = {"args": vars(args)}
    with OfflineFeed([str(train_dir)], cfg.streamer, cfg.buffer, s.offline_draws_per_sample, s.offline_max_buffer_mb,
                     log_level=logging.WARNING) as feed:
        lookup = synthetic_ground_truth(feed.specs)
        print(f"training on {len(train_clips)} clips (seed {args.seed}) for {M:g} min: plain for "
              f"{args.branch * M:g} min, then a plain and a bootstrapped branch", file=sys.stderr)
        trainer, summary = _train(cfg, feed, runs / "branch", M, stop_after_s=args.branch * M * 60)
        branch_step = trainer.step_count
        rate = branch_step / max(trainer.train_seconds, 1e-9)
        res["fusion_at_branch"] = fusion_table(trainer.model, trainer.device, feed.ring, cfg.streamer.trimap, lookup)
        del trainer
        _, plain = _train(cfg, feed, runs / "plain", M, resume=runs / "branch")
        # rounds spread over the branch's expected steps: one at the branch, then every `every`
        every = max(1, int(rate * (1 - args.branch) * M * 60 / max(args.rounds, 1)))
        bcfg = dataclasses.replace(boot_cfg, enabled=True, start_step=branch_step + 1, every_steps=every,
                                   max_rounds=args.rounds)
        boot = Bootstrapper(bcfg, cfg.streamer.trimap, feed.ring, runs / "bootstrapped", ground_truth=lookup,
                            fg_threshold=cfg.streamer.prune.fg_threshold)
        _, booted = _train(cfg, feed, runs / "bootstrapped", M, resume=runs / "branch", boot=boot)
        res["streamed"] = dataclasses.asdict(feed.poll())
    res["training"] = {"branch_step": branch_step, "plain_step": plain.step, "bootstrapped_step": booted.step,
                       "round_every_steps": every, "crops_per_s": plain.crops_per_s, "rule": bcfg.rule,
                       "weights": [h.weight for h in boot.history]}
    res["rounds"] = [h.line() for h in boot.history]
    ck = {"student_branch": runs / "branch" / "checkpoints" / "last.pt",
          "student": runs / "plain" / "checkpoints" / "last.pt",
          "bootstrapped": runs / "bootstrapped" / "checkpoints" / "last.pt"}
    res["unseen"] = evaluate_students(eval_dir, eval_clips, cfg.streamer, ck)
    res["coverage"] = coverage(res["unseen"], eval_dir, train_dir)
    cfg.learner.bootstrap = boot_cfg
    cfg.learner.bootstrap.enabled = True
    res["real"] = real_part(args, cfg, out_dir)
    res["machine"] = {"cpu": cpu_model(), "python": platform.python_version(), "revision": git_revision(),
                      "load_avg": os.getloadavg()}
    res["seconds"] = time.monotonic() - t_start
    _print_learner(res, args)
    out = Path(args.out or out_dir / "quality_learner.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out} ({res['seconds'] / 60:.1f} min)")
    return 0


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _print_learner(res: dict, args) -> None:
    u, t = res["unseen"]["summary"], res["training"]
    print(f"\nstudent vs teacher on {args.eval_clips} unseen synthetic clips (seed {args.eval_seed}; trained on "
          f"seed {args.seed}, {args.minutes:g} min each on {res['machine']['cpu']})")
    print("| masks | mean IoU | precision | recall | FP on empty frames | steps |")
    print("|---|---|---|---|---|---|")
    steps = res["unseen"]["steps"]
    names = {"teacher": "teacher (motion masks)", **STUDENTS}
    for m in ["teacher", "student_branch", "student", "bootstrapped"]:
        r = u[m]
        print(f"| {names[m]} | {_f(r['iou'])} | {_f(r['precision'])} | {_f(r['recall'])} | {_f(r['empty_fp'])} | "
              f"{steps.get(m, '-')} |")
    print("\nthe same frames by what the training clips showed of their shot: its background, and its movers' "
          "photos (common: each moved in >= 5 training objects)")
    print("| background | movers | frames | teacher | plain at the branch | plain | bootstrapped |")
    print("|---|---|---|---|---|---|---|")
    for g in res["coverage"]:
        print(f"| {g['background']} | {g['movers']} | {g['frames']} | {_f(g['teacher'])} | "
              f"{_f(g['student_branch'])} | {_f(g['student'])} | {_f(g['bootstrapped'])} |")
    print(f"\npseudo-label quality per round (training samples with ground truth; {t['rule']} rule, round 0 = "
          f"the motion labels; a round every {t['round_every_steps']} steps from step {t['branch_step'] + 1})")
    print("| round | step | w | IoU of labels | label accuracy | labelled pixels | labels changed | student IoU |")
    print("|---|---|---|---|---|---|---|---|")
    rounds = res["rounds"]
    if rounds:
        q = rounds[0]["quality"]
        print(f"| 0 | - | 0 | {_f(q.get('iou_motion'))} | {_f(q.get('accuracy_motion'))} | "
              f"{_f(rounds[0]['coverage_motion'])} | - | - |")
    for r in rounds:
        q = r["quality"]
        print(f"| {r['round']} | {r['step']} | {r['weight']:.2f} | {_f(q.get('iou_refined'))} | "
              f"{_f(q.get('accuracy_refined'))} | {_f(r['coverage_refined'])} | {_f(r['changed'])} | "
              f"{_f(q.get('iou_student'))} |")
    print(f"\nfusion rules on the training labels at the branch point (student at step {t['branch_step']})")
    print("| labels | IoU vs GT | label accuracy | labelled pixels |")
    print("|---|---|---|---|")
    for r in res["fusion_at_branch"]:
        print(f"| {r['labels']} | {_f(r['iou'])} | {_f(r['accuracy'])} | {_f(r['coverage'])} |")
    real = res.get("real")
    if real:
        print(f"\nreal clips ({args.real}), trained {real['train_minutes']:.1f} min on the first 70% of each "
              f"(at most {args.real_frames} frames), scored on the held-back rest: no ground truth, so agreement "
              f"(IoU) of student and teacher on frames where either marks something")
        print("| clip | held-back frames | kept by pruning | agreement (all) | agreement (kept) | teacher fg |")
        print("|---|---|---|---|---|---|")
        for r in real["clips"]:
            print(f"| {r['clip']} | {r['held_back']} | {r['kept_held_back']} | {_f(r['agreement_iou'])} | "
                  f"{_f(r['agreement_iou_kept'])} | {_f(r['teacher_fg'])} |")
        print(f"contact sheet: {real['contact_sheet']}")


if __name__ == "__main__":
    sys.exit(main())
