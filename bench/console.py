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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml
from websockets.sync.client import connect

from bench.common import OUT, ROOT, cpu_model, free_port, git_revision, save_json, stop
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
                    head = json.loads(unit[4 : 4 + n])
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
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase (default 30)")
    ap.add_argument("--consoles", default="0,1,5", help="open consoles per phase (default 0,1,5)")
    ap.add_argument("--realtime", action="store_true", help="play the clip at its 10 fps instead of flat out")
    ap.add_argument("--out", type=Path, default=OUT / "console.json")
    args = ap.parse_args()
    phases = [int(x) for x in args.consoles.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    web_port, control = free_port(), f"tcp://127.0.0.1:{free_port()}"
    url = f"http://127.0.0.1:{web_port}"
    log = open(tmp / "daemon.log", "wb")
    proc = start_daemon(tmp, control, web_port, args.realtime, log)
    try:
        wait_until_up(proc, control, url, tmp / "daemon.log")
        time.sleep(3.0)  # past the start-up
        load0 = os.getloadavg()[0]
        rows = []
        for n in phases:
            rows.append(measure(n, url, control, args.seconds))
            print(f"consoles {n}: {rows[-1]}", file=sys.stderr)
            time.sleep(2.0)
        st = httpx.get(url + "/api/status", timeout=5).json()
    finally:
        stop(proc)
        log.close()
    result = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "revision": git_revision(),
        "load_avg_at_start": load0,
        "clip": str(CLIP.relative_to(ROOT)),
        "realtime": args.realtime,
        "seconds_per_phase": args.seconds,
        "frame_fps": 5.0,
        "size": st["cameras"]["cam"]["size"],
        "phases": rows,
    }
    save_json(args.out, result)
    print_table(result, args.realtime)
    return 0


def start_daemon(tmp: Path, control: str, web_port: int, realtime: bool, log) -> subprocess.Popen:
    """`motionmask run` with one camera looping the clip, no learner, the console on web_port."""
    cfg = {
        "cameras": [{"name": "cam", "source": str(CLIP), "loop": True, "realtime": realtime}],
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "daemon": {"control_endpoint": control, "stats_interval_s": 0.0},
        "learner": {"enabled": False},
        "buffer": {"memory_mb": 64},
        "web": {"port": web_port},
    }
    (tmp / "d.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.Popen(
        [sys.executable, "-m", "motionmask.cli", "run", "--config", str(tmp / "d.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def wait_until_up(proc: subprocess.Popen, control: str, url: str, log_path: Path) -> None:
    """Until the camera has counted 20 frames and the console answers (60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if frames(control)[0] > 20 and httpx.get(url + "/api/status", timeout=2).status_code == 200:
                return
        except (ControlUnavailable, httpx.HTTPError, KeyError):
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"daemon did not come up; see {log_path}")
        time.sleep(0.5)


def measure(n: int, url: str, control: str, seconds: float) -> dict:
    """One phase: n consoles open; the camera's fps and the capture-to-client latency."""
    stop_consoles = threading.Event()
    consoles = [Console(url, stop_consoles) for _ in range(n)]
    for c in consoles:
        c.start()
    time.sleep(3.0)  # connected and streaming
    f0, t0 = frames(control)
    for c in consoles:
        c.latencies_ms.clear()
    time.sleep(seconds)
    f1, t1 = frames(control)
    lat = [x for c in consoles for x in c.latencies_ms]
    units = sum(len(c.latencies_ms) for c in consoles)
    stop_consoles.set()
    for c in consoles:
        c.join(timeout=10)
    errors = [e for c in consoles for e in c.errors]
    return {
        "consoles": n,
        "camera_fps": round((f1 - f0) / (t1 - t0), 2),
        "latency_p50_ms": round(pct(lat, 0.5), 1) if lat else None,
        "latency_p99_ms": round(pct(lat, 0.99), 1) if lat else None,
        "pictures_per_console_s": round(units / max(n, 1) / (t1 - t0), 2) if n else None,
        "errors": errors[:5],
    }


def print_table(result: dict, realtime: bool) -> None:
    print(
        f"Console cost and latency: {result['cpu']}, {result['cores']} cores, load {result['load_avg_at_start']:.2f} "
        f"at start; one camera ({CLIP.name} {result['size'][0]}x{result['size'][1]}, "
        f"{'real time' if realtime else 'flat out'}), frames to consoles at 5 fps, "
        f"{result['seconds_per_phase']:g} s per phase\n"
    )
    print("| open consoles | camera fps | capture -> mask at client p50 | p99 | pictures/s per console |")
    print("|---:|---:|---:|---:|---:|")

    def f(v, u=""):
        return "-" if v is None else f"{v}{u}"

    for r in result["phases"]:
        print(
            f"| {r['consoles']} | {r['camera_fps']} | {f(r['latency_p50_ms'], ' ms')} "
            f"| {f(r['latency_p99_ms'], ' ms')} | {f(r['pictures_per_console_s'])} |"
        )


if __name__ == "__main__":
    sys.exit(main())
