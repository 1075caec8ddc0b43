"""Exporter speed: ONNX Runtime latency per frame of the compact mask net, and what an export costs.

For each --sizes input size (default 224x224 and 320x320) the compact model (the default
learner config: width 24, blocks [1, 2, 2, 1], or --checkpoint) is exported exactly as
`motionmask export` does it (torch dynamo exporter -> onnx.checker -> ONNX Runtime CPU session
-> parity with PyTorch on real frames -> latency) into a scratch exports folder; the export and
verification seconds and the parity come from that run. Then the bundle is loaded with
exporter.runtime.BundleRunner (ONNX Runtime only) and timed on real frames with one intra-op
thread (the process pinned to one CPU, the "one core" of the target) and with all threads (every
CPU this process may use), at batch 1 and batch 8; per-frame ms = batch time / batch.

Target (issue 7): <= 10 ms per 224x224 frame on one core; parity <= 1e-4.

    python -m bench.export                      # ~1 min: table on stdout
    python -m bench.export --sizes 224x224,320x256 --runs 50
    python -m bench.export --checkpoint runs/r1/checkpoints/last.pt
Writes bench/out/export.json (--out).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import OUT, ROOT, cpu_model, git_revision, reexec_single_threaded, save_json
from common.errors import UserError

TARGET_MS = 10.0  # per 224x224 frame, one core
TARGET_PARITY = 1e-4


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        w, _, h = part.strip().lower().partition("x")
        try:
            out.append((int(w), int(h or w)))
        except ValueError:
            raise UserError(f"--sizes {text!r}: expected WxH[,WxH...] such as 224x224,320x320") from None
    return out


def real_frames(n: int) -> list[np.ndarray]:
    """n frames of the bundled real clip (pedestrians, 384x288), decoded with streamer.sources."""
    from exporter.export import load_frames

    return load_frames(str(ROOT / "tests" / "data" / "sample.mp4"), n)


def time_runs(runner, x: np.ndarray, runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        runner.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure(bundle: Path, frames: np.ndarray, threads: int, cpus: set[int] | None, runs: int) -> dict:
    """Per-frame ms at batch 1 and 8 with `threads` intra-op threads, the process on `cpus`."""
    from exporter.runtime import BundleRunner

    allowed = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        runner = BundleRunner(bundle, provider="cpu", threads=threads)
        out = {}
        for batch in (1, 8):
            x = frames[:batch] if len(frames) >= batch else np.repeat(frames[:1], batch, axis=0)
            n_runs = runs if batch == 1 else max(3, runs // 4)
            t = np.asarray(time_runs(runner, np.ascontiguousarray(x), n_runs)) / batch
            out[f"batch{batch}"] = {
                "ms_per_frame_median": round(float(np.median(t)), 3),
                "ms_per_frame_p90": round(float(np.percentile(t, 90)), 3),
                "fps": round(1000.0 / float(np.median(t)), 1),
                "runs": len(t),
            }
        return out
    finally:
        os.sched_setaffinity(0, allowed)


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--sizes", default="224x224,320x320", help="input sizes WxH, comma-separated (multiples of 32)")
    ap.add_argument("--checkpoint", help="export this checkpoint instead of a freshly initialised default compact net")
    ap.add_argument("--runs", type=int, default=40, help="timed runs at batch 1 (batch 8: a quarter)")
    ap.add_argument("--cpu", type=int, default=None, help="the CPU for the one-thread runs (default: the last allowed)")
    ap.add_argument("--out", default=str(OUT / "export.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    try:
        sizes = parse_sizes(args.sizes)
        allowed = sorted(os.sched_getaffinity(0))
        cpu = allowed[-1] if args.cpu is None else args.cpu
        if cpu not in allowed:
            raise UserError(f"--cpu {cpu}: not one of the CPUs this process may use ({allowed})")
        return run(args, sizes, cpu, allowed)
    except UserError as e:
        print(f"bench.export: error: {e}", file=sys.stderr)
        return 2


def run(args, sizes: list[tuple[int, int]], cpu: int, allowed: list[int]) -> int:
    import onnxruntime as ort
    import torch

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    torch.set_num_threads(len(allowed))
    model, step, arch, what = the_model(args.checkpoint)
    params = sum(p.numel() for p in model.parameters())
    rows = export_and_time(model, step, arch, what, sizes, cpu, allowed, args.runs)
    n = len(allowed)
    print(f"\n### ONNX Runtime {ort.__version__}, compact mask net ({what}; {params / 1e6:.2f} M parameters)\n")
    print(
        f"{cpu_model()}, {os.cpu_count()} cores; one thread pinned to CPU {cpu}; all threads = {n} "
        f"(CPUs {allowed}); load average {load} at start; ms per frame, median (p90)\n"
    )
    print_table(rows, n)
    save_json(
        args.out,
        {
            "rows": rows,
            "model": what,
            "arch": arch,
            "parameters": params,
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "one_thread_cpu": cpu,
            "all_threads": n,
            "load_average": load,
            "onnxruntime": ort.__version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "git": git_revision(),
            "targets": {"ms_per_224_frame_one_core": TARGET_MS, "parity": TARGET_PARITY},
        },
    )
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def the_model(checkpoint: str | None):
    """(model, step, arch, what): the checkpoint's net, or the default compact net with seed-0 weights."""
    import torch

    from exporter.export import load_for_export
    from learner.config import LearnerConfig
    from learner.model import architecture, build_model

    if checkpoint:
        model, state = load_for_export(checkpoint)
        return model, int(state["step"]), state["arch"], checkpoint
    cfg = LearnerConfig()
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.crop_size)
    return model, 0, architecture(cfg.model, cfg.crop_size), "default compact net, random weights"


def export_and_time(
    model, step: int, arch: dict, what: str, sizes: list[tuple[int, int]], cpu: int, allowed: list[int], runs: int
) -> list[dict]:
    """Per size: `motionmask export`'s export and verification into a scratch folder, then the
    bundle timed with one pinned thread and with every allowed CPU."""
    from exporter.config import ExportConfig
    from exporter.export import export_model
    from exporter.runtime import fit_frame

    frames = real_frames(8)
    scratch = Path(tempfile.mkdtemp(prefix="bench-export-"))
    rows = []
    try:
        for w, h in sizes:
            print(f"export {w}x{h} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            r = export_model(
                model,
                scratch,
                ExportConfig(width=w, height=h, keep=len(sizes)),
                step=step,
                source={"checkpoint": what, "arch": arch},
                frames=frames,
            )
            total = time.perf_counter() - t0
            x = np.stack([fit_frame(f, w, h)[0] for f in frames])
            print(f"time {w}x{h} ...", file=sys.stderr, flush=True)
            one = measure(r.path, x, 1, {cpu}, runs)
            every = measure(r.path, x, len(allowed), set(allowed), runs)
            rows.append(
                {
                    "size": [w, h],
                    "version": r.version,
                    "mb": round(r.manifest["files"]["model.onnx"]["bytes"] / 2**20, 2),
                    "export_s": round(r.timings["export"], 2),
                    "verify_s": round(r.timings["verify"], 2),
                    "export_total_s": round(total, 2),
                    "parity_max_abs_diff": r.manifest["parity"]["max_abs_diff"],
                    "threads_1": one,
                    f"threads_{len(allowed)}": every,
                }
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def print_table(rows: list[dict], n: int) -> None:
    print(
        f"| input | 1 thread, batch 1 | 1 thread, batch 8 | {n} threads, batch 1 | {n} threads, batch 8 | "
        f"export + verify s | parity | MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cells = []
        for k in ("threads_1", f"threads_{n}"):
            for b in ("batch1", "batch8"):
                m = row[k][b]
                cells.append(f"{m['ms_per_frame_median']:.2f} ({m['ms_per_frame_p90']:.2f})")
        print(
            f"| {row['size'][0]}x{row['size'][1]} | {' | '.join(cells)} "
            f"| {row['export_s']:.1f} + {row['verify_s']:.1f} | {row['parity_max_abs_diff']:.1e} | {row['mb']:.1f} |"
        )
    verdicts = []
    for row in rows:
        if tuple(row["size"]) == (224, 224):
            ms = row["threads_1"]["batch1"]["ms_per_frame_median"]
            verdicts.append(
                f"224x224 on one core, batch 1: {ms:.2f} ms per frame "
                f"({'meets' if ms <= TARGET_MS else 'MISSES'} the <= {TARGET_MS:g} ms target)"
            )
    worst = max(r["parity_max_abs_diff"] for r in rows)
    verdicts.append(
        f"parity: max |onnxruntime - pytorch| {worst:.1e} "
        f"({'meets' if worst <= TARGET_PARITY else 'MISSES'} the <= {TARGET_PARITY:g} target)"
    )
    print("\n" + "\n".join(f"- {v}" for v in verdicts))


if __name__ == "__main__":
    reexec_single_threaded("bench.export")  # BLAS/OpenMP pools at one thread (ONNX Runtime: per session)
    sys.exit(main())
