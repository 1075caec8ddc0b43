"""The daemon path of the rig (issue 19): what `motionmask run` ships after N minutes of watching.

For each generator seed, on the rig stream of bench.rig (synth/rig.py, the same cached streams
under bench/out/rig/, the first 70% to train, the later 30% scored against its ground truth):

  offline   bench.rig's student first (bench.rig.train_and_score: `motionmask train` on the first
            70% for --minutes, the same seed and --config overlay, exported, scored), or the
            figures of an earlier bench.rig JSON of the same stream (--offline). Never at the
            same time as the daemon: both want the same cores.
  daemon    the real `motionmask run --config WORK/daemon.yaml` for --minutes of wall time, then
            SIGINT (a clean stop, exit status 0 wanted). Its config is configs/default.yaml (through
            bench.rig.run_config: the same streamer and learner settings as the offline training,
            the same seed and overlay) with one file camera on the training part: the folder of
            its frames, `realtime: false` (as fast as the CPU goes) and `loop: true` (a rig keeps
            streaming, so the camera replays the training part for as long as the daemon runs);
            exports on with the default gate (every export.every_minutes, only a model that beats
            the last export on the refreshed holdout window); run_dir and exports in WORK; masks
            published on a free loopback port, the control endpoint on another; no web console,
            no bundle server (no device pulls); export.keep raised so that every shipped bundle
            stays on disk to be scored (pruning never changes what ships)
  bundles   every bundle the daemon shipped (its manifest's quality: the gate's holdout IoU and
            BCE at that step), run by ONNX Runtime (exporter.runtime.BundleRunner, as bench.rig
            scores its "exported" method) on the later 30%: mIoU on all / still / moving frames
            and still-actor recall (bench.rig.RigScore)
  gate      the gate's decisions: shipped, skipped (not better on the holdout), failed, from the
            daemon's status just before the stop and from its log (event=export_published,
            export_skipped, export_failed, export_rejected); an export under way at the stop
            finishes during the shutdown: in the log and on disk, not in the status

Then the last shipped bundle against the offline student after the same minutes: the target is
|last export - offline student| <= 0.03 mIoU; and how well the gate's holdout IoU ranks the bundles
by their true mIoU (Spearman).

    python -m bench.rig_daemon                  # gen seed 0, 12 min offline, then 12 min of daemon (~35 min)
    python -m bench.rig_daemon --offline bench/out/rig.json   # the offline figures of an earlier bench.rig run
    python -m bench.rig_daemon --quick          # smoke: a 30-s stream, 1.5 min each, exports every 20 s
Prints markdown tables and writes bench/out/rig_daemon.json (--out); WORK is its folder without .json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from bench.common import OUT, ROOT, cpu_model, fmt, free_port, git_revision, save_json
from bench.rig import RigScore, frames_of, run_config, train_and_score, truth_of, write_train_frames
from common.config import merge
from common.errors import UserError

DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
TARGET_DAEMON = 0.03  # the daemon's last export within 0.03 mIoU of the offline student (issue 19)
KEEP = 1000  # export.keep: every shipped bundle stays to be scored
SHUTDOWN_S = 10.0  # daemon.shutdown_timeout_s: the learner checkpoints on the way out
STATUS_EVERY_S = 10.0  # the daemon's status is read this often (and once just before the stop)
QUICK_EVERY_MINUTES = 0.33  # --quick: the gate decides every ~20 s
GATE_EVENTS = ("export_published", "export_skipped", "export_failed", "export_rejected")


# ----------------------------------------------------------------------------------------------
# The daemon


def daemon_config(
    path: Path, frames_dir: Path, work: Path, seed: int, extra: dict, every_minutes: float | None
) -> dict:
    """The daemon's YAML at `path`: configs/default.yaml as bench.rig.run_config makes a training's
    config of it (seed, CPU, the --config overlay), with the bench's camera, ports and folders.
    Returns what was written (validated by the project's loader)."""
    from motionmask.config import load_config

    run_config(path, str(DEFAULT_CONFIG), seed, "cpu", extra)
    data = yaml.safe_load(path.read_text())
    data = merge(
        data,
        {
            "publish": {"enabled": True, "endpoint": f"tcp://127.0.0.1:{free_port()}", "latest_endpoint": ""},
            "daemon": {"control_endpoint": f"tcp://127.0.0.1:{free_port()}", "shutdown_timeout_s": SHUTDOWN_S},
            "learner": {"enabled": True, "run_dir": str(work / "run")},
            "export": {"enabled": True, "dir": str(work / "exports"), "serve": False, "keep": KEEP},
            "web": {"enabled": False},
        },
    )
    if every_minutes is not None:
        data = merge(data, {"export": {"every_minutes": every_minutes}})
    data["cameras"] = [{"name": "rig", "source": str(frames_dir), "loop": True, "realtime": False}]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_config(path)  # a config the daemon would refuse fails here, in one line, before it starts
    return data


def run_daemon(config: Path, control: str, log: Path, minutes: float) -> dict:
    """`motionmask run --config CONFIG` for `minutes` of wall time (its output to LOG), its status
    read every STATUS_EVERY_S and once more just before SIGINT. Returns the start (unix time),
    the wall seconds, the exit status and the last status."""
    from motionmask.control import ControlUnavailable, request

    cmd = [sys.executable, "-m", "motionmask.cli", "run", "--config", str(config)]
    print("$ motionmask " + " ".join(cmd[3:]) + f"   # {minutes:g} min", file=sys.stderr, flush=True)
    status: dict | None = None
    shown = 0
    t_unix, t0 = time.time(), time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        end = t0 + minutes * 60
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(STATUS_EVERY_S, left))
            if proc.poll() is not None:
                raise UserError(
                    f"motionmask run exited with {proc.returncode} after {time.monotonic() - t0:.0f} s: "
                    f"{tail(log)} (all in {log})"
                )
            try:
                status = request(control, "status", timeout=5.0)
            except ControlUnavailable:
                pass  # starting, or busy: the next read will do
            if (n := int((time.monotonic() - t0) // 60)) > shown:  # one progress line a minute
                shown = n
                progress(status, time.monotonic() - t0)
        wall = time.monotonic() - t0
        proc.send_signal(signal.SIGINT)
        code = proc.wait(SHUTDOWN_S + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return {"start_unix": t_unix, "wall_s": round(wall, 1), "exit_status": code, "status": status}


def tail(log: Path, n: int = 600) -> str:
    return log.read_text(errors="replace").strip()[-n:] if log.is_file() else ""


def progress(status: dict | None, seconds: float) -> None:
    learner = (status or {}).get("learner") or {}
    gate = learner.get("export") or {}
    print(
        f"  {seconds / 60:4.1f} min: learner {learner.get('activity', '-')} step {learner.get('step', '-')}, "
        f"exports shipped {gate.get('shipped', 0)} skipped {gate.get('skipped', 0)} failed {gate.get('failed', 0)}",
        file=sys.stderr,
        flush=True,
    )


def gate_counts(log_text: str) -> dict:
    """The gate's events in the daemon's log, and anything that went wrong there."""
    counts = {e: len(re.findall(rf"\bevent={e}\b", log_text)) for e in GATE_EVENTS}
    counts["holdout_refreshed"] = len(re.findall(r"\bevent=export_holdout why=refresh\b", log_text))
    counts["tracebacks"] = log_text.count("Traceback")
    # an export (ONNX, verification, publication) runs in the learner between two steps: no training meanwhile
    seconds = [float(x) for x in re.findall(r"\bevent=export_published\b.*?\bseconds=([0-9.]+)", log_text)]
    counts["export_seconds_mean"] = round(sum(seconds) / len(seconds), 1) if seconds else None
    return counts


def gate_status(status: dict | None) -> dict:
    """What the last status said about the learner and the gate (counts since the learner started)."""
    learner = (status or {}).get("learner") or {}
    gate = learner.get("export") or {}
    cam = next(iter(((status or {}).get("cameras") or {}).values()), {})
    return {
        "step": learner.get("step"),
        "crops_per_s": learner.get("crops_per_s"),
        "threads": learner.get("threads"),
        "bootstrap_round": learner.get("bootstrap_round"),
        "learner_restarts": learner.get("restarts"),
        "camera_fps": cam.get("fps"),
        "camera_frames": cam.get("frames"),
        "camera_restarts": cam.get("restarts"),
        "gate_state": gate.get("state"),
        "shipped": gate.get("shipped"),
        "skipped": gate.get("skipped"),
        "failed": gate.get("failed"),
        "holdout_samples": gate.get("holdout_samples"),
        "decisions": gate.get("decisions", []),
    }


# ----------------------------------------------------------------------------------------------
# The bundles it shipped


def shipped_bundles(exports: Path, start_unix: float) -> list[dict]:
    """Every complete bundle in the exports folder, oldest first: version, step, minutes after the
    daemon's start, the gate's holdout scores from its manifest."""
    from exporter.bundle import load_bundle, versions

    out = []
    for v in versions(exports):
        b = load_bundle(exports / v)
        q = b.manifest.get("quality") or {}
        created = b.manifest.get("created_unix")
        out.append(
            {
                "version": v,
                "dir": str(b.dir),
                "step": b.step,
                "minutes": round((created - start_unix) / 60, 2) if isinstance(created, (int, float)) else None,
                "holdout_iou": q.get("holdout_iou"),
                "holdout_bce": q.get("holdout_bce"),
                "holdout_samples": q.get("holdout_samples"),
                "last_export_holdout_iou": q.get("last_export_holdout_iou"),
            }
        )
    return out


def score_bundles(video: Path, clip_dir: Path, split: int, frames: int, bundle_dirs: list[Path]) -> list[dict]:
    """Each bundle by ONNX Runtime on frames [split, frames) against the ground truth, in one pass
    over the stream (each frame decoded and its truth read once): RigScore summaries."""
    from exporter.runtime import BundleRunner

    # fp32, as the offline student is scored; bench.rig reports what the 8-bit model changes
    runners = [BundleRunner(d, provider="cpu", precision="fp32") for d in bundle_dirs]
    scores = [RigScore() for _ in runners]
    for frame in frames_of(video, split, frames):
        truth = truth_of(clip_dir, frame.index)
        for runner, score in zip(runners, scores, strict=True):
            score.add(runner(frame.image), truth)
    return [s.summary() for s in scores]


def spearman(a: list[float | None], b: list[float | None]) -> float | None:
    """Spearman's rank correlation of the pairs where both are numbers; None with fewer than 3
    pairs or when either side is constant (no ranking to compare)."""
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return None
    return float(spearmanr([x for x, _ in pairs], [y for _, y in pairs]).statistic)


# ----------------------------------------------------------------------------------------------
# The offline student


def offline_from_json(path: Path, g: int, seed: int, ptz: bool, stream_minutes: float) -> dict:
    """The student of an earlier bench.rig run on the same stream (gen seed, training seed, PTZ,
    stream length)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--offline {path}: not readable as JSON ({e}); give a bench.rig output") from None
    theirs = (doc.get("args") or {}).get("stream_minutes")
    if theirs != stream_minutes:
        raise UserError(
            f"--offline {path}: a {theirs}-minute stream, not {stream_minutes:g}; give --stream-minutes {theirs}"
        )
    for r in doc.get("runs", []):
        if r.get("gen_seed") == g and r.get("train_seed") == seed and bool(r.get("ptz")) == ptz:
            return {
                "source": str(path),
                "revision": doc.get("revision"),
                "minutes": (doc.get("args") or {}).get("minutes"),
                "stream_minutes": (doc.get("args") or {}).get("stream_minutes"),
                "config": (doc.get("args") or {}).get("config"),
                "summary": (r.get("train") or {}).get("summary", ""),
                "student": r["methods"]["student"],
                "exported": r["methods"].get("exported"),
            }
    raise UserError(
        f"--offline {path}: no run of gen seed {g}, training seed {seed}{' with PTZ' if ptz else ''}; "
        "run bench.rig on that stream, or leave --offline out"
    )


def offline_run(g: int, args, extra: dict, gwork: Path, clip_root: Path, entry: dict) -> dict:
    """bench.rig's student on this stream, trained and scored here (train_and_score, its teacher
    and fused rows included), before the daemon starts."""
    from motionmask.config import load_config

    video, split, frames = clip_root / entry["file"], entry["split"]["test_start"], entry["frames"]
    scfg = load_config(run_config(gwork / "teacher.yaml", None, 0, "cpu", extra)).streamer
    stride = max(1, (frames - split) // 8)
    parity = [f.image for f in frames_of(video, split, frames) if (f.index - split) % stride == 0][:8]
    rig_args = SimpleNamespace(minutes=args.minutes, steps=0, reuse=args.reuse, device="cpu", ptz=args.ptz)
    rec, _ = train_and_score(g, args.train_seed, rig_args, extra, gwork, clip_root, entry, scfg, parity, None, [])
    return {
        "source": "trained here (bench.rig.train_and_score)",
        "minutes": args.minutes,
        "summary": rec["train"]["summary"],
        "student": rec["methods"]["student"],
        "exported": rec["methods"]["exported"],
        "teacher": rec["methods"]["teacher"],
        "train": rec["train"],
    }


# ----------------------------------------------------------------------------------------------
# One generator seed


def rig_seed(g: int, args, extra: dict, work: Path) -> dict:
    from synth.rig import VERSION, cached_rig

    clip_root, entries = cached_rig(OUT / "rig", seed=g, minutes=args.stream_minutes, ptz=args.ptz)
    entry = entries[0]
    video, clip_dir = clip_root / entry["file"], clip_root / entry["name"]
    frames, split = entry["frames"], entry["split"]["test_start"]
    gwork = work / f"g{g}{'_ptz' if args.ptz else ''}"
    if not (args.reuse and (gwork / "train").is_dir()):
        write_train_frames(video, range(0, split), gwork / "train")
    if args.offline:
        offline = offline_from_json(Path(args.offline), g, args.train_seed, args.ptz, args.stream_minutes)
    else:
        offline = offline_run(g, args, extra, gwork, clip_root, entry)
    dwork = gwork / "daemon"
    shutil.rmtree(dwork, ignore_errors=True)  # a run_dir left over would be resumed, old bundles scored
    dwork.mkdir(parents=True)
    cfg = daemon_config(dwork / "daemon.yaml", gwork / "train", dwork, args.train_seed, extra, args.every_minutes)
    d = run_daemon(dwork / "daemon.yaml", cfg["daemon"]["control_endpoint"], dwork / "daemon.log", args.minutes)
    log_text = (dwork / "daemon.log").read_text(errors="replace")
    bundles = shipped_bundles(Path(cfg["export"]["dir"]), d["start_unix"])
    print(f"rig seed {g}: scoring {len(bundles)} bundles on frames {split}-{frames - 1}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    for b, s in zip(
        bundles, score_bundles(video, clip_dir, split, frames, [Path(b["dir"]) for b in bundles]), strict=True
    ):
        b["true"] = s
    last = bundles[-1]["true"]["miou"] if bundles else None
    off = offline["student"]["miou"]
    gap = abs(last - off) if last is not None and off is not None else None
    return {
        "gen_seed": g,
        "train_seed": args.train_seed,
        "generator_version": VERSION,
        "ptz": args.ptz,
        "stream": {"dir": str(clip_root), "frames": frames, "split": split, "fps": entry["fps"]},
        "daemon": {
            "config": str(dwork / "daemon.yaml"),
            "log": str(dwork / "daemon.log"),
            "minutes": args.minutes,
            "every_minutes": cfg["export"]["every_minutes"],
            "wall_s": d["wall_s"],
            "exit_status": d["exit_status"],
            "status": gate_status(d["status"]),
            "log_counts": gate_counts(log_text),
        },
        "bundles": bundles,
        "score_seconds": round(time.monotonic() - t0, 1),
        "spearman_holdout_vs_true": spearman([b["holdout_iou"] for b in bundles], [b["true"]["miou"] for b in bundles]),
        "offline": offline,
        "last_vs_offline": {
            "last_export_miou": last,
            "offline_student_miou": off,
            "gap": gap,
            "want": f"<= {TARGET_DAEMON}",
            "met": gap is not None and gap <= TARGET_DAEMON,
        },
    }


# ----------------------------------------------------------------------------------------------
# Output


def decision_rows(bundles: list[dict], decisions: list[dict]) -> list[str]:
    """The table's rows in step order: each shipped bundle with its true scores, and each decision
    that shipped nothing (skipped, failed: from the status) with the gate's reason."""
    rows = []
    for b in bundles:
        t = b["true"]
        rows.append(
            (
                b["step"],
                f"| {b['version']} | {b['step']} | {fmt(b['minutes'], 1)} | {fmt(b['holdout_iou'])} | "
                f"{fmt(b['holdout_bce'])} | {fmt(t['miou'])} | {fmt(t['miou_still'])} | {fmt(t['miou_moving'])} | "
                f"{fmt(t['still_recall'])} |",
            )
        )
    for dec in decisions:
        if dec.get("outcome") != "shipped":
            rows.append(
                (
                    dec.get("step") or 0,
                    f"| ({dec.get('outcome')}: {dec.get('reason', '')}) | {dec.get('step')} | | "
                    f"{fmt(dec.get('holdout_iou'))} | {fmt(dec.get('holdout_bce'))} | | | | |",
                )
            )
    return [text for _, text in sorted(rows, key=lambda x: x[0])] or ["| (none shipped) | | | | | | | | |"]


def print_tables(doc: dict) -> None:
    for r in doc["runs"]:
        d, st = r["daemon"], r["daemon"]["status"]
        print(
            f"\n### rig seed {r['gen_seed']}{' (PTZ)' if r['ptz'] else ''}, training seed {r['train_seed']}: "
            f"`motionmask run` for {d['minutes']:g} min on frames 0-{r['stream']['split'] - 1} (looped, flat out), "
            f"bundles scored on frames {r['stream']['split']}-{r['stream']['frames'] - 1}"
        )
        print(
            f"daemon: exit status {d['exit_status']}, learner at step {st['step']} ({fmt(st['crops_per_s'])} crops/s "
            f"at the end, {st['learner_restarts']} restarts), camera {st['camera_fps']} fps, gate every "
            f"{d['every_minutes']:g} min, holdout {st['holdout_samples']} samples refreshed "
            f"{d['log_counts']['holdout_refreshed']} times, "
            f"{fmt(d['log_counts']['export_seconds_mean'], 1)} s per export"
            + (f", {d['log_counts']['tracebacks']} tracebacks in the log" if d["log_counts"]["tracebacks"] else "")
        )
        print(
            "\n| bundle | step | minutes | holdout IoU | holdout BCE | true mIoU | mIoU still | mIoU moving "
            "| still recall |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in decision_rows(r["bundles"], st.get("decisions") or []):
            print(row)
        c, lv, off = d["log_counts"], r["last_vs_offline"], r["offline"]
        print("\n| summary | |")
        print("|---|---|")
        print(
            f"| bundles shipped / skipped / failed (status before the stop) | {st['shipped']} / {st['skipped']} / "
            f"{st['failed']} |"
        )
        print(
            f"| log: published / skipped / failed / rejected | {c['export_published']} / {c['export_skipped']} / "
            f"{c['export_failed']} / {c['export_rejected']} |"
        )
        print(f"| Spearman, holdout IoU vs true mIoU | {fmt(r['spearman_holdout_vs_true'])} (n={len(r['bundles'])}) |")
        print(f"| last export, true mIoU | {fmt(lv['last_export_miou'])} |")
        print(
            f"| offline student after {off['minutes']} min, mIoU | {fmt(lv['offline_student_miou'])} "
            f"({off['summary'].split(';')[0]}) |"
        )
        verdict = "met" if lv["met"] else "NOT met"
        print(f"| target: abs(last export - offline student) {lv['want']} | {fmt(lv['gap'])}: {verdict} |")


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=12.0, help="minutes of daemon (wall) and of offline training")
    ap.add_argument(
        "--gen-seeds", type=int, nargs="+", default=None, help="rig generator seeds (default 0; --quick: 2)"
    )
    ap.add_argument("--train-seed", type=int, default=0, help="the learner's seed, daemon and offline (default 0)")
    ap.add_argument("--stream-minutes", type=float, default=3.0, help="length of the rig stream (default 3)")
    ap.add_argument("--ptz", action="store_true", help="the rig with a slow pan-tilt-zoom sweep")
    ap.add_argument("--config", default=None, help="YAML merged over the daemon's and the offline training's config")
    ap.add_argument(
        "--every-minutes",
        type=float,
        default=None,
        help="export.every_minutes of the daemon (default: configs/default.yaml's 2; --quick: 0.33)",
    )
    ap.add_argument(
        "--offline",
        default=None,
        metavar="JSON",
        help="a bench.rig JSON of the same stream whose student is the comparison (no offline training here)",
    )
    ap.add_argument(
        "--reuse", action="store_true", help="take the finished offline training of an earlier call with the same --out"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the 0.5-minute stream of gen seed 2, 1.5 min of each, the gate every 20 s",
    )
    ap.add_argument("--out", default=str(OUT / "rig_daemon.json"))
    args = ap.parse_args()
    if args.quick:
        args.stream_minutes, args.minutes = 0.5, 1.5
        args.gen_seeds = (args.gen_seeds or [2])[:1]
        args.every_minutes = QUICK_EVERY_MINUTES if args.every_minutes is None else args.every_minutes
    args.gen_seeds = args.gen_seeds or [0]
    try:
        return run(args)
    except UserError as e:
        print(f"rig_daemon: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    if args.minutes <= 0:
        raise UserError("--minutes must be > 0: the daemon runs for that long")
    extra = yaml.safe_load(Path(args.config).read_text()) or {} if args.config else {}
    out = Path(args.out).resolve()
    work = out.parent / out.stem
    load = os.getloadavg()
    t0 = time.monotonic()
    runs = [rig_seed(g, args, extra, work) for g in args.gen_seeds]
    doc = {
        "runs": runs,
        "target": {
            "want": f"abs(last export - offline student) <= {TARGET_DAEMON}",
            "gaps": [r["last_vs_offline"]["gap"] for r in runs],
            "met": all(r["last_vs_offline"]["met"] for r in runs),
        },
        "args": dict(vars(args)),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "revision": git_revision(),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    save_json(out, doc, indent=1, default=str)
    print_tables(doc)
    print(f"\nwrote {out}")
    bad = [r["gen_seed"] for r in runs if r["daemon"]["exit_status"] != 0]
    if bad:
        print(f"rig_daemon: the daemon did not exit 0 on gen seed(s) {bad}: see its log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
