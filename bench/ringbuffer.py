"""Shared-memory ring buffer: put and sample rates with streamer and learner processes running.

Each streamer and the learner is its own process (spawned, attaching by name), as in the daemon.
Scenarios, all at the training resolution (default 320x240):
  adapter       sample_from_result on a 1280x720 MaskResult (resize + letterbox + flow rescale)
  put           one streamer alone, as fast as it can
  sample        one learner alone on a full buffer
  contended     --writers streamers as fast as they can + one learner sampling as fast as it can
  paced         --writers streamers at --fps each (a live camera) + one learner as fast as it can
Reported: puts/s, put latency p50/p99/max (the streamer's cost and the "never blocks" claim),
drops by reason, learner batches/s and samples/s, torn-read retries.

    python -m bench.ringbuffer                      # about 15 s; prints a table
    python -m bench.ringbuffer --writers 4 --seconds 5 --batch 64
Writes bench/out/ringbuffer.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time

import numpy as np

from bench.common import OUT, save_json
from streamer.frames import Frame
from streamer.motion.pipeline import MaskResult
from streamer.shm.ringbuffer import BufferConfig, RingBuffer, sample_from_result


def _pct(lat_s: list[float]) -> dict[str, float]:
    if not lat_s:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    a = np.asarray(lat_s) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def _fake_result(rng: np.random.Generator, index: int, shot: int) -> MaskResult:
    img = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    prob = rng.random((720, 1280), dtype=np.float32)
    trimap = np.where(prob > 0.7, 255, np.where(prob < 0.4, 0, 128)).astype(np.uint8)
    flow = rng.standard_normal((90, 160, 2)).astype(np.float32)
    return MaskResult(
        frame=Frame(img, "bench", index, index / 30),
        shot=shot,
        prob=prob,
        trimap=trimap,
        fg_fraction=0.3,
        kept=True,
        reason="",
        flow=flow,
    )


def streamer_proc(name: str, camera: str, seconds: float, fps: float, go, out) -> None:
    rb = RingBuffer.attach(name)
    cfg = BufferConfig(train_width=rb.width, train_height=rb.height)
    rng = np.random.default_rng(hash(camera) % 2**32)
    # Real slot-form samples, converted once up front: the bench measures the buffer, not resizing.
    pool = [sample_from_result(_fake_result(rng, i, 0), camera, cfg) for i in range(8)]
    go.wait()
    lat, ok, n = [], 0, 0
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if fps > 0:
            due = start + n / fps
            if due > now:
                time.sleep(due - now)
        s = pool[n % len(pool)]
        s.frame_index, s.shot = n, n // 300  # 10 s shots at 30 fps
        t = time.perf_counter()
        ok += rb.put(s)
        lat.append(time.perf_counter() - t)
        n += 1
    out.put(
        {"role": "streamer", "camera": camera, "tried": n, "ok": ok, "seconds": time.monotonic() - start, **_pct(lat)}
    )
    rb.close()


def learner_proc(name: str, seconds: float, batch: int, mode: str, go, out) -> None:
    rb = RingBuffer.attach(name)
    b = rb.new_batch(batch)
    rng = np.random.default_rng(0)
    go.wait()
    lat, samples, batches, empty = [], 0, 0, 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        t = time.perf_counter()
        rb.sample(batch, rng, mode=mode, out=b)
        lat.append(time.perf_counter() - t)
        samples += b.n
        batches += 1
        empty += b.n == 0
        if b.n == 0:
            time.sleep(0.001)  # nothing yet: a real learner would wait too
    out.put(
        {
            "role": "learner",
            "batches": batches,
            "samples": samples,
            "empty": empty,
            "seconds": time.monotonic() - start,
            **_pct(lat),
        }
    )
    rb.close()


def run_scenario(
    cfg: BufferConfig, writers: int, learner: bool, seconds: float, fps: float, batch: int, mode: str, prefill: bool
) -> dict:
    ctx = mp.get_context("spawn")
    with RingBuffer.create(cfg) as rb:
        if prefill:
            rng = np.random.default_rng(1)
            s = sample_from_result(_fake_result(rng, 0, 0), "prefill", cfg)
            for i in range(rb.capacity):
                s.frame_index, s.shot = i, i
                rb.put(s)
        go, out = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=streamer_proc, args=(rb.name, f"cam{i}", seconds, fps, go, out)) for i in range(writers)
        ]
        if learner:
            procs.append(ctx.Process(target=learner_proc, args=(rb.name, seconds, batch, mode, go, out)))
        for p in procs:
            p.start()
        time.sleep(1.0 + 0.3 * len(procs))  # let the interpreters start and build their samples
        go.set()
        results = [out.get(timeout=seconds + 120) for _ in procs]
        for p in procs:
            p.join(30)
        st = rb.stats()
    streamers = [r for r in results if r["role"] == "streamer"]
    learn = next((r for r in results if r["role"] == "learner"), None)
    row: dict = {"writers": writers, "learner": learner, "fps": fps, "batch": batch if learner else 0}
    if streamers:
        secs = max(r["seconds"] for r in streamers)
        row.update(
            puts_per_s=sum(r["ok"] for r in streamers) / secs,
            tried_per_s=sum(r["tried"] for r in streamers) / secs,
            put_p50_ms=float(np.median([r["p50_ms"] for r in streamers])),
            put_p99_ms=max(r["p99_ms"] for r in streamers),
            put_max_ms=max(r["max_ms"] for r in streamers),
        )
    if learn:
        row.update(
            batches_per_s=learn["batches"] / learn["seconds"],
            samples_per_s=learn["samples"] / learn["seconds"],
            mb_per_s=learn["samples"] / learn["seconds"] * 9 * cfg.train_width * cfg.train_height / 2**20,
            sample_p50_ms=learn["p50_ms"],
            sample_p99_ms=learn["p99_ms"],
            empty_batches=learn["empty"],
        )
    row.update(
        drops=st["drops"],
        sample_retries=st["sample_retries"],
        fill=st["fill"],
        capacity=st["capacity"],
        evictions=st["evictions"],
    )
    return row


def bench_adapter(cfg: BufferConfig, n: int = 60) -> dict:
    rng = np.random.default_rng(2)
    res = _fake_result(rng, 0, 0)
    sample_from_result(res, "cam0", cfg)
    t = time.perf_counter()
    for _ in range(n):
        sample_from_result(res, "cam0", cfg)
    ms = (time.perf_counter() - t) / n * 1e3
    return {"source": "1280x720", "slot": f"{cfg.train_width}x{cfg.train_height}", "ms": ms}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__.split("\n")[0],
        epilog="example: python -m bench.ringbuffer --writers 2 --seconds 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--writers", type=int, default=2, help="streamer processes (cameras)")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured time per scenario")
    ap.add_argument("--batch", type=int, default=32, help="learner batch size")
    ap.add_argument("--fps", type=float, default=30.0, help="per-camera rate in the paced scenario")
    ap.add_argument("--mode", default="recency", choices=["uniform", "recency"])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--memory-mb", type=float, default=256.0)
    ap.add_argument("--out", default=str(OUT / "ringbuffer.json"))
    return ap.parse_args()


def run_scenarios(cfg: BufferConfig, args: argparse.Namespace) -> dict[str, dict]:
    return {
        "put": run_scenario(cfg, 1, False, args.seconds, 0, args.batch, args.mode, prefill=False),
        "sample": run_scenario(cfg, 0, True, args.seconds, 0, args.batch, args.mode, prefill=True),
        "contended": run_scenario(cfg, args.writers, True, args.seconds, 0, args.batch, args.mode, prefill=True),
        "paced": run_scenario(cfg, args.writers, True, args.seconds, args.fps, args.batch, args.mode, prefill=True),
    }


def print_table(cfg: BufferConfig, args: argparse.Namespace, adapter: dict, scen: dict[str, dict]) -> None:
    print(
        f"ring buffer: {cfg.slots()} slots of {args.width}x{args.height} in {args.memory_mb:g} MB, "
        f"batch {args.batch}, {args.mode} sampling, {os.cpu_count()} CPUs"
    )
    print(f"sample_from_result {adapter['source']} -> {adapter['slot']}: {adapter['ms']:.2f} ms")
    hdr = (
        f"{'scenario':<10} {'wr':>3} {'puts/s':>8} {'put p50':>8} {'put p99':>8} {'put max':>8} "
        f"{'drops':>6} {'batch/s':>8} {'samp/s':>8} {'MB/s':>7} {'samp p99':>9} {'retries':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, r in scen.items():

        def f(key, fmt, r=r):
            return format(r[key], fmt) if key in r else "-"

        drops = sum(r["drops"].values())
        print(
            f"{name:<10} {r['writers']:>3} {f('puts_per_s', '8.0f'):>8} {f('put_p50_ms', '8.3f'):>8} "
            f"{f('put_p99_ms', '8.3f'):>8} {f('put_max_ms', '8.2f'):>8} {drops:>6} "
            f"{f('batches_per_s', '8.1f'):>8} {f('samples_per_s', '8.0f'):>8} {f('mb_per_s', '7.0f'):>7} "
            f"{f('sample_p99_ms', '9.2f'):>9} {r['sample_retries']:>7}"
        )
    print("times in ms; drops = lock timeouts + no free slot; retries = torn copies redrawn")


def write_json(cfg: BufferConfig, args: argparse.Namespace, adapter: dict, scen: dict[str, dict]) -> None:
    save_json(
        args.out,
        {
            "config": {
                "width": args.width,
                "height": args.height,
                "memory_mb": args.memory_mb,
                "slots": cfg.slots(),
                "batch": args.batch,
                "mode": args.mode,
                "writers": args.writers,
                "seconds": args.seconds,
                "fps": args.fps,
                "lock_timeout_ms": cfg.lock_timeout_ms,
            },
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "adapter": adapter,
            "scenarios": scen,
        },
    )
    print(f"wrote {args.out}")


def main() -> int:
    args = parse_args()
    cfg = BufferConfig(
        train_width=args.width, train_height=args.height, memory_mb=args.memory_mb, sampling=args.mode, half_life_s=30.0
    )
    cfg.validate()
    adapter = bench_adapter(cfg)
    scen = run_scenarios(cfg, args)
    print_table(cfg, args, adapter, scen)
    write_json(cfg, args, adapter, scen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
