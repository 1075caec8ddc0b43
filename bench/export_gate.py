"""Which model does the daemon ship? Its export gate against the ground truth.

The daemon exports a model only when it beats the last export on samples held back from its own
buffer, scored against the teacher's trimaps (exporter.export.holdout_score, .beats). This script
asks whether that score ranks checkpoints the way the ground truth does. For every step checkpoint
of one training run it reports the student's IoU on unseen synthetic clips (the truth), and the
gate's two scores, masked BCE and IoU at 0.5, on two holdouts of kept, teacher-labelled frames:
one from the training clips (the daemon's case: the camera's own scene) and one from the unseen
clips. Then it replays the gate at export intervals and reports which checkpoint each rule would
have left in service.

    motionmask synth --out runs/s100 --seed 100 --clips 10
    motionmask synth --out runs/s7 --seed 7 --clips 10
    motionmask train runs/s100 --out runs/gate --config configs/checkpoint-often.yaml   # 12 min
    python -m bench.export_gate runs/gate --seen runs/s100 --eval runs/s7             # ~2 min

Prints markdown tables and writes bench/out/export_gate.json (--out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.common import OUT, cpu_model, git_revision, save_json
from common.errors import UserError
from exporter.config import ExportConfig
from exporter.export import Holdout, beats, holdout_score, load_for_export
from learner.evaluate import evaluate_checkpoints, synth_clips
from streamer.config import StreamerConfig
from streamer.motion.pipeline import MotionSegmenter
from streamer.sources import open_source

SCORES = {  # rule name -> (holdout_score key, higher is better), for the rank correlations
    "bce": ("holdout_bce", False),
    "iou": ("holdout_iou", True),
}
RULES = {  # rule name -> does a candidate's holdout score beat the exported model's?
    "bce": lambda score, last: score["holdout_bce"] < last["holdout_bce"],  # the gate until session 9
    "iou": beats,  # the gate now
}


def kept_samples(clips_dir: Path, n: int) -> list[SimpleNamespace]:
    """n kept frames, evenly spread over the folder's clips, with the teacher's trimaps: what the
    ring buffer holds (image, trimap, valid)."""
    cfg, kept = StreamerConfig(), []
    for clip in synth_clips(clips_dir):
        seg = MotionSegmenter(cfg)
        with open_source(str(clips_dir / clip["file"]), cfg.source) as source:
            results = [r for frame in source for r in seg.push(frame)]
        for r in results + seg.flush():
            if r.kept:
                h, w = r.frame.image.shape[:2]
                kept.append(SimpleNamespace(image=r.frame.image, trimap=r.trimap, valid=(0, 0, h, w)))
    if not kept:
        raise UserError(f"{clips_dir}: no frame passed pruning; nothing to hold back")
    return [kept[i] for i in np.linspace(0, len(kept) - 1, min(n, len(kept))).round().astype(int)]


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def replay(rows: list[dict], holdout: str, rule: str, every: int) -> dict:
    """The gate at every `every`-th checkpoint: the one in service at the end and how many shipped."""

    def score(r: dict) -> dict[str, float]:
        return {key: r[f"{holdout}_{key}"] for key in ("holdout_bce", "holdout_iou")}

    served, shipped = None, 0
    for r in rows[every - 1 :: every]:
        if served is None or RULES[rule](score(r), score(served)):
            served, shipped = r, shipped + 1
    return {"served_step": served["step"], "served_gt_iou": served["gt_iou"], "exports": shipped}


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run", help="a motionmask train run with step checkpoints (RUN/checkpoints/step_*.pt)")
    ap.add_argument("--seen", required=True, help="the motionmask synth folder the run trained on")
    ap.add_argument("--eval", required=True, help="a motionmask synth folder never trained on")
    ap.add_argument(
        "--samples",
        type=int,
        default=ExportConfig().holdout_samples,
        help="frames per holdout (default: export.holdout_samples)",
    )
    ap.add_argument("--every", type=int, default=3, help="score the truth on every N-th frame (default 3)")
    ap.add_argument("--out", default=str(OUT / "export_gate.json"))
    args = ap.parse_args()
    checkpoints = sorted((Path(args.run) / "checkpoints").glob("step_*.pt"))
    if len(checkpoints) < 3:
        print(
            f"bench.export_gate: {args.run}: {len(checkpoints)} step checkpoints; train with "
            "--config configs/checkpoint-often.yaml to keep one every 400 steps",
            file=sys.stderr,
        )
        return 2
    try:
        rows, holdouts = score_checkpoints(checkpoints, args)
    except UserError as e:
        print(f"bench.export_gate: {e}", file=sys.stderr)
        return 2
    print(
        f"\ncheckpoints of {args.run}: the truth ({args.eval}, one frame in {args.every}) and the gate's "
        f"scores on {args.samples} held-back kept frames"
    )
    print("| step | IoU vs ground truth | seen: BCE | seen: IoU | unseen: BCE | unseen: IoU |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['step']} | {r['gt_iou']:.3f} | {r['seen_holdout_bce']:.4f} | {r['seen_holdout_iou']:.3f} | "
            f"{r['unseen_holdout_bce']:.4f} | {r['unseen_holdout_iou']:.3f} |"
        )
    ranks = rank_correlations(rows, holdouts)
    replays = replays_of(rows, holdouts)
    best = max(rows, key=lambda r: r["gt_iou"])
    print(f"\nbest checkpoint by the truth: step {best['step']} ({best['gt_iou']:.3f})")
    save_json(
        args.out,
        {
            "run": args.run,
            "seen": args.seen,
            "eval": args.eval,
            "samples": args.samples,
            "cpu": cpu_model(),
            "revision": git_revision(),
            "rows": rows,
            "spearman": ranks,
            "replay": replays,
        },
        indent=1,
    )
    return 0


def score_checkpoints(checkpoints: list[Path], args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Per step checkpoint: its IoU against the unseen clips' ground truth and the gate's scores
    (masked BCE, IoU) on kept frames of the seen and the unseen clips; and the two holdouts."""
    models = {c: load_for_export(c)[0] for c in checkpoints}
    holdouts = {}
    for name, d in (("seen", args.seen), ("unseen", args.eval)):
        samples = kept_samples(Path(d), args.samples)  # the clips' own size stands in for the buffer slot
        holdouts[name] = Holdout.for_model(
            samples, models[checkpoints[0]], ExportConfig(), slot_size=samples[0].image.shape[:2]
        )
    truth = evaluate_checkpoints(
        {c.stem: c for c in checkpoints},
        args.eval,
        device="cpu",
        progress=True,
        every=max(1, args.every),
        teacher=False,
    )
    rows = []
    for c, model in models.items():
        row = {"checkpoint": c.stem, "step": truth["steps"][c.stem], "gt_iou": truth["summary"][c.stem]["iou"]}
        for name, h in holdouts.items():
            s = holdout_score(model, h)
            row |= {f"{name}_holdout_bce": s["holdout_bce"], f"{name}_holdout_iou": s["holdout_iou"]}
        rows.append(row)
    return rows, holdouts


def rank_correlations(rows: list[dict], holdouts: dict) -> dict[str, float]:
    """Spearman's rank correlation of each gate score with the truth, printed as a table."""
    gt = [r["gt_iou"] for r in rows]
    ranks = {
        f"{h}_{rule}": spearman(gt, [r[f"{h}_{key}"] * (1 if higher else -1) for r in rows])
        for h in holdouts
        for rule, (key, higher) in SCORES.items()
    }
    print("\nrank correlation (Spearman) of each gate score with the truth (1 = the same order)")
    print("| holdout | BCE (lower better) | IoU (higher better) |")
    print("|---|---:|---:|")
    for h in holdouts:
        print(f"| {h} | {ranks[f'{h}_bce']:.2f} | {ranks[f'{h}_iou']:.2f} |")
    return ranks


def replays_of(rows: list[dict], holdouts: dict) -> list[dict]:
    """The gate replayed at export intervals of one, two checkpoints and the default: the
    checkpoint each rule leaves in service; printed as a table."""
    gap = max(1, rows[1]["step"] - rows[0]["step"])
    replays = []
    print("\nthe gate replayed: the checkpoint in service at the end (its true IoU), exports shipped")
    print("| export every | holdout | BCE rule | IoU rule |")
    print("|---:|---|---|---|")
    for steps in sorted({gap, 2 * gap, ExportConfig().every_steps}):
        every = max(1, round(steps / gap))
        if every > len(rows):  # the run is shorter than one interval
            continue
        for h in holdouts:
            got = {rule: replay(rows, h, rule, every) for rule in RULES}
            replays.append({"every_steps": every * gap, "holdout": h, **got})
            cell = {k: f"step {v['served_step']} ({v['served_gt_iou']:.3f}), {v['exports']}" for k, v in got.items()}
            print(f"| {every * gap} | {h} | {cell['bce']} | {cell['iou']} |")
    return replays


if __name__ == "__main__":
    sys.exit(main())
