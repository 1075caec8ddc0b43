"""How the daemon's child processes (motionmask/camera_process.py, motionmask/learner_process.py)
start: the spec as JSON on stdin (not argv: a camera URL may carry a password, and argv is
readable by every user through ps), log lines to stderr (inherited from the daemon), and SIGTERM
and SIGINT taken as a stop from the first moment, before the process object exists; and how they
report to the daemon and notice that it died (Reporter).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from common.errors import UserError
from common.log import log_event
from motionmask.journald import setup_logging

log = logging.getLogger(__name__)

# a child's exit status, as the daemon reads it (motionmask/daemon.py _EXIT_WHY)
EXIT_OK, EXIT_CRASH, EXIT_USER, EXIT_SOURCE = 0, 1, 2, 3


class Stopped(Exception):
    """A stop signal that arrived before the child got going (a camera still opening its source,
    the learner before training): raised by the signal handler, so it comes out of a blocking call."""


class Child(Protocol):
    def on_signal(self, signum: int, frame: object) -> None: ...

    def run(self) -> int: ...


def run_child(make: Callable[[dict[str, Any]], Child]) -> int:
    """Read the spec from stdin, set up logging, build the child with `make(spec)` and run it;
    returns its exit status (128 + SIGTERM for a stop that came while it was being built)."""
    spec = json.load(sys.stdin)
    setup_logging(spec.get("log_level", "INFO"))  # children share the daemon's stderr: journald too

    def early(signum: int, _frame: object) -> None:
        raise Stopped()

    # A stop while the child is being built (its config, its sockets) has no child to go to yet:
    # it ends the start-up rather than being lost or killing the process without an exit status.
    signal.signal(signal.SIGTERM, early)
    signal.signal(signal.SIGINT, early)
    try:
        child = make(spec)
        signal.signal(signal.SIGTERM, child.on_signal)
        signal.signal(signal.SIGINT, child.on_signal)
        return child.run()
    except Stopped:
        return 128 + signal.SIGTERM


def push_socket(ctx: zmq.Context, endpoint: str, hwm: int) -> zmq.Socket:
    """A PUSH socket to the daemon's forward endpoint; the last counters get half a second
    (LINGER) to reach it when the child closes."""
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.LINGER, 500)
    s.connect(endpoint)
    return s


class Supervised(Protocol):
    phase: str
    error: str
    signum: int
    reporter: Reporter

    def close(self) -> None: ...


def run_reported(child: Supervised, body: Callable[[], None], role: str, logger: logging.Logger) -> int:
    """The run() of a child that reports (the learner, the rig's sender, the learner's receiver):
    start its reporter, run `body`, and turn how it ended into phase, error and exit status: a stop
    (128 + the signal), a user error (EXIT_USER, event <role>_failed) or a crash (EXIT_CRASH,
    event <role>_crashed with the traceback, both on the child's `logger`); `child.close()` in
    every case."""
    child.reporter.start()
    code = 0
    try:
        body()
        child.phase, code = "stopped", 128 + (child.signum or signal.SIGTERM)
    except Stopped:
        child.phase, code = "stopped", 128 + (child.signum or signal.SIGTERM)
    except UserError as e:
        child.phase, child.error, code = "failed", str(e), EXIT_USER
        log_event(logger, f"{role}_failed", logging.ERROR, error=e)
    except Exception as e:
        child.phase, child.error, code = "failed", f"crashed: {type(e).__name__}: {e}", EXIT_CRASH
        logger.exception(f"event={role}_crashed")
    finally:
        child.close()
    return code


class Reporter(threading.Thread):
    """Sends [topic, snapshot() as JSON] every `interval` seconds, also while the main thread is
    blocked (a camera opening its source, the learner in a long step), and stops the process if its
    daemon died: an orphan must not hold a camera or go on training forever. The stop is the
    child's own SIGTERM (a camera closes its source, the learner saves a checkpoint); after
    `grace_s` without an exit the process exits with `orphan_exit` (the main thread is stuck).
    `role` names the log event (`<role>_orphaned`); `fields` go into every log line."""

    def __init__(
        self,
        role: str,
        snapshot: Callable[[], dict],
        sock: zmq.Socket,
        topic: bytes,
        parent_pid: int,
        grace_s: float,
        orphan_exit: int,
        interval: float = 0.5,
        **fields: Any,
    ) -> None:
        super().__init__(name=f"reporter-{fields.get('camera', role)}", daemon=True)
        self.role, self.snapshot, self.sock, self.topic = role, snapshot, sock, topic
        self.parent_pid, self.grace_s, self.orphan_exit, self.interval = parent_pid, grace_s, orphan_exit, interval
        self.fields = fields
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            if os.getppid() != self.parent_pid:
                log_event(log, f"{self.role}_orphaned", logging.WARNING, **self.fields, parent=self.parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                self._done.wait(self.grace_s)
                os._exit(self.orphan_exit)
            self.send()

    def send(self) -> None:
        try:
            self.sock.send_multipart([self.topic, json.dumps(self.snapshot()).encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass  # the daemon is busy; the next report carries the same totals
        except Exception as e:  # a report is never worth a crash
            log_event(log, "report_failed", logging.WARNING, **self.fields, error=e)

    def stop_and_send_last(self) -> None:
        self._done.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=2.0)
        self.send()
