"""The web console's cost to the daemon and its latency.

A real `motionmask run` on the bundled clip (one camera, no learner, flat out so that the camera
is CPU-bound and any CPU the console takes would show in its fps), then 0, 1 and 5 open
consoles. A console here is what the page opens, done by real HTTP clients: the status stream
(SSE, /api/live), the camera's picture stream (WebSocket, /ws/cameras/<name>), and /api/learner +
/api/exports every 5 s. Each client reads everything as it comes.

Reported per phase: the camera's fps (from the daemon's own frame counter), and the latency from
a frame's capture (`capture_ns`, wall clock, set when the camera read it) to its mask arriving at
the client, p50 and p99 (same host, same clock). Prints a markdown table; writes
bench/out/console.json.

    python -m bench.console                       # ~2 min
    python -m bench.console --seconds 10 --consoles 0,1
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml
from websockets.sync.client import connect

from bench.common import OUT, ROOT, cpu_model, free_port, git_revision
from motionmask.control import ControlUnavailable, request

CLIP = ROOT / "tests" / "data" / "sample.mp4"


class Console(threading.Thread):
    """One open console: SSE + one WebSocket + polls, every byte read."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, stop
        self.latencies_ms: list[float] = []
        self.units = 0
        self.errors: list[str] = []

    def run(self) -> None:
        threads = [threading.Thread(target=f, daemon=True) for f in (self._sse, self._poll)]
        for t in threads:
            t.start()
        try:
            with connect(self.url.replace("http", "ws", 1) + "/ws/cameras/cam?kind=motion", open_timeout=10) as ws:
                while not self.stop.is_set():
                    try:
                        unit = ws.recv(timeout=1.0)
                    except TimeoutError:
                        continue
                    now = time.time_ns()
                    n = int.from_bytes(unit[:4], "big")
                    head = json.loads(unit[4:4 + n])
                    if head.get("mask"):
                        self.latencies_ms.append((now - head["mask"]["capture_ns"]) / 1e6)
                    self.units += 1
        except Exception as e:  # reported, not raised: a bench phase goes on
            self.errors.append(f"ws: {type(e).__name__}: {e}")
        for t in threads:
            t.join(timeout=5)

    def _sse(self) -> None:
        try:
            with httpx.stream("GET", self.url + "/api/live", timeout=httpx.Timeout(5.0, read=10.0)) as r:
                for _ in r.iter_raw():
                    if self.stop.is_set():
                        return
        except Exception as e:
            if not self.stop.is_set():
                self.errors.append(f"sse: {type(e).__name__}: {e}")

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5.0) as c:
            while not self.stop.wait(5.0):
                for path in ("/api/learner", "/api/exports", "/api/status"):
                    try:
                        c.get(path)
                    except httpx.HTTPError as e:
                        self.errors.append(f"{path}: {e}")


def frames(control: str) -> tuple[int, float]:
    return request(control, "status", timeout=5.0)["cameras"]["cam"]["frames"], time.monotonic()


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase (default 30)")
    ap.add_argument("--consoles", default="0,1,5", help="open consoles per phase (default 0,1,5)")
    ap.add_argument("--realtime", action="store_true", help="play the clip at its 10 fps instead of flat out")
    ap.add_argument("--out", type=Path, default=OUT / "console.json")
    args = ap.parse_args()
    phases = [int(x) for x in args.consoles.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    web_port, control = free_port(), f"tcp://127.0.0.1:{free_port()}"
    cfg = {
        "cameras": [{"name": "cam", "source": str(CLIP), "loop": True, "realtime": args.realtime}],
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "daemon": {"control_endpoint": control, "stats_interval_s": 0.0},
        "learner": {"enabled": False},
        "buffer": {"memory_mb": 64},
        "web": {"port": web_port},
    }
    (tmp / "d.yaml").write_text(yaml.safe_dump(cfg))
    log = open(tmp / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "motionmask.cli", "run", "--config", str(tmp / "d.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{web_port}"
    rows = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if frames(control)[0] > 20 and httpx.get(url + "/api/status", timeout=2).status_code == 200:
                    break
            except (ControlUnavailable, httpx.HTTPError, KeyError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"daemon did not come up; see {tmp / 'daemon.log'}")
            time.sleep(0.5)
        time.sleep(3.0)  # past the start-up
        load0 = os.getloadavg()[0]
        for n in phases:
            stop = threading.Event()
            consoles = [Console(url, stop) for _ in range(n)]
            for c in consoles:
                c.start()
            time.sleep(3.0)  # connected and streaming
            f0, t0 = frames(control)
            for c in consoles:
                c.latencies_ms.clear()
            time.sleep(args.seconds)
            f1, t1 = frames(control)
            lat = [x for c in consoles for x in c.latencies_ms]
            units = sum(len(c.latencies_ms) for c in consoles)
            stop.set()
            for c in consoles:
                c.join(timeout=10)
            errors = [e for c in consoles for e in c.errors]
            row = {"consoles": n, "camera_fps": round((f1 - f0) / (t1 - t0), 2),
                   "latency_p50_ms": round(pct(lat, 0.5), 1) if lat else None,
                   "latency_p99_ms": round(pct(lat, 0.99), 1) if lat else None,
                   "pictures_per_console_s": round(units / max(n, 1) / (t1 - t0), 2) if n else None,
                   "errors": errors[:5]}
            rows.append(row)
            print(f"consoles {n}: {row}", file=sys.stderr)
            time.sleep(2.0)
        st = httpx.get(url + "/api/status", timeout=5).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "revision": git_revision(), "load_avg_at_start": load0,
              "clip": str(CLIP.relative_to(ROOT)), "realtime": args.realtime, "seconds_per_phase": args.seconds,
              "frame_fps": 5.0, "size": st["cameras"]["cam"]["size"], "phases": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Console cost and latency: {result['cpu']}, {result['cores']} cores, load {load0:.2f} at start; "
          f"one camera ({CLIP.name} {result['size'][0]}x{result['size'][1]}, "
          f"{'real time' if args.realtime else 'flat out'}), frames to consoles at 5 fps, {args.seconds:g} s per phase\n")
    print("| open consoles | camera fps | capture -> mask at client p50 | p99 | pictures/s per console |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        f = lambda v, u="": "-" if v is None else f"{v}{u}"  # noqa: E731
        print(f"| {r['consoles']} | {r['camera_fps']} | {f(r['latency_p50_ms'], ' ms')} | {f(r['latency_p99_ms'], ' ms')} "
              f"| {f(r['pictures_per_console_s'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
