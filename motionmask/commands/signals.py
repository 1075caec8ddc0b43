"""How a command stops: Ctrl-C (SIGINT) and SIGTERM, for every command that runs until told to.

A command either turns SIGTERM into an exception for its whole run (signals_as_exceptions), or,
in a frame loop, only notes the signal and acts on it between frames (signals_deferred); while
its outputs are being finished, both are ignored (signals_ignored). Standard library only: the
device's commands use this module too."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(Exception):
    """SIGTERM, turned into an exception so that outputs are closed as for Ctrl-C."""


def exit_status(e: BaseException) -> int:
    """The shell's status for a run ended by a signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if isinstance(e, Terminated) else 130


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGTERM raises Terminated (SIGINT already raises KeyboardInterrupt) while the run lasts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class StopRequest:
    """A SIGINT or SIGTERM seen by signals_deferred(), waiting for the loop to act on it."""

    signum = 0

    def check(self) -> None:
        """Between frames: raise KeyboardInterrupt (SIGINT) or Terminated (SIGTERM) if one came."""
        if self.signum:
            raise Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def signals_deferred() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM only set a flag that the frame loop turns into an exception between
    frames (StopRequest.check). An exception raised wherever the signal lands (inside a queue's
    lock, inside the decoder) can leave a lock taken and hang the shutdown; a second signal
    raises at once, for a loop that no longer reaches its check."""
    req = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield req
        return

    def on_signal(signum: int, frame: object) -> None:
        if req.signum:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        req.signum = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield req
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While outputs are being finished, a second Ctrl-C must not leave them half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
