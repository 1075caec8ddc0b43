"""The daemon's web console process (`python -m motionmask.web.process`, spec as JSON on stdin
like the cameras'). The daemon binds the listening socket and passes it down, so a port in use
is said at start and a restarted console serves the same port at once.

Why a process of its own rather than a thread in the daemon: the daemon's single loop forwards
every mask of every camera, and a web server in the same interpreter would share its GIL with it
(JSON of the status, WebSocket framing, viewers coming and going); a viewer must never be able to
delay a mask. Here the console reads the daemon the way any outside client does (control endpoint,
mask stream), which is also all that `motionmask console` has for a daemon on another machine: one
code path for both. It runs at nice 5: cameras first, then the console, then the learner (nice 10).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import Any

from common.config import from_dict
from common.log import log_event
from motionmask.child import Reporter, push_socket, run_child
from motionmask.web.config import WebConfig

log = logging.getLogger("motionmask.web")

NICE = 5
MSG_STATS = b"S"


class WebProcess:
    def __init__(self, spec: dict[str, Any]) -> None:
        import zmq

        self.spec = spec
        self.cfg: WebConfig = from_dict(WebConfig, spec["web"], "web")
        self.name: str = spec["name"]
        self.servers: list = []
        self.phase = "starting"
        self.ctx = zmq.Context()
        stats = push_socket(self.ctx, spec["forward_endpoint"], 4)
        self.reporter = Reporter(
            "web",
            self.snapshot,
            stats,
            MSG_STATS,
            int(spec["parent_pid"]),
            grace_s=3.0,
            orphan_exit=0,
            interval=1.0,
            camera=self.name,
        )
        self.app_state = None
        self.stop_requested = False

    def on_signal(self, signum: int, _frame: object) -> None:
        # no exception from here: a signal that lands in an import's weakref callback printed
        # "Exception ignored ... Traceback" into the daemon's log (seen on CI); run() checks the flag
        self.stop_requested = True
        if self.servers:
            self.servers[0].should_exit = True

    def snapshot(self) -> dict[str, Any]:
        st = self.app_state
        return {
            "child": self.name,
            "pid": os.getpid(),
            "phase": self.phase,
            "error": "",
            "url": self.spec["url"],
            "clients": st.clients if st else 0,
            "stream_drops": st.stream_drops if st else 0,
            "stream_sent": st.stream_sent if st else 0,
        }

    def run(self) -> int:
        try:
            os.nice(NICE)
        except OSError:
            pass
        self.reporter.start()
        from motionmask.web.app import build_app
        from motionmask.web.feed import DaemonFeed
        from motionmask.web.server import serve

        feed = DaemonFeed(
            self.spec["control_endpoint"],
            self.spec.get("masks_endpoint") or None,
            self.spec.get("run_dir") or None,
            self.spec.get("exports_dir") or None,
            interval_s=self.cfg.status_interval_s,
        ).start()
        app = build_app(feed, self.spec["url"], self.cfg.token, self.cfg.status_interval_s)
        inner = getattr(app, "app", app)
        self.app_state = inner.state.console
        sock = socket.socket(fileno=int(self.spec["listen_fd"]))
        self.phase = "running"
        log_event(log, "console_ready", url=self.spec["url"], pid=os.getpid())
        try:
            if not self.stop_requested:
                serve(app, sock, self.servers)
        finally:
            self.phase = "stopped"
            feed.close()
            self.reporter.stop_and_send_last()
            self.reporter.sock.close()
            self.ctx.term()
        return 128 + signal.SIGTERM


def main() -> int:
    return run_child(WebProcess)


if __name__ == "__main__":
    sys.exit(main())
