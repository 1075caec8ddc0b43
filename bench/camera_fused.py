"""What the student and the fused mask cost a camera: its fps with no bundle, with the student on
every frame, and with it on every Nth frame (carried along the flow in between, motionmask/fuse.py).

A real `motionmask run` per phase: one camera on a clip, flat out (so that it is CPU-bound and any
CPU the student takes shows in its fps), publishing motion + trimap (+ student + fused) as PNG,
no learner, no console. The bundle is a real export (ONNX, verified) of the learner's default
model at the daemon's default input (the 320x240 buffer slot), untrained: the cost of a model does
not depend on its weights. Phases run in rounds (every phase once per round), so load from other
work on the machine shows as spread between rounds rather than as a difference between phases.

Reported per phase: camera fps (the daemon's own frame counter over the measured seconds) and its
ratio to the no-bundle phase of the same round; the camera process's CPU time per frame (all its
threads, from /proc) and the fps it keeps by that measure (no-bundle CPU ms / this phase's): a
CPU-bound camera's fps is the inverse of its CPU time per frame, and CPU time does not swing with
other work on a shared machine the way wall-clock fps does.

    python -m bench.camera_fused                                 # sample clip, ~5 min
    python -m bench.camera_fused --clip ../shared/data/vtest.avi --seconds 20 --rounds 2 --every 1,5,10
    python -m bench.camera_fused --every 1,2,3,5 --precisions fp32,int8 --student-only 0   # ~11 min

The bundle carries the fp32 model and the 8-bit one (exporter/quantize.py); --precisions picks which
the camera runs (export.student_precision; auto = the 8-bit one on a CPU), each a phase of its own.

Prints a markdown table; writes bench/out/camera_fused.json (--out).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import OUT, ROOT, cpu_model, free_port, git_revision, save_json, stop
from motionmask.control import ControlUnavailable, request

CLIP = ROOT / "tests" / "data" / "sample.mp4"
SLOT = (240, 320)  # (h, w): the default buffer slot, the daemon's default bundle input


def make_bundle(out: Path) -> tuple[str, list[int]]:
    """A real exported bundle of the learner's default model: its version and input [w, h]."""
    from exporter.config import ExportConfig
    from exporter.export import export_model
    from learner.config import LearnerConfig
    from learner.train import Trainer

    cfg = LearnerConfig()
    cfg.train.device, cfg.train.threads = "cpu", 1
    trainer = Trainer(cfg)
    result = export_model(trainer.model, out, ExportConfig(), step=0, source={"bench": "camera_fused"}, slot_size=SLOT)
    inp = result.manifest["input"]
    return result.version, [int(inp.get("width", 0)), int(inp.get("height", 0))]


def camera(control: str) -> tuple[int, float, int, int]:
    st = request(control, "status", timeout=5.0)["cameras"]["cam"]
    return int(st["frames"]), time.monotonic(), int(st.get("forward_drops", 0)), int(st["pid"])


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_config(path: Path, clip: Path, exports: Path | None, every: int, fused: bool, precision: str) -> str:
    """A one-camera `motionmask run` config at `path`, flat out, no learner; its control endpoint."""
    control = f"tcp://127.0.0.1:{free_port()}"
    cfg = {
        "cameras": [{"name": "cam", "source": str(clip), "loop": True, "realtime": False}],
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "daemon": {"control_endpoint": control, "stats_interval_s": 0.0},
        "learner": {"enabled": False},
        "buffer": {"memory_mb": 64},
        "web": {"enabled": False},
        "export": (
            {
                "enabled": True,
                "dir": str(exports),
                "serve": False,
                "student_every": every,
                "fused": fused,
                "student_precision": precision,
            }
            if exports is not None
            else {"enabled": False}
        ),
    }
    path.write_text(yaml.safe_dump(cfg))
    return control


def phase(
    tmp: Path,
    clip: Path,
    exports: Path | None,
    every: int,
    fused: bool,
    precision: str,
    warm_s: float,
    seconds: float,
) -> dict:
    """One daemon run: the camera's fps and CPU ms per frame over `seconds`, after `warm_s`."""
    conf = tmp / "d.yaml"
    control = daemon_config(conf, clip, exports, every, fused, precision)
    log_path = tmp / f"daemon-{every}-{int(fused)}-{precision}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "motionmask.cli", "run", "--config", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if camera(control)[0] > 20:
                    break
            except (ControlUnavailable, KeyError, TypeError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"daemon did not come up; see {log_path}")
            time.sleep(0.5)
        time.sleep(warm_s)  # the bundle loaded (checked every 2 s), ONNX Runtime warm
        f0, t0, d0, pid = camera(control)
        c0, p0 = cpu_s(pid), cpu_s(proc.pid)
        time.sleep(seconds)
        f1, t1, d1, _ = camera(control)
        c1, p1 = cpu_s(pid), cpu_s(proc.pid)
    finally:
        stop(proc)
    text = log_path.read_text(errors="replace")
    if exports is not None and "event=student_loaded" not in text:
        raise SystemExit(f"the camera never loaded the bundle; see {log_path}")
    if "event=student_failed" in text:
        raise SystemExit(f"the student failed in the camera; see {log_path}")
    loaded = re.search(r"event=student_loaded .*precision=(\w+)", text)
    fps = (f1 - f0) / (t1 - t0)
    runs = fps / every if exports is not None and every else 0.0
    return {
        "bundle": exports is not None,
        "student_every": every if exports is not None else None,
        "fused": fused and exports is not None,
        "precision": loaded.group(1) if loaded else None,  # the model the camera really ran
        "camera_fps": round(fps, 2),
        "student_runs_per_s": round(runs, 2),
        "camera_cpu_ms_per_frame": round((c1 - c0) * 1e3 / max(1, f1 - f0), 2),
        "daemon_cpu_ms_per_frame": round((p1 - p0) * 1e3 / max(1, f1 - f0), 2),
        "forward_drops": d1 - d0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clip", type=Path, default=CLIP, help="video the camera loops (default the bundled sample)")
    ap.add_argument("--every", default="1,5,10", help="student_every values measured, with fused on (default 1,5,10)")
    ap.add_argument(
        "--student-only",
        type=int,
        default=5,
        help="also measure this student_every with fused off (the fused mask's own cost); 0 = skip",
    )
    ap.add_argument(
        "--precisions",
        default="auto",
        help="export.student_precision values measured for each --every (default auto: the 8-bit model); "
        "e.g. fp32,int8",
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase (default 20)")
    ap.add_argument("--warm", type=float, default=5.0, help="seconds after start-up before measuring (default 5)")
    ap.add_argument("--rounds", type=int, default=2, help="every phase once per round (default 2)")
    ap.add_argument("--out", type=Path, default=OUT / "camera_fused.json")
    args = ap.parse_args()
    if not args.clip.is_file():
        print(f"{args.clip}: no such clip; pass --clip PATH", file=sys.stderr)
        return 2
    everies = [int(x) for x in args.every.split(",") if x.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench-fused-"))
    version, input_wh = make_bundle(tmp / "exports")
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if not precisions or set(precisions) - {"auto", "fp32", "int8"}:
        print(f"--precisions {args.precisions!r}: auto, fp32 or int8, comma-separated", file=sys.stderr)
        return 2
    plan: list[tuple[bool, int, bool, str]] = [(False, 0, False, "")] + [
        (True, n, True, p) for n in everies for p in precisions
    ]
    if args.student_only:
        plan += [(True, args.student_only, False, p) for p in precisions]
    load0 = os.getloadavg()[0]
    rows = [row for rnd in range(args.rounds) for row in one_round(rnd, plan, tmp, args)]
    load1 = os.getloadavg()[0]
    result = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "revision": git_revision(),
        "clip": str(args.clip),
        "bundle_version": version,
        "bundle_input": input_wh,
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
        "load_avg_start_end": [load0, load1],
        "phases": rows,
        "summary": summarize(plan, rows),
    }
    save_json(args.out, result)
    print_table(result, args.clip)
    return 0


def one_round(rnd: int, plan: list[tuple[bool, int, bool, str]], tmp: Path, args: argparse.Namespace) -> list[dict]:
    """Every phase of the plan once, each against the round's phase without a bundle."""
    rows, base = [], None
    for bundle, every, fused, precision in plan:
        row = phase(
            tmp, args.clip, tmp / "exports" if bundle else None, every, fused, precision, args.warm, args.seconds
        )
        row["precision_asked"] = precision or None
        base = row if not bundle else base
        row["round"] = rnd
        row["vs_no_bundle"] = round(row["camera_fps"] / base["camera_fps"], 3) if base else None
        # CPU-bound, a camera's fps is 1 / its CPU time per frame: this ratio does not move with the
        # machine's other load the way the wall-clock one does
        row["cpu_vs_no_bundle"] = (
            round(base["camera_cpu_ms_per_frame"] / row["camera_cpu_ms_per_frame"], 3) if base else None
        )
        rows.append(row)
        print(f"round {rnd}: {row}", file=sys.stderr)
    return rows


def label(r: dict) -> str:
    if not r["bundle"]:
        return "no bundle (motion, trimap)"
    return (
        f"student every {r['student_every']}"
        + (" + fused" if r["fused"] else ", no fused")
        + (f" ({r['precision']})" if r.get("precision") else "")
    )


def summarize(plan: list[tuple[bool, int, bool, str]], rows: list[dict]) -> list[dict]:
    """Per phase of the plan: its figures in every round, and the mean fps kept by CPU time."""
    summary = []
    for bundle, every, fused, precision in plan:
        mine = [
            r
            for r in rows
            if r["bundle"] == bundle
            and (r["student_every"] == every or not bundle)
            and r["fused"] == (fused and bundle)
            and r["precision_asked"] == (precision or None)
        ]
        summary.append(
            {
                "phase": label(mine[0]),
                **{
                    k: [r[k] for r in mine]
                    for k in ("camera_fps", "vs_no_bundle", "camera_cpu_ms_per_frame", "cpu_vs_no_bundle")
                },
                "mean_cpu_vs_no_bundle": round(statistics.mean(r["cpu_vs_no_bundle"] for r in mine), 3),
                # this machine's speed drifts over minutes: the median of the rounds is the steadier figure
                "median_cpu_vs_no_bundle": round(statistics.median(r["cpu_vs_no_bundle"] for r in mine), 3),
                "median_vs_no_bundle": round(statistics.median(r["vs_no_bundle"] for r in mine), 3),
            }
        )
    return summary


def print_table(result: dict, clip: Path) -> None:
    load0, load1 = result["load_avg_start_end"]
    input_wh = result["bundle_input"]
    print(
        f"Camera fps with the student and the fused mask: {result['cpu']}, {result['cores']} cores, load "
        f"{load0:.1f} at start, {load1:.1f} at end; one camera ({clip.name}, flat out, PNG masks), "
        f"bundle {input_wh[0]}x{input_wh[1]} in (default model), {result['seconds_per_phase']:g} s per phase, "
        f"{result['rounds']} rounds\n"
    )
    print(
        "| phase | camera fps, per round | vs no bundle, same round | camera CPU ms per frame | "
        "fps kept, median of rounds: wall / by CPU time |"
    )
    print("|---|---|---|---|---:|")

    def join(vs: list, fmt: str) -> str:
        return " / ".join(format(v, fmt) for v in vs)

    for s in result["summary"]:
        print(
            f"| {s['phase']} | {join(s['camera_fps'], '.1f')} | {join(s['vs_no_bundle'], '.2f')} "
            f"| {join(s['camera_cpu_ms_per_frame'], '.1f')} "
            f"| {s['median_vs_no_bundle']:.2f} / {s['median_cpu_vs_no_bundle']:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
