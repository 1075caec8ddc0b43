"""How the daemon's child processes (motionmask/camera_process.py, motionmask/learner_process.py)
start: the spec as JSON on stdin (not argv: a camera URL may carry a password, and argv is
readable by every user through ps), log lines to stderr (inherited from the daemon), and SIGTERM
and SIGINT taken as a stop from the first moment, before the process object exists.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
from typing import Any, Callable, Protocol


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
    logging.basicConfig(level=getattr(logging, spec.get("log_level", "INFO")),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr)

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
