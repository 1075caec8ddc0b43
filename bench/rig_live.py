"""The live mask of finished bench.rig runs, rescored for several export.student_every values and
with each of the bundle's models (issue 19: what subscribers get live, next to what it costs).

For every run of a bench.rig JSON (its checkpoint and its stream under bench/out/rig/), without
training anything again:

  bundle     the run's checkpoint exported with this exporter (bench.rig.export_bundle: the fp32
             model and the 8-bit one, exporter/quantize.py, calibrated on the training part)
  teacher    the motion masks over the scored part, run as bench.rig runs them
  exported   the bundle's fp32 model on every scored frame; exported_int8: its 8-bit model
  fused      the motion mask fused with the model a camera runs (export.student_precision; on a
             CPU the 8-bit one) on every frame
  live N     the same as a camera publishes it with export.student_every N: the student on every
             Nth frame, carried along the flow in between (bench.rig.fused_and_live,
             motionmask.fuse.CarriedStudent)

Per method the mIoU on all / still / moving scored frames (bench.rig.RigScore), and per N the
live mask against the better of its two inputs (teacher, the camera's student). What each N costs
a camera is bench.camera_fused's figure.

    python -m bench.rig_live --runs bench/out/rig_2x2.json                 # every 1 2 3 5, ~4 min a run
    python -m bench.rig_live --runs bench/out/rig_2x2.json --every 1 2 --precision fp32
Prints a markdown table and writes bench/out/rig_live.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import OUT, cpu_model, fmt, git_revision, save_json
from common.errors import UserError

ROWS = ("teacher", "exported", "exported_int8", "fused")


def rescore(run: dict, every: list[int], precision: str, work: Path) -> dict:
    """One finished bench.rig run, rescored (module docstring)."""
    from bench.rig import (
        TEACHER_WARMUP_S,
        RigScore,
        export_bundle,
        frames_of,
        fuse_function,
        fused_and_live,
        parity_frames,
        run_config,
        truth_of,
    )
    from exporter.runtime import BundleRunner
    from motionmask.config import load_config
    from motionmask.fuse import CarriedStudent
    from streamer.motion.pipeline import MotionSegmenter

    st = run["stream"]
    clip_root = Path(st["dir"])
    entry = json.loads((clip_root / "clips.json").read_text())[0]
    video, clip_dir = clip_root / entry["file"], clip_root / entry["name"]
    frames, split, fps = st["frames"], st["split"], st["fps"]
    checkpoint = Path(run["train"]["checkpoint"])
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: the run's checkpoint is gone; run bench.rig again")
    rwork = work / f"g{run['gen_seed']}{'_ptz' if run.get('ptz') else ''}_t{run['train_seed']}"
    bundle = export_bundle(checkpoint, rwork / "exports", parity_frames(video, split))
    fp32 = BundleRunner(bundle, provider="cpu", precision="fp32")
    int8 = BundleRunner(bundle, provider="cpu", precision="int8") if fp32.bundle.int8_path else None
    camera = BundleRunner(bundle, provider="cpu", precision=precision, threads=1)
    scfg = load_config(run_config(rwork / "teacher.yaml", None, 0, "cpu", {})).streamer
    fuse, note = fuse_function()
    if fuse is None:
        raise UserError(f"no fused mask to rescore: {note}")
    scores = {m: RigScore() for m in ROWS} | {f"live_{n}": RigScore() for n in every}
    carried = {n: CarriedStudent(n) for n in every}
    seg = MotionSegmenter(scfg)

    def take(results) -> None:
        for r in results:
            if r.frame.index < split:
                continue
            truth = truth_of(clip_dir, r.frame.index)
            motion = np.clip(r.prob * 255 + 0.5, 0, 255).astype(np.uint8)
            ep = fp32(r.frame.image)
            qp = int8(r.frame.image) if int8 is not None else None
            cp = qp if camera.precision == "int8" else ep
            scores["teacher"].add(motion, truth)
            scores["exported"].add(ep, truth)
            if qp is not None:
                scores["exported_int8"].add(qp, truth)
            for n in every:
                fp, lp = fused_and_live(fuse, carried[n], motion, cp, r, camera.version, scfg.flow.width)
                scores[f"live_{n}"].add(lp, truth)
            scores["fused"].add(fp, truth)

    t0 = time.monotonic()
    for f in frames_of(video, max(0, split - round(TEACHER_WARMUP_S * fps)), frames):
        take(seg.push(f))
    take(seg.flush())
    out = {k: v.summary() if k != "exported_int8" or int8 is not None else None for k, v in scores.items()}
    student = out["exported_int8" if camera.precision == "int8" else "exported"]["miou"]
    inputs = max(out["teacher"]["miou"], student)
    return {
        "gen_seed": run["gen_seed"],
        "train_seed": run["train_seed"],
        "ptz": run.get("ptz", False),
        "checkpoint": str(checkpoint),
        "bundle": str(bundle),
        "camera_precision": camera.precision,
        "int8": fp32.manifest.get("int8"),
        "methods": out,
        "live_minus_inputs": {str(n): out[f"live_{n}"]["miou"] - inputs for n in every},
        "seconds": round(time.monotonic() - t0, 1),
    }


def print_table(doc: dict) -> None:
    every = doc["args"]["every"]
    print(f"\n### live mask, camera model {doc['runs'][0]['camera_precision'] if doc['runs'] else '?'}: mIoU")
    print("| method | " + " | ".join(f"g{r['gen_seed']} t{r['train_seed']}" for r in doc["runs"]) + " |")
    print("|---|" + "---:|" * len(doc["runs"]))
    for m in (*ROWS, *(f"live_{n}" for n in every)):
        cells = [fmt(r["methods"][m]["miou"]) if r["methods"].get(m) else "-" for r in doc["runs"]]
        print(f"| {m} | " + " | ".join(cells) + " |")
    print("\n| student_every | live - max(teacher, camera's student), per run | worst |")
    print("|---:|---|---:|")
    for n in every:
        v = [r["live_minus_inputs"][str(n)] for r in doc["runs"]]
        print(f"| {n} | {' / '.join(f'{x:+.3f}' for x in v)} | {min(v):+.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.rig_live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--runs", required=True, metavar="JSON", help="a bench.rig output whose runs are rescored")
    ap.add_argument("--every", type=int, nargs="+", default=[1, 2, 3, 5], help="student_every values")
    ap.add_argument(
        "--precision", choices=["auto", "fp32", "int8"], default="auto", help="the camera's model (default: auto)"
    )
    ap.add_argument("--out", default=str(OUT / "rig_live.json"))
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.every):
        raise SystemExit("--every: values >= 1")
    try:
        runs = json.loads(Path(args.runs).read_text())["runs"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--runs {args.runs}: not a bench.rig output ({e})") from None
    out = Path(args.out).resolve()
    work = out.parent / out.stem
    t0 = time.monotonic()
    done = []
    try:
        for run in runs:
            print(f"rescoring gen seed {run['gen_seed']}, training seed {run['train_seed']}", file=sys.stderr)
            done.append(rescore(run, args.every, args.precision, work))
    except UserError as e:
        raise SystemExit(f"bench.rig_live: {e}") from None
    doc = {
        "runs": done,
        "args": vars(args),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "revision": git_revision(),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print_table(doc)
    save_json(out, doc)
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
