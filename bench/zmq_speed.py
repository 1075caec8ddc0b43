"""Live masks over ZeroMQ on loopback: throughput, latency, and what a stalled subscriber costs.

Each subscriber is its own process using motionmask.client (real sockets, real decoding).
For png and u8, 640x480 masks:
  1        one reader
  3        three readers
  3+stall  the same three readers and a fourth subscriber that joins, reads one mask, and then
           never reads again (4 subscribers). It connects and disconnects between rounds, so the
           "3" and "3+stall" rounds alternate on the same processes and background load hits
           both alike; each figure is the median over the rounds.
Flat out: publish() as fast as possible (the streamer's view), in masks per wall second and per
CPU second of the publishing process, and the share each reader got (PUB drops for a reader that
cannot keep up; it never slows the publisher).
Paced at --rate masks/s: latency from capture_ns (taken just before publish) to the decoded
mask in the reader, p50 and p99 over all readers; per publish() call its median wall time
("call us") and the CPU it takes on the calling thread ("cpu us": what the streamer's loop pays);
and the publishing process's CPU per mask, ZeroMQ's I/O thread included ("proc us").
Stall cost = how much more CPU publish() takes with the stalled subscriber, at the same pace:
unlike wall and flat-out figures it does not swing with other load on a small shared host, nor
with how much the readers manage to drain.

    python -m bench.zmq_speed                 # about a minute; prints a table, writes bench/out/zmq.json
Targets: >= 500 masks/s, p99 < 5 ms, stall cost < 5 %.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import OUT, save_json
from streamer.live.publish import MaskPublisher, PublishConfig

W, H = 640, 480
TARGET_RATE, TARGET_P99_MS, TARGET_STALL = 500.0, 5.0, 0.05


def make_masks(n: int = 32) -> list[np.ndarray]:
    """A moving ellipse with a don't-care band, like a trimap: realistic work for PNG."""
    yy, xx = np.mgrid[:H, :W]
    out = []
    for i in range(n):
        cx, cy = 160 + 10 * i, 240 + 3 * i
        d = ((xx - cx) / 90.0) ** 2 + ((yy - cy) / 140.0) ** 2
        m = np.zeros((H, W), np.uint8)
        m[d < 1.2] = 128
        m[d < 1.0] = 255
        out.append(m)
    return out


def reader(endpoint: str, ready, stop, results) -> None:
    """Reads everything; counts masks per kind (the phase tag) and the latency of 'lat*' kinds."""
    from motionmask.client import MaskSubscriber

    with MaskSubscriber(endpoint) as sub:
        while sub.recv(0.1) is None:  # warm-up masks until we have joined
            pass
        ready.put("reader")
        counts: dict[str, int] = {}
        lat: dict[str, list[float]] = {}
        c0 = time.process_time()
        while not stop.is_set():
            got = sub.recv(0.05)
            if got is None:
                continue
            header, _ = got
            kind = header["kind"]
            counts[kind] = counts.get(kind, 0) + 1
            if kind.startswith("lat"):
                lat.setdefault(kind, []).append((time.time_ns() - header["capture_ns"]) / 1e6)
        cpu = time.process_time() - c0
        results.put({"counts": counts, "lat": lat, "cpu_us_per_mask": cpu / max(1, sum(counts.values())) * 1e6})


def staller(endpoint: str, commands, ready) -> None:
    """On 'connect': subscribe, read one mask to know we joined, then never read again."""
    from motionmask.client import MaskSubscriber

    sub = None
    while (cmd := commands.get()) != "stop":
        if cmd == "connect":
            sub = MaskSubscriber(endpoint)
            while sub.recv(0.1) is None:
                pass
        elif sub is not None:
            sub.close()
            sub = None
        ready.put(cmd)
    if sub is not None:
        sub.close()


class Bench:
    def __init__(self, encoding: str, readers: int, with_staller: bool) -> None:
        self.ctx = mp.get_context("spawn")
        self.ready, self.results, self.stop = self.ctx.Queue(), self.ctx.Queue(), self.ctx.Event()
        self.commands = self.ctx.Queue()
        self.masks = make_masks()
        self.pub = MaskPublisher(PublishConfig(endpoint="tcp://127.0.0.1:*", encoding=encoding))
        self.n_readers = readers
        self.procs = [
            self.ctx.Process(target=reader, args=(self.pub.endpoint, self.ready, self.stop, self.results))
            for _ in range(readers)
        ]
        if with_staller:
            self.procs.append(self.ctx.Process(target=staller, args=(self.pub.endpoint, self.commands, self.ready)))
        for p in self.procs:
            p.start()
        self._warm_until(readers)
        self.i = 0

    def _warm_until(self, n: int) -> None:
        """Publish warm-up masks until n processes said ready (ZeroMQ's slow joiner)."""
        deadline = time.monotonic() + 60
        got = 0
        while got < n:
            self.pub.publish("bench", "warmup", self.masks[0], 0, 0, time.time_ns())
            try:
                self.ready.get(timeout=0.02)
                got += 1
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError("subscribers did not join within 60 s") from None
        time.sleep(0.3)  # let warm-ups drain so every round starts from empty queues

    def staller(self, cmd: str) -> None:
        self.commands.put(cmd)
        self._warm_until(1)

    def throughput(self, tag: str, n: int) -> tuple[float, float]:
        """publish() flat out: (masks per wall second, masks per CPU second of this process)."""
        t0, c0 = time.perf_counter(), time.process_time()
        for k in range(n):
            self.pub.publish("bench", tag, self.masks[k % len(self.masks)], k, 0, time.time_ns())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        time.sleep(0.4)
        return n / wall, n / max(cpu, 1e-9)

    def paced(self, tag: str, rate: float, seconds: float) -> tuple[int, float, list[float], float]:
        """publish() at `rate`: (masks sent, CPU us per mask of this process with ZeroMQ's I/O
        thread, the wall time of each publish() call in us, the CPU us of the calling thread per
        publish(): what the streamer's own loop pays, and what preemption does not inflate)."""
        n = int(rate * seconds)
        calls = []
        thread_cpu = 0.0
        start, c0 = time.perf_counter(), time.process_time()
        for k in range(n):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # only sleeps, so the CPU figure is the publisher's own
            t, tc = time.perf_counter(), time.thread_time()
            self.pub.publish("bench", tag, self.masks[k % len(self.masks)], k, 0, time.time_ns())
            thread_cpu += time.thread_time() - tc
            calls.append((time.perf_counter() - t) * 1e6)
        cpu_us = (time.process_time() - c0) / n * 1e6
        time.sleep(0.4)
        return n, cpu_us, calls, thread_cpu / n * 1e6

    def finish(self) -> tuple[list[dict], dict]:
        self.stop.set()
        if len(self.procs) > self.n_readers:
            self.commands.put("stop")
        got = [self.results.get(timeout=60) for _ in range(self.n_readers)]
        for p in self.procs:
            p.join(10)
        stats = self.pub.stats()
        self.pub.close()
        return got, stats


def _row(
    encoding: str, scenario: str, tput: list, lat_runs: list, got: list[dict], tag: str, n_tput: int, dropped: int
) -> dict:
    wall, cpu = zip(*tput)
    n_lat = sum(r[0] for r in lat_runs)
    calls = np.concatenate([r[2] for r in lat_runs])
    delivered = [g["counts"].get("tput" + tag, 0) / (n_tput * len(tput)) for g in got]
    lat = np.concatenate([np.asarray(g["lat"].get("lat" + tag, []), float) for g in got])
    return {
        "encoding": encoding,
        "scenario": scenario,
        "publish_per_s": float(np.median(wall)),
        "publish_per_s_rounds": [round(r, 1) for r in wall],
        "publish_per_cpu_s": float(np.median(cpu)),
        "delivered_min": min(delivered),
        "delivered_mean": float(np.mean(delivered)),
        "paced_cpu_us_per_mask": float(np.median([r[1] for r in lat_runs])),
        "paced_cpu_us_rounds": [round(r[1], 1) for r in lat_runs],
        "publish_call_us_p50": float(np.percentile(calls, 50)),
        "publish_call_us_p99": float(np.percentile(calls, 99)),
        "publish_thread_cpu_us": float(sum(r[3] * r[0] for r in lat_runs) / n_lat),
        "latency_delivered": float(np.mean([g["counts"].get("lat" + tag, 0) / n_lat for g in got])),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "reader_cpu_us_per_mask": float(np.mean([g["cpu_us_per_mask"] for g in got])),
        "publisher_dropped": dropped,
    }


def run_encoding(encoding: str, n: int, rounds: int, rate: float, seconds: float) -> list[dict]:
    """Kinds tag the phases: tput*/lat* (throughput/latency), suffix 1, 3 or 3s (3+stall)."""
    b = Bench(encoding, 1, with_staller=False)
    tput = [b.throughput("tput1", n) for _ in range(rounds)]
    lat = [b.paced("lat1", rate, seconds / rounds) for _ in range(rounds)]
    got, stats = b.finish()
    rows = [_row(encoding, "1", tput, lat, got, "1", n, stats["dropped"])]

    b = Bench(encoding, 3, with_staller=True)
    t3, t3s, l3, l3s = [], [], [], []
    for _ in range(rounds):  # alternate, so drifting background load hits both alike
        t3.append(b.throughput("tput3", n))
        l3.append(b.paced("lat3", rate, seconds / rounds))
        b.staller("connect")
        t3s.append(b.throughput("tput3s", n))
        l3s.append(b.paced("lat3s", rate, seconds / rounds))
        b.staller("disconnect")
    got, stats = b.finish()
    rows.append(_row(encoding, "3", t3, l3, got, "3", n, stats["dropped"]))
    rows.append(_row(encoding, "3+stall", t3s, l3s, got, "3s", n, stats["dropped"]))
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--masks", type=int, default=1000, help="masks per throughput round (default 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds per scenario (default 3)")
    ap.add_argument("--rate", type=float, default=TARGET_RATE, help="latency run pace, masks/s (default 500)")
    ap.add_argument("--seconds", type=float, default=2.0, help="latency run length (default 2)")
    ap.add_argument("--out", type=Path, default=OUT / "zmq.json")
    return ap.parse_args()


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\n640x480 masks over tcp loopback, {os.cpu_count()} CPUs ({platform.machine()}), load average "
        f"{os.getloadavg()[0]:.1f}. Flat out: median of {args.rounds} rounds of {args.masks}; paced: "
        f"{args.rate:g}/s for {args.seconds:g} s"
    )
    print(f"{'':13} {'------------ flat out ------------':<36} {'------------------ paced ------------------'}")
    print(
        f"{'enc':4} {'subs':8} {'publish/s':>10} {'/cpu-s':>8} {'got min':>8} {'got avg':>8}  "
        f"{'call us':>7} {'cpu us':>7} {'proc us':>7} {'p50 ms':>7} {'p99 ms':>8} {'got':>6}"
    )
    for r in rows:
        print(
            f"{r['encoding']:4} {r['scenario']:8} {r['publish_per_s']:10.0f} {r['publish_per_cpu_s']:8.0f} "
            f"{r['delivered_min']:8.1%} {r['delivered_mean']:8.1%}  {r['publish_call_us_p50']:7.0f} "
            f"{r['publish_thread_cpu_us']:7.0f} {r['paced_cpu_us_per_mask']:7.0f} {r['p50_ms']:7.2f} "
            f"{r['p99_ms']:8.2f} "
            f"{r['latency_delivered']:6.1%}"
        )
    for encoding in ("png", "u8"):
        us = np.mean([r["reader_cpu_us_per_mask"] for r in rows if r["encoding"] == encoding])
        print(
            f"{encoding}: each reader spends {us:.0f} us CPU per mask (receive, check, decode): "
            f"{us * args.rate / 1e6:.2f} of a core at {args.rate:g}/s"
        )


def summarize(rows: list[dict], encoding: str) -> dict:
    """The targets for one encoding, printed as one line."""
    by = {r["scenario"]: r for r in rows if r["encoding"] == encoding}
    # What the stalled peer costs the streamer: the CPU its publish() call takes on the
    # streamer's thread, at the same pace and delivered work (thread CPU time: preemption by
    # other load on the host does not inflate it). Wall and flat-out figures only inform.
    cost = by["3+stall"]["publish_thread_cpu_us"] / by["3"]["publish_thread_cpu_us"] - 1
    cost_cpu = by["3+stall"]["paced_cpu_us_per_mask"] / by["3"]["paced_cpu_us_per_mask"] - 1
    cost_wall = 1 - by["3+stall"]["publish_per_s"] / by["3"]["publish_per_s"]
    worst_p99 = max(r["p99_ms"] for r in by.values())
    slowest = min(r["publish_per_s"] for r in by.values())
    meets = {"rate": slowest >= TARGET_RATE, "p99": worst_p99 < TARGET_P99_MS, "stall": cost < TARGET_STALL}
    ok = {k: "ok" if v else "MISS" for k, v in meets.items()}
    print(
        f"{encoding}: publish >= {slowest:.0f}/s ({ok['rate']}, target {TARGET_RATE:g}); "
        f"worst p99 {worst_p99:.2f} ms ({ok['p99']}, target < {TARGET_P99_MS:g}); "
        f"stall cost {cost:+.1%} publish() CPU ({ok['stall']}, target < {TARGET_STALL:.0%}; "
        f"process CPU incl. I/O thread {cost_cpu:+.1%}, flat-out rate {-cost_wall:+.1%})"
    )
    return {
        "stall_cost": cost,
        "stall_cost_process_cpu": cost_cpu,
        "stall_cost_flat_out_wall": cost_wall,
        "worst_p99_ms": worst_p99,
        "min_publish_per_s": slowest,
        "meets": meets,
    }


def main() -> int:
    args = parse_args()
    rows = []
    for encoding in ("png", "u8"):
        rows += run_encoding(encoding, args.masks, args.rounds, args.rate, args.seconds)
        print(f"  done {encoding}", file=sys.stderr, flush=True)
    print_table(rows, args)
    summary = {encoding: summarize(rows, encoding) for encoding in ("png", "u8")}
    save_json(
        args.out,
        {
            "rows": rows,
            "summary": summary,
            "args": {k: str(v) for k, v in vars(args).items()},
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "load_avg": os.getloadavg(),
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
