"""The web console of a real `motionmask run` on the bundled clip, over real HTTP: the JSON
endpoints say what `motionmask status --json` says, /metrics parses, a stalled viewer costs the
camera nothing; and, where Debian's chromium and playwright are installed, the page in a real
headless browser. One daemon for the whole module (2-core machines)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest
import yaml
from _media import free_port

from motionmask.cli import main
from motionmask.control import request

CLIP = Path(__file__).parent / "data" / "sample.mp4"  # 384x288 at 10 fps, played in real time, looping
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_missing() -> str:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does it as root)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[dev]')"
    return ""


needs_browser = pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "-")


class WebDaemon:
    def __init__(self, root: Path) -> None:
        self.web_port = free_port()
        self.control = f"tcp://127.0.0.1:{free_port()}"
        self.cfg = {
            "streamer": {
                "flow": {"width": 64},
                "motion": {"num_superpixels": 60},
                "prune": {"min_fg": 0.0, "max_border_fg": 1.0, "max_unsure": 1.0},
            },
            "buffer": {"train_width": 64, "train_height": 48, "memory_mb": 2},
            "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
            "daemon": {"control_endpoint": self.control, "shutdown_timeout_s": 5.0, "stats_interval_s": 5.0},
            "cameras": [{"name": "a", "source": str(CLIP), "loop": True}],
            "learner": {
                "enabled": True,
                "run_dir": str(root / "run"),
                "model": {"width": 8, "blocks": [1, 1, 1, 1]},
                "crops": {"size": 32},
                "train": {"batch": 4, "device": "cpu", "warmup_steps": 0, "threads": 1},
                "bootstrap": {"every_steps": 100},
            },
            "web": {"port": self.web_port},
            # exports with their gate, and a bundle server on all interfaces without a signing key:
            # a config warning (export.signing_key) for the event list
            "export": {
                "enabled": True,
                "dir": str(root / "exports"),
                "every_steps": 30,
                "every_minutes": 0,
                "holdout_samples": 4,
                "parity_frames": 2,
                "latency_runs": 2,
                "keep": 3,
                "student_every": 0,
                "endpoint": f"tcp://0.0.0.0:{free_port()}",
                "announce_endpoint": f"tcp://127.0.0.1:{free_port()}",
            },
        }
        self.bundles = self.cfg["export"]["endpoint"].replace("0.0.0.0", "127.0.0.1")
        self.url = f"http://127.0.0.1:{self.web_port}"
        path = root / "daemon.yaml"
        path.write_text(yaml.safe_dump(self.cfg))
        self.log_path = root / "daemon.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "motionmask.cli", "run", "--config", str(path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5.0, **kw)

    def wait_for(self, what, timeout: float = 60.0) -> dict:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.log()}"
            try:
                r = self.get("/api/status")
                if r.status_code == 200:
                    last = r.json()
                    if what(last):
                        return last
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"timed out; last /api/status {json.dumps(last)[:2000]}\n{self.log()}")

    def fps(self, seconds: float) -> float:
        """Frames per second the camera made over `seconds`, from the daemon's own counters."""
        a = request(self.control, "status")["cameras"]["a"]["frames"]
        time.sleep(seconds)
        b = request(self.control, "status")["cameras"]["a"]["frames"]
        return (b - a) / seconds

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = WebDaemon(tmp_path_factory.mktemp("web"))
    try:
        d.wait_for(lambda s: s["cameras"]["a"]["state"] == "running" and s["cameras"]["a"]["frames"] > 10)
        yield d
    finally:
        code = d.stop()
        assert code == 0, d.log()


def _status_json(endpoint: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", "--endpoint", endpoint, "--json"]) == 0
    return json.loads(out.getvalue())


def test_json_endpoints_match_status(daemon):
    cli = _status_json(daemon.control)
    api = daemon.get("/api/status").json()
    assert api.keys() == cli.keys() and api["web"]["url"] == daemon.url
    assert api["cameras"].keys() == cli["cameras"].keys() == {"a"}
    for key in ("state", "source", "size", "restarts", "last_error", "pid"):
        assert api["cameras"]["a"][key] == cli["cameras"]["a"][key], key
    assert abs(api["cameras"]["a"]["frames"] - cli["cameras"]["a"]["frames"]) <= 30  # <= 1 s apart at 10 fps
    assert api["cameras"]["a"].keys() == cli["cameras"]["a"].keys()
    assert api["learner"].keys() == cli["learner"].keys() and api["learner"]["pid"] == cli["learner"]["pid"]

    cam = daemon.get("/api/cameras/a").json()
    assert cam.items() >= {k: v for k, v in api["cameras"]["a"].items() if k in ("state", "source", "size")}.items()
    assert cam["name"] == "a" and cam["quality"]["grade"] in ("good", "fair", "poor", "unknown")
    r = daemon.get("/api/cameras/nope")
    assert r.status_code == 404 and "cameras: a" in r.json()["error"]

    st = daemon.wait_for(lambda s: ((s["learner"] or {}).get("step") or 0) >= 20)
    time.sleep(1.5)  # train.jsonl gets a line every 10 steps
    learner = daemon.get("/api/learner").json()
    assert learner["run_dir"] == st["learner"]["run_dir"] and learner["curve_source"].endswith("train.jsonl")
    assert len(learner["curve"]["step"]) == len(learner["curve"]["loss"]) > 0

    assert isinstance(learner["checkpoints"], list)
    assert isinstance(daemon.get("/api/events").json(), list)

    out = io.StringIO()
    with redirect_stdout(out):
        main(["status", "--endpoint", daemon.control])
    assert f"web:    {daemon.url}  running" in out.getvalue()


def test_metrics_parse(daemon):
    from prometheus_client.parser import text_string_to_metric_families

    r = daemon.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }
    assert samples[("motionmask_daemon_up", ())] == 1.0
    assert samples[("motionmask_camera_frames_total", (("camera", "a"),))] > 0
    assert ("motionmask_camera_fps", (("camera", "a"),)) in samples
    for name in (
        "motionmask_buffer_fill",
        "motionmask_publisher_sent_total",
        "motionmask_learner_step",
        "motionmask_camera_restarts_total",
        "motionmask_console_clients",
    ):
        assert any(k[0] == name for k in samples), name


def test_exports_say_why_and_who_pulled(daemon, tmp_path):
    """The gate's decisions with their reasons, the bundle server's pulls, and config warnings,
    as the daemon's status records them, in /api/exports, /api/events, /metrics and `motionmask status`."""
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.transfer import DeviceAgent, PullConfig

    st = daemon.wait_for(lambda s: ((s["learner"] or {}).get("export") or {}).get("decisions"), 90)
    gate = st["learner"]["export"]
    assert gate["state"] == "exporting" and gate["shipped"] >= 1 and gate["holdout_samples"] == 4
    first = gate["decisions"][0]
    assert first["outcome"] == "shipped" and first["reason"] == "first export of this run", first
    for d in gate["decisions"][1:]:
        assert d["outcome"] in ("shipped", "skipped") and "holdout IoU" in d["reason"], d

    ex = daemon.get("/api/exports").json()
    assert ex["readable"] and ex["latest"] and ex["gate"]["shipped"] >= 1
    assert [d["step"] for d in ex["decisions"]] == sorted((d["step"] for d in ex["decisions"]), reverse=True)
    shipped = {d["version"] for d in ex["decisions"] if d["outcome"] == "shipped"}
    assert ex["latest"] in shipped and ex["server"]["endpoint"].endswith(daemon.bundles.rpartition(":")[2])

    got = DeviceAgent(daemon.bundles, tmp_path / "device", PullConfig()).run(once=True)
    assert got is not None
    deadline = time.monotonic() + 10
    while not (ex := daemon.get("/api/exports").json())["pulls"]:
        assert time.monotonic() < deadline, ex
        time.sleep(0.3)
    (pull,) = ex["pulls"]
    assert (pull["device"], pull["version"]) == ("127.0.0.1", got.version) and ex["devices"] == [pull]
    assert {"device": "127.0.0.1", "time": pull["time"]} in next(
        v for v in ex["versions"] if v["version"] == got.version
    )["pulled_by"]

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(daemon.get("/metrics").text)
        for s in fam.samples
    }
    assert samples[("motionmask_export_pulls_total", ())] == 1.0
    assert samples[("motionmask_export_decisions_total", (("outcome", "shipped"),))] >= 1.0

    events = daemon.get("/api/events").json()
    assert [e["time"] for e in events] == sorted((e["time"] for e in events), reverse=True)  # newest first
    texts = [e["text"] for e in events]
    assert any(e["subject"] == "config" and "export.signing_key" in e["text"] for e in events), texts
    assert any("shipped: first export of this run" in t for t in texts), texts
    assert any(t.startswith(f"device 127.0.0.1 pulled {got.version}") for t in texts), texts

    out = io.StringIO()
    with redirect_stdout(out):
        main(["status", "--endpoint", daemon.control])
    text = out.getvalue()
    assert "export: last at step" in text and "pulls by 1 device" in text and "warning: export.signing_key:" in text


def _ws_handshake(port: int, path: str) -> socket.socket:
    """A WebSocket client that opens the stream and then never reads (a frozen tablet)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return s


def test_stalled_viewers_do_not_slow_the_camera(daemon):
    import websockets.sync.client as wsc

    before = daemon.fps(6.0)
    stalled = [_ws_handshake(daemon.web_port, "/ws/cameras/a?kind=motion") for _ in range(3)]
    stalled.append(
        socket.create_connection(("127.0.0.1", daemon.web_port), timeout=5)
    )  # an SSE reader that never reads
    stalled[-1].sendall(f"GET /api/live HTTP/1.1\r\nHost: 127.0.0.1:{daemon.web_port}\r\n\r\n".encode())
    try:
        time.sleep(3.0)  # long enough for their socket buffers to fill
        during = daemon.fps(6.0)
        # another viewer still gets fresh pictures while the stalled ones hold their sockets
        with wsc.connect(f"ws://127.0.0.1:{daemon.web_port}/ws/cameras/a?kind=trimap", open_timeout=5) as ws:
            frames = []
            for _ in range(5):
                unit = ws.recv(timeout=5)
                n = int.from_bytes(unit[:4], "big")
                head = json.loads(unit[4 : 4 + n])
                assert head["camera"] == "a" and head["mask"]["kind"] == "trimap"
                frames.append((head["frame"] or head["mask"])["frame"])
            assert frames == sorted(frames) and frames[-1] > frames[0]
        console = daemon.get("/api/console").json()
        assert console["clients"] >= 3
    finally:
        for s in stalled:
            s.close()
    assert before >= 8.0, f"camera too slow to judge ({before:.1f} fps on a 10 fps clip)"
    assert during >= 0.9 * before, f"camera fps {before:.1f} -> {during:.1f} with stalled viewers"


def test_still_picture(daemon):
    r = daemon.get("/api/cameras/a/still?kind=motion")
    assert r.status_code == 200
    body = r.content
    n = int.from_bytes(body[:4], "big")
    head = json.loads(body[4 : 4 + n])
    m = int.from_bytes(body[4 + n : 8 + n], "big")
    assert head["mask"]["kind"] == "motion" and body[8 + n + m :][:4] == b"\x89PNG"
    assert head["frame"] is not None and body[8 + n : 10 + n] == b"\xff\xd8"  # a JPEG frame under it
    assert daemon.get("/api/cameras/zz/still").status_code == 404


# ---- in a real browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30000)
        yield b
        b.close()


def _open(browser, url: str, height: int = 1100):
    page = browser.new_page(viewport={"width": 1280, "height": height})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "requestfailed",
        lambda r: (
            problems.append(f"request failed: {r.url} {r.failure}")
            if "/api/live" not in r.url and "/ws/" not in r.url
            else None
        ),
    )  # closed by us on exit
    page.goto(url, wait_until="load", timeout=15000)
    return page, problems


def _drawn(page) -> int:
    return int(page.eval_on_selector('[data-camera="a"] canvas', "c => c.dataset.drawn || '0'"))


@needs_browser
def test_page_live_numbers_and_curves(daemon, browser):
    daemon.wait_for(lambda s: ((s["learner"] or {}).get("step") or 0) >= 20)
    page, problems = _open(browser, daemon.url)
    try:
        page.wait_for_function(
            "() => +(document.querySelector('[data-camera=\"a\"] canvas')?.dataset.drawn || 0) >= 2", timeout=15000
        )
        canvas = page.locator('[data-camera="a"] canvas')
        first, frame1 = canvas.screenshot(), page.eval_on_selector('[data-camera="a"] canvas', "c => c.dataset.frame")
        page.wait_for_function(
            f"() => document.querySelector('[data-camera=\"a\"] canvas').dataset.frame != '{frame1}'", timeout=10000
        )
        time.sleep(0.3)
        assert canvas.screenshot() != first, "the live image did not change"

        # the numbers on the page are those of /api/status (the same snapshot: same uptime)
        for _ in range(40):
            api = daemon.get("/api/status").json()
            shown = page.evaluate("""() => {
                const t = document.querySelector('[data-camera="a"]'), out = {uptime: document.body.dataset.uptime};
                for (const el of t.querySelectorAll('[data-field]')) out[el.dataset.field] = el.dataset.value;
                out.state = t.querySelector('.state').textContent;
                return out; }""")
            if float(shown["uptime"] or "nan") == float(api["uptime_s"]):  # JS writes 35 where Python writes 35.0
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the page never showed the snapshot of /api/status: {shown} vs {api['uptime_s']}")
        cam = api["cameras"]["a"]
        for key in ("frames", "kept", "pruned", "drops", "restarts", "shots", "fps"):
            assert float(shown[key]) == float(cam[key]), (key, shown[key], cam[key])
        assert float(shown["buffer"]) == api["buffer"]["by_camera"].get("a", 0)
        assert shown["state"] == cam["state"]

        # the loss plot has points once the learner has stepped
        page.wait_for_function("() => +document.getElementById('loss-plot').dataset.points > 0", timeout=15000)
        assert "train.jsonl" in page.text_content("#curve-source")
        assert page.text_content("#checkpoints").startswith("checkpoints")

        # the kind buttons are the kinds the daemon publishes for this camera
        for _ in range(30):
            kinds = set(daemon.get("/api/cameras/a").json()["kinds"])
            buttons = set(
                page.eval_on_selector_all('[data-camera="a"] .kinds button', "bs => bs.map(b => b.textContent)")
            )
            if buttons == kinds | {"motion"}:
                break
            time.sleep(0.2)
        assert buttons == kinds | {"motion"} and {"motion", "trimap"} <= kinds, (buttons, kinds)

        # the mask as an outline: live pictures drawn that way, and a known mask (a square over the
        # camera's real frame, through the page's own drawing) outlined in exactly the kind's colour
        page.select_option("#overlay", "outline")
        drawn = _drawn(page)
        page.wait_for_function(
            f"""() => {{ const c = document.querySelector('[data-camera="a"] canvas');
            return c.dataset.overlay === 'outline' && +c.dataset.drawn > {drawn}; }}""",
            timeout=10000,
        )
        outlined, coloured = page.evaluate("""async () => {
            const t = tiles.a; t.stop();
            const buf = await (await fetch('/api/cameras/a/still?kind=motion')).arrayBuffer();
            const v = new DataView(buf), n = v.getUint32(0), m = v.getUint32(4 + n);
            const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
            const W = head.frame.width, H = head.frame.height, px = new Uint8Array(W * H);
            for (let y = H / 4; y < 3 * H / 4; y++) for (let x = W / 4; x < 3 * W / 4; x++) px[y * W + x] = 255;
            head.mask = {...head.mask, encoding: 'u8', width: W, height: H};
            const hb = new TextEncoder().encode(JSON.stringify(head));
            const unit = new Uint8Array(8 + hb.length + m + px.length);
            const dv = new DataView(unit.buffer);
            dv.setUint32(0, hb.length); unit.set(hb, 4); dv.setUint32(4 + hb.length, m);
            unit.set(new Uint8Array(buf, 8 + n, m), 8 + hb.length); unit.set(px, 8 + hb.length + m);
            await t.draw(unit.buffer);
            const c = t.canvas, d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let k = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] === 255 && d[i + 1] === 59 && d[i + 2] === 59) k++;
            t.sync();
            return [+c.dataset.outlined, k]; }""")
        assert outlined == 2 * 192 + 2 * 142, outlined  # the square's border, one mask pixel wide (384 x 288)
        assert outlined <= coloured <= 3 * outlined, coloured  # drawn two screen pixels wide
        page.select_option("#overlay", "tint")
        page.wait_for_function(
            """() => { const c = document.querySelector('[data-camera="a"] canvas');
            return c.dataset.overlay === 'tint' && c.dataset.outlined === '0'; }""",
            timeout=10000,
        )

        # exports: the gate's decisions with their reasons, the pull of the test before, config warnings
        page.wait_for_function(
            "() => document.querySelectorAll('#decisions tbody tr').length > 0 && "
            "document.querySelectorAll('#pulls tbody tr').length > 0",
            timeout=15000,
        )
        assert "first export of this run" in page.text_content("#decisions")
        assert "127.0.0.1" in page.text_content("#pulls")
        # a pulled version still in the exports folder says who pulled it (exporting every 30 steps,
        # the exporter may already have pruned the one the test before pulled: then there is no row)
        pulls_text = page.text_content("#pulls")
        rows = page.evaluate("""() => [...document.querySelectorAll('#exports tbody tr')].map(
            (tr) => [...tr.cells].map((c) => c.textContent))""")
        assert rows, "no exports listed"
        for row in rows:
            if row[0] in pulls_text:
                assert "127.0.0.1" in row[-1], row
        assert "export.signing_key" in page.text_content('#events li[data-subject="config"]')
    finally:
        page.close()
    assert not problems, problems


@needs_browser
def test_hidden_tiles_stop_streaming_and_still_mode(daemon, browser):
    def streams() -> int:
        return daemon.get("/api/console").json()["clients"]

    def wait(cond, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    page, problems = _open(browser, daemon.url, height=500)
    try:
        page.wait_for_function(
            "() => +(document.querySelector('[data-camera=\"a\"] canvas')?.dataset.drawn || 0) >= 1", timeout=15000
        )
        wait(lambda: streams() == 1, "the visible tile opened no stream")
        page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")  # the tile leaves the screen
        wait(lambda: streams() == 0, "an off-screen tile kept streaming")
        page.evaluate("() => window.scrollTo(0, 0)")
        wait(lambda: streams() == 1, "the tile did not stream again once back on screen")

        page.check("#still")  # still images: no stream, a picture every few seconds
        wait(lambda: streams() == 0, "still mode kept a stream open")
        drawn = _drawn(page)
        wait(lambda: _drawn(page) > drawn, "still mode drew no picture", timeout=12.0)
        page.uncheck("#still")
        wait(lambda: streams() == 1, "live mode did not come back")
    finally:
        page.evaluate("() => localStorage.clear()")
        page.close()
    assert not problems, problems
