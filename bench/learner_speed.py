"""Learner speed: training crops per second for both backbones at 128 and 224 px.

For each (backbone, crop size), on --device (cpu here; cuda with bf16 autocast and channels_last;
the CPU in bf16 + channels_last where it has native bf16, see --cpu-precision):
  end to end  the real loop (learner.train.fit): samples copied out of a shared-memory ring
              buffer of 320x240 slots, uploaded (pinned, asynchronous on CUDA), cropped and jittered
              on the device, forward, masked BCE, backward, AdamW; crops/s over --seconds after
              --warmup steps
  step only   forward + backward + AdamW on one fixed batch of crops already on the device
  FLOPs       of one training step (forward + backward), counted with
              torch.utils.flop_counter.FlopCounterMode; achieved TFLOP/s = FLOPs per crop x
              end-to-end crops/s, and on a GPU of known peak the fraction of its dense bf16 peak

    python -m bench.learner_speed                        # CPU, about 1-2 minutes
    python -m bench.learner_speed --cpu-precision fp32   # the CPU in float32, for comparison
    python -m bench.learner_speed --device cuda          # on a GPU box: batch 256, 4 crops per sample
    python -m bench.learner_speed --device cuda --compile --sizes 224 --backbones compact
Prints a markdown table; writes bench/out/learner.json (--out).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import OUT, save_json
from learner.config import LearnerConfig
from learner.crops import make_crops
from learner.loss import masked_bce
from learner.samples import RingFeed
from learner.train import Limits, Trainer, fit, resolve_device
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, Sample

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
}


def gpu_peak(name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def fill_ring(n: int = 48, w: int = 320, h: int = 240, seed: int = 0) -> RingBuffer:
    """n samples of textured frames with one object (positives), a don't-care band and negatives."""
    import cv2

    rng = np.random.default_rng(seed)
    cfg = BufferConfig(train_width=w, train_height=h, memory_mb=(n + 8) * 9 * w * h / 2**20 + 4, per_shot_cap=n + 8)
    ring = RingBuffer.create(cfg)
    for i in range(n):
        low = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
        tri = np.zeros((h, w), np.uint8)
        r = int(rng.integers(15, 60))
        c = (int(rng.integers(r, w - r)), int(rng.integers(r, h - r)))
        cv2.circle(tri, c, r + 3, 128, -1)
        cv2.circle(tri, c, r - 3, 255, -1)
        cv2.circle(img, c, r, tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        assert ring.put(Sample("bench", i, i // 16, i / 25, img, tri, tri, None, (0, 0, h, w), (h, w)))
    return ring


def config(
    backbone: str, size: int, batch: int, per_frame: int, device: str, compile_: bool, cpu_precision: str = "auto"
) -> LearnerConfig:
    cfg = LearnerConfig()
    cfg.train.cpu_precision = cpu_precision
    cfg.model.backbone = backbone
    cfg.crops.size = size
    cfg.crops.per_frame = per_frame
    cfg.train.batch = batch
    cfg.train.device = device
    cfg.train.compile = compile_
    cfg.train.schedule = "constant"
    cfg.checkpoint.every_minutes = 0
    cfg.checkpoint.every_steps = 0
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_only(trainer: Trainer, ring: RingBuffer, seconds: float) -> tuple[float, float]:
    """(crops/s of forward + backward + AdamW on fixed crops on the device, FLOPs per crop)."""
    cfg = trainer.cfg
    n = math.ceil(cfg.train.batch / cfg.crops.per_frame)
    b = ring.sample(n, np.random.default_rng(0))
    frames, tri, valid = trainer.upload(b)
    c = make_crops(frames, tri, valid, cfg.crops, trainer.crop_size, trainer.target_size, trainer.gen)
    x = trainer.model.normalize(c.images)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def one() -> None:
        with torch.autocast(device_type=trainer.device.type, dtype=torch.bfloat16, enabled=trainer.cuda):
            loss = masked_bce(trainer.net(x), c.targets)
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        trainer.opt.step()

    with FlopCounterMode(display=False) as fc:
        with torch.autocast(device_type=trainer.device.type, dtype=torch.bfloat16, enabled=trainer.cuda):
            loss = masked_bce(trainer.model(x), c.targets)
        loss.backward()
    flops = fc.get_total_flops() / x.shape[0]
    trainer.opt.zero_grad(set_to_none=True)
    for _ in range(3):
        one()
    sync(trainer.device)
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or k < 3:
        one()
        k += 1
        if k % 5 == 0:
            sync(trainer.device)
    sync(trainer.device)
    return k * x.shape[0] / (time.perf_counter() - t0), flops


def end_to_end(trainer: Trainer, ring: RingBuffer, warmup: int, seconds: float) -> float:
    feed = RingFeed(ring, mode="uniform")
    fit(trainer, feed, None, Limits(steps=trainer.step_count + warmup), progress=False)
    sync(trainer.device)
    trainer.train_seconds = 0.0
    s = fit(trainer, feed, None, Limits(minutes=seconds / 60), progress=False)
    sync(trainer.device)
    return s.crops_per_s


def measure(
    cfg: LearnerConfig, device: torch.device, ring: RingBuffer, warmup: int, seconds: float, peak: float | None
) -> dict:
    """One backbone at one crop size: crops/s end to end and step only, FLOPs per crop."""
    trainer = Trainer(cfg, device)
    e2e = end_to_end(trainer, ring, warmup, seconds)
    only, flops = step_only(trainer, ring, seconds / 2)
    row = {
        "backbone": cfg.model.backbone,
        "width": cfg.model.resolved_width(),
        "size": cfg.crops.size,
        "batch": cfg.train.batch,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "precision": trainer.precision,
        "end_to_end_crops_per_s": round(e2e, 1),
        "step_only_crops_per_s": round(only, 1),
        "gflop_per_crop": round(flops / 1e9, 3),
        "tflops": round(flops * e2e / 1e12, 3),
        "peak_tflops": peak,
        "fraction_of_peak": round(flops * e2e / 1e12 / peak, 4) if peak else None,
    }
    print(
        f"{row['backbone']} {row['size']}px {row['precision']}: {e2e:.0f} crops/s end to end, {only:.0f} step only",
        file=sys.stderr,
    )
    return row


def print_table(rows: list[dict]) -> None:
    print(
        "| backbone | crop | precision | end to end crops/s | step only crops/s | GFLOP/crop (fwd+bwd) "
        "| achieved TFLOP/s | of peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        frac = f"{r['fraction_of_peak']:.1%}" if r["fraction_of_peak"] is not None else "-"
        print(
            f"| {r['backbone']} (width {r['width']}) | {r['size']} | {r['precision']} "
            f"| {r['end_to_end_crops_per_s']:.0f} | {r['step_only_crops_per_s']:.0f} | {r['gflop_per_crop']:.2f} "
            f"| {r['tflops']:.3f} | {frac} |"
        )


def measure_all(
    args: argparse.Namespace,
    device: torch.device,
    ring: RingBuffer,
    batch: int,
    per_frame: int,
    warmup: int,
    seconds: float,
    peak: float | None,
) -> list[dict]:
    """A row per backbone and crop size, in table order."""
    rows = []
    for backbone in args.backbones.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            cfg = config(backbone, size, batch, per_frame, device.type, args.compile, args.cpu_precision)
            rows.append(measure(cfg, device, ring, warmup, seconds, peak))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    ap.add_argument("--backbones", default="compact,alexnet")
    ap.add_argument("--sizes", default="128,224", help="crop sides in px (alexnet is built for each size)")
    ap.add_argument("--batch", type=int, default=0, help="crops per step (default: cpu 24, cuda 256)")
    ap.add_argument("--per-frame", type=int, default=0, help="crops per buffer sample (default: cpu 1, cuda 4)")
    ap.add_argument("--seconds", type=float, default=0, help="timed seconds per measurement (default: cpu 8, cuda 10)")
    ap.add_argument("--warmup", type=int, default=0, help="steps before timing (default: cpu 3, cuda 20)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; adds a minute of warm-up)")
    ap.add_argument(
        "--cpu-precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="learner.train.cpu_precision (auto: bf16 where the CPU has native bf16)",
    )
    ap.add_argument("--out", default=str(OUT / "learner.json"))
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    device = resolve_device(args.device, strict=args.device == "cuda")
    cuda = device.type == "cuda"
    batch = args.batch or (256 if cuda else 24)
    per_frame = args.per_frame or (4 if cuda else 1)
    seconds = args.seconds or (10.0 if cuda else 8.0)
    warmup = args.warmup or (20 if cuda else 3)
    name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    peak = gpu_peak(name) if cuda else None
    print(
        f"device: {device.type} ({name}), torch {torch.__version__}, batch {batch}, {per_frame} crops per "
        f"sample, cpu precision {args.cpu_precision}{', compiled' if args.compile else ''}, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    ring = fill_ring()
    try:
        rows = measure_all(args, device, ring, batch, per_frame, warmup, seconds, peak)
    finally:
        ring.close()
    print(f"\ntraining crops per second, {device.type} ({name}), batch {batch}")
    print_table(rows)
    save_json(
        args.out,
        {
            "rows": rows,
            "machine": {
                "device": name,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
            },
            "settings": {
                "batch": batch,
                "per_frame": per_frame,
                "seconds": seconds,
                "warmup": warmup,
                "compile": args.compile,
                "cpu_precision": args.cpu_precision,
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
