"""systemd's notify protocol, by hand: one datagram per state change to the Unix socket named in
$NOTIFY_SOCKET (a path, or '@name' in the abstract namespace). No dependency, and a no-op when
not started by systemd (no $NOTIFY_SOCKET).

    notifier = Notifier.from_env()
    notifier.send("READY=1")                        # Type=notify: the service is up
    if notifier.watchdog_s: ...                     # WatchdogSec= is set: ping at least this often
    notifier.send("WATCHDOG=1")                     # only from a loop that has just shown progress
    notifier.send("STOPPING=1")                     # the shutdown began

The protocol is in sd_notify(3): newline-separated VAR=value assignments in one datagram.
"""

from __future__ import annotations

import logging
import os
import socket

from common.log import log_event

log = logging.getLogger("motionmask.sdnotify")


class Notifier:
    """A datagram socket to systemd, opened once. Sending never raises: a daemon must not stop
    because its supervisor went away; the first failure is logged, later ones are not."""

    def __init__(self, address: str | None, watchdog_s: float | None = None):
        self.address = address
        self.watchdog_s = watchdog_s  # None: no watchdog asked for
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Notifier:
        """The socket and watchdog interval systemd gave this process. WATCHDOG_USEC is ours only
        when WATCHDOG_PID is unset or our pid (sd_watchdog_enabled(3))."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log_event(
                log,
                "notify_unsupported",
                logging.WARNING,
                socket=address,
                note="only path and @abstract sockets are supported; systemd notifications are off",
            )
            address = None
        watchdog_s = None
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
            pid = int(env.get("WATCHDOG_PID", "0") or 0)
        except ValueError:
            usec, pid = 0, 0
        if usec > 0 and pid in (0, os.getpid()):
            watchdog_s = usec / 1e6
        return cls(address, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, state: str) -> bool:
        """Send one notification (e.g. "READY=1"); True when it left."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(state.encode(), target)
            return True
        except OSError as e:
            if not self._failed:
                self._failed = True
                log_event(
                    log,
                    "notify_failed",
                    logging.WARNING,
                    socket=self.address,
                    state=state.split("=")[0],
                    error=e.strerror or e,
                )
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
