"""What the console shows, gathered the way any outside client would gather it: the daemon's
status from its control endpoint (once a `web.status_interval_s`), its masks and frames from its
publish endpoint (a SUB socket), and, when they are readable from here, the learner's
train.jsonl / bootstrap.jsonl and the export manifests. Nothing is computed twice: the console
keeps no counter of its own about cameras, only the history of what the daemon said (curves,
connection quality over the last hour, the event list).

Two threads: one asks for the status, one receives masks. Readers (the web app's coroutines)
take snapshots; replacing a reference is atomic, lists are copied under a lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

from common.errors import UserError
from common.log import log_event
from motionmask.control import ControlUnavailable, request
from motionmask.web.redact import redact, redact_text
from motionmask.web.stream import LiveStore
from streamer.live import protocol

log = logging.getLogger("motionmask.web")

HOUR_S = 3600.0
MAX_EVENTS = 500
MAX_CURVE_POINTS = 2000
FRAME_TOPIC = b"frame."
CHECKPOINT_FILE = re.compile(r"^step_(\d{7,})\.pt$")  # learner.checkpoint's names (importing it imports torch)


def connectable(endpoint: str, near: str = "") -> str:
    """An endpoint to connect to: a wildcard or loopback host becomes the host of `near` (the
    control endpoint we reached) or 127.0.0.1."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint[6:].rpartition(":")
    other = urlsplit(near.replace("tcp://", "http://", 1)).hostname if near.startswith("tcp://") else None
    if host in ("*", "0.0.0.0", "[::]", "::") or (host in ("127.0.0.1", "localhost") and other):
        host = other if other and other not in ("*", "0.0.0.0") else "127.0.0.1"
    return f"tcp://{host}:{port}"


class JsonlTail:
    """Rows of a JSON-lines file that another process appends to, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rows = path, 0, []
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
            if size < self.offset:  # truncated or replaced: start over
                self.offset, self.rows, self._partial = 0, [], b""
            if size > self.offset:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    data = f.read(size - self.offset)
                self.offset = size
                lines = (self._partial + data).split(b"\n")
                self._partial = lines.pop()
                for line in lines:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        self.rows.append(row)
        except OSError:
            pass
        return self.rows


def _thin(rows: list[dict[str, Any]], n: int = MAX_CURVE_POINTS) -> list[dict[str, Any]]:
    if len(rows) <= n:
        return rows
    k = -(-len(rows) // n)
    return rows[::k] + ([rows[-1]] if (len(rows) - 1) % k else [])


class DaemonFeed:
    """control: the daemon's control endpoint. masks: its publish endpoint (default: the one its
    status names). run_dir / exports_dir: the learner's run folder and the exports folder, when
    readable from here (default: the run_dir the status names, if it exists here)."""

    def __init__(
        self,
        control: str,
        masks: str | None = None,
        run_dir: str | None = None,
        exports_dir: str | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.control = connectable(control)
        self.masks = masks
        self.run_dir = run_dir
        self.exports_dir = exports_dir
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.store = LiveStore()
        self.status: dict[str, Any] | None = None  # the daemon's last reply, redacted
        self.status_at = 0.0  # wall clock of that reply
        self.error = ""  # why there is no fresh status
        self._lock = threading.Lock()
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._history: dict[str, deque[tuple[float, bool, int]]] = {}  # camera -> (t, healthy, reconnects)
        self._stalls: dict[str, deque[float]] = {}
        self._status_curve: list[dict[str, Any]] = []  # learner samples when train.jsonl is not readable
        self._train: JsonlTail | None = None
        self._boot: JsonlTail | None = None
        self._exports_seen: set[str] = set()
        self._latest_seen: str | None = None
        self._evented: set[tuple] = set()  # records of the status already in the event list
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sub_started = False

    # -- lifetime ---------------------------------------------------------------------------
    def start(self) -> DaemonFeed:
        t = threading.Thread(target=self._poll_loop, name="console-status", daemon=True)
        t.start()
        self._threads.append(t)
        if self.masks:
            self._start_sub(self.masks)
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=3.0)

    # -- status -----------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.05, self.interval_s - (time.monotonic() - t0)))

    def poll_once(self) -> None:
        try:
            reply = request(self.control, "status", timeout=self.timeout_s)
        except ControlUnavailable:
            self._unreachable(f"no daemon answering at {self.control}")
            return
        except UserError as e:
            self._unreachable(str(e))
            return
        if not reply.get("ok"):
            self._unreachable(f"the daemon refused the status request: {reply.get('error', '?')}")
            return
        reply = redact(reply)
        previous = self.status
        if self.error:
            self.event("daemon", "info", f"daemon answering again at {self.control}")
        self.status, self.status_at, self.error = reply, time.time(), ""
        if not self._sub_started and not self.masks and (reply.get("publisher") or {}).get("endpoint"):
            self._start_sub(connectable(reply["publisher"]["endpoint"], self.control))
        self._files(reply)
        self._track(previous, reply)

    def _unreachable(self, why: str) -> None:
        if not self.error:
            self.event("daemon", "error", why)
            log_event(log, "console_daemon_unreachable", logging.WARNING, endpoint=self.control, reason=why)
        self.error = why

    def _files(self, st: dict[str, Any]) -> None:
        learner = st.get("learner") or {}
        run_dir = self.run_dir or learner.get("run_dir")
        if run_dir and self._train is None and os.path.isdir(run_dir):
            from learner.bootstrap import BOOTSTRAP_LOG  # file names only; no torch at import

            self._train = JsonlTail(Path(run_dir) / "train.jsonl")
            self._boot = JsonlTail(Path(run_dir) / BOOTSTRAP_LOG)
        if learner.get("step") is not None and (
            not self._status_curve or self._status_curve[-1]["step"] != learner["step"]
        ):
            self._status_curve.append(
                {
                    "step": learner["step"],
                    "loss": learner.get("loss"),
                    "crops_per_s": learner.get("crops_per_s"),
                    "time": round(time.time(), 3),
                }
            )
            del self._status_curve[: -MAX_CURVE_POINTS * 4]

    # -- history and events -----------------------------------------------------------------
    def event(self, subject: str, level: str, text: str, at: float | None = None) -> None:
        """at: when it happened, for records the daemon keeps with their time (config warnings,
        export decisions, pulls), which may be older than this console."""
        with self._lock:
            self._events.appendleft(
                {
                    "time": round(time.time() if at is None else at, 3),
                    "subject": subject,
                    "level": level,
                    "text": redact_text(text),
                }
            )

    def events(self, limit: int = MAX_EVENTS) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return sorted(self._events, key=lambda e: -e["time"])[:limit]

    def _once(self, key: tuple) -> bool:
        if key in self._evented:
            return False
        self._evented.add(key)
        return True

    def _track_records(self, st: dict[str, Any]) -> None:
        """Events from what the daemon keeps with its time: config warnings, the export gate's
        decisions (shipped, skipped and why, failed), completed pulls."""
        for w in st.get("warnings") or []:
            if self._once(("warning", w.get("time"), w.get("key"))):
                self.event("config", "warning", f"{w.get('key')}: {w.get('text')}", w.get("time"))
        for name, c in st.get("cameras", {}).items():  # e.g. few frames kept, with the threshold to change
            for w in c.get("warnings") or []:
                if self._once(("warning", name, w.get("time"), w.get("key"))):
                    self.event("config", "warning", f"{w.get('key')}: {w.get('text')}", w.get("time"))
        gate = (st.get("learner") or {}).get("export") or {}
        for d in gate.get("decisions") or []:
            if not self._once(("export", d.get("time"), d.get("step"), d.get("outcome"))):
                continue
            if d.get("version"):
                self._exports_seen.add(d["version"])  # not said again from its manifest
            what = f"export {d['version']}" if d.get("version") else f"export at step {d.get('step')}"
            level = {"shipped": "info", "skipped": "info"}.get(d.get("outcome"), "error")
            self.event("export", level, f"{what} {d.get('outcome')}: {d.get('reason')}", d.get("time"))
        for pull in (st.get("bundle_server") or {}).get("pulls") or []:
            if self._once(("pull", pull.get("device"), pull.get("version"), pull.get("time"))):
                self.event(
                    "export",
                    "info",
                    f"device {pull.get('device')} pulled {pull.get('version')} "
                    f"({pull.get('bytes', 0) / 2**20:.1f} MB in {pull.get('seconds', 0):.1f} s)",
                    pull.get("time"),
                )

    def _track(self, prev: dict[str, Any] | None, st: dict[str, Any]) -> None:
        now = time.time()
        pcams = (prev or {}).get("cameras", {})
        for name, c in st.get("cameras", {}).items():
            p = pcams.get(name)
            if self._sample_health(name, c, p, now) and p is not None:
                self._camera_events(name, p, c)
        lp, lc = (prev or {}).get("learner"), st.get("learner")
        if lp and lc:
            self._learner_events(lp, lc)
        self._track_records(st)
        # the learner's gate says what it shipped, with why; manifests speak for other exports
        self._track_exports(gate_speaks="decisions" in ((lc or {}).get("export") or {}))

    def _sample_health(self, name: str, c: dict[str, Any], p: dict[str, Any] | None, now: float) -> bool:
        """Add this poll to the camera's last hour of health (and stalls); False, and nothing added,
        while it is still opening its source for the first time."""
        reconnects = int(c.get("restarts", 0)) + int(c.get("source_stats", {}).get("reconnects", 0))
        advancing = p is None or c.get("frames", 0) > p.get("frames", 0)
        healthy = c.get("state") == "running" and advancing
        hist = self._history.setdefault(name, deque())
        stalls = self._stalls.setdefault(name, deque())
        if not hist and not healthy and c.get("state") == "starting" and not reconnects:
            return False  # a camera still opening its source for the first time is not a bad link yet
        if hist and hist[-1][1] and not healthy:
            stalls.append(now)
        hist.append((now, healthy, reconnects))
        while hist and now - hist[0][0] > HOUR_S:
            hist.popleft()
        while stalls and now - stalls[0] > HOUR_S:
            stalls.popleft()
        return True

    def _camera_events(self, name: str, p: dict[str, Any], c: dict[str, Any]) -> None:
        """Events from a camera's change between two polls: its state, restarts, its source link."""
        if c.get("state") != p.get("state"):
            if c["state"] == "running" and not c.get("restarts") and p.get("state") == "starting":
                self.event(name, "info", f"camera {name} running ({c.get('source')})")
            elif c["state"] == "running":
                self.event(name, "info", f"camera {name} running again (restarts {c.get('restarts', 0)})")
            else:
                why = f": {c['last_error']}" if c.get("last_error") else ""
                level = "error" if c["state"] == "failed" else "warning"
                self.event(name, level, f"camera {name} {p.get('state')} -> {c['state']}{why}")
        elif c.get("restarts", 0) > p.get("restarts", 0):
            self.event(name, "warning", f"camera {name} restarted ({c.get('last_error') or c.get('last_exit')})")
        l0, l1 = p.get("source_link") or {}, c.get("source_link") or {}
        if l1.get("state") and l1.get("state") != l0.get("state"):
            if l1["state"] == "running" and l0.get("state"):
                self.event(name, "info", f"camera {name} source back (after: {l1.get('error') or '?'})")
            elif l1["state"] != "running":
                self.event(
                    name,
                    "error" if l1["state"] == "failed" else "warning",
                    f"camera {name} source {l1['state']}: {l1.get('error') or '?'}",
                )
        r0 = int(p.get("source_stats", {}).get("reconnects", 0))
        r1 = int(c.get("source_stats", {}).get("reconnects", 0))
        if r1 > r0 and l1.get("state") == l0.get("state"):  # a drop between two polls
            self.event(name, "warning", f"camera {name} source reconnected ({r1 - r0}x)")

    def _learner_events(self, lp: dict[str, Any], lc: dict[str, Any]) -> None:
        """Events from the learner's change between two polls: state, bootstrap rounds, checkpoints."""
        if lc.get("state") != lp.get("state"):
            why = f": {lc['last_error']}" if lc.get("last_error") and lc["state"] != "running" else ""
            self.event(
                "learner",
                "info" if lc["state"] == "running" else "warning",
                f"learner {lp.get('state')} -> {lc['state']}{why}",
            )
        if (lc.get("bootstrap_round") or 0) > (lp.get("bootstrap_round") or 0):
            last = lc.get("bootstrap_last") or {}
            agree = f", label agreement {last['agreement']:.3f}" if isinstance(last.get("agreement"), float) else ""
            self.event("learner", "info", f"bootstrap round {lc['bootstrap_round']}{agree}")
        if lc.get("checkpoint_step") is not None and lc.get("checkpoint_step") != lp.get("checkpoint_step"):
            self.event("learner", "info", f"checkpoint at step {lc['checkpoint_step']}")

    def _track_exports(self, gate_speaks: bool = False) -> None:
        ex = self.exports()
        if not ex.get("readable"):
            return
        first = not self._exports_seen and self._latest_seen is None
        for v in ex["versions"]:
            if v["version"] not in self._exports_seen:
                self._exports_seen.add(v["version"])
                if not first and not gate_speaks:
                    iou = v.get("holdout_iou")
                    score = f" (holdout IoU {iou:.3f})" if isinstance(iou, (int, float)) else ""
                    self.event("export", "info", f"export {v['version']} shipped{score}")
        if ex.get("latest") != self._latest_seen:
            if not first and ex.get("latest"):
                self.event("export", "info", f"LATEST is now {ex['latest']}")
            self._latest_seen = ex.get("latest")

    def quality(self, name: str) -> dict[str, Any]:
        """Connection quality over the last hour (or since the console started): the share of
        status polls that found the camera running with frames advancing, its reconnects
        (restarts plus source reconnects) and its stalls (a healthy camera that stopped)."""
        hist = list(self._history.get(name, ()))
        if not hist:
            return {"window_s": 0, "up": None, "reconnects": 0, "stalls": 0, "grade": "unknown"}
        up = sum(1 for h in hist if h[1]) / len(hist)
        reconnects = hist[-1][2] - hist[0][2]
        stalls = len(self._stalls.get(name, ()))
        grade = "good" if up >= 0.99 and not reconnects and not stalls else "fair" if up >= 0.9 else "poor"
        return {
            "window_s": round(hist[-1][0] - hist[0][0], 1),
            "up": round(up, 4),
            "reconnects": reconnects,
            "stalls": stalls,
            "grade": grade,
        }

    # -- learner and exports ----------------------------------------------------------------
    def learner(self) -> dict[str, Any] | None:
        st = self.status or {}
        lr = st.get("learner")
        if lr is None:
            return None
        if self._train is not None:  # the run folder is readable here: its train.jsonl is the record
            rows, source = self._train.read(), str(self._train.path)
        else:
            rows, source = self._status_curve, "status samples since the console started"
        heads = sorted({k for r in rows for k in r if k.startswith("loss_")})
        rows = _thin(rows)
        curve = {
            "step": [r.get("step") for r in rows],
            "loss": [r.get("loss") for r in rows],
            "crops_per_s": [r.get("crops_per_s") for r in rows],
            "time": [r.get("time") for r in rows],
            **{h: [r.get(h) for r in rows] for h in heads},
        }
        boot = list(self._boot.read()) if self._boot is not None else []
        return {
            **lr,
            "curve": curve,
            "curve_source": source,
            "heads": ["loss", *heads],
            "bootstrap_rounds": boot,
            "checkpoints": self._checkpoints(),
        }

    def _checkpoints(self) -> list[dict[str, Any]] | None:
        """The run's step checkpoints on disk, newest first (None: the run folder is not readable here)."""
        if self._train is None:
            return None
        out = []
        try:
            with os.scandir(self._train.path.parent / "checkpoints") as it:
                for e in it:
                    m = CHECKPOINT_FILE.match(e.name)
                    if m:
                        st = e.stat()
                        out.append({"step": int(m.group(1)), "time": round(st.st_mtime, 3), "bytes": st.st_size})
        except OSError:
            pass
        return sorted(out, key=lambda c: -c["step"])

    def exports(self) -> dict[str, Any]:
        """The bundles in the exports folder (their manifests, LATEST) with what the daemon's
        status says about them: the gate's decisions and reasons (`gate`, `decisions` newest first)
        and the bundle server's pulls (`server`, `devices`, `pulls`; `pulled_by` per version)."""
        st = self.status or {}
        gate = dict((st.get("learner") or {}).get("export") or {})
        decisions = list(reversed(gate.pop("decisions", None) or []))
        server = dict(st.get("bundle_server") or {})
        devices, pulls = server.pop("devices", []), server.pop("pulls", [])
        out = self._versions()
        for v in out["versions"]:
            v["pulled_by"] = [{"device": p["device"], "time": p["time"]} for p in pulls if p["version"] == v["version"]]
        return {
            **out,
            "gate": gate or None,
            "decisions": decisions,
            "server": server or None,
            "devices": devices,
            "pulls": pulls,
        }

    def _versions(self) -> dict[str, Any]:
        d = self.exports_dir
        if not d or not os.path.isdir(d):
            return {
                "dir": d or "",
                "readable": False,
                "latest": None,
                "previous": None,
                "versions": [],
                "note": "the exports folder is not readable from here"
                if d
                else "export is off (export.enabled: false), or pass --exports DIR",
            }
        from exporter.bundle import read_pointer, versions

        latest, previous = read_pointer(d), read_pointer(d, "PREVIOUS")
        out = []
        for v in reversed(versions(d)):
            try:
                m = json.loads((Path(d) / v / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            q = m.get("quality") or {}
            out.append(
                {
                    "version": v,
                    "step": (m.get("source") or {}).get("step"),
                    "created": m.get("created"),
                    "holdout_iou": q.get("holdout_iou"),
                    "holdout_bce": q.get("holdout_bce"),
                    "last_export_holdout_iou": q.get("last_export_holdout_iou"),
                    "bytes": sum(int(f.get("bytes", 0)) for f in (m.get("files") or {}).values()),
                    "latest": v == latest,
                    "previous": v == previous,
                }
            )
        return {"dir": d, "readable": True, "latest": latest, "previous": previous, "versions": out}

    # -- masks ------------------------------------------------------------------------------
    def _start_sub(self, endpoint: str) -> None:
        self._sub_started = True
        self.masks = endpoint
        t = threading.Thread(target=self._sub_loop, args=(endpoint,), name="console-masks", daemon=True)
        t.start()
        self._threads.append(t)

    def _sub_loop(self, endpoint: str) -> None:
        ctx = zmq.Context()
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 64)  # we keep only the newest anyway: a deep queue is only latency
        s.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
        s.setsockopt(zmq.RECONNECT_IVL, 200)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        s.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        s.setsockopt(zmq.SUBSCRIBE, b"mask.")
        s.setsockopt(zmq.SUBSCRIBE, FRAME_TOPIC)
        try:
            s.connect(endpoint)
            log_event(log, "console_subscribed", endpoint=endpoint)
            while not self._stop.is_set():
                if not s.poll(200):
                    continue
                for _ in range(200):
                    try:
                        parts = s.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._take(parts)
        except zmq.ZMQError as e:
            self.event("daemon", "error", f"cannot subscribe to {endpoint}: {e.strerror}")
        finally:
            s.close(0)
            ctx.term()

    def _take(self, parts: list[bytes]) -> None:
        if len(parts) == 3 and parts[0].startswith(FRAME_TOPIC):
            try:
                header = json.loads(parts[1])
                if header.get("encoding") == "jpeg" and isinstance(header.get("frame"), int):
                    self.store.put_frame(header, parts[2])
            except (ValueError, AttributeError):
                pass
            return
        try:
            msg = protocol.parse(parts)
        except protocol.ProtocolError:
            return
        self.store.put_mask(msg.header, msg.payload)


__all__ = ["DaemonFeed", "JsonlTail", "connectable"]
