"""Streamer speed on one CPU core: decode, each pipeline stage, and end to end, in frames per second.

Honest single-core numbers: the process re-executes itself with OMP/OpenBLAS/MKL threads at 1,
pins itself to one CPU (FFmpeg's decode threads inherit the pin) and sets cv2.setNumThreads(1).

Inputs
  real   every video in --data (default /work/shared/data), its first --warmup + --frames frames
  synth  3 clips from synth.things (320x240 H.264, generated once into bench/out/)
Each clip is decoded once at its native size through streamer.sources.open_source (timed per
frame: the "decode" column), then fed to a fresh MotionSegmenter at each --sizes input size
(default 640x480 and 1280x720). Resizing to the input size happens outside the timed region.
Timed per frame, after --warmup frames: every stage in MaskResult.timings_ms (mean, p95) and the
wall time of push() (+ the final flush()), the "end to end"; fps = 1000 / mean ms. Also counted:
pushes that returned no mask (frames held back: latency a live consumer sees).

Superpixels: SEEDS (OpenCV ximgproc) vs SLIC (scikit-image), each called as the streamer calls
it, the same n_segments as the config, ms per frame at 160x120,
240x180 and 320x240 on real frames, with the number of superpixels each really returns and
boundary recall against the exact masks of the synthetic clips.

    python -m bench.streamer_speed                   # 1-2 minutes; markdown tables on stdout
    python -m bench.streamer_speed --quick           # about 15 s, fewer frames
    python -m bench.streamer_speed --config configs/default.yaml --sizes 640x480 --cpu 0
Writes bench/out/streamer.json (--out).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from bench.common import OUT, THREAD_VARS, cpu_model, git_revision, progress_bar, reexec_single_threaded, save_json
from common.config import to_dict
from common.errors import UserError
from motionmask.config import ConfigError, load_config
from streamer.config import StreamerConfig
from streamer.frames import Frame
from streamer.motion.flow import working_size
from streamer.motion.pipeline import MotionSegmenter
from streamer.motion.superpixels import SuperpixelExtractor
from streamer.sources import open_source
from synth.families import cached as synth_cached
from synth.things import load_gt

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".ts")
SP_SIZES = ((160, 120), (240, 180), (320, 240))
SYNTH_SEED, SYNTH_CLIPS = 100, 3  # seed 100: the first clips of bench.quality's set
TARGET_FPS, AIM_FPS = 30.0, 60.0


# ----------------------------------------------------------------------------------------------
# Machine


def pin_to_one_cpu(cpu: int | None) -> str:
    """Pin this process (and the threads it starts later) to one CPU; say what was done."""
    cv2.setNumThreads(1)
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this OS); cv2 and BLAS threads = 1"
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if cpu is None else cpu
    if cpu not in allowed:
        raise UserError(f"--cpu {cpu}: not one of the CPUs this process may use ({allowed}); pick one of those")
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu} (1 of {os.cpu_count()} cores); cv2 and BLAS threads = 1"


# ----------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Clip:
    name: str
    kind: str  # real | synth
    native: tuple[int, int]  # w, h
    frames: list[Frame]
    decode_ms: list[float]  # per frame after the first (which open_source decodes while opening)
    gt_dir: Path | None = None  # synth: exact masks per frame index


def decode_clip(path: Path, kind: str, n: int, cfg: StreamerConfig, gt_dir: Path | None = None) -> Clip:
    frames, ms = [], []
    with open_source(path, cfg.source) as source:
        it = iter(source)
        while len(frames) < n:
            t = time.perf_counter()
            try:
                f = next(it)
            except StopIteration:
                break
            if frames:  # the first came out of open_source, already decoded
                ms.append((time.perf_counter() - t) * 1e3)
            frames.append(f)
    return Clip(path.name, kind, (frames[0].width, frames[0].height), frames, ms, gt_dir)


def real_paths(data: Path, notes: list[str]) -> list[Path]:
    if not data.is_dir():
        notes.append(f"real clips skipped: no folder {data} (pass --data DIR)")
        return []
    paths = sorted(p for p in data.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not paths:
        notes.append(f"real clips skipped: no video in {data}")
    return paths


def synth_paths(notes: list[str]) -> list[tuple[Path, Path]]:
    """(clip, folder of its exact masks), generated once into bench/out/."""
    folder, entries = synth_cached(OUT, SYNTH_SEED, SYNTH_CLIPS)
    return [(folder / e["file"], folder / e["name"]) for e in entries]


def resized(frame: Frame, size: tuple[int, int]) -> Frame:
    if (frame.width, frame.height) == size:
        return frame
    shrink = size[0] * size[1] < frame.width * frame.height
    image = cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return Frame(image, frame.source_id, frame.index, frame.timestamp)


# ----------------------------------------------------------------------------------------------
# Pipeline timing


@dataclass
class Run:
    clip: str
    kind: str
    native: tuple[int, int]
    size: tuple[int, int]
    working: tuple[int, int]  # where flow, superpixels and voting run
    push_ms: list[float] = field(default_factory=list)  # wall time of each timed push (+ flush on the last)
    stages: dict[str, list[float]] = field(default_factory=dict)  # per timed result; 0 where a stage did not run
    decode_ms: list[float] = field(default_factory=list)
    no_flow: int = 0  # timed results with no motion evidence (dark frame, one-frame shot): cheap frames
    held: int = 0  # timed pushes that returned no mask (look-ahead, a shot's first frame): latency


def time_pipeline(clip: Clip, size: tuple[int, int], cfg: StreamerConfig, warmup: int, bar: tqdm) -> Run:
    """Push the clip's frames at `size` through a fresh MotionSegmenter; time the frames after warm-up."""
    warmup = min(warmup, len(clip.frames) // 2)
    first_timed = clip.frames[warmup].index
    seg = MotionSegmenter(cfg)
    run = Run(clip.name, clip.kind, clip.native, size, working_size(*size, cfg.flow.width), decode_ms=clip.decode_ms)
    timings: list[dict[str, float]] = []

    def collect(results) -> None:
        # keep only timings: 100 results at 1280x720 would hold ~0.5 GB of masks
        for r in results:
            if r.frame.index >= first_timed:
                timings.append(r.timings_ms)
                run.no_flow += r.reason in ("dark", "no_motion_history")

    for i, frame in enumerate(clip.frames):
        frame = resized(frame, size)  # outside the timer: a camera hands over frames at this size
        t = time.perf_counter()
        out = seg.push(frame)
        dt = (time.perf_counter() - t) * 1e3
        if i >= warmup:
            run.push_ms.append(dt)
            run.held += not out
        collect(out)
        bar.update(1)
    t = time.perf_counter()
    out = seg.flush()
    run.push_ms[-1] += (time.perf_counter() - t) * 1e3
    collect(out)
    for name in dict.fromkeys(k for ms in timings for k in ms):
        run.stages[name] = [ms.get(name, 0.0) for ms in timings]
    return run


def stat(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean_ms": float("nan"), "p95_ms": float("nan"), "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"mean_ms": float(a.mean()), "p95_ms": float(np.percentile(a, 95)), "n": int(a.size)}


def fps(ms: float) -> float:
    return 1000.0 / ms if ms > 0 else float("nan")


def summarize(runs: list[Run]) -> dict:
    """Pool the frames of several runs (same kind and size): every frame counts once."""
    stages: dict[str, list[float]] = {}
    for r in runs:
        for name in r.stages:
            stages.setdefault(name, [])
    for r in runs:
        n = len(next(iter(r.stages.values()), []))
        for name in stages:
            stages[name] += r.stages.get(name, [0.0] * n)
    totals = [float(sum(v)) for v in zip(*stages.values())] if stages else []
    e2e = stat([x for r in runs for x in r.push_ms])
    dec = stat([x for r in runs for x in r.decode_ms])
    stage_sum = stat(totals)
    return {
        "working_size": _size(runs[0].working),
        "frames": e2e["n"],
        "stages": {name: stat(v) for name, v in stages.items()},
        "stages_total": stage_sum,
        "outside_stages_ms": e2e["mean_ms"] - stage_sum["mean_ms"],
        "end_to_end": e2e,
        "decode_native": dec,
        "end_to_end_with_decode_ms": e2e["mean_ms"] + dec["mean_ms"],
        "fps": fps(e2e["mean_ms"]),
        "fps_with_decode": fps(e2e["mean_ms"] + dec["mean_ms"]),
        "no_flow_frames": sum(r.no_flow for r in runs),
        "pushes_without_mask": sum(r.held for r in runs),
    }


# ----------------------------------------------------------------------------------------------
# Superpixels: SEEDS vs SLIC


def boundaries(labels: np.ndarray) -> np.ndarray:
    b = np.zeros(labels.shape, bool)
    b[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    b[1:, :] |= labels[1:, :] != labels[:-1, :]
    return b


def boundary_recall(labels: np.ndarray, gt: np.ndarray, tol: int = 1) -> float:
    """Fraction of object-boundary pixels within `tol` px of a superpixel boundary."""
    gb = boundaries(gt)
    if not gb.any():
        return float("nan")
    near = cv2.dilate(boundaries(labels).astype(np.uint8), np.ones((2 * tol + 1, 2 * tol + 1), np.uint8)) > 0
    return float((gb & near).sum() / gb.sum())


def pick(frames: list, k: int) -> list:
    if not frames or k <= 0:
        return []
    k = min(k, len(frames))  # centres of k equal parts: never the first frame (often black)
    return [frames[int((i + 0.5) * len(frames) / k)] for i in range(k)]


def superpixel_methods(num: int) -> dict[str, object]:
    """RGB (working size) -> labels, as the streamer calls each method (motion.superpixels):
    SEEDS on cv2's Lab; SLIC from RGB with scikit-image's own Lab conversion."""
    seeds = SuperpixelExtractor("seeds", num)
    slic = SuperpixelExtractor("slic", num)
    return {
        "SEEDS": lambda rgb: seeds.labels(rgb, cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)),
        "SLIC": lambda rgb: slic.labels(rgb, cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)),
    }


def bench_superpixels(real: list[Clip], synth: list[Clip], num: int, per_clip: int, bar: tqdm) -> dict:
    """ms per frame (RGB at the working size in, labels out) on real frames, segments returned,
    and boundary recall on synthetic frames with exact masks."""
    timed_on = "real" if real else "synth"
    timing_frames = [f.image for c in (real or synth) for f in pick(c.frames, per_clip)]
    recall_frames = [(f.image, load_gt(c.gt_dir, f.index)) for c in synth for f in pick(c.frames, per_clip)]
    rows = []
    for w, h in SP_SIZES:
        small = [cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in timing_frames]
        pairs = [
            (
                cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA),
                cv2.resize(gt, (w, h), interpolation=cv2.INTER_NEAREST),
            )
            for im, gt in recall_frames
        ]
        for method, fn in superpixel_methods(num).items():
            fn(small[0])  # warm-up: SEEDS builds its grid per size; SLIC's first call imports
            ms, counts = [], []
            for rgb in small:
                t = time.perf_counter()
                labels = fn(rgb)
                ms.append((time.perf_counter() - t) * 1e3)
                counts.append(len(np.unique(labels)))
                bar.update(1)
            recall = []
            for rgb, gt in pairs:
                recall.append(boundary_recall(fn(rgb), gt))
                bar.update(1)
            recall = [r for r in recall if r == r]  # frames with no object boundary say nothing
            rows.append(
                {
                    "size": f"{w}x{h}",
                    "method": method,
                    "num_superpixels": num,
                    **stat(ms),
                    "segments": float(np.mean(counts)) if counts else float("nan"),
                    "boundary_recall": float(np.mean(recall)) if recall else float("nan"),
                    "recall_frames": len(recall),
                }
            )
        base = next(r for r in rows if r["size"] == f"{w}x{h}")
        for r in rows:
            if r["size"] == base["size"]:
                r["vs_seeds"] = r["mean_ms"] / base["mean_ms"]
    return {
        "timed_on": timed_on,
        "timing_frames": len(timing_frames),
        "recall_frames": len(recall_frames),
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------
# Report


def _f(x: float, fmt: str = ".1f") -> str:
    return "-" if x != x else format(x, fmt)


def _size(s: tuple[int, int]) -> str:
    return f"{s[0]}x{s[1]}"


def report(meta: dict, groups: dict[str, dict], runs: list[Run], sp: dict | None, headline: list[str]) -> str:
    lines = report_header(meta) + [""] + headline
    if groups:
        lines += stage_table(groups) + clip_table(runs)
    if sp:
        lines += superpixel_lines(sp)
    return "\n".join(lines)


def report_header(meta: dict) -> list[str]:
    lines = [
        "# Streamer speed, one core",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['cpu_model']}, {meta['cores']} cores, {meta['pinning']}; "
        f"load average {meta['load_average']} at start",
        f"- code: {meta['revision']}; config: {meta['config']}; warm-up {meta['warmup']} frames per clip",
        f"- python {meta['python']}, numpy {meta['numpy']}, OpenCV {meta['opencv']}, PyAV {meta['pyav']}",
    ]
    return lines + [f"- note: {n}" for n in meta["notes"]]


def stage_table(groups: dict[str, dict]) -> list[str]:
    """Markdown table: a column per group, a row per stage and per total."""
    names = list(groups)
    lines = [
        "",
        "## Per stage, ms per frame (mean / p95), frames pooled over the clips",
        "",
        "| stage | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    stages = list(dict.fromkeys(s for g in groups.values() for s in g["stages"]))

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(groups[n]) for n in names) + " |")

    def mp(s):
        return f"{_f(s['mean_ms'])} / {_f(s['p95_ms'])}" if s else "-"

    row("working size", lambda g: g["working_size"])
    for s in stages:
        row(s, lambda g, s=s: mp(g["stages"].get(s)))
    row("**sum of stages**", lambda g: mp(g["stages_total"]))
    row("outside the stages (end to end - sum)", lambda g: _f(g["outside_stages_ms"]))
    row("**end to end** (push + flush)", lambda g: mp(g["end_to_end"]))
    row("decode (PyAV, native clip size)", lambda g: mp(g["decode_native"]))
    row("end to end + decode", lambda g: _f(g["end_to_end_with_decode_ms"]))
    row("**fps** end to end", lambda g: _f(g["fps"]))
    row("**fps** with decode", lambda g: _f(g["fps_with_decode"]))
    row(
        "frames timed / without flow / pushes that returned no mask",
        lambda g: f"{g['frames']} / {g['no_flow_frames']} / {g['pushes_without_mask']}",
    )
    return lines


def clip_table(runs: list[Run]) -> list[str]:
    lines = [
        "",
        "## Per clip",
        "",
        "| clip | native | input | working | frames | decode ms | end to end ms (mean / p95) | fps | fps with decode |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        e, d = stat(r.push_ms), stat(r.decode_ms)
        lines.append(
            f"| {r.kind}/{r.clip} | {_size(r.native)} | {_size(r.size)} | {_size(r.working)} | {e['n']} | "
            f"{_f(d['mean_ms'], '.2f')} | {_f(e['mean_ms'])} / {_f(e['p95_ms'])} | "
            f"{_f(fps(e['mean_ms']))} | {_f(fps(e['mean_ms'] + d['mean_ms']))} |"
        )
    return lines


def superpixel_lines(sp: dict) -> list[str]:
    rows = sp["rows"]
    lines = [
        "",
        f"## Superpixels: SEEDS (OpenCV ximgproc) vs SLIC (scikit-image), n_segments = {rows[0]['num_superpixels']}",
        "",
        f"RGB at the working size in, labels out; ms per frame on {sp['timing_frames']} {sp['timed_on']} "
        f"frames. Segments: superpixels actually returned. Boundary recall: share of object-boundary "
        f"pixels within 1 px of a superpixel boundary, on {sp['recall_frames']} synthetic frames with "
        f"exact masks.",
        "",
        "| working size | method | ms mean | ms p95 | x SEEDS | segments | boundary recall |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['method']} | {_f(r['mean_ms'])} | {_f(r['p95_ms'])} | "
            f"{_f(r['vs_seeds'])} | {_f(r['segments'], '.0f')} | {_f(r['boundary_recall'], '.2f')} |"
        )
    return lines


def headline_lines(groups: dict[str, dict], size: tuple[int, int]) -> list[str]:
    out = []
    for kind in ("real", "synth"):
        g = groups.get(f"{kind} {_size(size)}")
        if not g:
            continue
        verdict = "aim met" if g["fps"] >= AIM_FPS else "target met" if g["fps"] >= TARGET_FPS else "TARGET MISSED"
        out.append(
            f"**{kind} clips at {_size(size)}: {_f(g['fps'])} fps end to end, {_f(g['fps_with_decode'])} fps "
            f"with decode, on one core** (target >= {TARGET_FPS:.0f}, aim {AIM_FPS:.0f}: {verdict})  "
        )
    return out


# ----------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 16x16")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description="Streamer speed on one CPU core: decode, each pipeline stage, end to end; SEEDS vs SLIC.",
        epilog="examples:\n  python -m bench.streamer_speed\n  python -m bench.streamer_speed --quick\n"
        "  python -m bench.streamer_speed --config configs/default.yaml --sizes 640x480 --cpu 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="fewer frames (about 15 s): a smoke run, noisier numbers")
    ap.add_argument("--config", default=None, help="YAML config to bench (default: the built-in defaults)")
    ap.add_argument("--data", default="/work/shared/data", help="folder of real clips (skipped with a note if missing)")
    ap.add_argument("--out", default=str(OUT / "streamer.json"), help="JSON results")
    ap.add_argument("--sizes", default="640x480,1280x720", help="input sizes, comma-separated WIDTHxHEIGHT")
    ap.add_argument("--frames", type=int, default=None, help="timed frames per clip (default 200, --quick 20)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed frames per clip first (default 10, --quick 5)")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    ap.add_argument("--no-superpixels", action="store_true", help="skip the SEEDS vs SLIC table")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notes: list[str] = []
    try:
        sizes, n_timed, warmup, sp_per_clip = counts(args)
        pinning = pin_to_one_cpu(args.cpu)
        cfg = load_config(args.config).streamer
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        specs = [(p, "real", None) for p in real_paths(Path(args.data), notes)]
        specs += [(p, "synth", gt) for p, gt in synth_paths(notes)]
        runs, clips = time_clips(specs, sizes, cfg, n_timed, warmup, sp_per_clip, notes)
    except (UserError, ConfigError) as e:
        print(f"bench.streamer_speed: error: {e}", file=sys.stderr)
        return 2
    real = [c for c in clips if c.kind == "real"]
    synth = [c for c in clips if c.kind == "synth"]
    groups = {
        f"{kind} {_size(size)}": summarize([r for r in runs if r.kind == kind and r.size == size])
        for kind in ("real", "synth")
        for size in sizes
        if any(r.kind == kind for r in runs)
    }
    sp = None if args.no_superpixels else superpixel_table(real, synth, cfg, sp_per_clip)
    meta = run_meta(args, pinning, load, warmup, n_timed, notes)
    headline = headline_lines(groups, (640, 480)) or headline_lines(groups, sizes[0])
    print(report(meta, groups, runs, sp, headline))
    save_json(
        args.out,
        {
            "meta": meta,
            "config": to_dict(cfg),
            "groups": groups,
            "clips": [clip_record(r) for r in runs],
            "superpixels": sp,
        },
    )
    print(f"\nwrote {args.out}")
    return 0


def run_meta(args: argparse.Namespace, pinning: str, load: str, warmup: int, n_timed: int, notes: list[str]) -> dict:
    """What the figures were measured with: command, machine, code and library versions."""
    return {
        "command": shlex.join(["python", "-m", "bench.streamer_speed", *sys.argv[1:]]),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "pinning": pinning,
        "load_average": load,
        "revision": git_revision(),
        "config": args.config or "built-in defaults",
        "warmup": warmup,
        "timed_frames_per_clip": n_timed,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pyav": av.__version__,
        "notes": notes,
        "threads_env": {v: os.environ.get(v) for v in THREAD_VARS},
    }


def clip_record(r: Run) -> dict:
    return {
        "clip": r.clip,
        "kind": r.kind,
        "native": _size(r.native),
        "input": _size(r.size),
        "end_to_end": stat(r.push_ms),
        "decode_native": stat(r.decode_ms),
        "stages": {k: stat(v) for k, v in r.stages.items()},
        "no_flow_frames": r.no_flow,
        "pushes_without_mask": r.held,
    }


def counts(args: argparse.Namespace) -> tuple[list[tuple[int, int]], int, int, int]:
    """The input sizes, timed frames per clip, warm-up frames and superpixel frames per clip."""
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        raise UserError(f"--sizes {e}") from None
    if not sizes or (args.frames is not None and args.frames < 1) or (args.warmup is not None and args.warmup < 0):
        raise UserError("need at least one --sizes entry, --frames >= 1 and --warmup >= 0")
    n_timed = args.frames if args.frames is not None else (20 if args.quick else 200)
    warmup = args.warmup if args.warmup is not None else (5 if args.quick else 10)
    return sizes, n_timed, warmup, 2 if args.quick else 6


def time_clips(
    specs: list[tuple[Path, str, Path | None]],
    sizes: list[tuple[int, int]],
    cfg: StreamerConfig,
    n_timed: int,
    warmup: int,
    sp_per_clip: int,
    notes: list[str],
) -> tuple[list[Run], list[Clip]]:
    """The pipeline timed on every clip at every size. Clip by clip, keeping only the few frames
    the superpixel table needs: the frames of all clips together would hold over a GB."""
    runs: list[Run] = []
    clips: list[Clip] = []
    with progress_bar(0, "pipeline") as bar:
        for path, kind, gt_dir in specs:
            try:
                clip = decode_clip(path, kind, n_timed + warmup, cfg, gt_dir)
            except UserError as e:
                notes.append(f"{path.name} skipped: {e}")
                continue
            if not clips:
                # A throwaway pass first: imports and first-use costs of OpenCV and the allocator
                # stay out of every row.
                time_pipeline(
                    Clip("warm-up", "warm-up", clip.native, clip.frames[: 2 * warmup + 2], []),
                    sizes[0],
                    cfg,
                    warmup,
                    tqdm(disable=True),
                )
            bar.total += len(clip.frames) * len(sizes)
            for size in sizes:
                bar.set_postfix_str(f"{clip.name} @ {_size(size)}")
                runs.append(time_pipeline(clip, size, cfg, warmup, bar))
            clip.frames = pick(clip.frames, sp_per_clip)
            clips.append(clip)
    if not clips:
        raise UserError(f"no clip could be decoded ({'; '.join(notes)})")
    return runs, clips


def superpixel_table(real: list[Clip], synth: list[Clip], cfg: StreamerConfig, sp_per_clip: int) -> dict:
    n_sp = (
        (
            sum(len(pick(c.frames, sp_per_clip)) for c in (real or synth))
            + sum(len(pick(c.frames, sp_per_clip)) for c in synth)
        )
        * 3
        * len(SP_SIZES)
    )
    with progress_bar(n_sp, "superpixels") as bar:
        return bench_superpixels(real, synth, cfg.motion.num_superpixels, sp_per_clip, bar)


if __name__ == "__main__":
    reexec_single_threaded("bench.streamer_speed")  # one thread per BLAS/OpenMP pool, set before numpy loads
    sys.exit(main())
