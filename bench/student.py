"""Score student checkpoints against the synthetic ground truth (learner.evaluate.evaluate_checkpoints):
mean IoU, precision and recall of each checkpoint, and of the motion masks (the teacher), on every
frame with a moving object of a `motionmask synth` folder. For comparing training recipes.

    motionmask synth --out runs/s100 --seed 100 --clips 10     # train on these
    motionmask synth --out runs/s7 --seed 7 --clips 10         # score on these
    motionmask train runs/s100 --out runs/a --steps 1120 --minutes 0
    python -m bench.student runs/s7 runs/a/checkpoints/last.pt runs/b/checkpoints/last.pt
    python -m bench.student runs/s7 runs/a/checkpoints/last.pt --every 3 --no-teacher   # ~10x faster
    python -m bench.student runs/s7 runs/a/checkpoints/last.pt --train runs/s100   # + by coverage

--train also splits the frames by what those training clips showed: the shot's background (seen
or not) and its movers' photos (each moving in at least --common training objects, or not).

Prints a markdown table and writes bench/out/student.json (--out).
"""

from __future__ import annotations

import argparse
import sys

from bench.common import OUT, save_json
from common.errors import UserError
from learner.evaluate import coverage, evaluate_checkpoints, student_view, synth_clips


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("clips", help="a motionmask synth folder (clips never trained on)")
    ap.add_argument("checkpoints", nargs="+", help="student checkpoints (.pt)")
    ap.add_argument("--every", type=int, default=1, help="score every N-th frame (default: all)")
    ap.add_argument("--no-teacher", action="store_true", help="score the students only (no motion masks)")
    ap.add_argument("--train", help="the motionmask synth folder the students trained on: adds the split by coverage")
    ap.add_argument(
        "--common",
        type=int,
        default=5,
        help="with --train: a mover photo is common from this many training objects (default 5)",
    )
    ap.add_argument("--out", default=str(OUT / "student.json"))
    args = ap.parse_args()
    names = {f"#{i}": ck for i, ck in enumerate(args.checkpoints)}  # the same file may be given twice
    try:
        if args.train:
            synth_clips(args.train)  # before minutes of scoring
        res = evaluate_checkpoints(
            names, args.clips, device="cpu", progress=True, every=max(1, args.every), teacher=not args.no_teacher
        )
    except UserError as e:  # no clips.json, an unreadable checkpoint
        print(f"bench.student: {e}", file=sys.stderr)
        return 2
    rows = [student_view(res, n, ck) for n, ck in names.items()]
    print(
        f"\nstudents on {args.clips} (frames with a moving object{f', every {args.every}th' if args.every > 1 else ''})"
    )
    print("| checkpoint | step | student IoU | precision | recall | teacher IoU |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        s, t = r["student"], r["teacher"]
        teacher = f"{t['iou']:.3f}" if t["iou"] is not None else "-"
        print(
            f"| {r['checkpoint']} | {r['step']} | {s['iou']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} | "
            f"{teacher} |"
        )
    split = coverage(res, args.clips, args.train, args.common) if args.train else None
    if split:
        methods = list(res["summary"])  # the teacher (unless --no-teacher), then #0, #1, ...
        print(
            f"\nby what {args.train} showed (#i: the i-th checkpoint above; movers common: each photo "
            f"moved in >= {args.common} training objects)"
        )
        print("| background | movers | frames | " + " | ".join(methods) + " |")
        print("|---|---|---:|" + "---:|" * len(methods))
        for g in split:
            print(
                f"| {g['background']} | {g['movers']} | {g['frames']} | "
                + " | ".join(f"{g[m]:.3f}" for m in methods)
                + " |"
            )
    save_json(args.out, {"clips": args.clips, "rows": rows, "train": args.train, "coverage": split})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
