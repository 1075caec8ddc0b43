"""Data-parallel training speed (learner/distributed.py): training crops per second with 1 rank
and with N ranks.

Every rank runs the real loop (learner.train.fit) on one shared-memory ring buffer of 320x240
slots, as `motionmask train --nproc N` runs it: each rank samples its own batches of --batch
crops, DDP averages the gradients, batch norm is synchronised across the ranks. crops/s counts
the crops of all ranks (per rank: divided by N), over --seconds after --warmup steps. 1 rank is
the single-process path (no launch, no process group); N ranks start under torch's elastic
agent (distributed.launch, as torchrun would), gloo on the CPU, nccl and one GPU each on CUDA.

    python -m bench.ddp                                   # CPU, 1 and 2 gloo ranks, about 2 minutes
    python -m bench.ddp --device cuda --nproc 1,2,4,8     # a GPU box: crops/s per GPU
On the CPU the ranks share the machine's cores (each gets (cores - 1) // N threads, at least one):
there the figure says what the collectives cost, never that more ranks are faster.
Prints a markdown table; writes bench/out/ddp.json (--out).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from bench.common import OUT, cpu_model, git_revision, save_json
from bench.learner_speed import config, end_to_end, fill_ring
from learner import distributed
from learner.train import Trainer, resolve_device
from streamer.shm.ringbuffer import RingBuffer


def measure(ring: RingBuffer, settings: dict) -> dict:
    """One rank's (or the single process's) run: crops/s of all ranks together."""
    s = settings
    device = distributed.init(resolve_device(s["device"], strict=s["device"] == "cuda"))
    cfg = config(s["backbone"], s["size"], s["batch"], s["per_frame"], device.type, False, s["cpu_precision"])
    cfg.train.sync_batchnorm = s["sync_batchnorm"]
    trainer = distributed.wrap(Trainer(cfg, device))
    steps0 = trainer.step_count
    t0 = time.perf_counter()
    crops_per_s = end_to_end(trainer, ring, s["warmup"], s["seconds"])
    out = {
        "rank": distributed.rank(),
        "crops_per_s": crops_per_s,
        "threads": torch.get_num_threads(),
        "precision": trainer.precision,
        "steps": trainer.step_count - steps0,
        "seconds": time.perf_counter() - t0,
    }
    distributed.shutdown()
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--nproc", default="1,2", help="rank counts to measure, e.g. 1,2,4,8")
    ap.add_argument("--backbone", default="compact")
    ap.add_argument("--size", type=int, default=128, help="crop side in px")
    ap.add_argument("--batch", type=int, default=0, help="crops per step per rank (default: cpu 24, cuda 256)")
    ap.add_argument("--per-frame", type=int, default=0, help="crops per buffer sample (default: cpu 1, cuda 4)")
    ap.add_argument("--seconds", type=float, default=0, help="timed seconds per measurement (default: cpu 8, cuda 10)")
    ap.add_argument("--warmup", type=int, default=0, help="steps before timing (default: cpu 3, cuda 20)")
    ap.add_argument("--cpu-precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument(
        "--batchnorm",
        default="sync,local",
        help="with several ranks: sync (learner.train.sync_batchnorm, "
        "the default) and/or local (each rank's own statistics), to see what synchronising costs",
    )
    ap.add_argument("--out", default=str(OUT / "ddp.json"))
    return ap.parse_args()


def settings_from(args: argparse.Namespace) -> dict:
    """The measurement's settings, with the per-device defaults filled in."""
    cuda = args.device == "cuda"
    return {
        "device": args.device,
        "backbone": args.backbone,
        "size": args.size,
        "batch": args.batch or (256 if cuda else 24),
        "per_frame": args.per_frame or (4 if cuda else 1),
        "seconds": args.seconds or (10.0 if cuda else 8.0),
        "warmup": args.warmup or (20 if cuda else 3),
        "cpu_precision": args.cpu_precision,
    }


def measure_all(ring: RingBuffer, settings: dict, counts: list[int], batchnorms: list[str]) -> list[dict]:
    """A row per rank count and, with several ranks, per batch-norm mode."""
    cuda = settings["device"] == "cuda"
    rows = []
    for n, bn in [(k, b) for k in counts for b in (["-"] if k == 1 else batchnorms)]:
        load = os.getloadavg()[0]
        run = {**settings, "sync_batchnorm": bn != "local"}
        got = measure(ring, run) if n == 1 else distributed.launch(n, measure, ring, run)[0]
        rows.append(
            {
                "ranks": n,
                "backend": "-" if n == 1 else ("nccl" if cuda else "gloo"),
                "batchnorm": bn,
                "threads_per_rank": None if cuda else got["threads"],
                "precision": got["precision"],
                "batch_per_rank": settings["batch"],
                "crops_per_s": round(got["crops_per_s"], 1),
                "crops_per_s_per_rank": round(got["crops_per_s"] / n, 1),
                "ms_per_step": round(1000 * settings["batch"] * n / got["crops_per_s"], 1),
                "loadavg_before": round(load, 2),
            }
        )
        print(f"{n} rank(s), batch norm {bn}: {got['crops_per_s']:.0f} crops/s", file=sys.stderr)
    return rows


def print_table(rows: list[dict], settings: dict, name: str) -> None:
    unit = "GPU" if settings["device"] == "cuda" else "rank"
    print(
        f"\ndata-parallel training, {settings['device']} ({name}), {settings['backbone']} {settings['size']} px, "
        f"{settings['batch']} crops per step per rank"
    )
    print(
        f"| ranks | backend | batch norm | threads per rank | precision | crops/s (all ranks) | crops/s per {unit} | "
        f"ms per step | load avg before |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['ranks']} | {r['backend']} | {r['batchnorm']} | {r['threads_per_rank'] or '-'} "
            f"| {r['precision']} | {r['crops_per_s']:.0f} | "
            f"{r['crops_per_s_per_rank']:.0f} | {r['ms_per_step']:.0f} | {r['loadavg_before']:.1f} |"
        )


def main() -> int:
    args = parse_args()
    cuda = args.device == "cuda"
    settings = settings_from(args)
    counts = [int(n) for n in args.nproc.split(",")]
    if cuda and max(counts) > torch.cuda.device_count():
        print(f"bench.ddp: --nproc {max(counts)} but {torch.cuda.device_count()} GPUs are visible", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if cuda else cpu_model()
    print(
        f"device: {args.device} ({name}), {os.cpu_count()} CPUs, torch {torch.__version__}, {settings}, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    ring = fill_ring()
    try:
        rows = measure_all(ring, settings, counts, args.batchnorm.split(","))
    finally:
        ring.close()
    print_table(rows, settings, name)
    save_json(
        args.out,
        {
            "rows": rows,
            "settings": settings,
            "machine": {
                "device": name,
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "revision": git_revision(),
                "loadavg_end": os.getloadavg(),
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
