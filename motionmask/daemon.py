"""`motionmask run`: the supervisor. Starts one streamer process per camera and, with
`learner.enabled`, the learner process (motionmask/learner_process.py), restarts a child that
dies with exponential backoff, publishes every camera's masks on one endpoint, owns the shared
ring buffer, answers the control endpoint, and shuts it all down on SIGINT/SIGTERM within
daemon.shutdown_timeout_s.

Why the daemon owns the one PUB socket: ZeroMQ lets only one process bind an endpoint, and
subscribers should see one endpoint for all cameras. Children encode their masks (PNG encoding
runs in parallel across cameras) and PUSH them over a private ipc:// socket; the daemon hands them
to its `MaskPublisher` unchanged. A PUSH/PULL hop rather than an XSUB/XPUB proxy because the
publisher's latest-only endpoint relies on CONFLATE, which XPUB lacks, and because sequence
numbers then continue across a camera's restarts. The same socket carries each child's counters
(twice a second), so a SIGKILLed child costs at most half a second of counts.

One thread does everything (a zmq poll loop over the children's socket and the control socket,
with child exits, restarts and signals checked between polls): no locks, and a status reply is a
consistent snapshot.

Children run in their own process group so that a Ctrl-C in the terminal reaches only the daemon,
which then stops them in order. A child whose daemon died stops itself (it watches its parent).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from common.config import to_dict
from common.errors import UserError
from common.log import log_event
from motionmask import __version__, remote_roles
from motionmask.camera_process import EXIT_CRASH, EXIT_OK, EXIT_SOURCE, EXIT_USER, MSG_MASK, MSG_STATS
from motionmask.config import Config
from motionmask.control import ControlServer
from motionmask.daemon_config import camera_streamer_config
from motionmask.lockfile import hold_lock, release
from motionmask.private_tmp import make_private_dir
from motionmask.sdnotify import Notifier
from motionmask.specs import ChildSpec, export_spec
from streamer.config import PatchConfig
from streamer.live.publish import MaskPublisher
from streamer.shm.pairbuffer import PairBuffer
from streamer.shm.ringbuffer import RingBuffer
from streamer.sources import redact_url

log = logging.getLogger("motionmask.daemon")

POLL_MS = 100  # longest the loop sleeps: bounds how late exits, restarts and signals are seen
DRAIN_BUDGET = 500  # child messages handled per loop turn before the control socket gets its turn
HANG_TIMEOUT_S = 30.0  # a child that sends no counters for this long is killed and restarted
# Counters a child reports that add up across its restarts.
_TOTALS = ("frames", "kept", "pruned", "buffer_puts", "buffer_drops", "forward_drops", "pair_puts", "pair_drops")
_SOURCE_TOTALS = ("decoded", "dropped_stale", "skipped_corrupt", "reconnects")
_EXIT_WHY = {
    EXIT_OK: "source ended",
    EXIT_SOURCE: "source failed",
    EXIT_USER: "user error",
    EXIT_CRASH: "crashed (traceback above)",
}


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen | None = None
    state: str = "starting"  # starting | running | restarting | failed | finished | stopped
    started_at: float = 0.0  # monotonic
    last_report: float = 0.0
    next_start: float = 0.0
    backoff: float = 0.0
    failures: int = 0  # consecutive runs that ended before daemon.restart_reset_s
    restarts: int = 0
    last_error: str = ""
    last_exit: str = ""
    kill_reason: str = ""  # why the daemon killed it, when it did
    report: dict[str, Any] = field(default_factory=dict)  # the current process's latest counters
    totals: dict[str, int] = field(default_factory=dict)  # of its earlier processes
    warnings: list[dict[str, Any]] = field(default_factory=list)  # said by its processes (few_frames_kept), kept

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def _source_label(source: str | int) -> str:
    return redact_url(source) if isinstance(source, str) else f"camera {source}"


def pair_store_config(cfg: Config) -> PatchConfig | None:
    """The pair store's settings when some enabled camera mines tracked patches, else None."""
    on = [camera_streamer_config(cfg.streamer, c, i).patches for i, c in enumerate(cfg.cameras) if c.enabled]
    on = [p for p in on if p.enabled]
    if not on:
        return None
    if len({p.size for p in on}) > 1:
        raise UserError(
            "streamer.patches.size differs between cameras; all cameras share one pair store, "
            "so set it once in streamer.patches"
        )
    return on[0]


def camera_specs(cfg: Config, forward: str, buffer_name: str, log_level: str, pairs_name: str = "") -> list[ChildSpec]:
    specs = []
    for i, cam in enumerate(cfg.cameras):
        if not cam.enabled:
            continue
        specs.append(
            ChildSpec(
                cam.name,
                "camera",
                "motionmask.camera_process",
                {
                    "name": cam.name,
                    "source": cam.source,
                    "source_label": _source_label(cam.source),
                    "streamer": to_dict(camera_streamer_config(cfg.streamer, cam, i)),
                    "realtime": cam.realtime,
                    "publish_encoding": cfg.publish.encoding if cfg.publish.enabled else None,
                    "buffer_name": buffer_name,
                    "buffer": to_dict(cfg.buffer),
                    "pairs_name": pairs_name,  # "" = no pair store
                    "export": export_spec(cfg) if cfg.publish.enabled else None,  # student masks are published
                    "frames": {"fps": cfg.web.frame_fps, "width": cfg.web.frame_width, "quality": cfg.web.jpeg_quality},
                    "forward_endpoint": forward,
                    "parent_pid": os.getpid(),
                    "log_level": log_level,
                },
                _source_label(cam.source),
            )
        )
    return specs


WARNINGS_KEPT = 10  # per child, in the status
LEARNER = "learner"  # the learner child's name (a camera may not take it while the learner runs)


def learner_spec(cfg: Config, forward: str, buffer_name: str, log_level: str, pairs_name: str = "") -> ChildSpec:
    cams = [(i, c) for i, c in enumerate(cfg.cameras) if c.enabled]
    overrides = {}
    for i, cam in cams:  # cameras whose own streamer section changes the trimap thresholds
        t = camera_streamer_config(cfg.streamer, cam, i).trimap
        if t != cfg.streamer.trimap:
            overrides[cam.name] = to_dict(t)
    publish = cfg.publish.enabled and cfg.learner.bootstrap.publish
    return ChildSpec(
        LEARNER,
        "learner",
        "motionmask.learner_process",
        {
            "name": LEARNER,
            "learner": to_dict(cfg.learner),
            "trimap": to_dict(cfg.streamer.trimap),
            "trimap_by_camera": overrides,
            "fg_threshold": cfg.streamer.prune.fg_threshold,
            "buffer_name": buffer_name,
            "buffer": to_dict(cfg.buffer),
            "pairs_name": pairs_name,
            "cameras": len(cams),
            "publish_encoding": cfg.publish.encoding if publish else None,
            "export": export_spec(cfg),
            "forward_endpoint": forward,
            "parent_pid": os.getpid(),
            "log_level": log_level,
        },
        cfg.learner.run_dir,
    )


WEB = "web.console"  # the web console child's name ('.' is not allowed in camera names)


def web_spec(cfg: Config, url: str, fd: int, control: str, masks: str, forward: str, log_level: str) -> ChildSpec:
    """The console process (motionmask/web/process.py): it reads this daemon like an outside client."""
    return ChildSpec(
        WEB,
        "web",
        "motionmask.web.process",
        {
            "name": WEB,
            "web": to_dict(cfg.web),
            "url": url,
            "listen_fd": fd,
            "control_endpoint": control,
            "masks_endpoint": masks,
            "run_dir": os.path.abspath(os.path.expanduser(cfg.learner.run_dir)) if cfg.learner.enabled else "",
            "exports_dir": os.path.abspath(os.path.expanduser(cfg.export.dir)) if cfg.export.enabled else "",
            "forward_endpoint": forward,
            "parent_pid": os.getpid(),
            "log_level": log_level,
        },
        url,
        pass_fds=(fd,),
    )


def cameras_to_run(cfg: Config, role: str) -> list[Any]:
    """The enabled cameras of role "run" (none for "learn"); UserError for a config that cannot run,
    before anything is opened."""
    enabled = [c for c in cfg.cameras if c.enabled] if role == "run" else []
    remote_roles.check(cfg, role)  # names and key files, before anything is opened
    if not enabled and role == "run":
        raise UserError(
            "no cameras to run: add a `cameras:` section to the config (see configs/rig.yaml), or enable one"
        )
    if cfg.learner.enabled and any(c.name == LEARNER for c in enabled):
        raise UserError(
            f"a camera is named {LEARNER!r}, the name of the learner process; rename it (or set learner.enabled: false)"
        )
    return enabled


class Daemon:
    def __init__(self, cfg: Config, log_level: str = "INFO", role: str = "run") -> None:
        # role "learn" (`motionmask learn`): no cameras; a receiver fills the buffer from rigs
        # (motionmask/remote_roles.py); a rig's sender comes with learner.remote in role "run"
        self.role = role
        enabled = cameras_to_run(cfg, role)
        self.cfg = cfg
        self.dcfg = cfg.daemon
        self.log_level = log_level
        self.children: dict[str, Child] = {}
        self.stopping = False
        self._signal: int | None = None
        self._signals = 0
        self._started = time.monotonic()
        self._next_stats_log = 0.0
        self._tmp = make_private_dir()  # 0700: the ipc socket is ours alone; dead daemons' ones removed
        self.ctx = zmq.Context()
        self.pull: zmq.Socket | None = None
        self.control: ControlServer | None = None
        self.publisher: MaskPublisher | None = None
        self.ring: RingBuffer | None = None
        self.pairs: PairBuffer | None = None  # tracked-patch pairs, when a camera mines them
        self.bundles = None  # exporter.transfer.BundleServer when export.enabled and export.serve
        self.web_sock = None  # the console's listening socket: bound here, served by the web child
        self.web_note = "off (web.enabled: false)"
        self.warnings: list[dict[str, Any]] = []  # motionmask.config_warnings, logged once, in the status
        self.forwarded = 0
        self.bad_messages = 0
        self.notify = Notifier.from_env()  # systemd's Type=notify and watchdog; a no-op elsewhere
        self._locks: list[int] = []  # flock'd: one daemon per learner run dir and ipc control endpoint
        self._last_frame_at: float | None = None  # when a camera's frame count last rose: the watchdog's proof
        self._last_ping = 0.0
        try:
            self._open()
        except BaseException:
            self._close_resources()
            raise
        self.warnings = self._config_warnings()
        for spec in self._child_specs(bool(enabled)):
            self.children[spec.name] = Child(spec, backoff=self.dcfg.restart_backoff_s)

    def _child_specs(self, cameras: bool) -> list[ChildSpec]:
        """The children, in the order they start: cameras, the learner, a remote role's sender or
        receiver, the web console."""
        cfg, log_level = self.cfg, self.log_level
        pairs_name = self.pairs.name if self.pairs is not None else ""
        specs = camera_specs(cfg, self.forward_endpoint, self.ring.name, log_level, pairs_name) if cameras else []
        if cfg.learner.enabled:
            spec = learner_spec(cfg, self.forward_endpoint, self.ring.name, log_level, pairs_name)
            if self.role == "learn":
                remote_roles.learn_payload(spec.payload, cfg)
            specs.append(spec)
        specs += remote_roles.remote_specs(cfg, self.role, self.forward_endpoint, self.ring.name, log_level, pairs_name)
        if self.web_sock is not None:
            from motionmask.web.server import url_of

            pub = self.publisher.endpoint if self.publisher else ""
            specs.append(
                web_spec(
                    cfg,
                    url_of(self.web_sock),
                    self.web_sock.fileno(),
                    self.control.endpoint,
                    pub,
                    self.forward_endpoint,
                    log_level,
                )
            )
        return specs

    def _open(self) -> None:
        # Everything that can fail on a user's mistake (ports, shared memory) fails here, before
        # any child starts.
        self._take_locks()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, 1000)
        self.forward_endpoint = f"ipc://{self._tmp}/children.sock"
        self.pull.bind(self.forward_endpoint)
        self.control = ControlServer(self.ctx, self.dcfg.control_endpoint, {"status": self._status, "ping": self._ping})
        if self.cfg.publish.enabled:
            self.publisher = MaskPublisher(self.cfg.publish)
        self.ring = RingBuffer.create(self.cfg.buffer)
        pc = pair_store_config(self.cfg) if self.role == "run" else None
        if pc is not None:
            self.pairs = PairBuffer.create(pc.size, pc.store_mb, lock_timeout_ms=pc.lock_timeout_ms)
        elif self.role == "learn" and remote_roles.learn_pair_store(self.cfg):
            self.pairs = PairBuffer.create(*remote_roles.learn_pair_store(self.cfg))
        if self.cfg.web.enabled:
            self._open_web()
        e = self.cfg.export
        if e.enabled and e.signing_key:  # a missing or readable-by-others key fails now, not at the first export
            from exporter.signing import Signer

            Signer.from_file(e.signing_key)
        if e.enabled and e.serve:
            from exporter.transfer import BundleServer

            try:
                os.makedirs(os.path.expanduser(e.dir), exist_ok=True)
            except OSError as err:
                raise UserError(
                    f"export.dir {e.dir}: cannot create it ({err.strerror}); choose a writable "
                    f"folder or set export.enabled: false"
                ) from None
            self.bundles = BundleServer(
                os.path.expanduser(e.dir),
                e.endpoint,
                e.announce_endpoint,
                announce_interval_s=e.announce_interval_s,
                rate_limit_mbps=e.rate_limit_mbps,
                context=self.ctx,
            ).start()

    def _open_web(self) -> None:
        # A taken port leaves the rig without its console, not without its cameras: a viewer must
        # not stop the recording (8080 is a popular port). The warning and `motionmask status` say so.
        from motionmask.web.server import listen

        w = self.cfg.web
        try:
            self.web_sock = listen(w.host, w.port)
        except UserError as e:
            self.web_note = f"off ({e})"
            log_event(log, "web_unavailable", logging.WARNING, reason=e)

    def _take_locks(self) -> None:
        """One daemon per learner run dir (two learners would write the same checkpoints) and per
        ipc:// control endpoint (ZeroMQ's bind of an ipc path silently takes it from the first daemon,
        where a tcp port fails with EADDRINUSE)."""
        if self.cfg.learner.enabled:
            run_dir = os.path.abspath(os.path.expanduser(self.cfg.learner.run_dir))
            self._locks.append(hold_lock(os.path.join(run_dir, "daemon.lock"), "learner.run_dir", run_dir))
        ep = self.dcfg.control_endpoint
        if ep.startswith("ipc://"):
            self._locks.append(hold_lock(ep[len("ipc://") :] + ".lock", "daemon.control_endpoint", ep))

    # -- lifetime ---------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until SIGINT/SIGTERM; returns the exit status (0 after a clean shutdown)."""
        # SIGHUP too: a daemon started from an ssh session that drops shuts down cleanly
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            log_event(
                log,
                "daemon_started",
                pid=os.getpid(),
                version=__version__,
                cameras=",".join(self.children),
                control=self.control.endpoint,
                publish=self.publisher.endpoint if self.publisher else "off",
                buffer=self.ring.name,
                slots=self.ring.capacity,
                web=self.children[WEB].spec.label if WEB in self.children else "off",
            )
            for child in self.children.values():
                self._start(child)
            self.notify.send(f"READY=1\nSTATUS=supervising {len(self.children)} processes")
            poller = zmq.Poller()
            poller.register(self.pull, zmq.POLLIN)
            poller.register(self.control.socket, zmq.POLLIN)
            while self._signal is None:
                events = dict(poller.poll(POLL_MS))
                if self.pull in events:
                    self._drain()
                if self.control.socket in events:
                    self.control.handle()
                self._check_children()
                self._log_stats()
                self._watchdog()
            self._shutdown()
            return 0
        finally:
            self._kill_all(signal.SIGKILL)  # only if the loop itself failed: never leave children behind
            for s, h in previous.items():
                signal.signal(s, h)
            self._close_resources()

    def _watchdog(self) -> None:
        """WATCHDOG=1 to systemd, from this loop only and only while it proves progress: a camera
        processed a frame within the watchdog interval. A loop that spins while every camera is
        stuck stays silent, and systemd restarts the daemon (Restart=on-failure). With no camera left
        to wait for (every one finished its file), the loop turning is the progress."""
        every = self.notify.watchdog_s
        now = time.monotonic()
        if not every or now - self._last_ping < every / 2:
            return
        waiting = [c for c in self.children.values() if c.spec.role == "camera" and c.state != "finished"]
        recent = self._last_frame_at is not None and now - self._last_frame_at < every
        if waiting and not recent:
            return
        self._last_ping = now
        self.notify.send("WATCHDOG=1")

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signal is None:
            self._signal = signum
        elif self._signals >= 2 and self.stopping:
            # a second Ctrl-C: the user does not want to wait for the graceful part
            log_event(log, "shutdown_hurried", logging.WARNING, signal=signal.Signals(signum).name)
            self._kill_all(signal.SIGKILL)

    def _shutdown(self) -> None:
        self.stopping = True
        self.notify.send("STOPPING=1")
        t0 = time.monotonic()
        log_event(
            log,
            "shutdown",
            signal=signal.Signals(self._signal).name if self._signal else "-",
            timeout_s=self.dcfg.shutdown_timeout_s,
        )
        for child in self.children.values():
            if child.state in ("restarting", "starting") and not child.alive():
                child.state = "stopped"
        self._kill_all(signal.SIGTERM)
        deadline = t0 + self.dcfg.shutdown_timeout_s
        while any(c.alive() for c in self.children.values()) and time.monotonic() < deadline:
            if self.pull.poll(50):
                self._drain()
            self._check_children()
        for child in self.children.values():
            if child.alive():
                log_event(
                    log,
                    "child_killed",
                    logging.WARNING,
                    child=child.spec.name,
                    pid=child.proc.pid,
                    reason=f"still running after shutdown_timeout_s={self.dcfg.shutdown_timeout_s:g}",
                )
                self._signal_child(child, signal.SIGKILL)
        for child in self.children.values():
            if child.proc is not None:
                try:
                    child.proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    pass
                self._check_children()
        log_event(
            log,
            "shutdown_done",
            took_s=time.monotonic() - t0,
            frames=sum(self._counter(c, "frames") for c in self.children.values()),
            published=self.publisher.stats()["sent"] if self.publisher else 0,
        )

    def _close_resources(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.pull is not None:
            self.pull.close(0)
            self.pull = None
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        if self.bundles is not None:
            self.bundles.close()
            self.bundles = None
        if self.web_sock is not None:
            self.web_sock.close()
            self.web_sock = None
        if self.ring is not None:
            self.ring.close()  # the owner unlinks the segment
            self.ring = None
        if self.pairs is not None:
            self.pairs.close()
            self.pairs = None
        if not self.ctx.closed:
            self.ctx.term()
        shutil.rmtree(self._tmp, ignore_errors=True)
        for fd in self._locks:  # last: nothing of this daemon is left when the next one takes over
            release(fd)
        self._locks = []
        self.notify.close()

    # -- children ---------------------------------------------------------------------------
    def _start(self, child: Child) -> None:
        spec = child.spec
        try:
            # process_group=0: a terminal's Ctrl-C goes to the daemon only, which stops children in order
            proc = subprocess.Popen(
                [sys.executable, "-m", spec.module],
                stdin=subprocess.PIPE,
                process_group=0,
                close_fds=True,
                pass_fds=spec.pass_fds,
            )
        except OSError as e:
            child.last_error = f"cannot start: {e}"
            log_event(log, "child_start_failed", logging.ERROR, child=spec.name, error=e)
            self._schedule_restart(child, time.monotonic())
            return
        try:
            proc.stdin.write(json.dumps(spec.payload).encode())
            proc.stdin.close()
        except OSError:
            pass  # it died at once; its exit is handled like any other
        now = time.monotonic()
        child.proc, child.state, child.report, child.kill_reason = proc, "starting", {}, ""
        child.started_at = child.last_report = now
        log_event(
            log,
            "child_started",
            child=spec.name,
            role=spec.role,
            pid=proc.pid,
            source=spec.label,
            restarts=child.restarts,
        )

    def _signal_child(self, child: Child, sig: int) -> None:
        if not child.alive():
            return
        try:
            os.killpg(child.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # not its group's leader any more (cannot happen with process_group=0)
            child.proc.send_signal(sig)

    def _kill_all(self, sig: int) -> None:
        for child in self.children.values():
            self._signal_child(child, sig)

    def _check_children(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is not None:
                self._drain()  # its last counters and error, if they are still queued
                self._exited(child, now)
            elif child.proc is not None and not self.stopping and now - child.last_report > HANG_TIMEOUT_S:
                log_event(
                    log,
                    "child_hung",
                    logging.WARNING,
                    child=child.spec.name,
                    pid=child.proc.pid,
                    silent_s=now - child.last_report,
                )
                child.kill_reason = f"hung: no report for {now - child.last_report:.0f} s"
                self._signal_child(child, signal.SIGKILL)
            elif child.state == "restarting" and not self.stopping and now >= child.next_start:
                child.restarts += 1
                self._start(child)

    def _exited(self, child: Child, now: float) -> None:
        code = child.proc.returncode
        pid = child.proc.pid
        ran = now - child.started_at
        for k in _TOTALS:
            child.totals[k] = child.totals.get(k, 0) + int(child.report.get(k, 0))
        for k in _SOURCE_TOTALS:
            child.totals["source_" + k] = child.totals.get("source_" + k, 0) + int(
                child.report.get("source", {}).get(k, 0)
            )
        child.totals["shots"] = child.totals.get("shots", 0) + int(child.report.get("shots", 0))
        reported = str(child.report.get("error", ""))
        child.report = {}
        child.proc = None
        if self.stopping:
            why = "stopped by the daemon"
        elif child.kill_reason:
            why = child.kill_reason
        elif code < 0:
            why = f"killed by {_exit_text(code)}"
        else:
            why = reported or _EXIT_WHY.get(code, "stopped")
        child.last_exit = _exit_text(code)
        if code != 0 and not self.stopping:
            child.last_error = why
        log_event(
            log,
            "child_exited",
            logging.INFO if self.stopping or code == 0 else logging.WARNING,
            child=child.spec.name,
            pid=pid,
            code=_exit_text(code),
            reason=why,
            ran_s=ran,
        )
        if self.stopping:
            child.state = "stopped"
        elif code == EXIT_OK:
            child.state = "finished"  # a file without loop played to its end: nothing to restart
        else:
            if ran >= self.dcfg.restart_reset_s:
                child.failures, child.backoff = 0, self.dcfg.restart_backoff_s
            self._schedule_restart(child, now)

    def _schedule_restart(self, child: Child, now: float) -> None:
        child.failures += 1
        if self.dcfg.max_restarts and child.failures > self.dcfg.max_restarts:
            child.state = "failed"
            log_event(
                log,
                "child_failed",
                logging.ERROR,
                child=child.spec.name,
                attempts=child.failures - 1,
                reason=child.last_error,
                note="gave up (daemon.max_restarts); fix it and restart the daemon",
            )
            return
        child.state = "restarting"
        child.next_start = now + child.backoff
        log_event(
            log,
            "child_restart",
            logging.WARNING,
            child=child.spec.name,
            attempt=child.failures,
            backoff_s=child.backoff,
            reason=child.last_error,
        )
        child.backoff = min(child.backoff * 2, self.dcfg.restart_backoff_max_s)

    # -- messages from children -------------------------------------------------------------
    def _drain(self) -> None:
        for _ in range(DRAIN_BUDGET):
            try:
                parts = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if parts[0] == MSG_MASK and len(parts) == 5:
                    self._forward(parts)
                elif parts[0] == MSG_STATS and len(parts) == 2:
                    self._report(json.loads(parts[1]))
                else:
                    raise ValueError(f"unknown message type {parts[0][:8]!r}")
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                self.bad_messages += 1
                log_event(log, "child_message_bad", logging.WARNING, error=e)

    def _forward(self, parts: list[bytes]) -> None:
        if self.publisher is None:
            return
        meta = json.loads(parts[3])
        if parts[2] == b"frame":  # a camera frame for web consoles: its own topic, JPEG
            self.publisher.publish_frame(
                parts[1].decode(),
                parts[4],
                int(meta["width"]),
                int(meta["height"]),
                int(meta["frame"]),
                int(meta["shot"]),
                int(meta["capture_ns"]),
            )
            return
        self.publisher.publish_encoded(
            parts[1].decode(),
            parts[2].decode(),
            parts[4],
            int(meta["width"]),
            int(meta["height"]),
            int(meta["frame"]),
            int(meta["shot"]),
            int(meta["capture_ns"]),
            str(meta.get("model_version", "")),
        )
        self.forwarded += 1

    def _report(self, report: dict[str, Any]) -> None:
        child = self.children.get(report.get("child", ""))
        if child is None or child.proc is None or report.get("pid") != child.proc.pid:
            return  # from a process that has since exited: its totals are already counted
        if child.spec.role == "camera" and int(report.get("frames", 0)) > int(child.report.get("frames", 0)):
            self._last_frame_at = time.monotonic()
        child.report = report
        child.last_report = time.monotonic()
        for w in report.get("warnings") or ():
            if w not in child.warnings:  # each said once per process, kept across its restarts
                child.warnings = [*child.warnings, w][-WARNINGS_KEPT:]
        if report.get("error"):
            child.last_error = report["error"]
        if report.get("phase") == "running" and child.state == "starting":
            child.state = "running"
            if child.restarts:
                log_event(log, "child_running", child=child.spec.name, pid=child.proc.pid, restarts=child.restarts)

    # -- status -----------------------------------------------------------------------------
    def _counter(self, child: Child, key: str) -> int:
        if key.startswith("source_"):
            now = child.report.get("source", {}).get(key[7:], 0)
        else:
            now = child.report.get(key, 0)
        return child.totals.get(key, 0) + int(now)

    def camera_status(self, child: Child) -> dict[str, Any]:
        r = child.report
        c = {k: self._counter(child, k) for k in (*_TOTALS, "shots")}
        src = {k: self._counter(child, "source_" + k) for k in _SOURCE_TOTALS}
        now = time.monotonic()
        return {
            "state": child.state,
            "pid": child.pid,
            "source": child.spec.label,
            "fps": round(float(r.get("fps", 0.0)), 2) if child.state == "running" else 0.0,
            "ms_per_frame": round(float(r.get("ms_per_frame", 0.0)), 2),
            **c,
            "drops": c["buffer_drops"] + c["forward_drops"] + src["dropped_stale"],
            "source_stats": src,
            "size": [r["source"]["width"], r["source"]["height"]] if "width" in r.get("source", {}) else None,
            "pruned_by": r.get("pruned_by", {}),
            "source_link": r.get("source_link"),  # network sources: state running | reconnecting | failed, error, since
            "student": r.get("student"),  # the bundle the camera runs for live masks: version, precision, every
            "warnings": child.warnings,  # e.g. few frames kept, with the threshold to change
            "restarts": child.restarts,
            "last_error": child.last_error,
            "last_exit": child.last_exit,
            "up_s": round(now - child.started_at, 1) if child.pid else 0.0,
            "restart_in_s": round(max(0.0, child.next_start - now), 1) if child.state == "restarting" else None,
        }

    def learner_status(self, child: Child) -> dict[str, Any]:
        r = child.report
        now = time.monotonic()
        keys = (
            "step",
            "loss",
            "lr",
            "crops_per_s",
            "device",
            "threads",
            "nan_skipped",
            "checkpoint_step",
            "checkpoint_age_s",
            "bootstrap_round",
            "bootstrap_last",
            "resumed_from",
            "refined_sent",
            "refined_dropped",
            "export",
        )
        return {
            "state": child.state,
            "pid": child.pid,
            "run_dir": child.spec.label,
            "activity": r.get("activity", child.state),
            **{k: r.get(k) for k in keys},
            "restarts": child.restarts,
            "last_error": child.last_error,
            "last_exit": child.last_exit,
            "up_s": round(now - child.started_at, 1) if child.pid else 0.0,
            "restart_in_s": round(max(0.0, child.next_start - now), 1) if child.state == "restarting" else None,
        }

    def _status(self, _request: dict[str, Any]) -> dict[str, Any]:
        ring = self.ring.stats()
        ring.pop("by_shot", None)  # grows with every shot held; by_camera says enough here
        return {
            "pid": os.getpid(),
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "stopping": self.stopping,
            "cameras": {name: self.camera_status(c) for name, c in self.children.items() if c.spec.role == "camera"},
            "learner": next((self.learner_status(c) for c in self.children.values() if c.spec.role == "learner"), None),
            "buffer": ring,
            "pairs": self.pairs.stats() if self.pairs is not None else None,
            "publisher": {
                "endpoint": self.publisher.endpoint if self.publisher else "",
                "latest_endpoint": self.publisher.latest_endpoint if self.publisher else "",
                **(self.publisher.stats() if self.publisher else {"sent": 0, "dropped": 0}),
                "forwarded": self.forwarded,
            },
            "control": {
                "endpoint": self.control.endpoint,
                "requests": self.control.requests,
                "errors": self.control.errors,
            },
            "web": self.web_status(),
            "remote": remote_roles.remote_status(self.children.values(), self.cfg, self.ring),
            "bundle_server": self.bundles.status() if self.bundles is not None else None,
            "warnings": self.warnings,
        }

    def _config_warnings(self) -> list[dict[str, Any]]:
        """Each warning of the config (motionmask.config_warnings) logged once and kept for the
        status, with the time it was said."""
        from motionmask.config_warnings import config_warnings

        found = config_warnings(self.cfg)
        if self.cfg.web.enabled and self.web_sock is None:
            found.append(
                {"key": "web.port", "event": "", "text": f"web console {self.web_note}"}
            )  # logged by _open_web
        now = round(time.time(), 3)
        for w in found:
            if w["event"]:
                log_event(log, w["event"], logging.WARNING, key=w["key"], warning=w["text"])
        return [{"time": now, "key": w["key"], "text": w["text"]} for w in found]

    def web_status(self) -> dict[str, Any]:
        child = self.children.get(WEB)
        if child is None:
            return {"url": "", "state": self.web_note}
        r = child.report
        return {
            "url": child.spec.label,
            "state": child.state,
            "pid": child.pid,
            "clients": r.get("clients", 0),
            "stream_drops": r.get("stream_drops", 0),
            "restarts": child.restarts,
            "last_error": child.last_error,
        }

    def _ping(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "uptime_s": round(time.monotonic() - self._started, 1)}

    def _log_stats(self) -> None:
        every = self.dcfg.stats_interval_s
        now = time.monotonic()
        if not every or now < self._next_stats_log:
            return
        first = self._next_stats_log == 0.0
        self._next_stats_log = now + every
        if first:
            return  # nothing to say yet at startup
        fill = self.ring.stats()
        for name, child in self.children.items():
            if child.spec.role in ("web", "sender", "receiver"):  # their status has them (motionmask status)
                continue
            if child.spec.role == "learner":
                s = self.learner_status(child)
                log_event(
                    log,
                    "learner_stats",
                    state=s["state"],
                    activity=s["activity"],
                    step=s["step"] or 0,
                    loss=s["loss"] if s["loss"] is not None else "-",
                    crops_per_s=s["crops_per_s"] or 0.0,
                    checkpoint=s["checkpoint_step"] if s["checkpoint_step"] is not None else "-",
                    round=s["bootstrap_round"] or 0,
                    restarts=s["restarts"],
                )
                continue
            s = self.camera_status(child)
            log_event(
                log,
                "camera_stats",
                camera=name,
                state=s["state"],
                fps=s["fps"],
                frames=s["frames"],
                shots=s["shots"],
                kept=s["kept"],
                pruned=s["pruned"],
                drops=s["drops"],
                restarts=s["restarts"],
                buffer=fill["by_camera"].get(name, 0),
                ms_per_frame=s["ms_per_frame"],
            )
        log_event(
            log,
            "buffer_stats",
            fill=fill["fill"],
            capacity=fill["capacity"],
            puts=fill["puts"],
            drops=fill["drops_total"],
            published=self.publisher.stats()["sent"] if self.publisher else 0,
        )


def run_daemon(cfg: Config, log_level: str = "INFO", role: str = "run") -> int:
    return Daemon(cfg, log_level, role).run()


__all__ = ["ChildSpec", "Daemon", "camera_specs", "learner_spec", "run_daemon"]
